//! The convert pipeline, in four phases: [`plan`] (which layers, at which ρ) → [`learn`] (a
//! codebook per layer) → lower (a patch per layer, applied in one place) → recount
//! (multiplications on the new graph, through the same shape inference as the original); and
//! [`convert`], file to file, with its [`report`].

pub mod codebooks;
pub mod options;
pub mod plan;
pub mod report;
pub mod request;

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ndarray::ArrayD;

use crate::analysis::cost::{self, GraphCost, OpCost};
use crate::analysis::inventory::{self, Inventory};
use crate::analysis::shapes::{self, InputShape};
use crate::budget::{timing, Allocation, Unit};
use crate::calibrate::{self, CalibrationOptions};
use crate::engine::{self, Engine};
use crate::eval::{seen, verify};
use crate::finetune::{self, FinetuneOptions, FinetuneReport};
pub use crate::lower::OutputForm;
use crate::lower::{self, GraphPatch};
use crate::onnx::model::{self, ExternalData, OnnxModel};
use crate::quantize::{self, Int8Report};
use crate::setting::{self, Setting};

use crate::calibrate::Calibration;
use codebooks::LearntLayer;
pub use options::{ConvertOptions, Selection};
use plan::{Plan, PlannedLayer};
pub use report::{render, ConvertReport, LatencyCheck, LayerReport, LayerSettings, SkippedLayer};
pub use request::{ClusterRequest, ConvertRequest};

/// A model converted in memory, with what each layer became.
pub struct Converted {
    pub model: OnnxModel,
    pub layers: Vec<LayerReport>,
    pub skipped: Vec<SkippedLayer>,
    pub allocation: Option<Allocation>,
    pub multiplications_before: u64,
    pub multiplications_after: u64,
    /// Why the counts are incomplete (a dynamic input, say), when they are.
    pub counts_unknown: Option<String>,
    pub finetune: Option<FinetuneReport>,
    /// The engine that ran the conversion's own measurements.
    pub engine: Engine,
    /// What the int8 rewrite did, when it was asked for.
    pub int8: Option<Int8Report>,
    /// Every tensor of the converted model as float32, at the conversion's input size: what a
    /// run may hold at most ([`crate::engine::memory::tensors_bytes`]); `None` when shape
    /// inference did not size every tensor.
    pub tensor_bytes: Option<u64>,
}

/// Converts the chosen layers of `original` in memory.
pub fn convert_model(original: &OnnxModel, opts: &ConvertOptions) -> Result<Converted> {
    let inputs = match &opts.calibration {
        Some(cal) => Some(load_calibration_inputs(cal)?),
        None => None,
    };
    convert_model_with_inputs(original, opts, inputs.as_deref())
}

