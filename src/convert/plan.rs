//! Phase 1 of a conversion: which layers, each with its own parameters (seed, and ρ from a
//! `--target-speedup` allocation), and which are left original with the reason.

use std::collections::HashMap;

use anyhow::{Context, Result};

use crate::analysis::inventory::Inventory;
use crate::analysis::select::{self, ConvLayer, Ineligible};
use crate::budget::{self, Allocation};
use crate::calibrate::Calibration;
use crate::codebook::{SizeError, ValidParams};
use crate::engine::Engine;
use crate::lower::{Form, Saving};
use crate::onnx::model::OnnxModel;
use crate::setting::{self, Setting};

use super::options::{ConvertOptions, Selection};
use super::report::SkippedLayer;
use crate::lower::OutputForm;

/// Which layers to convert.
/// Why `l` is left out of `sel`'s "all" (a fully connected layer excluded).
fn excluded(sel: &Selection, l: &ConvLayer) -> Option<SkipReason> {
    match sel {
        Selection::All {
            fully_connected: false,
        } if l.fc.is_some() => Some(SkipReason::FullyConnectedExcluded),
        _ => None,
    }
}

/// A layer to convert with the parameters it is learnt with.
pub struct PlannedLayer<'a> {
    pub layer: &'a ConvLayer,
    pub params: ValidParams,
}

/// The layers to convert (graph order), those left original, and the allocation that chose
/// their ratios (with `--target-speedup`).
pub struct Plan<'a> {
    pub layers: Vec<PlannedLayer<'a>>,
    pub skipped: Vec<SkippedLayer>,
    pub allocation: Option<Allocation>,
}

/// Why an eligible-looking layer is left original.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SkipReason {
    #[error(transparent)]
    Ineligible(#[from] Ineligible),
    #[error(transparent)]
    Sizes(#[from] SizeError),
    #[error("converting it would not save multiplications: it has {factor}x more input than output positions (stride), so ρ = {ratio} saves as if ρ = {:.2}; use ρ above {factor}", ratio / factor)]
    NoSaving { factor: f64, ratio: f64 },
    #[error("the compact form would store about {after} bytes against the kernel's {before}: raise ρ (or lower K)")]
    NoShrink { before: u64, after: u64 },
    #[error(
        "fully connected layer, excluded by {}",
        setting::name(Setting::ExcludeFc)
    )]
    FullyConnectedExcluded,
}

/// Per-layer seed: the user's seed mixed with the layer name, so a layer's codebook does not
/// depend on which other layers are converted with it.
fn layer_seed(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x1000_0000_01b3);
    }
    seed ^ h
}

/// The user's parameters with the layer's own seed.
pub fn layer_params(params: &ValidParams, layer: &ConvLayer) -> ValidParams {
    params.with_seed(layer_seed(params.seed, &layer.name))
}

/// Input positions / output positions of a layer: the lowering works at the input's
/// resolution, so a stride-s layer at ratio ρ saves as if at ρ/s².
pub fn position_factor(inv: &Inventory, layer: &ConvLayer) -> f64 {
    let positions = |t: &str| {
        inv.shapes
            .get(t)
            .filter(|d| d.len() > 2)
            .map(|d| d[2..].iter().product::<usize>() as f64)
    };
    match (positions(&layer.input), positions(&layer.output)) {
        (Some(i), Some(o)) if o > 0.0 => i / o,
        _ => 1.0,
    }
}

/// Plans a conversion: one ρ for the selected layers, or an allocation for a target speed-up.
/// `kept_float`: for the int8 output, the weights of the layers that stay float.
pub fn plan<'a>(
    original: &OnnxModel,
    inv: &'a Inventory,
    opts: &ConvertOptions,
    calibration: Option<&Calibration>,
    (engine, kept_float): (Engine, Option<&HashMap<String, String>>),
) -> Result<Plan<'a>> {
    match (opts.target_speedup, opts.target_compression) {
        (Some(target), _) | (None, Some(target)) => allocate(
            original,
            inv,
            opts,
            target,
            calibration,
            (engine, kept_float),
        ),
        (None, None) => {
            let opset = original.default_opset();
            choose(inv, &opts.selection, &opts.params, (opts.form, opset))
        }
    }
}

/// The sizes the rules give `l` (an eligible layer) under `params`.
fn sizes_ok(params: &ValidParams, l: &ConvLayer) -> Result<(), SizeError> {
    let k = l.kernel.as_ref().expect("eligible");
    params.sizes(k[0], k[1], k[2] * k[3]).map(|_| ())
}

/// `Some(reason)` when converting `l` at ρ would cost more multiplications than it saves.
fn no_saving(inv: &Inventory, params: &ValidParams, l: &ConvLayer) -> Option<SkipReason> {
    let factor = position_factor(inv, l);
    (params.ratio <= factor).then_some(SkipReason::NoSaving {
        factor,
        ratio: params.ratio,
    })
}

