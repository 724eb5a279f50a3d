//! Distillation fine-tuning (the paper's re-training, without labels): the original model is the
//! teacher, the converted model the student, and the converted layers' continuous parameters
//! (atoms, Λ's coefficients, centroids, biases) are trained to match the teacher's outputs on
//! augmented images, Γ fixed. The model's own operators run forward and backward on candle
//! ([`graph`]); the parameters that are best on a held-out split of the images (lowest
//! distillation loss) are kept, so fine-tuning never ends worse than it started on that split.

#[cfg(feature = "finetune")]
pub mod graph;
#[cfg(feature = "finetune")]
pub mod params;
pub mod stored;
#[cfg(feature = "finetune")]
mod train;

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::analysis::select::ConvLayer;
use crate::codebook::Codebook;
use crate::eval::data::PreprocessSpec;
use crate::eval::seen::{self, ImageSelection, SeenImages};
use crate::onnx::model::OnnxModel;
use crate::setting::{require, Setting};

/// Held-out share of the fine-tuning images (model selection; never trained on).
pub const DEFAULT_HOLDOUT: f64 = 0.1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneOptions {
    /// Image folder, read like `--calibrate`'s (labels, when present, are not used).
    pub data: PathBuf,
    pub preprocess: PathBuf,
    /// The first this many images (all when `None`).
    pub samples: Option<usize>,
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    pub holdout: f64,
    pub seed: u64,
    /// When training diverges: keep the un-fine-tuned codebooks instead of failing.
    pub keep_on_divergence: bool,
    /// Also train the weights and biases of the Conv, Gemm and MatMul layers left original
    /// (the paper's re-training of the whole network between stages).
    #[serde(default)]
    pub train_original_layers: bool,
    /// Add the cross-entropy with the folder's labels (`labels.csv`) to the training loss.
    #[serde(default)]
    pub labels: bool,
    /// DKM's soft assignments for k-means layers, at this temperature factor (`None`: Γ
    /// fixed); hardened to the nearest centroid when evaluated and written.
    #[serde(default)]
    pub soft_assignments: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub heldout_loss: f64,
    /// Share of held-out images where student and teacher agree on the top-1 class.
    pub heldout_agreement: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneReport {
    pub train_images: usize,
    pub heldout_images: usize,
    /// The held-out figures before fine-tuning.
    pub start: EpochReport,
    pub epochs: Vec<EpochReport>,
    /// The epoch whose parameters were kept; `None`: no epoch beat the start, nothing changed.
    pub best_epoch: Option<usize>,
    /// Why training stopped early, when it diverged.
    pub diverged: Option<String>,
    /// Initializers of the layers left original that were trained (`--train-original-layers`).
    #[serde(default)]
    pub trained_original_tensors: usize,
    /// The process's peak resident memory after training (Linux's VmHWM), when known.
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
}

/// What fine-tuning changed.
#[derive(Debug, Clone)]
pub struct Tuned {
    /// One per converted layer, in the order given.
    pub codebooks: Vec<Codebook>,
    /// The trained values of the layers left original, by initializer name (empty without
    /// `--train-original-layers`, or when no epoch beat the start).
    pub original_weights: Vec<(String, Vec<f32>)>,
}

impl Tuned {
    /// `model` with [`Tuned::original_weights`] in place (each initializer keeps its shape and
    /// element type).
    pub fn apply_original_weights(&self, model: &OnnxModel) -> Result<OnnxModel> {
        let mut out = model.clone();
        for (name, values) in &self.original_weights {
            stored::set_initializer(&mut out, name, values)?;
        }
        Ok(out)
    }
}

/// What to fine-tune.
pub struct Job<'a> {
    /// The teacher: the original model.
    pub teacher: &'a OnnxModel,
    /// Where the student's layers left original come from: the teacher, or (fine-tuning a
    /// converted file) the teacher with that file's values of them.
    pub student: &'a OnnxModel,
    /// The converted layers (layers of `teacher`) and their codebooks.
    pub layers: Vec<(&'a ConvLayer, &'a Codebook)>,
    /// Node indices of converted layers whose bias stays as it is (their stored form has no
    /// place for one).
    pub fixed_bias: Vec<usize>,
}

/// Fine-tunes the codebooks of `layers` (each a converted Conv of `original` and its codebook),
/// and with [`FinetuneOptions::train_original_layers`] the layers left original; returns what
/// changed and the report. Callers run [`preflight`] first, before the clustering this follows.
pub fn finetune(
    original: &OnnxModel,
    layers: &[(&ConvLayer, &Codebook)],
    opts: &FinetuneOptions,
) -> Result<(Tuned, FinetuneReport)> {
    let job = Job {
        teacher: original,
        student: original,
        layers: layers.to_vec(),
        fixed_bias: vec![],
    };
    finetune_job(&job, opts)
}

