//! What a fine-tuning run takes and gives: its options (checked once), the job (teacher,
//! student and layers), the per-epoch and final report, and the trained values.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

use crate::analysis::select::ConvLayer;
use crate::codebook::Codebook;
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
            crate::lower::stored::set_initializer(&mut out, name, values)?;
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

/// Every option's own rule, before any work.
pub fn check_options(opts: &FinetuneOptions) -> Result<()> {
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
