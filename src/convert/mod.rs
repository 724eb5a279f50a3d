//! The convert pipeline: load → select → cluster → rewrite → save, with the per-layer and
//! model-wide report (K, L, achieved ρ, weight error, multiplications and file sizes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::analysis::cost::millions;
use crate::analysis::cost::GraphCost;
use crate::analysis::inventory;
use crate::analysis::select::{self, ConvLayer};
use crate::analysis::shapes::{self, InputShape};
use crate::calibrate::budget::{self, Allocation};
use crate::calibrate::{self, CalibrationOptions};
use crate::codebook::{self, ClusterParams, Codebook, Method};
use crate::lower::{self, GraphPatch};
use crate::onnx::model::{self, ExternalData, OnnxModel};

/// Which layers to convert.
#[derive(Debug, Clone)]
pub enum Selection {
    Named(Vec<String>),
    All,
}

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub selection: Selection,
    pub params: ClusterParams,
    pub input_shapes: Vec<InputShape>,
    pub external: ExternalData,
    /// Learn output-aware codebooks from calibration images (see `calibrate`).
    pub calibration: Option<CalibrationOptions>,
    /// Whole-model multiplication reduction to reach: a ρ per layer is allocated (see
    /// `budget`) among the selected layers, and `params.ratio` is not used.
    pub target_speedup: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerReport {
    pub name: String,
    pub kernel: [usize; 4],
    pub method: Method,
    pub subspaces: usize,
    pub k_vq: usize,
    pub k: usize,
    pub l: usize,
    pub alpha: Option<usize>,
    pub relative_error: f64,
    pub multiplications_before: u64,
    pub multiplications_after: u64,
    pub additions_after: u64,
    /// multiplications_before / multiplications_after, as counted on the graphs.
    pub achieved_ratio: f64,
    pub seconds: f64,
    /// With calibration: the relative output error on the calibration inputs of the
    /// calibrated codebook, and of the plain (weight-error) one for comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_error: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_error_uncalibrated: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkippedLayer {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvertReport {
    pub input: String,
    pub output: String,
    pub params: ClusterParams,
    pub layers: Vec<LayerReport>,
    pub skipped: Vec<SkippedLayer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    pub multiplications_before: u64,
    pub multiplications_after: u64,
    pub speedup: f64,
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
    pub external_data: Option<String>,
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

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Input positions / output positions of a layer: the lowering works at the input's
/// resolution (`rewrite`), so a stride-s layer at ratio ρ saves as if at ρ/s².
fn position_factor(inv: &inventory::Inventory, layer: &ConvLayer) -> f64 {
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

/// Picks the layers: named ones must exist and be eligible; `--all` takes every eligible Conv
/// whose sizes the parameter rules accept and whose conversion saves multiplications, and lists
/// the others with the reason.
fn choose<'a>(
    inv: &'a inventory::Inventory,
    sel: &Selection,
    params: &ClusterParams,
) -> Result<(Vec<&'a ConvLayer>, Vec<SkippedLayer>)> {
    let layers = &inv.layers;
    let sizes_ok = |l: &ConvLayer| -> Result<()> {
        let k = l.kernel.as_ref().expect("eligible");
        params.sizes(k[0], k[1], k[2] * k[3]).map(|_| ())
    };
    let no_saving = |l: &ConvLayer| {
        let f = position_factor(inv, l);
        (params.ratio <= f).then(|| {
            format!(
                "converting it would not save multiplications: it has {f}x more input than output positions (stride), so ρ = {} saves as if ρ = {:.2}; use ρ above {f}",
                params.ratio,
                params.ratio / f
            )
        })
    };
    match sel {
        Selection::Named(names) => {
            let chosen = select::resolve_all(layers, names)?;
            for l in &chosen {
                sizes_ok(l).with_context(|| format!("layer `{}`", l.name))?;
                if let Some(why) = no_saving(l) {
                    eprintln!("warning: layer `{}`: {why}", l.name);
                }
            }
            Ok((chosen, vec![]))
        }
        Selection::All => Ok(split_eligible(layers, |l| {
            sizes_ok(l)
                .map_err(|e| e.to_string())
                .and_then(|()| no_saving(l).map_or(Ok(()), Err))
        })),
    }
}

/// The layers that are eligible and pass `check`, and the others with their reason, in graph
/// order.
fn split_eligible(
    layers: &[ConvLayer],
    check: impl Fn(&ConvLayer) -> Result<(), String>,
) -> (Vec<&ConvLayer>, Vec<SkippedLayer>) {
    let mut chosen = Vec::new();
    let mut skipped = Vec::new();
    for l in layers {
        match l.eligibility.clone().and_then(|()| check(l)) {
            Ok(()) => chosen.push(l),
            Err(reason) => skipped.push(SkippedLayer {
                name: l.name.clone(),
                reason,
            }),
        }
    }
    (chosen, skipped)
}

/// `--target-speedup`: the selected eligible layers (all with `--all` or no names), their
/// ratios from `budget::allocate`; the chosen layers in graph order.
fn allocate<'a>(
    original: &OnnxModel,
    inv: &'a inventory::Inventory,
    opts: &ConvertOptions,
    target: f64,
    calibration: Option<&Calibration>,
) -> Result<(Vec<&'a ConvLayer>, Vec<SkippedLayer>, Option<Allocation>)> {
    let (candidates, skipped): (Vec<&ConvLayer>, Vec<SkippedLayer>) = match &opts.selection {
        Selection::Named(names) if !names.is_empty() => {
            (select::resolve_all(&inv.layers, names)?, vec![])
        }
        _ => split_eligible(&inv.layers, |_| Ok(())),
    };
    let with_cost: Vec<budget::Candidate> = candidates
        .iter()
        .map(|l| budget::Candidate {
            layer: l,
            multiplications: inv.cost.nodes[l.node_index].cost.multiplications,
            position_factor: position_factor(inv, l),
        })
        .collect();
    let none = BTreeMap::new();
    let a = budget::allocate(
        original,
        &with_cost,
        inv.cost.total.multiplications,
        target,
        &|l: &ConvLayer| layer_params(opts, &none, l),
        calibration.map(|&(cal, inputs)| (inputs, cal.damping)),
    )?;
    for l in &a.layers {
        eprintln!(
            "target-speedup: {} at ρ = {} (error {:.4})",
            l.name, l.ratio, l.error
        );
    }
    eprintln!(
        "target-speedup: {} layers converted, {} left original, estimated {:.3}x ({:.1}s)",
        a.layers.len(),
        a.unchanged.len(),
        a.estimated_speedup,
        a.seconds
    );
    let mut chosen: Vec<&ConvLayer> = candidates
        .into_iter()
        .filter(|l| a.layers.iter().any(|x| x.name == l.name))
        .collect();
    chosen.sort_by_key(|l| l.node_index);
    Ok((chosen, skipped, Some(a)))
}