/// Runs `job` (see [`finetune`]).
pub fn finetune_job(job: &Job, opts: &FinetuneOptions) -> Result<(Tuned, FinetuneReport)> {
    #[cfg(feature = "finetune")]
    return train::run(job, opts);
    #[cfg(not(feature = "finetune"))]
    anyhow::bail!(
        "this onnx-dlq was built without the `finetune` feature; cannot fine-tune {} layers of {} on {}",
        job.layers.len(),
        job.teacher.path.display(),
        opts.data.display()
    )
}

/// What one training step keeps per image, in multiples of the model's tensors at the input's
/// size: the student's activations kept for the backward pass, their gradients, and the
/// teacher's outputs.
#[cfg(feature = "finetune")]
const TRAINING_TENSOR_COPIES: u64 = 3;

/// Stops before training when a batch of `batch` images of `input` would keep more than half
/// of the memory available ([`TRAINING_TENSOR_COPIES`] of every activation of `model` per
/// image; the weights do not grow with the batch).
/// A model whose shapes cannot be inferred here is left unchecked.
#[cfg(feature = "finetune")]
fn check_training_fits(model: &OnnxModel, input: &[usize], batch: usize) -> Result<()> {
    let Some(bytes) = crate::analysis::shapes::tensor_bytes_at(model, input) else {
        return Ok(());
    };
    let need = bytes
        .activations
        .saturating_mul(TRAINING_TENSOR_COPIES)
        .saturating_mul(batch as u64);
    Ok(crate::engine::memory::check_fits(
        || {
            format!("a fine-tuning batch of {batch} images of {input:?} (the model's activations {TRAINING_TENSOR_COPIES} times per image)")
        },
        need,
        0.5,
        &[Setting::Batch],
    )?)
}

/// What can be checked before any clustering: the settings, that the trainer runs every
/// operator of `model`, that the images and their preprocessing spec can be read.
pub fn preflight(model: &OnnxModel, opts: &FinetuneOptions) -> Result<()> {
    check(opts)?;
    #[cfg(feature = "finetune")]
    let graph = graph::Graph::new(model).context("fine-tuning runs the model's own operators")?;
    crate::eval::images::image_files(&opts.data).context("the fine-tuning images")?;
    PreprocessSpec::load(&opts.preprocess)?;
    if opts.labels {
        image_labels(&opts.data, 1)?;
    }
    #[cfg(feature = "finetune")]
    {
        let first = crate::eval::images::preprocessed_images(
            &opts.data,
            &opts.preprocess,
            Some(1),
            ImageSelection::First,
            "fine-tuning images",
            crate::setting::Setting::FinetuneSamples,
        )?;
        graph.check_backward(&first[0].clone().into_dyn())?;
        // The images are loaded after the conversion: their memory is checked before it.
        let all = crate::eval::images::image_files(&opts.data)?.len();
        let n = opts.samples.map_or(all, |s| s.min(all));
        crate::eval::data::check_images_fit(
            n,
            first[0].shape(),
            "fine-tuning images",
            crate::setting::Setting::FinetuneSamples,
        )?;
        check_training_fits(model, first[0].shape(), opts.batch)?;
    }
    #[cfg(not(feature = "finetune"))]
    anyhow::bail!(
        "this onnx-dlq was built without the `finetune` feature (candle); rebuild with default features to fine-tune {}",
        model.path.display()
    );
    #[cfg(feature = "finetune")]
    Ok(())
}

pub(crate) fn check(opts: &FinetuneOptions) -> Result<()> {
    require(opts.epochs >= 1, Setting::Epochs, || {
        "must be at least 1".into()
    })?;
    require(opts.batch >= 1, Setting::Batch, || {
        "must be at least 1".into()
    })?;
    require(
        opts.lr.is_finite() && opts.lr > 0.0,
        Setting::LearningRate,
        || format!("must be a positive number, got {}", opts.lr),
    )?;
    ensure!(
        (0.0..1.0).contains(&opts.holdout) && opts.holdout > 0.0,
        "the held-out share must be in (0, 1), got {}",
        opts.holdout
    );
    if let Some(t) = opts.soft_assignments {
        require(t.is_finite() && t > 0.0, Setting::SoftTemperature, || {
            format!("must be a positive number, got {t}")
        })?;
    }
    Ok(())
}

/// The images fine-tuning takes (the first `samples`, all by default), as the output records
/// them.
pub fn seen_images(opts: &FinetuneOptions) -> Result<SeenImages> {
    let of = crate::eval::images::image_files(&opts.data)?.len();
    let count = opts.samples.unwrap_or(of);
    Ok(SeenImages::new(
        &opts.data,
        ImageSelection::First,
        count,
        of,
    ))
}