/// The calibration images of `cal`, decoded and preprocessed.
pub fn load_calibration_inputs(cal: &CalibrationOptions) -> Result<Vec<ArrayD<f32>>> {
    let started = Instant::now();
    let inputs = calibrate::load_inputs(cal)?;
    log::info!(
        "calibration: {} images from {}{} ({:.1}s)",
        inputs.len(),
        cal.data.display(),
        if cal.mirror {
            ", half of them mirrored"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    );
    Ok(inputs)
}

/// [`convert_model`] with the calibration images already loaded (by
/// [`load_calibration_inputs`]), for callers that convert many times with the same ones.
pub fn convert_model_with_inputs(
    original: &OnnxModel,
    opts: &ConvertOptions,
    calibration_inputs: Option<&[ArrayD<f32>]>,
) -> Result<Converted> {
    // The int8 output is written at opset 13 or later: an older model is upgraded first, so
    // that the compact form's kernels are built at the opset the model is written at.
    let (upgraded, upgraded_from) = match opts.int8 {
        Some(_) => upgrade_for_int8(original, &opts.input_shapes)?,
        None => (None, None),
    };
    let original = upgraded.as_ref().unwrap_or(original);
    let inv = inventory::inventory(original, &opts.input_shapes)?;
    let engine = run_engine(original, &inv, opts, calibration_inputs)?;
    let calibration = calibration(opts, calibration_inputs, engine)?;
    if let Some(f) = &opts.finetune {
        finetune::preflight(original, f)?;
    }
    let kept_float = int8_kept_float(original, opts, engine, calibration_inputs)?;
    let engine_and_float = (engine, opts.int8.map(|_| &kept_float));
    let plan = plan::plan(original, &inv, opts, calibration.as_ref(), engine_and_float)?;
    if opts.int8.is_some() && plan.layers.is_empty() && opts.target_compression.is_some() {
        log::info!("int8: the int8 weights alone meet the size target; no layer needs a codebook");
    } else {
        check_not_empty(&inv, &plan)?;
    }
    for s in &plan.skipped {
        log::info!("skip {}: {}", s.name, s.reason);
    }
    // With no layer to learn a codebook for, nothing would read the simulation.
    let simulated = match plan.layers.is_empty() {
        true => None,
        false => int8_simulated(original, opts, calibration.as_ref(), &kept_float)?,
    };
    let learning = calibration.map(|c| Calibration {
        start: simulated.as_ref(),
        ..c
    });
    let mut learnt = codebooks::learn_codebooks(original, &plan.layers, learning.as_ref())?;
    // With --train-original-layers fine-tuning also changes the layers left original: the
    // output is built on the model that holds their trained weights.
    let (finetuned, base) = match &opts.finetune {
        Some(f) => {
            let (report, tuned) = finetune_codebooks(original, &plan.layers, &mut learnt, f)?;
            (Some(report), tuned)
        }
        None => (None, None),
    };
    let base = base.as_ref().unwrap_or(original);
    let patch = lower_layers(base, &inv, opts, &plan.layers, &learnt)?;
    let mut converted = base.clone();
    lower::apply(&mut converted, patch)?;
    if let Some(cal) = &opts.calibration {
        seen::record(&mut converted, "calibration", &calibrate::seen_images(cal)?)?;
    }
    if let Some(f) = &opts.finetune {
        seen::record(&mut converted, "finetune", &finetune::seen_images(f)?)?;
    }
    let (new_shapes, tensor_bytes) = converted_sizes(&converted, &inv, &opts.input_shapes)?;
    let new_cost = cost::graph_cost(&converted, &new_shapes);
    let rebuilt = match opts.int8 {
        Some(_) => rebuilt_weights(&converted, &plan.layers, &learnt)?,
        None => HashMap::new(),
    };
    let layers = recount(&inv, &converted, &new_cost, &plan.layers, learnt);
    let int8 = match (&opts.int8, calibration_inputs) {
        (Some(q), Some(inputs)) => {
            let mut report = quantize::quantize(
                &mut converted,
                q,
                &new_shapes,
                (inputs, engine),
                (&rebuilt, &kept_float),
            )?;
            report.upgraded_from_opset = upgraded_from;
            Some(report)
        }
        (Some(_), None) => {
            bail!("the int8 output needs calibration images for its activation ranges")
        }
        (None, _) => None,
    };
    Ok(Converted {
        model: converted,
        layers,
        skipped: plan.skipped,
        allocation: plan.allocation,
        multiplications_before: inv.cost.total.multiplications,
        multiplications_after: new_cost.total.multiplications,
        counts_unknown: counts_unknown(&inv, &new_cost),
        finetune: finetuned,
        engine,
        int8,
        tensor_bytes,
    })
}

/// For the int8 output, the layers that stay float: those whose int8 weights alone change the
/// outputs too much, measured on the original (whose weights the layers left original keep).
fn int8_kept_float(
    original: &OnnxModel,
    opts: &ConvertOptions,
    engine: Engine,
    calibration_inputs: Option<&[ArrayD<f32>]>,
) -> Result<HashMap<String, String>> {
    match (&opts.int8, calibration_inputs) {
        (Some(_), Some(inputs)) => {
            quantize::sensitivity::layers_kept_float(engine, original, inputs)
        }
        _ => Ok(HashMap::new()),
    }
}

/// The calibration settings with their images, when the conversion is calibrated.
fn calibration<'a>(
    opts: &'a ConvertOptions,
    inputs: Option<&'a [ArrayD<f32>]>,
    engine: Engine,
) -> Result<Option<Calibration<'a>>> {
    match (&opts.calibration, inputs) {
        (Some(options), Some(inputs)) => Ok(Some(Calibration {
            options,
            inputs,
            engine,
            start: None,
        })),
        (Some(_), None) => bail!("calibration asked for, but no calibration images were given"),
        (None, _) => Ok(None),
    }
}

