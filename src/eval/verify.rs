//! `verify`: proof that a converted model still works and is cheaper. Both models run in tract
//! (or ONNX Runtime, `--engine ort`) on CPU on the same inputs (a labelled image set, or seeded
//! random inputs): accuracy, top-1 agreement, output differences, multiplications and latency.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use ndarray::{ArrayD, IxDyn};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::analysis::shapes::InputShape;
use crate::engine::{self, memory, Engine, Run};
use crate::eval::data::{preprocess_all, top_k, LabelledSet, PreprocessSpec};
use crate::eval::seen;
use crate::onnx::model::OnnxModel;
use crate::progress;
use crate::setting::{require, Setting};
use crate::{analysis::cost, analysis::shapes, onnx::model};

/// Random inputs `verify` uses when no labelled set is given.
pub const DEFAULT_RANDOM_SAMPLES: usize = 8;

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// A labelled set and its preprocessing.
    pub data: Option<(PathBuf, PathBuf)>,
    /// At most this many samples (all of the set, or 8 random inputs, by default).
    pub samples: Option<usize>,
    /// Leave out the first this many images of the set (e.g. those used for calibration).
    pub skip: usize,
    /// Timed runs per model for latency.
    pub runs: usize,
    pub input_shapes: Vec<InputShape>,
    pub seed: u64,
    /// The engine both models run in (`None`: tract, or ONNX Runtime when tract cannot run the
    /// original).
    pub engine: Option<Engine>,
}

/// The inputs every model of a comparison is run on, prepared once.
pub struct EvalSet {
    pub inputs: Vec<ArrayD<f32>>,
    /// One class index per input, for a labelled set.
    pub labels: Option<Vec<usize>>,
    pub input_shape: Vec<usize>,
}

/// The single non-initializer input of `m`.
fn graph_input(m: &OnnxModel) -> Option<&str> {
    m.graph()
        .input
        .iter()
        .filter_map(|i| i.name.as_deref())
        .find(|n| m.initializer(n).is_none())
}

/// The declared dimensions of graph input `name` (`None` for a symbolic or missing one), when
/// the model declares a shape.
fn declared_dims(m: &OnnxModel, name: &str) -> Option<Vec<Option<usize>>> {
    use crate::proto::{tensor_shape_proto::dimension::Value, type_proto};
    let input = m
        .graph()
        .input
        .iter()
        .find(|i| i.name.as_deref() == Some(name))?;
    let Some(type_proto::Value::TensorType(t)) = input.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let dims = t.shape.as_ref()?.dim.iter().map(|d| match d.value {
        Some(Value::DimValue(v)) => usize::try_from(v).ok(),
        _ => None,
    });
    Some(dims.collect())
}

impl EvalSet {
    /// `samples` images of a labelled set (all by default) after the first `skip`,
    /// preprocessed for `model`.
    pub fn images(
        model: &OnnxModel,
        dir: &Path,
        spec_path: &Path,
        samples: Option<usize>,
        skip: usize,
    ) -> Result<EvalSet> {
        let mut set = LabelledSet::load(dir)?;
        require(skip < set.items.len(), Setting::Skip, || {
            format!(
                "({skip}) leaves no image of the {} in {}",
                set.items.len(),
                dir.display()
            )
        })?;
        set.items.drain(..skip);
        let spec = PreprocessSpec::load(spec_path)?;
        let name = graph_input(model);
        ensure!(
            name == Some(spec.input.as_str()),
            "the preprocessing spec {} feeds `{}`, but the model's input is {}",
            spec_path.display(),
            spec.input,
            name.map_or("missing".to_string(), |n| format!("`{n}`"))
        );
        let n = samples.unwrap_or(set.items.len()).min(set.items.len());
        require(n > 0, Setting::Samples, || "must be at least 1".into())?;
        let paths: Vec<&Path> = set.items[..n].iter().map(|(p, _)| p.as_path()).collect();
        let inputs: Vec<ArrayD<f32>> = preprocess_all(
            &spec,
            spec_path,
            &paths,
            "images to evaluate",
            Setting::Samples,
        )?
        .into_iter()
        .map(|a| a.into_dyn())
        .collect();
        let input_shape = inputs[0].shape().to_vec();
        // What the images give against what the model declares, named here rather than
        // deep in tract's shape inference.
        if let Some(declared) = declared_dims(model, &spec.input) {
            let differs = declared.len() != input_shape.len()
                || declared
                    .iter()
                    .zip(&input_shape)
                    .skip(1)
                    .any(|(want, got)| want.is_some_and(|w| w != *got));
            let shown: Vec<String> = declared
                .iter()
                .map(|d| d.map_or("?".into(), |v| v.to_string()))
                .collect();
            ensure!(
                !differs,
                "the model's input `{}` has shape [{}], but the images preprocessed by {} give {:?} (channels: three colours; sizes: `resize_shorter` / `center_crop`)",
                spec.input,
                shown.join(", "),
                spec_path.display(),
                input_shape
            );
        }
        let labels = set.items[..n].iter().map(|(_, l)| *l).collect();
        Ok(EvalSet {
            inputs,
            labels: Some(labels),
            input_shape,
        })
    }

