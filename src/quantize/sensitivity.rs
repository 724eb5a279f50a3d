//! Which layers stay float in the int8 output: each layer left original gets its int8 weights
//! alone, in the float model, and the change of the model's outputs on the calibration images
//! is measured — the end-to-end measure the budgets weigh layers by (`budget::reach`). A layer
//! whose int8 weights change the outputs by more than [`INT8_CHANGE_LIMIT`] keeps its float
//! weights (ONNX Runtime then runs it as a float operator between the int8 ones), and the
//! report says by how much.

use std::collections::HashMap;

use anyhow::{Context, Result};
use ndarray::ArrayD;
use rayon::prelude::*;

use super::rewrite::{layer_name, weight_layout};
use super::scales;
use crate::engine::{self, Engine};
use crate::eval::verify;
use crate::lower::stored::set_initializer;
use crate::onnx::model::OnnxModel;

/// The relative L2 change of the model's outputs one layer's int8 weights may cause before the
/// layer stays float. The largest measured on the shared models, whose int8 loses no top-1 in
/// ONNX Runtime's own quantizer, on 16 calibration images: ResNet-20 1.26% (layer2.0.conv1),
/// ResNet-56 0.55% (conv1), SqueezeNet 1.1 0.91% (conv10). A weight rounded to int8 moves by at
/// most half a step of 1/127 of its channel's largest: a layer four times above those has
/// weights int8 cannot hold (a few large values beside many small ones).
pub const INT8_CHANGE_LIMIT: f64 = 0.05;

/// The calibration images the change is measured on (the first ones).
const SENSITIVITY_IMAGES: usize = 16;

/// One layer's int8 weights put into the float model, and the outputs' change.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Change {
    pub layer: String,
    /// The weight initializer.
    pub weight: String,
    /// Relative L2 change of the model's outputs.
    pub change: f64,
}

/// The Conv, Gemm and MatMul nodes of `model` whose weight is a float initializer: (layer
/// name, weight name, node index).
pub(super) fn weighted_layers(model: &OnnxModel) -> Vec<(String, String, usize)> {
    model
        .graph()
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| {
            matches!(n.op_type.as_deref(), Some("Conv" | "Gemm" | "MatMul")) && n.input.len() >= 2
        })
        .filter(|(_, n)| model.initializer(&n.input[1]).is_some())
        .map(|(i, n)| (layer_name(n), n.input[1].clone(), i))
        .collect()
}

/// The weight of node `i` rounded to int8 as the rewrite stores it (per output channel,
/// symmetric) and back to float, or `None` when the rewrite would not quantize it.
pub(super) fn int8_rounded(model: &OnnxModel, weight: &str, i: usize) -> Result<Option<Vec<f32>>> {
    let t = model.initializer(weight).context("weight")?;
    let values = model.tensor_f32(t)?;
    let dims = values.shape().to_vec();
    let flat: Vec<f32> = values.iter().copied().collect();
    let Ok(layout) = weight_layout(&model.graph().node[i], &dims) else {
        return Ok(None);
    };
    let [outer, channels, inner] = layout.map_or([1, 1, flat.len()], |l| l.1);
    let s = scales::channel_scales(&flat, outer, channels, inner);
    let q = scales::quantize_weight(&flat, &s, outer, inner);
    Ok(Some(
        q.iter()
            .enumerate()
            .map(|(k, &v)| f32::from(v) * s[(k / inner) % channels])
            .collect(),
    ))
}

/// `model` with the weight of node `i` rounded to int8 ([`int8_rounded`]), or `None` when the
/// rewrite would not quantize it.
fn with_int8_weight(model: &OnnxModel, weight: &str, i: usize) -> Result<Option<OnnxModel>> {
    let Some(rounded) = int8_rounded(model, weight, i)? else {
        return Ok(None);
    };
    let mut m = model.clone();
    set_initializer(&mut m, weight, &rounded)?;
    Ok(Some(m))
}

/// Every layer of `model` with float initializer weights, with the change its int8 weights
/// alone cause in `engine` on the first calibration `inputs`, in graph order.
pub fn int8_changes(
    engine: Engine,
    model: &OnnxModel,
    inputs: &[ArrayD<f32>],
) -> Result<Vec<Int8Change>> {
    let inputs = &inputs[..inputs.len().min(SENSITIVITY_IMAGES)];
    let Some(first) = inputs.first() else {
        return Ok(vec![]);
    };
    // Every output of every input, in order.
    let run = |m: &OnnxModel| -> Result<Vec<ArrayD<f32>>> {
        let runner = engine::prepare(engine, m, first.shape())?;
        let outputs = inputs.iter().map(|x| runner.run_all(x));
        Ok(outputs.collect::<Result<Vec<_>>>()?.concat())
    };
    let reference = run(model).context("the float model on the calibration images")?;
    let layers = weighted_layers(model);
    let changes: Vec<Option<Int8Change>> = layers
        .par_iter()
        .map(|(layer, weight, i)| {
            let Some(m) = with_int8_weight(model, weight, *i)? else {
                return Ok(None);
            };
            let outputs = run(&m).with_context(|| format!("layer `{layer}` with int8 weights"))?;
            Ok(Some(Int8Change {
                layer: layer.clone(),
                weight: weight.clone(),
                change: verify::agreement(&reference, &outputs)?.relative_l2,
            }))
        })
        .collect::<Result<_>>()?;
    Ok(changes.into_iter().flatten().collect())
}

/// The weights (by initializer name) of the layers that stay float, with why: those whose int8
/// weights alone change the outputs by more than [`INT8_CHANGE_LIMIT`].
pub fn layers_kept_float(
    engine: Engine,
    model: &OnnxModel,
    inputs: &[ArrayD<f32>],
) -> Result<HashMap<String, String>> {
    let changes = int8_changes(engine, model, inputs)?;
    if let Some(worst) = changes.iter().max_by(|a, b| a.change.total_cmp(&b.change)) {
        log::info!(
            "int8: one layer's int8 weights change the outputs by at most {:.2}% ({}; a layer above {:.0}% stays float)",
            100.0 * worst.change,
            worst.layer,
            100.0 * INT8_CHANGE_LIMIT
        );
    }
    let n = inputs.len().min(SENSITIVITY_IMAGES);
    Ok(changes
        .into_iter()
        .filter(|c| c.change > INT8_CHANGE_LIMIT)
        .map(|c| {
            let why = format!(
                "its int8 weights alone change the model's outputs by {:.1}% (relative L2 on {n} calibration images), above the {:.0}% a layer may",
                100.0 * c.change,
                100.0 * INT8_CHANGE_LIMIT
            );
            (c.weight, why)
        })
        .collect())
}