/// For the int8 output, the model calibration converts layer by layer: the original with the
/// int8 output's roundings simulated, so that each codebook makes up for those upstream of it
/// (`quantize::simulate`).
fn int8_simulated(
    original: &OnnxModel,
    opts: &ConvertOptions,
    calibration: Option<&Calibration>,
    kept_float: &HashMap<String, String>,
) -> Result<Option<OnnxModel>> {
    let (Some(q), Some(cal)) = (&opts.int8, calibration) else {
        return Ok(None);
    };
    let inputs = (cal.inputs, cal.engine);
    quantize::simulate::simulated(original, q.activation, inputs, kept_float).map(Some)
}

/// `original` upgraded to the int8 output's opset when it is older (and the opset it had), after
/// refusing a model that is quantized already.
fn upgrade_for_int8(
    original: &OnnxModel,
    input_shapes: &[shapes::InputShape],
) -> Result<(Option<OnnxModel>, Option<i64>)> {
    quantize::upgrade::check_quantizable(original)?;
    if original.default_opset() >= quantize::upgrade::QDQ_OPSET {
        return Ok((None, None));
    }
    let shapes = shapes::infer(original, input_shapes)?;
    let mut m = original.clone();
    let from = quantize::upgrade::to_qdq_opset(&mut m, &shapes)?;
    log::info!(
        "int8: the model is upgraded from opset {} to {}",
        from.unwrap_or_default(),
        quantize::upgrade::QDQ_OPSET
    );
    Ok((Some(m), from))
}

/// The kernel each compact-form layer rebuilds from its codebook, by the name of the tensor its
/// node reads, in that tensor's layout (a fully connected layer's [M, N], or [N, M] when its
/// weight is stored input by output): what the int8 rewrite quantizes.
fn rebuilt_weights(
    converted: &OnnxModel,
    planned: &[PlannedLayer],
    learnt: &[LearntLayer],
) -> Result<HashMap<String, quantize::Rebuilt>> {
    let mut rebuilt = HashMap::new();
    for (p, l) in planned.iter().zip(learnt) {
        // The layer's own node, as `lower::dense` names it (its rebuilding has a MatMul too).
        let names = [
            format!("{}/dlq/conv", p.layer.name),
            format!("{}/dlq/fc", p.layer.name),
        ];
        let node = converted
            .graph()
            .node
            .iter()
            .find(|n| n.name.as_ref().is_some_and(|m| names.contains(m)));
        let Some(weight) = node.and_then(|n| n.input.get(1)) else {
            continue;
        };
        let w = l.codebook.reconstruct().into_dyn();
        let w = match &p.layer.fc {
            None => w,
            Some(fc) => {
                let [m, n, ..] = l.codebook.kernel_shape;
                let w = w.into_shape_with_order((m, n)).with_context(|| {
                    format!("layer `{}`: a fully connected kernel", p.layer.name)
                })?;
                match fc.weight_in_by_out {
                    true => w.t().to_owned().into_dyn(),
                    false => w.into_dyn(),
                }
            }
        };
        // A small palette without per-channel scales takes a few values: one int8 scale holds
        // them (a step of 1/127 of the largest entry against the entries' spacing).
        // (Convolutions only: ONNX Runtime's QGemm fusion did not take a per-tensor weight with
        // its int32 bias.)
        let per_tensor = l.codebook.shared
            && l.codebook.channel_scale.is_none()
            && p.layer.fc.is_none()
            && l.codebook.sizes.k <= quantize::PER_TENSOR_MAX_K;
        rebuilt.insert(
            weight.clone(),
            quantize::Rebuilt {
                values: w,
                per_tensor,
            },
        );
    }
    Ok(rebuilt)
}