fn prefix_cost(cost: &GraphCost, model: &OnnxModel, layer: &str) -> crate::analysis::cost::OpCost {
    let prefix = format!("{layer}/dlq/");
    let g = model.graph();
    cost.sum_where(|i| {
        g.node[i]
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with(&prefix))
    })
}

/// A model converted in memory, with what each layer became.
pub struct Converted {
    pub model: OnnxModel,
    pub layers: Vec<LayerReport>,
    pub skipped: Vec<SkippedLayer>,
    pub allocation: Option<Allocation>,
    pub multiplications_before: u64,
    pub multiplications_after: u64,
}

/// What the clustering gave one layer.
struct LearntLayer {
    codebook: Codebook,
    weight_error: f64,
    /// (calibrated, plain) relative output errors, with calibration.
    output_errors: Option<(f64, f64)>,
    seconds: f64,
}

/// A layer's parameters: the user's, with the layer's own seed and (from an allocation) ρ.
fn layer_params(
    opts: &ConvertOptions,
    ratios: &BTreeMap<String, f64>,
    layer: &ConvLayer,
) -> ClusterParams {
    let mut params = opts.params.clone();
    params.seed = layer_seed(opts.params.seed, &layer.name);
    if let Some(&r) = ratios.get(&layer.name) {
        params.ratio = r;
    }
    params
}

