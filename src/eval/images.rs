//! Image sets as calibration, fine-tuning and evaluation take them: a folder's images (its
//! `labels.csv` order, or its image files sorted), the ones a selection takes, preprocessed
//! into inputs that must fit in memory, and a warning when the first ones hold few classes.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use ndarray::Array4;

use crate::eval::data::{preprocess_all, LabelledSet, PreprocessSpec};
use crate::eval::seen::ImageSelection;
use crate::setting::Setting;

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