/// The engine for the conversion's own runs: the one asked for, or chosen by trying tract when
/// something will run the model (calibration, the latency budget, the latency check). Only
/// what needs an engine fails without one; the latency check alone falls back to tract and
/// reports that it could not time the model.
fn run_engine(
    original: &OnnxModel,
    inv: &Inventory,
    opts: &ConvertOptions,
    calibration_inputs: Option<&[ArrayD<f32>]>,
) -> Result<Engine> {
    let latency_budget = opts.form.spec().runtime().timed_per_layer
        && opts.target_speedup.is_some()
        && opts.target_compression.is_none();
    let needed = opts.calibration.is_some() || latency_budget;
    if opts.engine.is_some() || !(needed || opts.measure_latency) {
        return Ok(opts.engine.unwrap_or_default());
    }
    let shape = match calibration_inputs.and_then(|x| x.first()) {
        Some(x) => x.shape().to_vec(),
        None => match inv.shapes.sole_concrete_input() {
            Ok((_, dims)) => dims.to_vec(),
            Err(_) => return Ok(Engine::Tract),
        },
    };
    match engine::prepare_in_either(None, original, &shape) {
        Ok((engine, _)) => Ok(engine),
        Err(e) if needed => Err(e),
        Err(_) => Ok(Engine::Tract),
    }
}

/// Fine-tunes every learnt codebook in place (their weight errors re-measured); with
/// `--train-original-layers`, also the model with the layers left original trained.
fn finetune_codebooks(
    original: &OnnxModel,
    planned: &[PlannedLayer],
    learnt: &mut [LearntLayer],
    opts: &FinetuneOptions,
) -> Result<(FinetuneReport, Option<OnnxModel>)> {
    let layers: Vec<_> = planned
        .iter()
        .zip(learnt.iter())
        .map(|(p, l)| (p.layer, &l.codebook))
        .collect();
    let (tuned, report) = finetune::finetune(original, &layers, opts)?;
    let model = match tuned.original_weights.is_empty() {
        true => None,
        false => Some(tuned.apply_original_weights(original)?),
    };
    for ((l, cb), p) in learnt.iter_mut().zip(tuned.codebooks).zip(planned) {
        l.weight_error = cb.relative_error(p.layer.kernel_f32(original)?.view());
        l.codebook = cb;
    }
    Ok((report, model))
}

/// A conversion with nothing to convert is an error that says why for every layer.
fn check_not_empty(inv: &Inventory, plan: &Plan) -> Result<()> {
    if !plan.layers.is_empty() {
        return Ok(());
    }
    let reasons: Vec<String> = plan
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.name, s.reason))
        .collect();
    bail!(
        "no layer to convert ({} Conv layers, none eligible with these parameters){}{}",
        inv.layers.len(),
        if reasons.is_empty() { "" } else { "; " },
        reasons.join("; ")
    )
}

/// Phase 3: every learnt codebook as a patch of the chosen output form.
fn lower_layers(
    original: &OnnxModel,
    inv: &Inventory,
    opts: &ConvertOptions,
    planned: &[PlannedLayer],
    learnt: &[LearntLayer],
) -> Result<GraphPatch> {
    let mut patch = GraphPatch::default();
    for (i, (p, l)) in planned.iter().zip(learnt).enumerate() {
        let cb = &l.codebook;
        let settings = LayerSettings {
            alpha: opts.params.alpha,
            c: opts.params.c,
            calibrated: opts.calibration.is_some(),
            iters: opts.params.iters,
            k: cb.sizes.k,
            k_vq: cb.sizes.k_vq,
            l: cb.sizes.l,
            method: cb.method,
            ratio: p.params.ratio,
            relative_error: l.weight_error,
            seed: opts.params.seed,
            subspace: opts.params.subspace,
        };
        let settings = serde_json::to_string(&settings)?;
        let form = opts.form.spec();
        patch
            .layers
            .push(form.lower(original, p.layer, cb, &inv.shapes, &settings)?);
        log::info!(
            "[{}/{}] {}: {:?} K={} L={} S={} relative error {:.4}{} ({:.2}s)",
            i + 1,
            planned.len(),
            p.layer.name,
            cb.kernel_shape,
            cb.sizes.k,
            cb.sizes.l,
            cb.sizes.subspaces,
            l.weight_error,
            l.output_errors
                .map(|e| format!(
                    ", output error {:.4} -> {:.4} calibrated{}",
                    e.plain,
                    e.calibrated,
                    e.refit
                        .map(|r| format!(
                            "; patch output error {:.4} -> {:.4} refitted{}",
                            r.before,
                            r.after,
                            if r.applied { "" } else { " (kept)" }
                        ))
                        .unwrap_or_default()
                ))
                .unwrap_or_default(),
            l.seconds
        );
    }
    Ok(patch)
}