    /// `n` seeded uniform(−1, 1) inputs of the shape inference finds (batch taken as 1).
    pub fn random(
        model: &OnnxModel,
        input_shapes: &[InputShape],
        n: usize,
        seed: u64,
    ) -> Result<EvalSet> {
        require(n > 0, Setting::Samples, || "must be at least 1".into())?;
        let sh = shapes::infer(model, input_shapes)?;
        let input_shape = sh.sole_concrete_input()?.1.to_vec();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let inputs = (0..n)
            .map(|_| ArrayD::from_shape_fn(IxDyn(&input_shape), |_| rng.random_range(-1.0f32..1.0)))
            .collect();
        Ok(EvalSet {
            inputs,
            labels: None,
            input_shape,
        })
    }

    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Runs `runner` on every input (in parallel; outputs in input order), its progress
    /// labelled `what`.
    pub fn run(&self, runner: &dyn Run, what: &str) -> Result<Vec<ArrayD<f32>>> {
        let task = progress::task(what, self.len() as u64);
        let outputs = self
            .inputs
            .par_iter()
            .map(|x| {
                let y = runner.run(x)?;
                task.inc(1);
                Ok(y)
            })
            .collect();
        log::debug!("{what}: {} samples", self.len());
        outputs
    }

    /// Whether each output's top class is its image's label, or `None` without labels.
    pub fn top1_correct(&self, outputs: &[ArrayD<f32>]) -> Option<Vec<bool>> {
        let labels = self.labels.as_ref()?;
        Some(
            outputs
                .iter()
                .zip(labels)
                .map(|(y, &l)| top_k(y, 1)[0] == l)
                .collect(),
        )
    }

    /// Top-1 and top-5 accuracy of `outputs`, or `None` without labels.
    pub fn accuracy(&self, outputs: &[ArrayD<f32>]) -> Option<(f64, f64)> {
        let labels = self.labels.as_ref()?;
        let (mut top1, mut top5) = (0usize, 0usize);
        for (y, &l) in outputs.iter().zip(labels) {
            let t = top_k(y, 5);
            top1 += (t[0] == l) as usize;
            top5 += t.contains(&l) as usize;
        }
        let n = outputs.len().max(1) as f64;
        Some((top1 as f64 / n, top5 as f64 / n))
    }
}

/// How far apart two models' outputs on the same inputs are.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Agreement {
    pub top1_agreement: f64,
    pub max_abs_diff: f64,
    pub relative_l2: f64,
}

