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
#[cfg(feature = "finetune")]
mod train;

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::analysis::select::ConvLayer;
use crate::calibrate;
use crate::codebook::Codebook;
use crate::eval::data::PreprocessSpec;
use crate::onnx::model::OnnxModel;

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
            let t = out
                .graph_mut()
                .initializer
                .iter_mut()
                .find(|t| t.name.as_deref() == Some(name.as_str()))
                .with_context(|| {
                    format!("initializer `{name}` is not in {}", model.path.display())
                })?;
            let dims = crate::onnx::tensor::dims(t)?;
            let elem = crate::onnx::tensor::FloatType::from_onnx(t.data_type.unwrap_or(0))
                .with_context(|| format!("initializer `{name}` is not a float tensor"))?;
            ensure!(
                dims.iter().product::<usize>() == values.len(),
                "initializer `{name}`: {} trained values for shape {dims:?}",
                values.len()
            );
            crate::onnx::tensor::set_f32(t, &dims, values, elem);
        }
        Ok(out)
    }
}

/// Fine-tunes the codebooks of `layers` (each a converted Conv of `original` and its codebook),
/// and with [`FinetuneOptions::train_original_layers`] the layers left original; returns what
/// changed and the report. Callers run [`preflight`] first, before the clustering this follows.
pub fn finetune(
    original: &OnnxModel,
    layers: &[(&ConvLayer, &Codebook)],
    opts: &FinetuneOptions,
) -> Result<(Tuned, FinetuneReport)> {
    #[cfg(feature = "finetune")]
    return train::run(original, layers, opts);
    #[cfg(not(feature = "finetune"))]
    anyhow::bail!(
        "this onnx-dlq was built without the `finetune` feature; cannot fine-tune {} layers of {} on {}",
        layers.len(),
        original.path.display(),
        opts.data.display()
    )
}

/// What can be checked before any clustering: the settings, that the trainer runs every
/// operator of `model`, that the images and their preprocessing spec can be read.
pub fn preflight(model: &OnnxModel, opts: &FinetuneOptions) -> Result<()> {
    check(opts)?;
    #[cfg(feature = "finetune")]
    let graph = graph::Graph::new(model).context("fine-tuning runs the model's own operators")?;
    calibrate::image_files(&opts.data).context("--finetune")?;
    PreprocessSpec::load(&opts.preprocess)?;
    #[cfg(feature = "finetune")]
    {
        let first = calibrate::preprocessed_images(&opts.data, &opts.preprocess, Some(1))?;
        graph.check_backward(&first[0].clone().into_dyn())?;
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
    ensure!(opts.epochs >= 1, "--epochs must be at least 1");
    ensure!(opts.batch >= 1, "--batch must be at least 1");
    ensure!(
        opts.lr.is_finite() && opts.lr > 0.0,
        "--lr must be a positive number, got {}",
        opts.lr
    );
    ensure!(
        (0.0..1.0).contains(&opts.holdout) && opts.holdout > 0.0,
        "the held-out share must be in (0, 1), got {}",
        opts.holdout
    );
    Ok(())
}