/// The cost of the nodes the lowering emitted for `layer` (named `{layer}/dlq/...`), and
/// whether all of them were counted.
fn prefix_cost(cost: &GraphCost, model: &OnnxModel, layer: &str) -> (OpCost, bool) {
    let prefix = format!("{layer}/dlq/");
    let g = model.graph();
    let emitted = |i: usize| {
        g.node[i]
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with(&prefix))
    };
    (cost.sum_where(emitted), cost.known_where(emitted))
}

/// The converted model's shapes, and the bytes of all its tensors when every one has a size
/// (an upper bound of one run; shape inference can stop at an operator it does not know, a
/// style-transfer model's Crop, and leave what follows unsized).
fn converted_sizes(
    converted: &OnnxModel,
    inv: &Inventory,
    input_shapes: &[InputShape],
) -> Result<(shapes::ShapeMap, Option<u64>)> {
    let found = match may_run_converted(inv) {
        true => shapes::infer(converted, input_shapes),
        false => shapes::infer_without_runs(converted, input_shapes),
    }
    .context("the converted model")?;
    let sized = converted
        .graph()
        .node
        .iter()
        .flat_map(|n| &n.output)
        .all(|o| o.is_empty() || found.shapes.contains_key(o));
    let bytes = sized.then(|| engine::memory::tensors_bytes(&found.shapes));
    Ok((found, bytes))
}

/// How many times the original's tensors a converted model may need in one run: the
/// standard-operator form materialises every atom and representative response (a 720×720
/// style-transfer model: 21.6 GB in ONNX Runtime).
const CONVERTED_RUN_FACTOR: u64 = 64;

/// Whether the converted model may be run on zeros to learn the shapes its own inference leaves
/// unknown: when [`CONVERTED_RUN_FACTOR`] times the original's tensors fit in half of the
/// memory available (small inputs; a high-resolution model is never run for its shapes).
fn may_run_converted(inv: &Inventory) -> bool {
    let original = engine::memory::tensors_bytes(&inv.shapes.shapes);
    let need = original.saturating_mul(CONVERTED_RUN_FACTOR);
    engine::memory::check_fits(String::new, need, 0.5, &[]).is_ok()
}

/// Why the multiplication counts are incomplete, when they are: shape inference did not reach
/// some counted node of either graph.
fn counts_unknown(inv: &Inventory, new_cost: &GraphCost) -> Option<String> {
    if inv.cost.complete() && new_cost.complete() {
        return None;
    }
    Some(match inv.shapes.dynamic_inputs.first() {
        Some(d) => format!(
            "{} ({} {} counts at one size)",
            d.describe(),
            setting::name(Setting::InputShape),
            d.shape_hint()
        ),
        None => "shape inference (tract) did not reach every node".into(),
    })
}

