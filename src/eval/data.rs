//! Labelled image sets and preprocessing in the shared formats: `labels.csv` (`file,label`) +
//! `classes.txt`, and the preprocessing JSON (resize shorter side, centre crop, channel order,
//! scale, mean, std, NCHW).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use image::imageops::FilterType;
use ndarray::{Array4, ArrayD};
use rayon::prelude::*;
use serde::Deserialize;

use crate::engine::memory;
use crate::setting::Setting;

/// The share of the available memory a set of preprocessed images may take: the runs that use
/// them (engines' tensors, statistics, training) need the rest.
pub const IMAGES_MEMORY_SHARE: f64 = 0.5;

/// `paths` preprocessed by `spec` (read from `spec_path`), all of one shape. The first image is
/// preprocessed alone: it gives the size of each, and when all of them would take more than
/// [`IMAGES_MEMORY_SHARE`] of the memory available the load stops before it starts, with a
/// [`memory::MemoryError`] naming `what` and `count` (the setting that takes fewer).
pub fn preprocess_all(
    spec: &PreprocessSpec,
    spec_path: &Path,
    paths: &[&Path],
    what: &str,
    count: Setting,
) -> Result<Vec<Array4<f32>>> {
    let Some((first_path, rest_paths)) = paths.split_first() else {
        return Ok(Vec::new());
    };
    let first = spec.apply(first_path)?;
    check_images_fit(paths.len(), first.shape(), what, count)?;
    let rest: Vec<Array4<f32>> = rest_paths
        .par_iter()
        .map(|p| spec.apply(p))
        .collect::<Result<_>>()?;
    for (x, path) in rest.iter().zip(rest_paths) {
        ensure!(
            x.shape() == first.shape(),
            "image {} gives an input of shape {:?}, the first gives {:?}: add `center_crop` to {}",
            path.display(),
            x.shape(),
            first.shape(),
            spec_path.display()
        );
    }
    Ok(std::iter::once(first).chain(rest).collect())
}

