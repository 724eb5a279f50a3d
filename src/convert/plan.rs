//! Phase 1 of a conversion: which layers, each with its own parameters (seed, and ρ from a
//! `--target-speedup` allocation), and which are left original with the reason.

use anyhow::{Context, Result};

use crate::analysis::inventory::Inventory;
use crate::analysis::select::{self, ConvLayer, Ineligible};
use crate::calibrate::budget::{self, Allocation};
use crate::calibrate::{timing, Calibration};
use crate::codebook::{Method, SizeError, ValidParams};
use crate::engine::Engine;
use crate::lower::packing;
use crate::onnx::model::OnnxModel;
use crate::onnx::tensor;
use crate::progress;
use crate::quantize;
use crate::setting::{self, Setting};

use super::report::SkippedLayer;
use super::{ConvertOptions, OutputForm};

/// Which layers to convert.
#[derive(Debug, Clone)]
pub enum Selection {
    Named(Vec<String>),
    /// Every eligible layer; fully connected ones (Gemm, MatMul) only with `fully_connected`.
    All {
        fully_connected: bool,
    },
}

impl Selection {
    /// Why `l` is left out of this selection's "all" (a fully connected layer excluded).
    fn excludes(&self, l: &ConvLayer) -> Option<SkipReason> {
        match self {
            Selection::All {
                fully_connected: false,
            } if l.fc.is_some() => Some(SkipReason::FullyConnectedExcluded),
            _ => None,
        }
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
pub fn plan<'a>(
    original: &OnnxModel,
    inv: &'a Inventory,
    opts: &ConvertOptions,
    calibration: Option<&Calibration>,
    engine: Engine,
) -> Result<Plan<'a>> {
    match (opts.target_speedup, opts.target_compression) {
        (Some(target), _) | (None, Some(target)) => {
            allocate(original, inv, opts, target, calibration, engine)
        }
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
    let saves_nothing = |l: &ConvLayer| match form {
        OutputForm::Dense => no_shrink(params, l, opset),
        OutputForm::Ops | OutputForm::Fused => no_saving(inv, params, l),
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
            sel.excludes(l).map_or(Ok(()), Err)?;
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
    engine: Engine,
) -> Result<Plan<'a>> {
    let (candidates, skipped) = match &opts.selection {
        Selection::Named(names) if !names.is_empty() => {
            (select::resolve_all(&inv.layers, names)?, vec![])
        }
        sel => split_eligible(&inv.layers, |l| sel.excludes(l).map_or(Ok(()), Err)),
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
    let measured = match (opts.target_compression, opts.form) {
        (Some(_), _) => Some(size_budget(original, inv, &with_cost, opts.int8.is_some())?),
        (None, OutputForm::Fused) => Some(latency_budget(original, inv, &with_cost, engine)?),
        (None, OutputForm::Ops | OutputForm::Dense) => None,
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

/// Bytes a converted layer adds besides its tensors' data, apart from its name: the nodes that
/// rebuild the kernel and their small shape constants. Measured on ResNet-20 `--all --form
/// dense` (layer names of 14 characters; names' share taken out at [`NAME_REFERENCES`]):
/// palette with Γ unpacked 890 bytes per layer, with Γ packed 1,540; VQ with per-subspace
/// codebooks 1,330; DL 2,570 — and each converted layer's metadata entry (its settings, ≈ 180
/// bytes).
const LAYER_OVERHEAD_BYTES: f64 = 790.0;

/// How often the subgraph's tensor and node names repeat the layer's name (`{layer}/dlq/…`).
const NAME_REFERENCES: f64 = 20.0;

/// What unpacking Γ below 8 bits adds: about five nodes and their small constants (measured as
/// above, one-byte groups, opset 10 or later).
const PACKING_OVERHEAD_BYTES: f64 = 700.0;

/// Further unpacking bytes (measured on SqueezeNet, opset 9 or below, scalar palettes): before
/// opset 10 there is no `Mod` (two more nodes); groups of 2–3 bytes are first summed
/// (`Mul`, `ReduceSum`); a last, partly filled group is sliced off.
const PACKING_BEFORE_MOD_BYTES: f64 = 350.0;
const PACKING_MULTI_BYTE_BYTES: f64 = 400.0;
const PACKING_SLICE_BYTES: f64 = 550.0;

/// Joining the two planes of 7-bit indices: a `Mul` by 64 and an `Add` (estimated from the
/// nodes' size: two nodes and a one-value constant, their names in the layer's prefix).
const PACKING_JOIN_BYTES: f64 = 150.0;

/// What per-subspace codebooks add (their table flattened, the offsets of each subspace's
/// rows), besides the offsets' data.
const OFFSETS_OVERHEAD_BYTES: f64 = 440.0;

/// What per-channel scales add besides their M values: a `Mul` and the scale's name and shape
/// (estimated from the nodes' size, as `PACKING_JOIN_BYTES`).
const CHANNEL_SCALE_OVERHEAD_BYTES: f64 = 120.0;

/// What casting a float16 table to the layer's type adds: a `Cast` node (estimated from the
/// nodes' size, as `PACKING_JOIN_BYTES`).
const CAST_OVERHEAD_BYTES: f64 = 60.0;

/// What DL's sparse codes add: the look-up of each code's atoms and the weighted sum.
const CODES_OVERHEAD_BYTES: f64 = 1250.0;

/// The model's stored bytes (the protobuf plus external tensor data), and per candidate layer
/// its weight's bytes and the compact form's at each candidate ratio the rules accept
/// (`lower::dense`'s tensors plus [`LAYER_OVERHEAD_BYTES`]). For the int8 output, the start is
/// the original written as int8 (every weight int8, the quantization parameters added), a
/// layer left original stores its kernel as int8, and a converted one adds the QuantizeLinear
/// of its rebuilt kernel.
fn size_budget(
    original: &OnnxModel,
    inv: &Inventory,
    candidates: &[budget::Candidate],
    int8: bool,
) -> Result<budget::MeasuredBudget> {
    use prost::Message;
    let mut total = original.proto.encoded_len() as f64;
    for t in &original.graph().initializer {
        if tensor::is_external(t) {
            let width = tensor::element_size(t.data_type.unwrap_or(0)).unwrap_or(1);
            total += (tensor::element_count(t)? * width) as f64;
        }
    }
    let start = match int8 {
        true => Some(quantize::int8_bytes(original, &inv.shapes)? as f64),
        false => None,
    };
    let opset = original.default_opset();
    let layers = candidates
        .iter()
        .map(|c| budget::LayerCost {
            before: match int8 {
                true => int8_kernel_bytes(c.layer),
                false => kernel_bytes(c.layer),
            },
            after: c
                .ratios
                .iter()
                .filter_map(|&r| {
                    let p = c.params.with_ratio(r).ok()?;
                    let extra = if int8 {
                        int8_layer_bytes(c.layer, &p)
                    } else {
                        0.0
                    };
                    Some((r, compact_bytes(c.layer, &p, opset)? + extra))
                })
                .collect(),
        })
        .collect();
    Ok(budget::MeasuredBudget {
        unit: budget::Unit::Bytes,
        total,
        layers,
        source: None,
        start,
    })
}

/// What quantizing a converted layer's rebuilt kernel adds in the int8 output: a QuantizeLinear
/// node and the longer names of its scale, zero point and outputs (measured on ResNet-20).
const INT8_LAYER_BYTES: f64 = 150.0;

/// What the int8 output adds to a converted layer's compact form, against the start's int8
/// weight: the QuantizeLinear of the rebuilt kernel, less the per-channel scales a palette
/// without channel scales does without (it is quantized with one scale).
fn int8_layer_bytes(layer: &ConvLayer, p: &ValidParams) -> f64 {
    let m = layer.kernel.as_ref().map_or(0, |k| k[0]) as f64;
    // The rebuilding nodes lose their names and get short tensor names: each stored its
    // `{layer}/dlq/…` name three times (node, output, the consumer's input), now a short name
    // twice.
    let renamed = REBUILD_NODES * (3.0 * (layer.name.len() as f64 + 17.0) - 12.0);
    let k = layer
        .kernel
        .as_ref()
        .and_then(|k| p.sizes(k[0], k[1], k[2] * k[3]).ok())
        .map_or(usize::MAX, |z| z.k);
    let one_scale = k <= quantize::PER_TENSOR_MAX_K;
    let scales = match p.shared && !p.channel_scale && layer.fc.is_none() && one_scale {
        true => 4.0 * m,
        false => 0.0,
    };
    INT8_LAYER_BYTES - scales - renamed
}

/// The nodes that rebuild a palette layer's kernel (Γ unpacked, gathered, moved, reshaped):
/// fewer than per-subspace or DL codebooks have, so their renaming is not overestimated.
const REBUILD_NODES: f64 = 8.0;

/// The bytes of `layer`'s kernel stored as int8 (0 when its shape is unknown).
fn int8_kernel_bytes(layer: &ConvLayer) -> f64 {
    layer
        .kernel
        .as_ref()
        .map_or(0, |k| k.iter().product::<usize>()) as f64
}

/// The bytes of `layer`'s kernel (0 when its shape is unknown).
fn kernel_bytes(layer: &ConvLayer) -> f64 {
    let e = layer.weight_type.map_or(4, |t| t.size());
    layer
        .kernel
        .as_ref()
        .map_or(0, |k| k.iter().product::<usize>() * e) as f64
}

/// What the compact form stores for `layer` under `p`: atoms, sparse codes and Γ at their
/// index widths (Γ packed below 8 bits; one table for a shared codebook), plus a fixed
/// allowance per layer; `None` when the sizes are not valid.
fn compact_bytes(layer: &ConvLayer, p: &ValidParams, opset: i64) -> Option<f64> {
    let [m, n, kh, kw] = layer.kernel.as_deref()? else {
        return None;
    };
    let (m, n, kh, kw) = (*m, *n, *kh, *kw);
    let e = layer.weight_type.map_or(4, |t| t.size()) as f64;
    let z = p.sizes(m, n, kh * kw).ok()?;
    let (s, l, k, a, w) = (z.subspaces, z.l, z.k, p.alpha, p.subspace);
    let tables = if p.shared { 1 } else { s };
    // A float16 palette (and its scales) in a wider model, cast back at load.
    let narrow = p.f16_palette && e > 2.0;
    let (palette_e, cast) = match narrow {
        true => (2.0, CAST_OVERHEAD_BYTES),
        false => (e, 0.0),
    };
    let atoms = (tables * l * w) as f64 * palette_e + cast;
    let (codes, reps) = match p.method {
        Method::Dl => {
            let width = packing::plain_index_width(l) as f64;
            let data = (tables * k * a) as f64 * (width + e);
            (data + CODES_OVERHEAD_BYTES, k)
        }
        Method::Vq => (0.0, l),
    };
    let count = s * m * kh * kw;
    let gamma = packing::index_bytes(count, reps) as f64;
    let offsets = if p.shared {
        0.0
    } else {
        16.0 * s as f64 + OFFSETS_OVERHEAD_BYTES
    };
    let unpacking = match packing::packs(reps) {
        true => unpacking_bytes(count, reps, opset),
        false => 0.0,
    };
    let names = NAME_REFERENCES * layer.name.len() as f64;
    // An upper bound: the scales are dropped where they do not lower the error.
    let scales = match p.channel_scale {
        true => m as f64 * palette_e + cast + CHANNEL_SCALE_OVERHEAD_BYTES,
        false => 0.0,
    };
    Some(atoms + codes + gamma + offsets + unpacking + scales + names + LAYER_OVERHEAD_BYTES)
}

/// The unpacking subgraph's bytes for `count` indices below `bound`, packed: 7-bit indices
/// are two planes (6 bits and 1 bit), each unpacked alone, then joined (`Mul`, `Add`).
fn unpacking_bytes(count: usize, bound: usize, opset: i64) -> f64 {
    if packing::bits_for(bound) == packing::SPLIT_BITS {
        return unpacking_bytes(count, 64, opset)
            + unpacking_bytes(count, 2, opset)
            + PACKING_JOIN_BYTES;
    }
    let (bytes, group) = packing::group(bound);
    let extra = |yes: bool, b: f64| if yes { b } else { 0.0 };
    PACKING_OVERHEAD_BYTES
        + extra(opset < 10, PACKING_BEFORE_MOD_BYTES)
        + extra(bytes > 1, PACKING_MULTI_BYTE_BYTES)
        + extra(!count.is_multiple_of(group), PACKING_SLICE_BYTES)
}

/// `Some(reason)` when the compact form of `l` at `params` would store at least as many bytes
/// as its kernel.
fn no_shrink(params: &ValidParams, l: &ConvLayer, opset: i64) -> Option<SkipReason> {
    let before = kernel_bytes(l);
    let after = compact_bytes(l, params, opset)?;
    (after >= before).then_some(SkipReason::NoShrink {
        before: before as u64,
        after: after as u64,
    })
}

/// Times the whole model and every candidate layer (dense, and fused at each candidate ratio)
/// in `engine` on this machine, batch 1.
fn latency_budget(
    original: &OnnxModel,
    inv: &Inventory,
    candidates: &[budget::Candidate],
    engine: Engine,
) -> Result<budget::MeasuredBudget> {
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
        Engine::Ort => Some(timing::InModel::new(engine, original, &inv.shapes, &shape)?),
    };
    let model_ms = match &in_model {
        Some(m) => m.original_ms,
        None => timing::time_model(engine, original, &shape)?,
    };
    task.inc(1);
    let mut layers = Vec::with_capacity(candidates.len());
    for c in candidates {
        let alone = timing::time_layer(
            engine,
            original,
            c.layer,
            &inv.shapes,
            &c.params,
            &budget::CANDIDATE_RATIOS,
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
    Ok(budget::MeasuredBudget {
        unit: budget::Unit::Milliseconds,
        total: model_ms,
        layers,
        source: Some(format!("{}, 1 thread, batch 1, {how}", engine.describe()?)),
        start: None,
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