pub fn agreement(a: &[ArrayD<f32>], b: &[ArrayD<f32>]) -> Result<Agreement> {
    let (mut agree, mut max_abs, mut diff2, mut ref2) = (0usize, 0f64, 0f64, 0f64);
    for (ya, yb) in a.iter().zip(b) {
        ensure!(
            ya.shape() == yb.shape(),
            "the models' outputs differ in shape: {:?} vs {:?}",
            ya.shape(),
            yb.shape()
        );
        for (p, q) in ya.iter().zip(yb.iter()) {
            let d = (*p as f64 - *q as f64).abs();
            max_abs = max_abs.max(d);
            diff2 += d * d;
            ref2 += (*p as f64) * (*p as f64);
        }
        agree += (top_k(ya, 1) == top_k(yb, 1)) as usize;
    }
    Ok(Agreement {
        top1_agreement: agree as f64 / a.len().max(1) as f64,
        max_abs_diff: max_abs,
        relative_l2: if ref2 > 0.0 {
            (diff2 / ref2).sqrt()
        } else {
            0.0
        },
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Single-threaded latency of `runner` on `x` over `runs` timed runs after one untimed warm-up.
pub fn latency(runner: &dyn Run, x: &ArrayD<f32>, runs: usize) -> Result<Latency> {
    runner.run(x)?;
    let mut ms: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            runner.run(x).map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_>>()?;
    ms.sort_by(f64::total_cmp);
    Ok(Latency {
        median: ms[ms.len() / 2],
        min: ms[0],
        max: ms[ms.len() - 1],
    })
}

/// Multiplications of `m` for one input of `input_shape`.
pub fn multiplications(m: &OnnxModel, input_shape: &[usize]) -> Result<u64> {
    let sh = shapes::infer(
        m,
        &[InputShape {
            name: None,
            dims: input_shape.to_vec(),
        }],
    )?;
    Ok(cost::graph_cost(m, &sh).total.multiplications)
}

/// How the converted model's top-1 differs from the original's image by image: the images it
/// gets wrong that the original got right, those it gets right that the original got wrong, and
/// the standard error of the top-1 drop those pairs give. The same images are behind both
/// accuracies, so the drop's noise comes from the images the models disagree on alone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairedChange {
    pub images_lost: usize,
    pub images_gained: usize,
    /// Standard error of (original top-1 − converted top-1), as a fraction.
    pub standard_error: f64,
}

impl PairedChange {
    /// From each image's correctness under the original (`a`) and the converted model (`b`).
    pub fn of(a: &[bool], b: &[bool]) -> PairedChange {
        let lost = a.iter().zip(b).filter(|(x, y)| **x && !**y).count();
        let gained = a.iter().zip(b).filter(|(x, y)| !**x && **y).count();
        PairedChange::from_counts(lost, gained, a.len())
    }

    /// From the discordant counts over `n` images: the drop is (lost − gained) / n, and its
    /// variance (lost + gained − (lost − gained)² / n) / n² (the paired difference of two
    /// proportions).
    pub fn from_counts(lost: usize, gained: usize, n: usize) -> PairedChange {
        let (b, c, n) = (lost as f64, gained as f64, n.max(1) as f64);
        let var = (b + c - (b - c) * (b - c) / n).max(0.0) / (n * n);
        PairedChange {
            images_lost: lost,
            images_gained: gained,
            standard_error: var.sqrt(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelStats {
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    pub multiplications: u64,
    /// The model file and its external data files.
    pub file_bytes: u64,
    pub latency_ms: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The engine and its version, e.g. "ONNX Runtime 1.31.1".
    pub engine: String,
    pub original: ModelStats,
    pub converted: ModelStats,
    pub top1_agreement: f64,
    pub max_abs_diff: f64,
    pub relative_l2: f64,
    pub samples: usize,
    pub multiplication_ratio: f64,
    /// Original top-1 minus converted top-1, with labels.
    pub accuracy_drop: Option<f64>,
    /// The images behind that drop and its standard error, with labels.
    pub top1_change: Option<PairedChange>,
    /// The process's peak resident memory, when the system says.
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
}

/// The share of the available memory the parallel runs of one model may take, at most (the
/// images and the other model's outputs need the rest).
const RUNS_MEMORY_SHARE: f64 = 0.5;

/// Stops before `model` runs when its activations at `input_shape`, all alive in each of the
/// parallel runs (an engine's upper bound), and its weights would take more than
/// [`RUNS_MEMORY_SHARE`] of the memory available. A model whose shapes cannot be inferred here is left to the engine.
fn check_runs_fit(model: &OnnxModel, input_shape: &[usize]) -> Result<()> {
    let Some(bytes) = shapes::tensor_bytes_at(model, input_shape) else {
        return Ok(());
    };
    let parallel = rayon::current_num_threads().max(1);
    let need = bytes
        .activations
        .saturating_mul(parallel as u64)
        .saturating_add(bytes.weights);
    Ok(memory::check_fits(
        || {
            format!("running it on {parallel} inputs at once (every activation at input {input_shape:?}, alive in each run; RAYON_NUM_THREADS=1 runs one at a time)")
        },
        need,
        RUNS_MEMORY_SHARE,
        &[],
    )?)
}

pub fn verify(original: &Path, converted: &Path, opts: &VerifyOptions) -> Result<VerifyReport> {
    let a = model::load(original)?;
    let b = model::load(converted)?;
    if let Some((dir, _)) = &opts.data {
        let samples = opts.samples.unwrap_or(usize::MAX);
        for (m, path) in [(&a, original), (&b, converted)] {
            let what = path.display().to_string();
            seen::check_disjoint(&seen::recorded(m)?, &what, dir, opts.skip, samples)?;
        }
    }
    let set = match &opts.data {
        Some((dir, spec)) => EvalSet::images(&a, dir, spec, opts.samples, opts.skip),
        None => EvalSet::random(
            &a,
            &opts.input_shapes,
            opts.samples.unwrap_or(DEFAULT_RANDOM_SAMPLES),
            opts.seed,
        ),
    }
    .with_context(|| format!("verifying {}", original.display()))?;
    for (m, path) in [(&a, original), (&b, converted)] {
        check_runs_fit(m, &set.input_shape).with_context(|| path.display().to_string())?;
    }
    let (engine, ra) = engine::prepare_in_either(opts.engine, &a, &set.input_shape)
        .with_context(|| original.display().to_string())?;
    let rb = engine::prepare(engine, &b, &set.input_shape)
        .with_context(|| converted.display().to_string())?;
    let ya = set.run(ra.as_ref(), "verify original")?;
    let yb = set.run(rb.as_ref(), "verify converted")?;
    let agree = agreement(&ya, &yb)?;
    let (acc_a, acc_b) = (set.accuracy(&ya), set.accuracy(&yb));
    let x0 = &set.inputs[0];
    let stats = |m: &OnnxModel, r: &dyn Run, acc: Option<(f64, f64)>| -> Result<ModelStats> {
        Ok(ModelStats {
            top1: acc.map(|a| a.0),
            top5: acc.map(|a| a.1),
            multiplications: multiplications(m, &set.input_shape)?,
            file_bytes: model::stored_bytes(m),
            latency_ms: latency(r, x0, opts.runs)?,
        })
    };
    let (sa, sb) = (
        stats(&a, ra.as_ref(), acc_a)?,
        stats(&b, rb.as_ref(), acc_b)?,
    );
    Ok(VerifyReport {
        engine: engine.describe()?,
        multiplication_ratio: sa.multiplications as f64 / sb.multiplications.max(1) as f64,
        accuracy_drop: sa.top1.zip(sb.top1).map(|(x, y)| x - y),
        top1_change: set
            .top1_correct(&ya)
            .zip(set.top1_correct(&yb))
            .map(|(x, y)| PairedChange::of(&x, &y)),
        original: sa,
        converted: sb,
        top1_agreement: agree.top1_agreement,
        max_abs_diff: agree.max_abs_diff,
        relative_l2: agree.relative_l2,
        samples: set.len(),
        peak_memory_bytes: {
            let peak = crate::engine::memory::peak_memory_bytes();
            if let Some(bytes) = peak {
                log::info!("verify: peak memory {:.0} MB", bytes as f64 / 1e6);
            }
            peak
        },
    })
}

pub fn render(r: &VerifyReport) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.2}%", 100.0 * x));
    let mut s = format!("engine: {} (1 thread per run)\n", r.engine);
    s.push_str("model      top-1    top-5    multiplications  file bytes   latency ms (median [min, max])\n");
    for (name, m) in [("original", &r.original), ("converted", &r.converted)] {
        s.push_str(&format!(
            "{name:<10} {:<8} {:<8} {:<16} {:<12} {:.2} [{:.2}, {:.2}]\n",
            pct(m.top1),
            pct(m.top5),
            crate::analysis::cost::millions(m.multiplications),
            m.file_bytes,
            m.latency_ms.median,
            m.latency_ms.min,
            m.latency_ms.max
        ));
    }
    s.push_str(&format!(
        "samples {}; top-1 agreement {:.2}%; max |Δ| {:.4e}; relative L2 {:.4e}; multiplications {:.3}x fewer; file {:.2}x smaller{}\n",
        r.samples,
        100.0 * r.top1_agreement,
        r.max_abs_diff,
        r.relative_l2,
        r.multiplication_ratio,
        r.original.file_bytes as f64 / r.converted.file_bytes.max(1) as f64,
        r.accuracy_drop
            .map(|d| format!("; top-1 drop {:.2} points", 100.0 * d))
            .unwrap_or_default(),
    ));
    if let Some(c) = &r.top1_change {
        s.push_str(&format!(
            "top-1 change image by image: {} lost, {} gained (the drop's standard error ±{:.2} points)\n",
            c.images_lost,
            c.images_gained,
            100.0 * c.standard_error
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drop_is_counted_image_by_image_with_its_paired_standard_error() {
        // Images: both right, lost, lost, gained, both wrong.
        let original = [true, true, true, false, false];
        let converted = [true, false, false, true, false];
        let c = PairedChange::of(&original, &converted);
        assert_eq!((c.images_lost, c.images_gained), (2, 1));
        // (2 + 1 − 1/5) / 25 = 0.112.
        assert!((c.standard_error - 0.112f64.sqrt()).abs() < 1e-12);
        // A fold of 244 with 10 lost and 5 gained: ±1.58 points.
        let fold = PairedChange::from_counts(10, 5, 244);
        assert!((100.0 * fold.standard_error - 1.5818).abs() < 1e-3);
        // Models that agree on every image's correctness have no noise in their drop.
        assert_eq!(PairedChange::of(&original, &original).standard_error, 0.0);
    }
}
