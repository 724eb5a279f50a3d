//! The int8 output: a converted (or original) float model written as a QDQ model that stock
//! ONNX Runtime turns into its integer kernels when it loads it. Every Conv, Gemm and MatMul
//! whose input is computed at run time gets int8 weights per output channel — stored as int8,
//! or, for a layer the compact form stores as a codebook, its rebuilt kernel quantized by a
//! QuantizeLinear that the engine folds at load, so the file keeps the codebook — and an int32
//! bias; activations get QuantizeLinear → DequantizeLinear pairs where ONNX Runtime's own
//! quantizer puts them ([`plan`]), with ranges measured on the calibration images
//! ([`ranges`]).
//!
//! ```text
//! x ─ Q ─ DQ ─┐
//!  rebuilt W̃ ─ Q ─ DQ ─ Conv ─ (ReLU folded) ─ Q ─ DQ ─ …     (ORT: QLinearConv)
//!  int32 bias ─ DQ ─┘
//! ```

pub mod plan;
pub mod ranges;
pub mod rewrite;
pub mod scales;
pub mod sensitivity;
pub mod simulate;
pub mod upgrade;

use std::collections::HashMap;

use anyhow::{Context, Result};
use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

use crate::analysis::shapes::ShapeMap;
use crate::engine::Engine;
use crate::onnx::model::OnnxModel;
pub use rewrite::Rebuilt;
pub use scales::ActivationType;

/// The largest palette quantized with one scale for the whole kernel: its entries then lie at
/// least two int8 steps apart on average (a 256-entry palette on one grid cost SqueezeNet's
/// classifier two held-out images of 244 against per-channel scales' one).
pub const PER_TENSOR_MAX_K: usize = 64;

/// How the int8 output is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Int8Options {
    pub activation: ActivationType,
}

/// What the int8 rewrite did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Int8Report {
    pub activation: ActivationType,
    /// The range each activation's scale covers.
    pub calibration_method: String,
    pub calibration_images: usize,
    /// The model's opset before it was upgraded to 13, when it was.
    pub upgraded_from_opset: Option<i64>,
    /// Conv / Gemm / MatMul layers (by output name) with int8 weights.
    pub int8_layers: Vec<String>,
    /// Layers left in float, with why.
    pub float_layers: Vec<FloatLayer>,
    /// Tensors with a QuantizeLinear → DequantizeLinear pair.
    pub quantized_tensors: usize,
    /// ReLUs absorbed by their producer's quantized output.
    pub folded_relus: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloatLayer {
    pub name: String,
    pub reason: String,
}

/// Rewrites `model` into its QDQ form, with activation ranges measured by running it (before
/// the rewrite) in `engine` on `inputs`. `computed` holds the values of weights that the graph
/// computes from constants (the compact form's rebuilt kernels), by tensor name; the layers
/// whose weight `kept_float` names stay float (`sensitivity::layers_kept_float`).
pub fn quantize(
    model: &mut OnnxModel,
    opts: &Int8Options,
    shapes: &ShapeMap,
    (inputs, engine): (&[ArrayD<f32>], Engine),
    (computed, kept_float): (&HashMap<String, rewrite::Rebuilt>, &HashMap<String, String>),
) -> Result<Int8Report> {
    upgrade::check_quantizable(model)?;
    let upgraded_from_opset = upgrade::to_qdq_opset(model, shapes)?;
    let float = model.clone();
    rewrite::name_layers(model);
    let (folded, planned) = plan::fold_and_plan(model);
    let calibrated = planned.calibrated();
    log::info!(
        "int8: measuring {} activation ranges on {} images",
        calibrated.len(),
        inputs.len()
    );
    let ranges = ranges::min_max(engine, &float, inputs, &calibrated)
        .context("the int8 output's activation ranges")?;
    let affine: HashMap<String, scales::Affine> = ranges
        .iter()
        .map(|(t, &(lo, hi))| (t.clone(), scales::activation(lo, hi, opts.activation)))
        .collect();
    let done = rewrite::rewrite(
        model,
        &planned,
        &affine,
        opts.activation,
        (computed, kept_float),
    )?;
    rewrite::shorten_rebuild_names(model)?;
    if done.clamped_biases > 0 {
        log::warn!(
            "int8: {} bias values exceed int32 in their accumulator scale and were clamped",
            done.clamped_biases
        );
    }
    Ok(Int8Report {
        activation: opts.activation,
        calibration_method: "min-max".into(),
        calibration_images: inputs.len(),
        upgraded_from_opset,
        int8_layers: done.int8_layers,
        float_layers: done
            .float_layers
            .into_iter()
            .map(|(name, reason)| FloatLayer { name, reason })
            .collect(),
        quantized_tensors: planned.tensors.len(),
        folded_relus: folded.len(),
    })
}

/// The stored bytes of `model` written as int8 with every weight stored as int8 but those
/// `kept_float` names (the ranges are placeholders: the parameters' bytes do not depend on their
/// values): what the int8 output stores before any layer is converted, for the size budget.
pub fn int8_bytes(
    model: &OnnxModel,
    shapes: &ShapeMap,
    kept_float: &HashMap<String, String>,
) -> Result<u64> {
    use prost::Message;
    let mut m = model.clone();
    upgrade::check_quantizable(&m)?;
    upgrade::to_qdq_opset(&mut m, shapes)?;
    rewrite::name_layers(&mut m);
    let (_, planned) = plan::fold_and_plan(&mut m);
    let placeholder = scales::Affine {
        scale: 1.0,
        zero_point: 0,
    };
    let affine = planned
        .calibrated()
        .into_iter()
        .map(|t| (t, placeholder))
        .collect();
    rewrite::rewrite(
        &mut m,
        &planned,
        &affine,
        ActivationType::Uint8,
        (&HashMap::new(), kept_float),
    )?;
    let proto = m.proto_inline()?;
    Ok(proto.encoded_len() as u64)
}