/// Fine-tunes an already converted model (`onnx-dlq finetune`): reads the codebooks `converted`
/// holds ([`stored`]), trains them against `original` as the teacher, and returns `converted`
/// with the trained values in the same initializers (the graph unchanged) and the report.
/// Callers run [`preflight`] first (once, however many models they fine-tune).
pub fn finetune_converted(
    original: &OnnxModel,
    converted: &OnnxModel,
    opts: &FinetuneOptions,
) -> Result<(OnnxModel, FinetuneReport)> {
    require(
        opts.soft_assignments.is_none(),
        Setting::SoftAssignments,
        || {
            format!(
            "re-assign Γ, which fine-tuning a converted file (and `stages`) does not write back yet; use them while converting ({})",
            crate::setting::name(Setting::Finetune)
        )
        },
    )?;
    let layers = stored::read(original, converted)?;
    let student = student_base(original, converted)?;
    let job = Job {
        teacher: original,
        student: &student,
        layers: layers.iter().map(|s| (&s.layer, &s.codebook)).collect(),
        fixed_bias: layers
            .iter()
            .filter(|s| !s.has_bias())
            .map(|s| s.layer.node_index)
            .collect(),
    };
    let (tuned, report) = finetune_job(&job, opts)?;
    let mut out = tuned.apply_original_weights(converted)?;
    for (s, cb) in layers.iter().zip(&tuned.codebooks) {
        if s.layer.fc.is_some() {
            // Held fixed in the student (its W̃ in place), as `convert --finetune` does.
            continue;
        }
        s.write(&mut out, cb)?;
        let error = cb.relative_error(s.layer.kernel_f32(original)?.view());
        record_error(&mut out, &s.layer.name, error)?;
    }
    seen::record(&mut out, "finetune", &seen_images(opts)?)?;
    Ok((out, report))
}

/// `original` with `converted`'s values of the initializers both hold with the same shape: the
/// layers left original as the converted file has them (trained by an earlier
/// `--train-original-layers`, say).
fn student_base(original: &OnnxModel, converted: &OnnxModel) -> Result<OnnxModel> {
    let mut out = original.clone();
    for t in &converted.graph().initializer {
        let Some(name) = t.name.as_deref() else {
            continue;
        };
        let Some(mine) = original.initializer(name) else {
            continue;
        };
        let dims = crate::onnx::tensor::dims(t)?;
        if dims != crate::onnx::tensor::dims(mine)?
            || crate::onnx::tensor::FloatType::from_onnx(t.data_type.unwrap_or(0)).is_none()
        {
            continue;
        }
        let values: Vec<f32> = converted.tensor_f32(t)?.iter().copied().collect();
        stored::set_initializer(&mut out, name, &values)?;
    }
    Ok(out)
}

/// Updates the weight error recorded in layer `layer`'s metadata entry.
fn record_error(model: &mut OnnxModel, layer: &str, error: f64) -> Result<()> {
    let key = format!("onnx-dlq/{layer}");
    let entry = model
        .proto
        .metadata_props
        .iter_mut()
        .find(|p| p.key.as_deref() == Some(key.as_str()))
        .with_context(|| format!("no metadata entry `{key}`"))?;
    let mut settings: crate::lower::LayerSettings =
        serde_json::from_str(entry.value.as_deref().unwrap_or_default())?;
    settings.relative_error = error;
    entry.value = Some(serde_json::to_string(&settings)?);
    Ok(())
}

/// The report as text: the start and every epoch on the held-out images, and what was kept.
pub fn render(r: &FinetuneReport) -> String {
    let mut out = format!(
        "fine-tune: {} images trained on, {} held out\n",
        r.train_images, r.heldout_images
    );
    for e in std::iter::once(&r.start).chain(&r.epochs) {
        let train = match e.train_loss.is_finite() {
            true => format!("{:.5}", e.train_loss),
            false => "-".to_string(),
        };
        out += &format!(
            "epoch {}: train loss {train}, held-out loss {:.5}, agreement {:.2}% ({:.0}s)\n",
            e.epoch,
            e.heldout_loss,
            e.heldout_agreement * 100.0,
            e.seconds
        );
    }
    out += &match r.best_epoch {
        Some(e) => format!("kept epoch {e} (lowest held-out loss)\n"),
        None => "no epoch beat the start: the parameters are unchanged\n".to_string(),
    };
    if let Some(why) = &r.diverged {
        out += &format!("stopped early: {why}\n");
    }
    if let Some(bytes) = r.peak_memory_bytes {
        out += &format!("peak memory {:.0} MB\n", bytes as f64 / 1e6);
    }
    out
}

pub use crate::engine::memory::peak_memory_bytes;

/// The labels of the first `count` images of `dir` (its `labels.csv`, in the order
/// `eval::images::image_files` reads the images).
pub fn image_labels(dir: &std::path::Path, count: usize) -> Result<Vec<u32>> {
    ensure!(
        dir.join("labels.csv").is_file(),
        "{}: {} has no labels.csv (`file,label` lines, with classes.txt)",
        crate::setting::name(Setting::FinetuneLabels),
        dir.display()
    );
    let set = crate::eval::data::LabelledSet::load(dir)?;
    Ok(set.items.iter().take(count).map(|i| i.1 as u32).collect())
}