/// Phase 4: each layer's report, its multiplications counted on the converted graph.
fn recount(
    inv: &Inventory,
    converted: &OnnxModel,
    new_cost: &GraphCost,
    planned: &[PlannedLayer],
    learnt: Vec<LearntLayer>,
) -> Vec<LayerReport> {
    planned
        .iter()
        .zip(learnt)
        .map(|(p, l)| {
            let cb = l.codebook;
            let before = inv.cost.nodes[p.layer.node_index].cost.multiplications;
            let (after, after_known) = prefix_cost(new_cost, converted, &p.layer.name);
            let before_known = inv.cost.nodes[p.layer.node_index].known;
            LayerReport {
                name: p.layer.name.clone(),
                kernel: cb.kernel_shape,
                method: cb.method,
                subspaces: cb.sizes.subspaces,
                k_vq: cb.sizes.k_vq,
                k: cb.sizes.k,
                l: cb.sizes.l,
                alpha: cb.subspaces[0].codes.as_ref().map(|c| c.alpha),
                relative_error: l.weight_error,
                multiplications_before: before,
                multiplications_after: after.multiplications,
                additions_after: after.additions,
                achieved_ratio: before as f64 / after.multiplications.max(1) as f64,
                multiplications_known: before_known && after_known,
                seconds: l.seconds,
                output_error: l.output_errors.map(|e| e.calibrated),
                output_error_uncalibrated: l.output_errors.map(|e| e.plain),
                refit: l.output_errors.and_then(|e| e.refit),
                channel_scale: cb.channel_scale.is_some(),
            }
        })
        .collect()
}

/// Converts `input` into `output`.
pub fn convert(input: &Path, output: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
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
    crate::progress::checkpoint();
    let saved = model::save(&c.model, output, policy)?;
    let latency = match opts.measure_latency {
        // An int8 model is timed where it runs on integer kernels: ONNX Runtime.
        true => {
            let engine = if c.int8.is_some() {
                Engine::Ort
            } else {
                c.engine
            };
            latency_check(&original, &c, opts, engine)
        }
        false => None,
    };
    let (mb, ma) = (c.multiplications_before, c.multiplications_after);
    Ok(ConvertReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        params: (*opts.params).clone(),
        layers: c.layers,
        skipped: c.skipped,
        allocation: c.allocation,
        multiplications_before: mb,
        multiplications_after: ma,
        speedup: mb as f64 / ma.max(1) as f64,
        counts_unknown: c.counts_unknown,
        file_bytes_before: model::stored_bytes(&original),
        file_bytes_after: saved.model_bytes + saved.external.as_ref().map_or(0, |e| e.1),
        external_data: saved.external.map(|e| e.0.display().to_string()),
        latency,
        peak_memory_bytes: crate::engine::memory::peak_memory_bytes(),
        finetune: c.finetune,
        int8: c.int8,
    })
}

/// Alternating pairs of runs for the latency check, after [`LATENCY_WARMUP`] untimed ones:
/// enough to tell a difference of a few percent from noise, few enough to keep a conversion
/// quick (a latency budget's result is checked with the budget's own, longer, pairing).
const LATENCY_PAIRS: usize = 9;
const LATENCY_WARMUP: usize = 2;

/// The latency check's time, beyond which it times fewer pairs (at least [`MIN_LATENCY_PAIRS`]):
/// a converted model that runs for seconds is not timed for minutes.
const LATENCY_BUDGET_MS: f64 = 10_000.0;
const MIN_LATENCY_PAIRS: usize = 3;

/// Why timing the converted model could exhaust memory, when it could: its tensors at this
/// input size hold more than half of what the system has available (an engine keeps some of
/// them alive at once, at most all).
fn too_large_to_time(tensor_bytes: Option<u64>, form: OutputForm) -> Option<String> {
    let Some(tensor_bytes) = tensor_bytes else {
        // The standard-operator form materialises its look-ups: unsized, it may need many
        // times the original's memory (21.6 GB for a 720×720 style-transfer model in ONNX
        // Runtime); the other forms hold about the original's tensors.
        return form.spec().runtime().may_outgrow_original.then(|| {
            format!(
                "shape inference did not size every tensor of the converted model at this input size, and the standard-operator form can need many times the original's memory; time it with `onnx-dlq verify` where memory allows, or use {} fused or dense",
                setting::name(Setting::Form)
            )
        });
    };
    let available = engine::memory::available_bytes()?;
    (tensor_bytes > available / 2).then(|| {
        format!(
            "the converted model's tensors take up to {} at this input size, and {} is available; time it with `onnx-dlq verify` on a machine with more memory, or at a smaller {}",
            engine::memory::gb(tensor_bytes),
            engine::memory::gb(available),
            setting::name(Setting::InputShape)
        )
    })
}