/// `Err(MemoryError)` when `n` inputs of `shape` as float32 would take more than
/// [`IMAGES_MEMORY_SHARE`] of the memory available; `what` they are for and the `count` setting
/// name them.
pub fn check_images_fit(
    n: usize,
    shape: &[usize],
    what: &str,
    count: Setting,
) -> Result<(), memory::MemoryError> {
    let each = shape.iter().fold(4u64, |b, &d| b.saturating_mul(d as u64));
    memory::check_fits(
        || format!("the {n} {what} ({shape:?} each, as float32)"),
        each.saturating_mul(n as u64),
        IMAGES_MEMORY_SHARE,
        &[count],
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ChannelOrder {
    RGB,
    BGR,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    pub input: String,
    pub layout: String,
    pub resize_shorter: Option<u32>,
    pub center_crop: Option<[u32; 2]>,
    pub channel_order: ChannelOrder,
    pub scale: f32,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl PreprocessSpec {
    pub fn load(path: &Path) -> Result<PreprocessSpec> {
        let shown = path.display();
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read preprocessing spec {shown}"))?;
        let spec: PreprocessSpec = serde_json::from_str(&text)
            .with_context(|| format!("preprocessing spec {shown} is not valid"))?;
        ensure!(
            spec.layout == "NCHW",
            "preprocessing spec {shown}: layout `{}`, only NCHW is supported",
            spec.layout
        );
        ensure!(
            spec.mean.len() == 3 && spec.std.len() == 3,
            "preprocessing spec {shown}: `mean` and `std` need 3 values each (got {} and {})",
            spec.mean.len(),
            spec.std.len()
        );
        ensure!(
            spec.std.iter().all(|&s| s != 0.0 && s.is_finite()),
            "preprocessing spec {shown}: `std` values must be non-zero"
        );
        ensure!(
            spec.resize_shorter != Some(0),
            "preprocessing spec {shown}: `resize_shorter` must be positive"
        );
        ensure!(
            spec.center_crop.is_none_or(|c| c[0] > 0 && c[1] > 0),
            "preprocessing spec {shown}: `center_crop` sizes must be positive"
        );
        Ok(spec)
    }

    /// Reads an image file and returns the model input [1, 3, H, W].
    pub fn apply(&self, image_path: &Path) -> Result<Array4<f32>> {
        let shown = image_path.display();
        let img = image::ImageReader::open(image_path)
            .with_context(|| format!("cannot read image {shown}"))?
            .with_guessed_format()
            .with_context(|| format!("cannot read image {shown}"))?
            .decode()
            .with_context(|| format!("cannot decode image {shown}"))?;
        let mut img = img.to_rgb8();
        if let Some(short) = self.resize_shorter {
            let (w, h) = img.dimensions();
            let (nw, nh) = if w <= h {
                (short, ((h as f64) * short as f64 / w as f64).round() as u32)
            } else {
                (((w as f64) * short as f64 / h as f64).round() as u32, short)
            };
            if (nw, nh) != (w, h) {
                img = image::imageops::resize(&img, nw, nh, FilterType::Triangle);
            }
        }
        let (w, h) = img.dimensions();
        let (ch, cw) = match self.center_crop {
            Some([ch, cw]) => {
                ensure!(
                    ch <= h && cw <= w,
                    "image {shown} is {w}x{h}, smaller than the centre crop {cw}x{ch}"
                );
                (ch, cw)
            }
            None => (h, w),
        };
        let (top, left) = ((h - ch) / 2, (w - cw) / 2);
        let order: [usize; 3] = match self.channel_order {
            ChannelOrder::RGB => [0, 1, 2],
            ChannelOrder::BGR => [2, 1, 0],
        };
        Ok(Array4::from_shape_fn(
            (1, 3, ch as usize, cw as usize),
            |(_, c, y, x)| {
                let p = img.get_pixel(left + x as u32, top + y as u32);
                (p[order[c]] as f32 * self.scale - self.mean[c]) / self.std[c]
            },
        ))
    }
}

/// A labelled image set in the shared format.
#[derive(Debug, Clone)]
pub struct LabelledSet {
    pub dir: PathBuf,
    pub items: Vec<(PathBuf, usize)>,
    pub classes: Vec<String>,
}

impl LabelledSet {
    pub fn load(dir: &Path) -> Result<LabelledSet> {
        let shown = dir.display();
        ensure!(dir.is_dir(), "data folder {shown} does not exist");
        let classes_path = dir.join("classes.txt");
        let classes: Vec<String> = fs::read_to_string(&classes_path)
            .with_context(|| format!("cannot read {}", classes_path.display()))?
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        ensure!(
            !classes.is_empty(),
            "{} lists no classes",
            classes_path.display()
        );
        let labels_path = dir.join("labels.csv");
        let text = fs::read_to_string(&labels_path)
            .with_context(|| format!("cannot read {}", labels_path.display()))?;
        let mut lines = text.lines();
        let header = lines.next().unwrap_or("");
        ensure!(
            header.trim() == "file,label",
            "{}: the header is `{header}`, expected `file,label`",
            labels_path.display()
        );
        let mut items = Vec::new();
        for (i, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let at = || format!("{} line {}", labels_path.display(), i + 2);
            let Some((file, label)) = line.rsplit_once(',') else {
                bail!("{}: `{line}` is not `file,label`", at());
            };
            let label: usize = label
                .trim()
                .parse()
                .with_context(|| format!("{}: label `{label}` is not a class index", at()))?;
            ensure!(
                label < classes.len(),
                "{}: label {label} is out of range (classes.txt has {})",
                at(),
                classes.len()
            );
            items.push((dir.join(file.trim()), label));
        }
        ensure!(
            !items.is_empty(),
            "{} lists no images",
            labels_path.display()
        );
        Ok(LabelledSet {
            dir: dir.to_path_buf(),
            items,
            classes,
        })
    }
}

/// Indices of the `k` largest values (ties: lower index first).
pub fn top_k(scores: &ArrayD<f32>, k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let flat: Vec<f32> = scores.iter().copied().collect();
    idx.sort_by(|&a, &b| flat[b].total_cmp(&flat[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}
