//! Stage-wise evaluation (the paper's Experiment II): for each method and ratio, convert the
//! layers of stage 1, then of stages 1–2, … cumulatively, and measure top-1 / top-5 on a
//! labelled set, agreement with the original, the whole-model multiplication reduction and the
//! latency (in tract or ONNX Runtime) after each stage; with `--finetune`, each stage's model is
//! also fine-tuned by distillation and measured again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::setting::{require, Setting};
use anyhow::{ensure, Context, Result};
use serde::Serialize;

use crate::analysis::select;
use crate::calibrate::{self, CalibrationOptions};
use crate::codebook::{ClusterParams, Method, ValidParams};
use crate::convert::{self, ConvertOptions, Selection};
use crate::engine::{self, Engine};
use crate::eval::seen;
use crate::eval::verify::{self, EvalSet};
use crate::finetune::{self, FinetuneOptions};
use crate::onnx::model::{self, ExternalData, OnnxModel};

#[derive(Debug, Clone)]
pub struct StagesOptions {
    /// Each stage: a layer-name prefix; a stage is every convertible Conv whose name starts with it.
    pub stages: Vec<String>,
    pub ratios: Vec<f64>,
    pub methods: Vec<Method>,
    /// Parameters besides method and ratio (N′, c, α, iterations, seed).
    pub params: ClusterParams,
    pub data: PathBuf,
    pub preprocess: PathBuf,
    pub samples: Option<usize>,
    /// Leave out the first this many images (those used for calibration).
    pub skip: usize,
    pub calibration: Option<CalibrationOptions>,
    /// The engine that runs every model (`None`: tract, or ONNX Runtime when tract cannot run
    /// the original); calibration statistics come from it too.
    pub engine: Option<Engine>,
    /// Timed runs per model for the latency column.
    pub runs: usize,
    /// Fine-tune every converted model too (`stages --finetune`) and evaluate it as well.
    pub finetune: Option<FinetuneOptions>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageRow {
    /// `None` for the original model.
    pub method: Option<Method>,
    pub ratio: Option<f64>,
    /// How many stages are converted (0 for the original).
    pub stages: usize,
    pub last_stage: Option<String>,
    pub layers: Vec<String>,
    pub top1: f64,
    pub top5: f64,
    pub top1_agreement: f64,
    pub multiplications: u64,
    /// Original multiplications / this model's.
    pub speedup: f64,
    /// ‖W − W̃‖/‖W‖ over all converted layers' weights together.
    pub weight_error: Option<f64>,
    /// Median latency on the first image, batch 1, one thread.
    pub latency_ms: f64,
    /// The same model after distillation fine-tuning (`--finetune`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finetuned: Option<FinetunedRow>,
}

/// A stage's model after fine-tuning: the same graph, trained codebooks.
#[derive(Debug, Clone, Serialize)]
pub struct FinetunedRow {
    pub top1: f64,
    pub top5: f64,
    pub top1_agreement: f64,
    /// The epoch kept (`None`: no epoch beat the start, the model is the one before).
    pub best_epoch: Option<usize>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StagesReport {
    pub model: String,
    /// The engine and its version, e.g. "ONNX Runtime 1.31.1".
    pub engine: String,
    pub samples: usize,
    pub stages: Vec<(String, Vec<String>)>,
    pub rows: Vec<StageRow>,
    /// The process's peak resident memory over every conversion and evaluation (Linux's
    /// VmHWM), when the system says.
    pub peak_memory_bytes: Option<u64>,
}

/// The convertible layers of each stage, in graph order.
fn stage_layers(model: &OnnxModel, stages: &[String]) -> Result<Vec<(String, Vec<String>)>> {
    let layers = select::conv_layers(model);
    stages
        .iter()
        .map(|prefix| {
            let names: Vec<String> = layers
                .iter()
                .filter(|l| l.convertible() && l.name.starts_with(prefix.as_str()))
                .map(|l| l.name.clone())
                .collect();
            ensure!(
                !names.is_empty(),
                "stage `{prefix}` names no convertible Conv layer (a stage is a layer-name prefix)"
            );
            Ok((prefix.clone(), names))
        })
        .collect()
}

/// Checks the lists, and every method × ratio's parameters, before any work.
fn check_options(opts: &StagesOptions) -> Result<()> {
    let needs = |ok: bool, setting: Setting, what: &str| {
        require(ok, setting, || format!("needs at least one {what}"))
    };
    needs(!opts.stages.is_empty(), Setting::Stages, "stage")?;
    needs(!opts.ratios.is_empty(), Setting::Ratios, "ratio")?;
    needs(!opts.methods.is_empty(), Setting::Methods, "method")?;
    for &method in &opts.methods {
        for &ratio in &opts.ratios {
            run_params(opts, method, ratio)?;
        }
    }
    let mut seen = Vec::new();
    if let Some(cal) = &opts.calibration {
        seen.push(("calibration".to_string(), calibrate::seen_images(cal)?));
    }
    if let Some(f) = &opts.finetune {
        seen.push(("fine-tuning".to_string(), finetune::seen_images(f)?));
    }
    let samples = opts.samples.unwrap_or(usize::MAX);
    seen::check_disjoint(&seen, "stages", &opts.data, opts.skip, samples)
}

/// The parameters of one method × ratio run.
fn run_params(opts: &StagesOptions, method: Method, ratio: f64) -> Result<ValidParams> {
    let params = ClusterParams {
        method,
        ratio,
        ..opts.params.clone()
    };
    Ok(params.check()?)
}

/// The original model, its evaluation set and its outputs on it: what every row compares to.
struct Baseline {
    original: OnnxModel,
    engine: Engine,
    set: EvalSet,
    outputs: Vec<ndarray::ArrayD<f32>>,
    multiplications: u64,
    norms: HashMap<String, f64>,
}

pub fn run(path: &Path, opts: &StagesOptions) -> Result<StagesReport> {
    check_options(opts)?;
    let original = model::load(path)?;
    if let Some(f) = &opts.finetune {
        finetune::preflight(&original, f)?;
    }
    let stages = stage_layers(&original, &opts.stages)?;
    let norms = weight_norms(&original, &stages)?;
    let set = EvalSet::images(
        &original,
        &opts.data,
        &opts.preprocess,
        opts.samples,
        opts.skip,
    )?;
    let (engine, runner) = engine::prepare_in_either(opts.engine, &original, &set.input_shape)
        .with_context(|| path.display().to_string())?;
    let outputs = set.run(runner.as_ref(), "original")?;
    let latency_ms = verify::latency(runner.as_ref(), &set.inputs[0], opts.runs)?.median;
    let multiplications = verify::multiplications(&original, &set.input_shape)?;
    let base = Baseline {
        original,
        engine,
        set,
        outputs,
        multiplications,
        norms,
    };
    let (top1, top5) = base.set.accuracy(&base.outputs).expect("a labelled set");
    log::info!(
        "original: top-1 {:.2}%, top-5 {:.2}%",
        100.0 * top1,
        100.0 * top5
    );
    let mut rows = vec![StageRow {
        method: None,
        ratio: None,
        stages: 0,
        last_stage: None,
        layers: vec![],
        top1,
        top5,
        top1_agreement: 1.0,
        multiplications: base.multiplications,
        speedup: 1.0,
        weight_error: None,
        latency_ms,
        finetuned: None,
    }];
    // Decoded once for every conversion below.
    let calibration_inputs = match &opts.calibration {
        Some(cal) => Some(convert::load_calibration_inputs(cal)?),
        None => None,
    };
    let cal = calibration_inputs.as_deref();
    for &method in &opts.methods {
        for &ratio in &opts.ratios {
            let params = run_params(opts, method, ratio)?;
            let mut chain = Chain::default();
            for (i, (stage, names)) in stages.iter().enumerate() {
                let what = format!("{} ρ={ratio} stage `{stage}`", method.as_str());
                let row = stage_row(&base, opts, &params, &mut chain, cal, (i, stage, names))
                    .with_context(|| what.clone())?;
                rows.push(row);
            }
        }
    }
    Ok(StagesReport {
        model: path.display().to_string(),
        engine: base.engine.describe()?,
        samples: base.set.len(),
        stages,
        rows,
        peak_memory_bytes: crate::engine::memory::peak_memory_bytes(),
    })
}

/// What one method × ratio's rows pass on, stage to stage: the layers converted so far and,
/// with fine-tuning, the fine-tuned model the next stage is converted in (the paper's scheme).
#[derive(Default)]
struct Chain {
    layers: Vec<String>,
    reports: Vec<convert::LayerReport>,
    finetuned: Option<OnnxModel>,
}

/// Converts stage i and evaluates the model, whose converted layers are stages 1..=i, against
/// the baseline. Without fine-tuning stages 1..=i are converted in the original; with it,
/// stage i is converted in the fine-tuned model of stage i − 1 and the result fine-tuned again
/// (every converted layer, the original as the teacher).
fn stage_row(
    base: &Baseline,
    opts: &StagesOptions,
    params: &ValidParams,
    chain: &mut Chain,
    calibration_inputs: Option<&[ndarray::ArrayD<f32>]>,
    (i, stage, names): (usize, &str, &[String]),
) -> Result<StageRow> {
    let (method, ratio) = (params.method, params.ratio);
    chain.layers.extend(names.iter().cloned());
    let (from, selection) = match &chain.finetuned {
        Some(model) => (model, names.to_vec()),
        None => (&base.original, chain.layers.clone()),
    };
    let c = convert::convert_model_with_inputs(
        from,
        &ConvertOptions {
            selection: Selection::Named(selection),
            params: params.clone(),
            input_shapes: vec![],
            external: ExternalData::Auto,
            calibration: opts.calibration.clone(),
            target_speedup: None,
            target_compression: None,
            measure_latency: false,
            form: Default::default(),
            finetune: None,
            engine: Some(base.engine),
            int8: None,
        },
        calibration_inputs,
    )?;
    let label = format!("{} ρ={ratio} stage {}", method.as_str(), i + 1);
    let (r, top1, top5, agreement) = evaluate(base, &c.model, &label)?;
    let mults = verify::multiplications(&c.model, &base.set.input_shape)?;
    let speedup = base.multiplications as f64 / mults.max(1) as f64;
    log::info!(
        "{label} ({stage}): top-1 {:.2}%, top-5 {:.2}%, {speedup:.3}x fewer multiplications",
        100.0 * top1,
        100.0 * top5,
    );
    if chain.finetuned.is_none() {
        chain.reports.clear();
    }
    chain.reports.extend(c.layers);
    let finetuned = match &opts.finetune {
        Some(f) => {
            let (row, tuned) = finetuned_row(base, &c.model, f, &label)?;
            chain.finetuned = Some(tuned);
            Some(row)
        }
        None => None,
    };
    Ok(StageRow {
        method: Some(method),
        ratio: Some(ratio),
        stages: i + 1,
        last_stage: Some(stage.to_string()),
        layers: chain.layers.clone(),
        top1,
        top5,
        top1_agreement: agreement,
        multiplications: mults,
        speedup,
        weight_error: Some(weighted_error(&base.norms, &chain.reports)),
        latency_ms: verify::latency(r.as_ref(), &base.set.inputs[0], opts.runs)?.median,
        finetuned,
    })
}

/// Runs `model` on the evaluation set: its runner, top-1, top-5 and top-1 agreement.
fn evaluate(
    base: &Baseline,
    model: &OnnxModel,
    label: &str,
) -> Result<(Box<dyn engine::Run>, f64, f64, f64)> {
    let r = engine::prepare(base.engine, model, &base.set.input_shape)?;
    let y = base.set.run(r.as_ref(), label)?;
    let (top1, top5) = base.set.accuracy(&y).expect("a labelled set");
    let agree = verify::agreement(&base.outputs, &y)?;
    Ok((r, top1, top5, agree.top1_agreement))
}

/// Fine-tunes a stage's converted model (its codebooks read back as `onnx-dlq finetune` does)
/// and evaluates the result; returns the fine-tuned model too.
fn finetuned_row(
    base: &Baseline,
    converted: &OnnxModel,
    f: &FinetuneOptions,
    label: &str,
) -> Result<(FinetunedRow, OnnxModel)> {
    let started = std::time::Instant::now();
    let (tuned, report) = finetune::finetune_converted(&base.original, converted, f)?;
    let seconds = started.elapsed().as_secs_f64();
    let (_, top1, top5, agreement) = evaluate(base, &tuned, &format!("{label} fine-tuned"))?;
    log::info!(
        "{label} fine-tuned: top-1 {:.2}%, top-5 {:.2}% ({seconds:.0}s)",
        100.0 * top1,
        100.0 * top5
    );
    let row = FinetunedRow {
        top1,
        top5,
        top1_agreement: agreement,
        best_epoch: report.best_epoch,
        seconds,
    };
    Ok((row, tuned))
}

/// ‖W‖² of every staged layer's weight, read once for the whole run.
fn weight_norms(
    original: &OnnxModel,
    stages: &[(String, Vec<String>)],
) -> Result<HashMap<String, f64>> {
    let all = select::conv_layers(original);
    let mut norms = HashMap::new();
    for name in stages.iter().flat_map(|(_, names)| names) {
        let layer = all
            .iter()
            .find(|x| &x.name == name)
            .context("a staged layer")?;
        let w = original.tensor_f32(original.initializer(&layer.weight).context("weight")?)?;
        norms.insert(
            name.clone(),
            w.iter().map(|v| (*v as f64) * (*v as f64)).sum(),
        );
    }
    Ok(norms)
}

/// The converted layers' errors combined by their weights' norms: √(Σ e²‖W‖² / Σ ‖W‖²).
fn weighted_error(norms: &HashMap<String, f64>, layers: &[convert::LayerReport]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for l in layers {
        let norm2 = norms.get(&l.name).copied().unwrap_or(0.0);
        num += l.relative_error * l.relative_error * norm2;
        den += norm2;
    }
    if den > 0.0 {
        (num / den).sqrt()
    } else {
        0.0
    }
}

/// How one table cell is written from a row.
type Cell = fn(&StageRow) -> String;

/// A Markdown table per measure: one row per method and ratio, one column per stage.
pub fn render(r: &StagesReport) -> String {
    use std::fmt::Write as _;
    let base = &r.rows[0];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} on {} samples in {}; original top-1 {:.2}%, top-5 {:.2}%, {:.3} ms",
        r.model,
        r.samples,
        r.engine,
        100.0 * base.top1,
        100.0 * base.top5,
        base.latency_ms
    );
    let header: Vec<String> = r
        .stages
        .iter()
        .enumerate()
        .map(|(i, (p, names))| format!("+{} `{p}` ({})", i + 1, names.len()))
        .collect();
    let mut measures: Vec<(&str, Cell)> = vec![
        ("top-1 %", |x| format!("{:.2}", 100.0 * x.top1)),
        ("top-5 %", |x| format!("{:.2}", 100.0 * x.top5)),
        ("top-1 agreement with the original %", |x| {
            format!("{:.2}", 100.0 * x.top1_agreement)
        }),
        ("whole-model multiplication reduction (x)", |x| {
            format!("{:.3}", x.speedup)
        }),
        ("latency, ms (batch 1, one thread)", |x| {
            format!("{:.3}", x.latency_ms)
        }),
    ];
    if r.rows.iter().any(|x| x.finetuned.is_some()) {
        measures.insert(
            1,
            ("top-1 % after fine-tuning (the epoch kept)", |x| {
                x.finetuned.as_ref().map_or("-".into(), |f| {
                    let kept = f
                        .best_epoch
                        .map_or("start".into(), |e| format!("epoch {e}"));
                    format!("{:.2} ({kept})", 100.0 * f.top1)
                })
            }),
        );
        measures.insert(
            4,
            ("top-1 agreement after fine-tuning %", |x| {
                x.finetuned
                    .as_ref()
                    .map_or("-".into(), |f| format!("{:.2}", 100.0 * f.top1_agreement))
            }),
        );
    }
    for (title, cell) in measures {
        let _ = writeln!(s, "\n{title}\n");
        let _ = writeln!(s, "| method | ρ | {} |", header.join(" | "));
        let _ = writeln!(s, "|---|---|{}", "---|".repeat(header.len()));
        let mut keys: Vec<(Method, f64)> = Vec::new();
        for row in &r.rows[1..] {
            let k = (
                row.method.expect("converted"),
                row.ratio.expect("converted"),
            );
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        for (m, ratio) in keys {
            let cells: Vec<String> = r.rows[1..]
                .iter()
                .filter(|x| x.method == Some(m) && x.ratio == Some(ratio))
                .map(cell)
                .collect();
            let _ = writeln!(
                s,
                "| {} | {ratio} | {} |",
                m.as_str().to_uppercase(),
                cells.join(" | ")
            );
        }
    }
    if let Some(bytes) = r.peak_memory_bytes {
        let _ = writeln!(s, "\npeak memory {:.0} MB", bytes as f64 / 1e6);
    }
    s
}