/// The calibration options with their images, loaded once per conversion (or by the caller,
/// once for many: see [`convert_model_with_inputs`]).
type Calibration<'a> = (&'a CalibrationOptions, &'a [ndarray::ArrayD<f32>]);

/// The codebook of every chosen layer (in `chosen` order). Without calibration each layer is
/// learnt from its weights alone; with it, layers are learnt in network order, each from the
/// statistics of its input in a model whose earlier layers already carry their approximation.
fn learn_codebooks(
    original: &OnnxModel,
    chosen: &[&ConvLayer],
    opts: &ConvertOptions,
    ratios: &BTreeMap<String, f64>,
    calibration: Option<&Calibration>,
) -> Result<Vec<LearntLayer>> {
    let params_for = |layer: &ConvLayer| layer_params(opts, ratios, layer);
    let Some((cal, inputs)) = calibration else {
        // Layers in parallel too (each one's subspaces already are): every layer has its own
        // seeded RNGs, so the codebooks do not depend on the schedule; collected in order.
        return chosen
            .par_iter()
            .map(|layer| {
                let started = Instant::now();
                let w = layer.kernel_f32(original)?;
                let cb = codebook::learn(w.view(), &params_for(layer))
                    .with_context(|| format!("layer `{}`", layer.name))?;
                Ok(LearntLayer {
                    weight_error: cb.relative_error(w.view()),
                    codebook: cb,
                    output_errors: None,
                    seconds: started.elapsed().as_secs_f64(),
                })
            })
            .collect();
    };
    learn_calibrated(original, chosen, cal, inputs, &params_for)
}

