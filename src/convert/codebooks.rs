//! Phase 2 of a conversion: a codebook for every planned layer. Without calibration each layer
//! is learnt from its weights alone, layers in parallel; with it, layers are learnt in network
//! order, each from the statistics of its input in a model whose earlier layers already carry
//! their approximation.

use std::time::Instant;

use anyhow::{Context, Result};
use rayon::prelude::*;

use crate::calibrate::{self, patches, Calibration, RefitOutcome};
use crate::codebook::{self, Codebook};
use crate::lower::reconstructed;
use crate::onnx::model::OnnxModel;
use crate::progress;

use super::plan::PlannedLayer;

/// What the clustering gave one layer.
pub struct LearntLayer {
    pub codebook: Codebook,
    pub weight_error: f64,
    /// Relative output errors on the calibration inputs, with calibration.
    pub output_errors: Option<OutputErrors>,
    pub seconds: f64,
}

/// A calibrated layer's relative output error, and the plain codebook's for comparison.
#[derive(Debug, Clone, Copy)]
pub struct OutputErrors {
    pub calibrated: f64,
    pub plain: f64,
    /// The refit's error on the full patches (against the original model's layer output).
    pub refit: Option<RefitOutcome>,
}

/// The codebook of every planned layer, in plan order.
pub fn learn_codebooks(
    original: &OnnxModel,
    planned: &[PlannedLayer],
    calibration: Option<&Calibration>,
) -> Result<Vec<LearntLayer>> {
    match calibration {
        Some(cal) => learn_calibrated(original, planned, cal),
        None => learn_plain(original, planned),
    }
}

/// Layers in parallel too (each one's subspaces already are): every layer has its own seeded
/// RNGs, so the codebooks do not depend on the schedule; collected in order.
fn learn_plain(original: &OnnxModel, planned: &[PlannedLayer]) -> Result<Vec<LearntLayer>> {
    let task = progress::task("clustering", planned.len() as u64);
    planned
        .par_iter()
        .map(|p| {
            let started = Instant::now();
            let w = p.layer.kernel_f32(original)?;
            let cb = codebook::learn(w.view(), &p.params)
                .with_context(|| format!("layer `{}`", p.layer.name))?;
            task.inc(1);
            Ok(LearntLayer {
                weight_error: cb.relative_error(w.view()),
                codebook: cb,
                output_errors: None,
                seconds: started.elapsed().as_secs_f64(),
            })
        })
        .collect()
}

fn learn_calibrated(
    original: &OnnxModel,
    planned: &[PlannedLayer],
    cal: &Calibration,
) -> Result<Vec<LearntLayer>> {
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| planned[i].layer.node_index);
    let mut simulated = cal.start.unwrap_or(original).clone();
    let mut learnt: Vec<Option<LearntLayer>> = (0..planned.len()).map(|_| None).collect();
    let task = progress::task("calibrating", planned.len() as u64);
    for (step, &i) in order.iter().enumerate() {
        let (layer, params) = (planned[i].layer, &planned[i].params);
        let started = Instant::now();
        let ctx = || format!("calibrating layer `{}`", layer.name);
        let w = layer.kernel_f32(original)?;
        let refit = cal.options.refit.as_ref();
        let (stats, patches) = match refit {
            Some(_) => {
                // Before the first substitution the simulated model may be the original.
                let converted = (step > 0 || cal.start.is_some()).then_some(&simulated);
                patches::collect(cal.engine, original, converted, cal.inputs, layer)
                    .with_context(ctx)?
            }
            None => (
                calibrate::collect(cal.engine, &simulated, cal.inputs, layer).with_context(ctx)?,
                None,
            ),
        };
        let damping = cal.options.damping;
        let mut cb = calibrate::learn(w.view(), params, &stats, damping).with_context(ctx)?;
        let plain = codebook::learn(w.view(), params).with_context(ctx)?;
        let mut output_errors = OutputErrors {
            calibrated: calibrate::output_error(w.view(), cb.reconstruct().view(), &stats),
            plain: calibrate::output_error(w.view(), plain.reconstruct().view(), &stats),
            refit: None,
        };
        if let (Some(opts), Some(patches)) = (refit, &patches) {
            let (refitted, outcome) =
                calibrate::refit::refit(w.view(), &cb, patches, opts).with_context(ctx)?;
            cb = refitted;
            output_errors.refit = Some(outcome);
        } else if refit.is_some() {
            log::warn!(
                "layer `{}`: patches longer than {} values are not refitted",
                layer.name,
                patches::MAX_PATCH_DIM
            );
        }
        calibrate::place_bias_shift(&mut cb, layer, original);
        reconstructed::substitute(&mut simulated, layer, &cb).with_context(ctx)?;
        log::info!(
            "calibrate [{}/{}] {}: {} input positions, {:.1}s",
            step + 1,
            order.len(),
            layer.name,
            stats.positions,
            started.elapsed().as_secs_f64()
        );
        task.inc(1);
        learnt[i] = Some(LearntLayer {
            weight_error: cb.relative_error(w.view()),
            codebook: cb,
            output_errors: Some(output_errors),
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok(learnt
        .into_iter()
        .map(|l| l.expect("every layer learnt"))
        .collect())
}
