//! Calibration: what each targeted layer's input looks like on a few unlabelled images
//! (per-channel means and second moments), and codebooks learnt to keep the layer's *outputs*
//! close on such inputs instead of its weights.
//!
//! A column w (N′ channels of one output channel and kernel position) replaced by c changes the
//! output by (w − c)ᵀx at every position. Its mean over the calibration inputs is removed through
//! the bias (Σ (W − W̃)·E[x] per output channel); what remains is (w − c)ᵀ H (w − c), H the
//! covariance of x over the subspace's channels (damped, see [`DEFAULT_DAMPING`]). With
//! H = L Lᵀ (Cholesky) that is the plain squared distance between Lᵀw and Lᵀc: the usual VQ / DL
//! learning runs on the whitened kernel Lᵀw and the atoms are mapped back with L⁻ᵀ (a linear
//! map, so DL's sparse combinations carry over unchanged).
//!
//! Layers are fitted in network order, each on the inputs produced by the model whose earlier
//! layers already carry their approximated weights, so errors do not pile up unseen.
pub mod compensate;
pub mod learn;
pub mod linalg;
pub mod patches;
pub mod refit;
pub mod stats;

use std::path::PathBuf;

use anyhow::{ensure, Result};
use ndarray::{ArrayD, Axis};
use serde::{Deserialize, Serialize};

use crate::analysis::select::ConvLayer;
use crate::codebook::Codebook;
use crate::engine::Engine;
use crate::eval::data::check_images_fit;
use crate::eval::images::{image_files, preprocessed_images, warn_if_few_classes};
use crate::eval::seen::{ImageSelection, SeenImages};
use crate::onnx::model::OnnxModel;
use crate::setting::{require, Setting};

pub use learn::{learn, output_error};
pub use refit::{RefitOptions, RefitOutcome};
pub use stats::{collect, collect_many, InputStats};

/// Ridge added to every input covariance, relative to its mean diagonal: H + λ·mean(diag H)·I.
///
/// Much larger than GPTQ's 0.01 on purpose. The per-column objective ignores correlations
/// between kernel positions (neighbouring pixels), so trusting H fully over-fits it: on SqueezeNet
/// (all eight `expand3x3` at ρ = 10, DL, 256 calibration images, top-1 on the 244 others) λ = 0.01
/// gave 25.4%, 0.3 gave 32.8%, 1 gave 36.9%, 3 gave 37.3%, 10 gave 36.5%, and no whitening at all
/// (λ → ∞, bias correction only) 32.0%, against 29.1% uncalibrated (docs/RESULTS.md). λ = 1 sits
/// on the plateau.
pub const DEFAULT_DAMPING: f64 = 1.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationOptions {
    /// Image folder: the files of `labels.csv` when present (labels ignored), otherwise the
    /// folder's (or its `images/` subfolder's) .png / .jpg / .jpeg files by name.
    pub data: PathBuf,
    pub preprocess: PathBuf,
    /// This many images, taken by `select`.
    pub samples: usize,
    #[serde(default)]
    pub select: ImageSelection,
    /// Each image is also taken mirrored left to right (appended after the images).
    #[serde(default)]
    pub mirror: bool,
    pub damping: f64,
    /// Refit each layer's continuous codebook on its full input patches (`None`: keep the
    /// clustered one).
    pub refit: Option<RefitOptions>,
    /// A budget weighs each layer's output error by how much of it reaches the model's output
    /// ([`reach`]); `false`: every layer's own relative output error counts alike.
    #[serde(default = "end_to_end_default")]
    pub end_to_end: bool,
}

fn end_to_end_default() -> bool {
    true
}

/// The calibration options with their images, loaded once per conversion (or by the caller,
/// once for many), and the engine that runs the models on them.
#[derive(Clone, Copy)]
pub struct Calibration<'a> {
    pub options: &'a CalibrationOptions,
    pub inputs: &'a [ArrayD<f32>],
    pub engine: Engine,
    /// The model whose layers calibration replaces one by one, when not the original: the
    /// original with the int8 output's roundings simulated (`quantize::simulate`).
    pub start: Option<&'a OnnxModel>,
}

/// Drops calibration's bias shift from `cb` where `layer` has no place for it: a MatMul has no
/// bias, a Gemm's run-time C takes no constant. Every form refuses a shift it cannot add
/// (`FcLayout::check_bias_shift`), so such a layer keeps its original output mean instead.
pub fn place_bias_shift(cb: &mut Codebook, layer: &ConvLayer, model: &OnnxModel) {
    if !layer.takes_bias_shift(model) {
        cb.bias_shift = None;
    }
}

/// The calibration inputs, preprocessed for `model`'s input.
pub fn load_inputs(opts: &CalibrationOptions) -> Result<Vec<ArrayD<f32>>> {
    require(opts.samples > 0, Setting::CalibSamples, || {
        "must be at least 1".into()
    })?;
    ensure!(
        opts.damping.is_finite() && opts.damping >= 0.0,
        "calibration damping must be a non-negative number, got {}",
        opts.damping
    );
    if let Some(r) = &opts.refit {
        ensure!(
            r.damping.is_finite() && r.damping >= 0.0,
            "refit damping must be a non-negative number, got {}",
            r.damping
        );
    }
    let images = preprocessed_images(
        &opts.data,
        &opts.preprocess,
        Some(opts.samples),
        opts.select,
        "calibration images",
        Setting::CalibSamples,
    )?;
    if opts.select == ImageSelection::First {
        warn_if_few_classes(
            &opts.data,
            images.len(),
            "calibration",
            &format!("{} spread", crate::setting::name(Setting::CalibSelect)),
        );
    }
    let mut inputs: Vec<ArrayD<f32>> = images.into_iter().map(|a| a.into_dyn()).collect();
    if opts.mirror {
        inputs.extend(mirrored(&inputs)?);
    }
    Ok(inputs)
}

/// Each input mirrored along its last axis (the image's width: the preprocessing writes
/// NCHW), after checking that the
/// copies fit beside the inputs.
fn mirrored(inputs: &[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>> {
    let Some(first) = inputs.first() else {
        return Ok(vec![]);
    };
    let what = "calibration images with their mirror images";
    check_images_fit(2 * inputs.len(), first.shape(), what, Setting::CalibSamples)?;
    Ok(inputs
        .iter()
        .map(|x| {
            let mut m = x.view();
            m.invert_axis(Axis(x.ndim() - 1));
            m.as_standard_layout().into_owned()
        })
        .collect())
}

/// The images calibration takes, as the converted model records them.
pub fn seen_images(opts: &CalibrationOptions) -> Result<SeenImages> {
    let of = image_files(&opts.data)?.len();
    Ok(SeenImages::new(&opts.data, opts.select, opts.samples, of))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array, IxDyn};

    #[test]
    fn a_mirrored_input_is_the_input_with_its_width_reversed() {
        let x = Array::from_shape_fn(IxDyn(&[1, 2, 3, 4]), |i| {
            (i[1] * 100 + i[2] * 10 + i[3]) as f32
        });
        let m = mirrored(std::slice::from_ref(&x)).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].shape(), x.shape());
        for c in 0..2 {
            for h in 0..3 {
                for w in 0..4 {
                    assert_eq!(m[0][[0, c, h, w]], x[[0, c, h, 3 - w]]);
                }
            }
        }
        assert!(m[0].is_standard_layout());
    }
}