fn learn_calibrated(
    original: &OnnxModel,
    chosen: &[&ConvLayer],
    cal: &CalibrationOptions,
    inputs: &[ndarray::ArrayD<f32>],
    params_for: &dyn Fn(&ConvLayer) -> ClusterParams,
) -> Result<Vec<LearntLayer>> {
    let mut order: Vec<usize> = (0..chosen.len()).collect();
    order.sort_by_key(|&i| chosen[i].node_index);
    let mut simulated = original.clone();
    let mut learnt: Vec<Option<LearntLayer>> = (0..chosen.len()).map(|_| None).collect();
    for (step, &i) in order.iter().enumerate() {
        let layer = chosen[i];
        let started = Instant::now();
        let ctx = || format!("calibrating layer `{}`", layer.name);
        let w = layer.kernel_f32(original)?;
        let stats = calibrate::collect(&simulated, inputs, &layer.input).with_context(ctx)?;
        let params = params_for(layer);
        let cb = calibrate::learn(w.view(), &params, &stats, cal.damping).with_context(ctx)?;
        let plain = codebook::learn(w.view(), &params).with_context(ctx)?;
        let output_errors = (
            calibrate::output_error(w.view(), cb.reconstruct().view(), &stats),
            calibrate::output_error(w.view(), plain.reconstruct().view(), &stats),
        );
        lower::reconstructed::substitute(&mut simulated, layer, &cb).with_context(ctx)?;
        eprintln!(
            "calibrate [{}/{}] {}: {} input positions, {:.1}s",
            step + 1,
            order.len(),
            layer.name,
            stats.positions,
            started.elapsed().as_secs_f64()
        );
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

/// Converts the chosen layers of `original` in memory; progress lines go to stderr.
pub fn convert_model(original: &OnnxModel, opts: &ConvertOptions) -> Result<Converted> {
    let inputs = match &opts.calibration {
        Some(cal) => Some(load_calibration_inputs(cal)?),
        None => None,
    };
    convert_model_with_inputs(original, opts, inputs.as_deref())
}

/// The calibration images of `cal`, decoded and preprocessed (with a progress line).
pub fn load_calibration_inputs(cal: &CalibrationOptions) -> Result<Vec<ndarray::ArrayD<f32>>> {
    let started = Instant::now();
    let inputs = calibrate::load_inputs(cal)?;
    eprintln!(
        "calibration: {} images from {} ({:.1}s)",
        inputs.len(),
        cal.data.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(inputs)
}

/// [`convert_model`] with the calibration images already loaded (by
/// [`load_calibration_inputs`]), for callers that convert many times with the same ones.
pub fn convert_model_with_inputs(
    original: &OnnxModel,
    opts: &ConvertOptions,
    calibration_inputs: Option<&[ndarray::ArrayD<f32>]>,
) -> Result<Converted> {
    opts.params.validate()?;
    let inv = inventory::inventory(original, &opts.input_shapes)?;
    let calibration = match (&opts.calibration, calibration_inputs) {
        (Some(cal), Some(inputs)) => Some((cal, inputs)),
        (Some(_), None) => bail!("calibration asked for, but no calibration images were given"),
        (None, _) => None,
    };
    let (chosen, skipped, allocation) = match opts.target_speedup {
        None => {
            let (c, s) = choose(&inv, &opts.selection, &opts.params)?;
            (c, s, None)
        }
        Some(target) => allocate(original, &inv, opts, target, calibration.as_ref())?,
    };
    let ratios: BTreeMap<String, f64> = allocation
        .iter()
        .flat_map(|a| a.layers.iter().map(|l| (l.name.clone(), l.ratio)))
        .collect();
    if chosen.is_empty() {
        let reasons: Vec<String> = skipped
            .iter()
            .map(|s| format!("{}: {}", s.name, s.reason))
            .collect();
        bail!(
            "no layer to convert ({} Conv layers, none eligible with these parameters){}{}",
            inv.layers.len(),
            if reasons.is_empty() { "" } else { "; " },
            reasons.join("; ")
        );
    }
    for s in &skipped {
        eprintln!("skip {}: {}", s.name, s.reason);
    }
    let learnt = learn_codebooks(original, &chosen, opts, &ratios, calibration.as_ref())?;
    let mut patch = GraphPatch::default();
    let mut partial = Vec::new();
    let total = chosen.len();
    for (i, (layer, learnt)) in chosen.iter().zip(learnt).enumerate() {
        let LearntLayer {
            codebook: cb,
            weight_error: err,
            output_errors,
            seconds,
        } = learnt;
        let settings = serde_json::json!({
            "method": cb.method, "ratio": layer_params(opts, &ratios, layer).ratio, "subspace": opts.params.subspace,
            "c": opts.params.c, "alpha": opts.params.alpha, "k_vq": cb.sizes.k_vq, "k": cb.sizes.k, "l": cb.sizes.l,
            "iters": opts.params.iters, "seed": opts.params.seed, "relative_error": err,
            "calibrated": opts.calibration.is_some(),
        });
        patch.layers.push(lower::lower(
            original,
            layer,
            &cb,
            &inv.shapes,
            &settings.to_string(),
        )?);
        eprintln!(
            "[{}/{total}] {}: {:?} K={} L={} S={} relative error {:.4}{} ({seconds:.2}s)",
            i + 1,
            layer.name,
            cb.kernel_shape,
            cb.sizes.k,
            cb.sizes.l,
            cb.sizes.subspaces,
            err,
            output_errors
                .map(|(cal, plain)| format!(", output error {plain:.4} -> {cal:.4} calibrated"))
                .unwrap_or_default()
        );
        partial.push((
            layer.name.clone(),
            layer.node_index,
            cb,
            err,
            seconds,
            output_errors,
        ));
    }
    let mut converted = original.clone();
    lower::apply(&mut converted, patch)?;
    // Counted on the new graph, through the same shape inference as the original.
    let new_shapes =
        shapes::infer(&converted, &opts.input_shapes).context("the converted model")?;
    let new_cost = crate::analysis::cost::graph_cost(&converted, &new_shapes);
    let layers = partial
        .into_iter()
        .map(|(name, node_index, cb, err, seconds, output_errors)| {
            let before = inv.cost.nodes[node_index].cost.multiplications;
            let after = prefix_cost(&new_cost, &converted, &name);
            LayerReport {
                name,
                kernel: cb.kernel_shape,
                method: cb.method,
                subspaces: cb.sizes.subspaces,
                k_vq: cb.sizes.k_vq,
                k: cb.sizes.k,
                l: cb.sizes.l,
                alpha: cb.subspaces[0].codes.as_ref().map(|c| c.alpha),
                relative_error: err,
                multiplications_before: before,
                multiplications_after: after.multiplications,
                additions_after: after.additions,
                achieved_ratio: before as f64 / after.multiplications.max(1) as f64,
                seconds,
                output_error: output_errors.map(|e| e.0),
                output_error_uncalibrated: output_errors.map(|e| e.1),
            }
        })
        .collect();
    Ok(Converted {
        model: converted,
        layers,
        skipped,
        allocation,
        multiplications_before: inv.cost.total.multiplications,
        multiplications_after: new_cost.total.multiplications,
    })
}

/// Converts `input` into `output`; progress lines go to stderr.
pub fn convert(input: &Path, output: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    opts.params.validate()?;
    if model::same_file(input, output) {
        bail!(
            "refusing to write {}: it is the input model; choose another output path",
            output.display()
        );
    }
    let original = model::load(input)?;
    model::check_writable(output)?;
    let c = convert_model(&original, opts)?;
    // `c.model` keeps the input's path and folder: external tensors are read from there, and
    // the save refuses to overwrite them.
    // A model stored with external data is written with external data: the tensors that
    // replace its kernels are new, so "what was external stays external" would move them all
    // into the protobuf.
    let policy = match opts.external {
        ExternalData::Auto if original.has_external_data() => ExternalData::Always {
            threshold: model::EXTERNAL_THRESHOLD,
        },
        policy => policy,
    };
    let saved = model::save(&c.model, output, policy)?;
    let (mb, ma) = (c.multiplications_before, c.multiplications_after);
    Ok(ConvertReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        params: opts.params.clone(),
        layers: c.layers,
        skipped: c.skipped,
        allocation: c.allocation,
        multiplications_before: mb,
        multiplications_after: ma,
        speedup: mb as f64 / ma.max(1) as f64,
        file_bytes_before: file_size(input) + external_size(&original),
        file_bytes_after: saved.model_bytes + saved.external.as_ref().map_or(0, |e| e.1),
        external_data: saved.external.map(|e| e.0.display().to_string()),
    })
}

fn external_size(m: &OnnxModel) -> u64 {
    let mut files = std::collections::BTreeSet::<PathBuf>::new();
    crate::onnx::model::visit_tensors(m.graph(), &mut |t| {
        if let Ok(r) = crate::onnx::tensor::external_ref(t, &m.base_dir) {
            files.insert(r.path);
        }
    });
    files.iter().map(|p| file_size(p)).sum()
}

pub fn render(r: &ConvertReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "layer\tkernel\tmethod\tS\tK_vq\tK\tL\trel.error\tmults before\tmults after\tachieved ρ"
    );
    for l in &r.layers {
        let _ = writeln!(
            s,
            "{}\t{}x{}x{}x{}\t{}\t{}\t{}\t{}\t{}\t{:.4}\t{}\t{}\t{:.2}",
            l.name,
            l.kernel[0],
            l.kernel[1],
            l.kernel[2],
            l.kernel[3],
            l.method.as_str(),
            l.subspaces,
            l.k_vq,
            l.k,
            l.l,
            l.relative_error,
            millions(l.multiplications_before),
            millions(l.multiplications_after),
            l.achieved_ratio
        );
    }
    for sk in &r.skipped {
        let _ = writeln!(s, "skipped {}: {}", sk.name, sk.reason);
    }
    let _ = writeln!(
        s,
        "model: {} -> {} multiplications ({:.3}x fewer); file {} -> {} bytes{}",
        millions(r.multiplications_before),
        millions(r.multiplications_after),
        r.speedup,
        r.file_bytes_before,
        r.file_bytes_after,
        r.external_data
            .as_ref()
            .map(|e| format!(" (tensors in {e})"))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "wrote {}", r.output);
    s
}
