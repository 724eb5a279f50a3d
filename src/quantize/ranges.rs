//! Activation ranges on the calibration images: the float model run with every calibrated
//! tensor exposed, each tensor's smallest and largest value kept (min-max calibration, ONNX
//! Runtime's quantizer's default).

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};
use ndarray::ArrayD;

use crate::calibrate::stats::fold_in_order;
use crate::engine::{self, Engine};
use crate::onnx::model::OnnxModel;

/// `(min, max)` of each tensor of `tensors` over every calibration input.
pub fn min_max(
    engine: Engine,
    model: &OnnxModel,
    inputs: &[ArrayD<f32>],
    tensors: &[String],
) -> Result<HashMap<String, (f32, f32)>> {
    ensure!(
        !inputs.is_empty(),
        "no calibration images for the activation ranges"
    );
    let runner = engine::prepare_with_outputs(engine, model, inputs[0].shape(), tensors)?;
    let extremes = |outputs: Vec<ArrayD<f32>>| -> Vec<(f32, f32)> {
        outputs
            .iter()
            .map(|a| {
                a.iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                        (lo.min(v), hi.max(v))
                    })
            })
            .collect()
    };
    let total = fold_in_order(
        inputs,
        4 * rayon::current_num_threads().max(1),
        |x| Ok(extremes(runner.run_all(x)?)),
        |t: &mut Vec<(f32, f32)>, s| {
            for (t, s) in t.iter_mut().zip(s) {
                *t = (t.0.min(s.0), t.1.max(s.1));
            }
        },
    )
    .context("measuring the activation ranges")?;
    ensure!(
        total.len() == tensors.len(),
        "the engine returned {} of {} tensors",
        total.len(),
        tensors.len()
    );
    for (t, &(lo, hi)) in tensors.iter().zip(&total) {
        ensure!(
            lo.is_finite() && hi.is_finite(),
            "tensor `{t}` takes non-finite values on the calibration images ({lo} .. {hi})"
        );
    }
    Ok(tensors.iter().cloned().zip(total).collect())
}
