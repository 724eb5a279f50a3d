//! How much of a layer's output error reaches the model's output: the budget's end-to-end
//! weighting. A layer's relative output error e (what `measure` reports per candidate ratio)
//! moves the model's output by g·e, the gain g depending on where the layer sits: a classifier
//! layer's error lands on the logits almost whole, a mid-network layer's is partly absorbed by
//! ReLUs, pooling and the layers after it. Each gain is measured once, by running the model
//! with that layer alone approximated on a few calibration inputs; the budget then spends
//! (g·e)² instead of e², so bytes or multiplications go where the model's output needs them.
//!
//! Measured on SqueezeNet (`--target-compression 8`, palettes): `conv10` alone at K = 16
//! moves the logits by 0.34 (relative L2) for a layer error of 0.37, the 22 fire layers
//! together at K = 256 by 0.13 for errors of 0.08–0.16 each.

use anyhow::{Context, Result};
use ndarray::ArrayD;
use rayon::prelude::*;

use crate::analysis::select::ConvLayer;
use crate::codebook::Codebook;
use crate::engine::{self, Engine};
use crate::eval::seen::spread_indices;
use crate::lower::reconstructed;
use crate::onnx::model::OnnxModel;

/// Calibration inputs the gains are measured on (spread over those given): enough for a
/// stable ratio of two error norms, few enough to run the model once per candidate layer.
pub const GAIN_SAMPLES: usize = 32;

/// The model's outputs on `inputs`.
fn outputs(engine: Engine, model: &OnnxModel, inputs: &[&ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>> {
    let Some(first) = inputs.first() else {
        return Ok(Vec::new());
    };
    let runner = engine::prepare(engine, model, first.shape())?;
    inputs.iter().map(|x| runner.run(x)).collect()
}

/// ‖ỹ − y‖ / ‖y‖ over all outputs.
fn relative_change(reference: &[ArrayD<f32>], changed: &[ArrayD<f32>]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (y, z) in reference.iter().zip(changed) {
        for (&a, &b) in y.iter().zip(z) {
            num += (a as f64 - b as f64).powi(2);
            den += (a as f64).powi(2);
        }
    }
    if den > 0.0 {
        (num / den).sqrt()
    } else {
        0.0
    }
}

/// One probe: `layer` approximated by `codebook`, whose relative output error on the
/// calibration inputs is `error`.
pub struct Probe<'a> {
    pub layer: &'a ConvLayer,
    pub codebook: Codebook,
    pub error: f64,
}

/// Each probe's gain: the model's relative output change with that layer alone approximated,
/// over the layer's own relative output error (1 where that error is 0 or not finite).
pub fn gains(
    engine: Engine,
    original: &OnnxModel,
    inputs: &[ArrayD<f32>],
    probes: &[Probe],
) -> Result<Vec<f64>> {
    let taken: Vec<&ArrayD<f32>> = spread_indices(inputs.len(), GAIN_SAMPLES.min(inputs.len()))
        .into_iter()
        .map(|i| &inputs[i])
        .collect();
    let reference = outputs(engine, original, &taken).context("the original model")?;
    probes
        .par_iter()
        .map(|p| {
            let ctx = || format!("end-to-end sensitivity of layer `{}`", p.layer.name);
            let mut model = original.clone();
            reconstructed::substitute(&mut model, p.layer, &p.codebook).with_context(ctx)?;
            let changed = outputs(engine, &model, &taken).with_context(ctx)?;
            let moved = relative_change(&reference, &changed);
            Ok(if p.error.is_finite() && p.error > 0.0 {
                moved / p.error
            } else {
                1.0
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    #[test]
    fn the_relative_change_is_the_norm_ratio() {
        let y = vec![ArrayD::from_shape_vec(IxDyn(&[2]), vec![3.0f32, 4.0]).unwrap()];
        let z = vec![ArrayD::from_shape_vec(IxDyn(&[2]), vec![3.0f32, 4.5]).unwrap()];
        assert!((relative_change(&y, &z) - 0.1).abs() < 1e-12);
        assert_eq!(relative_change(&y, &y), 0.0);
    }
}
