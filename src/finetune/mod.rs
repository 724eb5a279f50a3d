//! Distillation fine-tuning (the paper's re-training, without labels): the original model is the
//! teacher, the converted model the student, and the converted layers' continuous parameters
//! (atoms, Λ's coefficients, centroids, biases) are trained to match the teacher's outputs on
//! augmented images, Γ fixed. The model's own operators run forward and backward on candle
//! ([`graph`]); the parameters that are best on a held-out split of the images (lowest
//! distillation loss) are kept, so fine-tuning never ends worse than it started on that split.

#[cfg(feature = "finetune")]
pub mod graph;
pub mod job;
pub mod stored;
#[cfg(feature = "finetune")]
mod train;
#[cfg(feature = "finetune")]
pub mod variables;

use anyhow::{Context, Result};

use crate::analysis::select::ConvLayer;
use crate::codebook::Codebook;
use crate::eval::data::PreprocessSpec;
use crate::eval::seen::{self, ImageSelection, SeenImages};
use crate::onnx::model::OnnxModel;
use crate::setting::{require, Setting};

pub use job::{
    check_options, image_labels, EpochReport, FinetuneOptions, FinetuneReport, Job, Tuned,
    DEFAULT_HOLDOUT,
};

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
    check_options(opts)?;
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
