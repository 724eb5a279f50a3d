//! The images a conversion learnt from (calibration, fine-tuning): which ones a step takes from a
//! folder (the first N, or N spread evenly over it), recorded in the converted model's metadata
//! (`onnx-dlq/seen/<step>`) so that `verify` and `stages` refuse to evaluate on them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::onnx::model::OnnxModel;
use crate::proto::StringStringEntryProto;
use crate::setting::{self, Setting};

/// Which images of a folder a step takes (in the folder's order: labels.csv's, else sorted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ImageSelection {
    /// The first N: leaves the rest of the folder for evaluation (`verify --skip N`).
    #[default]
    First,
    /// N spread evenly over the folder: every class of a folder ordered by class.
    Spread,
    /// The last N: leaves the first ones for evaluation (`verify --samples`), so that two
    /// conversions, one calibrated on the first images and one on the last, evaluate together
    /// on the whole folder (two-fold cross-validation).
    Last,
}

impl ImageSelection {
    /// The indices (ascending) of the `count` images taken from a folder of `n`.
    pub fn indices(self, n: usize, count: usize) -> Vec<usize> {
        match self {
            ImageSelection::First => (0..count.min(n)).collect(),
            ImageSelection::Spread => spread_indices(n, count),
            ImageSelection::Last => (n - count.min(n)..n).collect(),
        }
    }
}

/// `count` indices spread evenly over `0..n` (ascending, distinct).
pub fn spread_indices(n: usize, count: usize) -> Vec<usize> {
    let count = count.min(n);
    (0..count)
        .map(|j| ((2 * j + 1) * n) / (2 * count.max(1)))
        .collect()
}

/// The images one step of a conversion used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenImages {
    /// The folder, canonical.
    pub folder: PathBuf,
    pub select: ImageSelection,
    /// Images taken, of `of` in the folder.
    pub count: usize,
    pub of: usize,
}

impl SeenImages {
    /// `count` images of the `of` in `folder`, taken by `select`.
    pub fn new(folder: &Path, select: ImageSelection, count: usize, of: usize) -> SeenImages {
        SeenImages {
            folder: canonical(folder),
            select,
            count: count.min(of),
            of,
        }
    }

    fn indices(&self) -> Vec<usize> {
        self.select.indices(self.of, self.count)
    }
}

/// `path` canonical, or as given when it cannot be resolved (then it matches only itself).
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// The metadata keys of the records: `onnx-dlq/seen/<step>`.
pub const KEY_PREFIX: &str = "onnx-dlq/seen/";

/// Records in `model`'s metadata that `step` ("calibration", "finetune") used `seen`.
pub fn record(model: &mut OnnxModel, step: &str, seen: &SeenImages) -> Result<()> {
    let key = format!("{KEY_PREFIX}{step}");
    let props = &mut model.proto.metadata_props;
    props.retain(|p| p.key.as_deref() != Some(key.as_str()));
    props.push(StringStringEntryProto {
        key: Some(key),
        value: Some(serde_json::to_string(seen)?),
    });
    Ok(())
}

/// Every step's recorded images in `model` (none for a model converted without images).
pub fn recorded(model: &OnnxModel) -> Result<Vec<(String, SeenImages)>> {
    let mut out = Vec::new();
    for p in &model.proto.metadata_props {
        let Some(step) = p.key.as_deref().and_then(|k| k.strip_prefix(KEY_PREFIX)) else {
            continue;
        };
        let seen: SeenImages = serde_json::from_str(p.value.as_deref().unwrap_or_default())
            .with_context(|| format!("metadata entry `{KEY_PREFIX}{step}`"))?;
        out.push((step.to_string(), seen));
    }
    Ok(out)
}

/// Refuses an evaluation of the images `skip..skip + samples` of `folder` when one of the
/// `seen` steps learnt from any of them: accuracy there would not be a held-out one. `what`
/// names the model (or run) in the message.
pub fn check_disjoint(
    seen: &[(String, SeenImages)],
    what: &str,
    folder: &Path,
    skip: usize,
    samples: usize,
) -> Result<()> {
    let folder = canonical(folder);
    for (step, seen) in seen {
        if seen.folder != folder {
            continue;
        }
        let evaluated = skip..skip.saturating_add(samples);
        let taken = seen.indices();
        let overlap = taken.iter().filter(|i| evaluated.contains(i)).count();
        if overlap > 0 {
            let remedy = match seen.select {
                ImageSelection::Last => format!(
                    "{} {} keeps to the images before them",
                    setting::name(Setting::Samples),
                    taken.first().map_or(0, |&i| i.saturating_sub(skip))
                ),
                _ => format!(
                    "{} {} leaves out all of them",
                    setting::name(Setting::Skip),
                    taken.last().map_or(0, |&i| i + 1)
                ),
            };
            bail!(
                "{what}: {step} used {} images of {} ({}); {overlap} of the images to evaluate (from image {skip} on) are among them, so its accuracy there would not be measured on unseen images: evaluate on others ({remedy}, or another folder)",
                seen.count,
                folder.display(),
                match seen.select {
                    ImageSelection::First => "the first ones",
                    ImageSelection::Spread => "spread over the folder",
                    ImageSelection::Last => "the last ones",
                },
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spread indices of a folder ordered by class (CIFAR-10's 10 × 500) cover every class.
    #[test]
    fn spread_indices_are_distinct_ascending_and_cover_the_folder() {
        for (n, count) in [(5000, 500), (256, 26), (10, 1), (3, 3), (7, 2), (5, 9)] {
            let idx = spread_indices(n, count);
            assert_eq!(idx.len(), count.min(n));
            assert!(idx.windows(2).all(|w| w[0] < w[1]), "{n} {count}: {idx:?}");
            assert!(idx.iter().all(|&i| i < n));
        }
        let classes: std::collections::BTreeSet<usize> =
            spread_indices(5000, 256).iter().map(|i| i / 500).collect();
        assert_eq!(classes.len(), 10);
        assert_eq!(ImageSelection::First.indices(10, 3), vec![0, 1, 2]);
        assert_eq!(ImageSelection::Last.indices(10, 3), vec![7, 8, 9]);
        assert_eq!(ImageSelection::Last.indices(2, 3), vec![0, 1]);
    }

    /// Calibrated on the last images: evaluating on the first ones passes, reaching into the
    /// calibration images is refused with the `--samples` that avoids them.
    #[test]
    fn the_last_images_leave_the_first_for_evaluation() {
        let dir = tempfile::tempdir().unwrap();
        let seen = vec![(
            "calibration".to_string(),
            SeenImages::new(dir.path(), ImageSelection::Last, 256, 500),
        )];
        check_disjoint(&seen, "m", dir.path(), 0, 244).unwrap();
        let e = check_disjoint(&seen, "m", dir.path(), 10, 300).unwrap_err();
        assert!(e.to_string().contains("number of samples 234 keeps"), "{e}");
        assert!(e.to_string().contains("the last ones"), "{e}");
    }
}
