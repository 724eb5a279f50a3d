//! The latency budget's measure: the whole model and every candidate layer timed on this
//! machine, as it is and in the form at each candidate ratio (`timing`).

use anyhow::{Context, Result};

use crate::analysis::inventory::Inventory;
use crate::engine::Engine;
use crate::lower::Form;
use crate::onnx::model::OnnxModel;
use crate::progress;

use super::{timing, Candidate, MeasuredBudget, Unit, CANDIDATE_RATIOS};

/// Times the whole model and every candidate layer (as it is, and in `form` at each candidate ratio)
/// in `engine` on this machine, batch 1.
pub fn latency_budget(
    original: &OnnxModel,
    inv: &Inventory,
    candidates: &[Candidate],
    (engine, form): (Engine, &dyn Form),
) -> Result<MeasuredBudget> {
    let mut shape = inv
        .shapes
        .sole_concrete_input()
        .context("timing the model for the latency budget")?
        .1
        .to_vec();
    shape[0] = 1;
    let task = progress::task("timing", candidates.len() as u64 + 1);
    // ONNX Runtime's x86 layout transformer runs a Conv among blocked-layout neighbours without
    // reorders but a DlqConv with two: timed alone, the layer's gain is overstated. The whole
    // model is timed once, by InModel there.
    let in_model = match engine {
        Engine::Tract => None,
        Engine::Ort => Some(timing::InModel::new(
            (engine, form),
            original,
            &inv.shapes,
            &shape,
        )?),
    };
    let model_ms = match &in_model {
        Some(m) => m.original_ms,
        None => timing::time_model(engine, original, &shape)?,
    };
    task.inc(1);
    let mut layers = Vec::with_capacity(candidates.len());
    for c in candidates {
        let alone = timing::time_layer(
            (engine, form),
            original,
            c.layer,
            &inv.shapes,
            &c.params,
            &CANDIDATE_RATIOS,
        )?;
        log::debug!(
            "timing: {} dense {:.3} ms, fused {:?}",
            c.layer.name,
            alone.before,
            alone.after
        );
        let t = match &in_model {
            None => alone,
            Some(m) => {
                let t = m.time_layer(c.layer, &c.params, &alone)?;
                log::debug!(
                    "timing: {} in the model: original {:.3} ms, with it fused {:?}",
                    c.layer.name,
                    t.before,
                    t.after
                );
                t
            }
        };
        layers.push(t);
        task.inc(1);
    }
    let how = match in_model {
        None => "per-layer timings",
        Some(_) => "each layer timed in the whole model",
    };
    Ok(MeasuredBudget {
        unit: Unit::Milliseconds,
        total: model_ms,
        layers,
        source: Some(format!("{}, 1 thread, batch 1, {how}", engine.describe()?)),
        start: None,
    })
}