/// Named layers must exist and be eligible (a conversion that saves nothing is only warned
/// about); `--all` takes every eligible Conv whose sizes the rules accept and whose conversion
/// saves what the form is for (multiplications, or bytes for the compact form), and lists the
/// others with the reason.
fn choose<'a>(
    inv: &'a Inventory,
    sel: &Selection,
    params: &ValidParams,
    (form, opset): (OutputForm, i64),
) -> Result<Plan<'a>> {
    let form = form.spec();
    let saves_nothing = |l: &ConvLayer| match form.saving() {
        Saving::Bytes => no_shrink(form, params, l, opset),
        Saving::Multiplications => no_saving(inv, params, l),
    };
    let (chosen, skipped) = match sel {
        Selection::Named(names) => {
            let chosen = select::resolve_all(&inv.layers, names)?;
            for l in &chosen {
                sizes_ok(params, l).with_context(|| format!("layer `{}`", l.name))?;
                if let Some(why) = saves_nothing(l) {
                    log::warn!("layer `{}`: {why}", l.name);
                }
            }
            (chosen, vec![])
        }
        Selection::All { .. } => split_eligible(&inv.layers, |l| {
            excluded(sel, l).map_or(Ok(()), Err)?;
            sizes_ok(params, l)?;
            saves_nothing(l).map_or(Ok(()), Err)
        }),
    };
    let layers = chosen
        .into_iter()
        .map(|layer| PlannedLayer {
            layer,
            params: layer_params(params, layer),
        })
        .collect();
    Ok(Plan {
        layers,
        skipped,
        allocation: None,
    })
}

/// The layers that are eligible and pass `check`, and the others with their reason, in graph
/// order.
pub fn split_eligible(
    layers: &[ConvLayer],
    check: impl Fn(&ConvLayer) -> Result<(), SkipReason>,
) -> (Vec<&ConvLayer>, Vec<SkippedLayer>) {
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    for l in layers {
        let verdict = l.eligibility.clone().map_err(SkipReason::from);
        match verdict.and_then(|()| check(l)) {
            Ok(()) => chosen.push(l),
            Err(reason) => skipped.push(SkippedLayer {
                name: l.name.clone(),
                reason: reason.to_string(),
            }),
        }
    }
    (chosen, skipped)
}

/// `--target-speedup`: the selected eligible layers (all with `--all` or no names), their
/// ratios from `budget::allocate`; the chosen layers in graph order.
fn allocate<'a>(
    original: &OnnxModel,
    inv: &'a Inventory,
    opts: &ConvertOptions,
    target: f64,
    calibration: Option<&Calibration>,
    (engine, kept_float): (Engine, Option<&HashMap<String, String>>),
) -> Result<Plan<'a>> {
    let (candidates, skipped) = match &opts.selection {
        Selection::Named(names) if !names.is_empty() => {
            (select::resolve_all(&inv.layers, names)?, vec![])
        }
        sel => split_eligible(&inv.layers, |l| excluded(sel, l).map_or(Ok(()), Err)),
    };
    let with_cost: Vec<budget::Candidate> = candidates
        .iter()
        .map(|l| {
            let kernel = l
                .kernel
                .as_deref()
                .map_or([1; 4], |k| [k[0], k[1], k[2], k[3]]);
            budget::Candidate {
                layer: l,
                multiplications: inv.cost.nodes[l.node_index].cost.multiplications,
                position_factor: position_factor(inv, l),
                params: layer_params(&opts.params, l),
                ratios: budget::ladder(&opts.params, kernel),
            }
        })
        .collect();
    // The fused form runs a native kernel whose speed is not the multiplication count's: spend
    // measured time instead.
    let form = opts.form.spec();
    let measured = match opts.target_compression {
        Some(_) => Some(budget::size::size_budget(
            original, inv, &with_cost, form, kept_float,
        )?),
        None if form.runtime().timed_per_layer => Some(budget::latency::latency_budget(
            original,
            inv,
            &with_cost,
            (engine, form),
        )?),
        None => None,
    };
    let a = budget::allocate(
        original,
        &with_cost,
        inv.cost.total.multiplications,
        target,
        calibration,
        measured,
    )?;
    log_allocation(&a);
    let mut layers = Vec::new();
    for c in with_cost {
        if let Some(x) = a.layers.iter().find(|x| x.name == c.layer.name) {
            let params = c.params.with_ratio(x.ratio)?;
            layers.push(PlannedLayer {
                layer: c.layer,
                params,
            });
        }
    }
    layers.sort_by_key(|p| p.layer.node_index);
    Ok(Plan {
        layers,
        skipped,
        allocation: Some(a),
    })
}

/// `Some(reason)` when the compact form of `l` at `params` would store at least as many bytes
/// as its kernel.
fn no_shrink(
    form: &dyn Form,
    params: &ValidParams,
    l: &ConvLayer,
    opset: i64,
) -> Option<SkipReason> {
    let before = budget::size::kernel_bytes(l);
    let after = form.stored_bytes(l, params, opset)?;
    (after >= before).then_some(SkipReason::NoShrink {
        before: before as u64,
        after: after as u64,
    })
}

fn log_allocation(a: &Allocation) {
    let flag = match a.measured.as_ref().map(|m| m.unit) {
        Some(budget::Unit::Bytes) => "target-compression",
        _ => "target-speedup",
    };
    for l in &a.layers {
        let gain = l
            .gain
            .map_or(String::new(), |g| format!(", end-to-end gain {g:.3}"));
        log::info!(
            "{flag}: {} at ρ = {} (error {:.4}{gain})",
            l.name,
            l.ratio,
            l.error
        );
    }
    log::info!(
        "{flag}: {} layers converted, {} left original, estimated {:.3}x ({:.1}s)",
        a.layers.len(),
        a.unchanged.len(),
        a.estimated_speedup,
        a.seconds
    );
}
