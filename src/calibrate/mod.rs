//! Calibration: what each targeted layer's input looks like on a few unlabelled images
//! (per-channel means and second moments), and codebooks learnt to keep the layer's *outputs*
//! close on such inputs instead of its weights.
//!
//! A column w (N′ channels of one output channel and kernel position) replaced by c changes the
//! output by (w − c)ᵀx at every position. Its mean over the calibration inputs is removed through
//! the bias (Σ (W − W̃)·E[x] per output channel); what remains is (w − c)ᵀ H (w − c), H the
//! covariance of x over the subspace's channels (damped, see [`DEFAULT_DAMPING`]). With
//! H = L Lᵀ (Cholesky) that is the plain squared distance between Lᵀw and Lᵀc: the usual VQ / DL
//! learning runs on the whitened kernel Lᵀw and the atoms are mapped back with L⁻ᵀ (a linear
//! map, so DL's sparse combinations carry over unchanged).
//!
//! Layers are fitted in network order, each on the inputs produced by the model whose earlier
//! layers already carry their approximated weights, so errors do not pile up unseen.
pub mod budget;
pub mod compensate;
pub mod learn;
pub mod linalg;
pub mod patch;
pub mod reach;
pub mod refit;
pub mod stats;
pub mod timing;

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use ndarray::{Array4, ArrayD};
use serde::{Deserialize, Serialize};

use crate::analysis::select::ConvLayer;
use crate::codebook::Codebook;
use crate::engine::Engine;
use crate::eval::data::{preprocess_all, LabelledSet, PreprocessSpec};
use crate::eval::seen::{ImageSelection, SeenImages};
use crate::onnx::model::OnnxModel;
use crate::setting::{require, Setting};

pub use learn::{learn, output_error};
pub use refit::{RefitOptions, RefitOutcome};
pub use stats::{collect, collect_many, InputStats};

/// Ridge added to every input covariance, relative to its mean diagonal: H + λ·mean(diag H)·I.
///
/// Much larger than GPTQ's 0.01 on purpose. The per-column objective ignores correlations
/// between kernel positions (neighbouring pixels), so trusting H fully over-fits it: on SqueezeNet
/// (all eight `expand3x3` at ρ = 10, DL, 256 calibration images, top-1 on the 244 others) λ = 0.01
/// gave 25.4%, 0.3 gave 32.8%, 1 gave 36.9%, 3 gave 37.3%, 10 gave 36.5%, and no whitening at all
/// (λ → ∞, bias correction only) 32.0%, against 29.1% uncalibrated (docs/RESULTS.md). λ = 1 sits
/// on the plateau.
pub const DEFAULT_DAMPING: f64 = 1.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationOptions {
    /// Image folder: the files of `labels.csv` when present (labels ignored), otherwise the
    /// folder's (or its `images/` subfolder's) .png / .jpg / .jpeg files by name.
    pub data: PathBuf,
    pub preprocess: PathBuf,
    /// This many images, taken by `select`.
    pub samples: usize,
    #[serde(default)]
    pub select: ImageSelection,
    pub damping: f64,
    /// Refit each layer's continuous codebook on its full input patches (`None`: keep the
    /// clustered one).
    pub refit: Option<RefitOptions>,
    /// A budget weighs each layer's output error by how much of it reaches the model's output
    /// ([`reach`]); `false`: every layer's own relative output error counts alike.
    #[serde(default = "end_to_end_default")]
    pub end_to_end: bool,
}

fn end_to_end_default() -> bool {
    true
}

/// The calibration options with their images, loaded once per conversion (or by the caller,
/// once for many), and the engine that runs the models on them.
#[derive(Clone, Copy)]
pub struct Calibration<'a> {
    pub options: &'a CalibrationOptions,
    pub inputs: &'a [ArrayD<f32>],
    pub engine: Engine,
}

/// Drops calibration's bias shift from `cb` where `layer` has no place for it: a MatMul has no
/// bias, a Gemm's run-time C takes no constant. Every form refuses a shift it cannot add
/// (`FcLayout::check_bias_shift`), so such a layer keeps its original output mean instead.
pub fn place_bias_shift(cb: &mut Codebook, layer: &ConvLayer, model: &OnnxModel) {
    if !layer.takes_bias_shift(model) {
        cb.bias_shift = None;
    }
}