/// A latency budget's target and predicted speed-up, when the conversion had one.
fn latency_target(c: &Converted) -> Option<(f64, f64)> {
    let a = c.allocation.as_ref()?;
    let m = a
        .measured
        .as_ref()
        .filter(|m| m.unit == Unit::Milliseconds)?;
    Some((a.target_speedup, m.original / m.predicted))
}

/// A latency budget's result may fall short of its target by this factor before the check
/// warns (the run-to-run noise of a paired median over a few percent of gain).
const TARGET_SLACK: f64 = 0.97;

/// Times `original` and `converted` in `engine`; a warning says how much slower the converted
/// model runs when it does (the standard operators materialise the look-ups). After a latency
/// budget (`target`: its target and predicted speed-ups) the two are timed in alternating
/// pairs, as the budget timed its layers, and a warning says when the result falls short of
/// the target: per-layer gains need not add up (ONNX Runtime's layout reorders, noise). A model
/// the check cannot time (several inputs, say) is converted all the same, with a note.
fn latency_check(
    original: &OnnxModel,
    c: &Converted,
    opts: &ConvertOptions,
    engine: Engine,
) -> Option<LatencyCheck> {
    let target = latency_target(c);
    if let Some(why) = too_large_to_time(c.tensor_bytes, opts.form) {
        log::warn!("latency not measured: {why}");
        return None;
    }
    let measure = || -> Result<LatencyCheck> {
        let set = verify::EvalSet::random(original, &opts.input_shapes, 1, 0)?;
        let x = &set.inputs[0];
        let prepare = |m: &OnnxModel| engine::prepare(engine, m, &set.input_shape);
        let (a, b) = (prepare(original)?, prepare(&c.model)?);
        let p = match target {
            Some(_) => timing::paired_as_budget(a.as_ref(), b.as_ref(), x)?,
            None => {
                let pairs = timing::pairs_within(
                    a.as_ref(),
                    b.as_ref(),
                    x,
                    LATENCY_BUDGET_MS,
                    MIN_LATENCY_PAIRS..=LATENCY_PAIRS,
                    LATENCY_WARMUP,
                )?;
                timing::paired(a.as_ref(), b.as_ref(), x, pairs, LATENCY_WARMUP)?
            }
        };
        Ok(LatencyCheck {
            engine: engine.describe()?,
            runs: p.pairs,
            original_ms: p.a_ms,
            converted_ms: p.b_ms,
            standard_error_ms: p.standard_error_ms,
            within_noise: p.within_noise(),
        })
    };
    match measure() {
        Ok(check) => {
            let measured = check.original_ms / check.converted_ms.max(1e-9);
            if let Some((wanted, predicted)) = target.filter(|t| measured < TARGET_SLACK * t.0) {
                log::warn!(
                    "the latency budget predicted {predicted:.2}x but the converted model measures {measured:.2}x in {} ({:.3} ms against {:.3} ms), short of the {wanted}x target: the layers' timed gains did not add up in the whole model (in ONNX Runtime its layout reorders around each DlqConv, BENCHMARKS.md); convert again with a lower target or with {} tract",
                    check.engine,
                    check.converted_ms,
                    check.original_ms,
                    setting::name(Setting::Engine)
                );
            } else if !check.within_noise && check.converted_ms > check.original_ms {
                let why = opts.form.spec().slower_because();
                log::warn!(
                    "the converted model runs {} than the original in {} ({:.3} ms against {:.3} ms): {why}",
                    check.verdict(),
                    check.engine,
                    check.converted_ms,
                    check.original_ms
                );
            }
            Some(check)
        }
        Err(e) => {
            log::warn!("latency not measured: {e:#}");
            None
        }
    }
}