/// The image files of a calibration folder, in order.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    ensure!(
        dir.is_dir(),
        "calibration folder {} does not exist",
        dir.display()
    );
    if dir.join("labels.csv").is_file() {
        return Ok(LabelledSet::load(dir)?
            .items
            .into_iter()
            .map(|(p, _)| p)
            .collect());
    }
    let is_image = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
    };
    for folder in [dir.to_path_buf(), dir.join("images")] {
        if !folder.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .with_context(|| format!("cannot list {}", folder.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image(p))
            .collect();
        if !files.is_empty() {
            files.sort();
            return Ok(files);
        }
    }
    bail!(
        "calibration folder {} holds no labels.csv and no .png/.jpg/.jpeg images",
        dir.display()
    )
}

/// The calibration inputs, preprocessed for `model`'s input.
pub fn load_inputs(opts: &CalibrationOptions) -> Result<Vec<ArrayD<f32>>> {
    require(opts.samples > 0, Setting::CalibSamples, || {
        "must be at least 1".into()
    })?;
    ensure!(
        opts.damping.is_finite() && opts.damping >= 0.0,
        "calibration damping must be a non-negative number, got {}",
        opts.damping
    );
    if let Some(r) = &opts.refit {
        ensure!(
            r.damping.is_finite() && r.damping >= 0.0,
            "refit damping must be a non-negative number, got {}",
            r.damping
        );
    }
    let images = preprocessed_images(
        &opts.data,
        &opts.preprocess,
        Some(opts.samples),
        opts.select,
        "calibration images",
        Setting::CalibSamples,
    )?;
    if opts.select == ImageSelection::First {
        warn_if_few_classes(
            &opts.data,
            images.len(),
            "calibration",
            &format!("{} spread", crate::setting::name(Setting::CalibSelect)),
        );
    }
    Ok(images.into_iter().map(|a| a.into_dyn()).collect())
}

/// The images calibration takes, as the converted model records them.
pub fn seen_images(opts: &CalibrationOptions) -> Result<SeenImages> {
    let of = image_files(&opts.data)?.len();
    Ok(SeenImages::new(&opts.data, opts.select, opts.samples, of))
}

/// Warns when the first `count` images of a labelled folder hold only a few of its classes (a
/// folder ordered by class, as CIFAR-10's and ImageFolder layouts are): statistics and training
/// on them would see one or two classes only.
pub fn warn_if_few_classes(dir: &Path, count: usize, what: &str, remedy: &str) {
    let Ok(set) = LabelledSet::load(dir) else {
        return;
    };
    let all: std::collections::BTreeSet<usize> = set.items.iter().map(|i| i.1).collect();
    let first: std::collections::BTreeSet<usize> =
        set.items.iter().take(count).map(|i| i.1).collect();
    if first.len() * 2 < all.len().min(count) {
        log::warn!(
            "{what}: the first {count} images of {} hold {} of its {} classes (the folder is ordered by class?); the images taken are the first ones: pass {remedy}, or give a folder whose first images mix the classes",
            dir.display(),
            first.len(),
            all.len()
        );
    }
}

/// `limit` (all when `None`) images of a folder read like [`image_files`], taken by `select`,
/// each preprocessed into a [1, C, H, W] input; all must give the same shape, and all must fit
/// in memory (`what` they are for and the `count` setting name them when they do not).
pub fn preprocessed_images(
    dir: &Path,
    preprocess: &Path,
    limit: Option<usize>,
    select: ImageSelection,
    what: &str,
    count: Setting,
) -> Result<Vec<Array4<f32>>> {
    let all = image_files(dir)?;
    let spec = PreprocessSpec::load(preprocess)?;
    let n = limit.unwrap_or(all.len()).min(all.len());
    let files: Vec<&Path> = select
        .indices(all.len(), n)
        .into_iter()
        .map(|i| all[i].as_path())
        .collect();
    preprocess_all(&spec, preprocess, &files, what, count)
}
