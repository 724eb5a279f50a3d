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

use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use ndarray::{Array2, Array4, ArrayD, ArrayView4, Axis, Ix3};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::codebook::{self, ClusterParams, Codebook, SubspacePlan};
use crate::engine::runner::Runner;
use crate::eval::data::{LabelledSet, PreprocessSpec};
use crate::onnx::model::OnnxModel;

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
    /// The first this many images.
    pub samples: usize,
    pub damping: f64,
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
    ensure!(opts.samples > 0, "--calib-samples must be at least 1");
    ensure!(
        opts.damping.is_finite() && opts.damping >= 0.0,
        "calibration damping must be a non-negative number, got {}",
        opts.damping
    );
    let files = image_files(&opts.data)?;
    let spec = PreprocessSpec::load(&opts.preprocess)?;
    let n = opts.samples.min(files.len());
    let inputs: Vec<ArrayD<f32>> = files[..n]
        .par_iter()
        .map(|p| spec.apply(p).map(|a| a.into_dyn()))
        .collect::<Result<_>>()?;
    for (x, p) in inputs.iter().zip(&files) {
        ensure!(
            x.shape() == inputs[0].shape(),
            "calibration image {} gives an input of shape {:?}, the first gives {:?}",
            p.display(),
            x.shape(),
            inputs[0].shape()
        );
    }
    Ok(inputs)
}

/// Per-channel sums and channel × channel sums of products of a layer's input over every
/// spatial position of every calibration image.
#[derive(Debug, Clone, PartialEq)]
pub struct InputStats {
    pub channels: usize,
    pub positions: u64,
    sum: Vec<f64>,
    /// Row-major channels × channels.
    products: Vec<f64>,
}

impl InputStats {
    pub fn new(channels: usize) -> InputStats {
        InputStats {
            channels,
            positions: 0,
            sum: vec![0.0; channels],
            products: vec![0.0; channels * channels],
        }
    }

    /// Statistics of one activation [B, N, spatial…].
    pub fn of(x: &ArrayD<f32>) -> Result<InputStats> {
        ensure!(
            x.ndim() >= 3,
            "layer input of shape {:?}: expected [batch, channels, spatial…]",
            x.shape()
        );
        let (b, n) = (x.shape()[0], x.shape()[1]);
        let spatial: usize = x.shape()[2..].iter().product();
        let x3 = x
            .view()
            .into_shape_with_order((b, n, spatial))
            .context("layer input is not contiguous")?
            .into_dimensionality::<Ix3>()?;
        let mut s = InputStats::new(n);
        for img in x3.axis_iter(Axis(0)) {
            let gram = img.dot(&img.t());
            for (acc, &g) in s.products.iter_mut().zip(gram.iter()) {
                *acc += g as f64;
            }
            for (c, row) in img.axis_iter(Axis(0)).enumerate() {
                s.sum[c] += row.iter().map(|&v| v as f64).sum::<f64>();
            }
            s.positions += spatial as u64;
        }
        Ok(s)
    }

    pub fn merge(&mut self, other: &InputStats) {
        assert_eq!(self.channels, other.channels);
        self.positions += other.positions;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.products.iter_mut().zip(&other.products) {
            *a += b;
        }
    }

    /// E[x] per channel.
    pub fn mean(&self) -> Vec<f64> {
        let n = self.positions.max(1) as f64;
        self.sum.iter().map(|s| s / n).collect()
    }

    /// E[x xᵀ] over `channels`.
    pub fn second_moment(&self, channels: Range<usize>) -> Array2<f64> {
        let n = self.positions.max(1) as f64;
        let d = channels.len();
        Array2::from_shape_fn((d, d), |(i, j)| {
            self.products[(channels.start + i) * self.channels + channels.start + j] / n
        })
    }

    /// E[(x − μ)(x − μ)ᵀ] over `channels`.
    pub fn covariance(&self, channels: Range<usize>) -> Array2<f64> {
        let mean = self.mean();
        let mut h = self.second_moment(channels.clone());
        for i in 0..channels.len() {
            for j in 0..channels.len() {
                h[[i, j]] -= mean[channels.start + i] * mean[channels.start + j];
            }
        }
        h
    }
}

/// Runs `model` with `tensor` exposed on every input and sums its statistics (in input order,
/// so the result does not depend on the thread count).
pub fn collect(model: &OnnxModel, inputs: &[ArrayD<f32>], tensor: &str) -> Result<InputStats> {
    Ok(collect_many(model, inputs, &[tensor.to_string()])?.swap_remove(0))
}

/// [`collect`] for several tensors in one pass over the inputs.
pub fn collect_many(
    model: &OnnxModel,
    inputs: &[ArrayD<f32>],
    tensors: &[String],
) -> Result<Vec<InputStats>> {
    ensure!(!inputs.is_empty(), "no calibration inputs");
    let mut unique: Vec<String> = tensors.to_vec();
    unique.sort();
    unique.dedup();
    let runner = Runner::with_outputs(model, inputs[0].shape(), &unique)?;
    // Inputs in parallel by chunks, merged in input order: bounded memory (a chunk's
    // statistics, not every input's), and sums that do not depend on the thread count.
    let chunk = 4 * rayon::current_num_threads().max(1);
    let mut total: Option<Vec<InputStats>> = None;
    for part in inputs.chunks(chunk) {
        let per_input: Vec<Vec<InputStats>> = part
            .par_iter()
            .map(|x| runner.run_all(x)?.iter().map(InputStats::of).collect())
            .collect::<Result<_>>()
            .with_context(|| format!("collecting the statistics of {unique:?}"))?;
        for stats in per_input {
            match &mut total {
                None => total = Some(stats),
                Some(t) => t.iter_mut().zip(&stats).for_each(|(t, s)| t.merge(s)),
            }
        }
    }
    let total = total.expect("at least one input");
    Ok(tensors
        .iter()
        .map(|t| total[unique.binary_search(t).expect("deduplicated from tensors")].clone())
        .collect())
}

/// Lower-triangular L with L Lᵀ = h + damping·mean(diag h)·I (row-major d × d). A matrix that is
/// zero (a subspace whose inputs never fire) gives the identity: every error then counts alike.
fn damped_cholesky(h: &Array2<f64>, damping: f64) -> Vec<f64> {
    let d = h.nrows();
    let mean_diag = (0..d).map(|i| h[[i, i]]).sum::<f64>() / d as f64;
    let mut l = vec![0f64; d * d];
    if mean_diag.is_nan() || mean_diag <= 0.0 {
        (0..d).for_each(|i| l[i * d + i] = 1.0);
        return l;
    }
    // A tiny absolute floor on top of the relative ridge keeps the pivots positive when the
    // damping is 0 and channels are exactly dependent.
    let ridge = damping * mean_diag + 1e-10 * mean_diag;
    for i in 0..d {
        for j in 0..=i {
            let mut s = h[[i, j]] + if i == j { ridge } else { 0.0 };
            for k in 0..j {
                s -= l[i * d + k] * l[j * d + k];
            }
            l[i * d + j] = if i == j {
                s.max(1e-12 * mean_diag).sqrt()
            } else {
                s / l[j * d + j]
            };
        }
    }
    l
}

/// Relative output error of replacing `kernel` by `approx`, from the calibration statistics:
/// sqrt(Σ eᵀHe / Σ wᵀHw) over all columns, H = E[x xᵀ] over all input channels.
pub fn output_error(kernel: ArrayView4<f32>, approx: ArrayView4<f32>, stats: &InputStats) -> f64 {
    let (m, n, kh, kw) = kernel.dim();
    let h = stats.covariance(0..n);
    let (mut num, mut den) = (0f64, 0f64);
    let mut e = vec![0f64; n];
    let mut w = vec![0f64; n];
    for k in 0..m {
        for u in 0..kh {
            for v in 0..kw {
                for c in 0..n {
                    w[c] = kernel[[k, c, u, v]] as f64;
                    e[c] = w[c] - approx[[k, c, u, v]] as f64;
                }
                for i in 0..n {
                    let (mut he, mut hw) = (0f64, 0f64);
                    for j in 0..n {
                        he += h[[i, j]] * e[j];
                        hw += h[[i, j]] * w[j];
                    }
                    num += e[i] * he;
                    den += w[i] * hw;
                }
            }
        }
    }
    if den <= 0.0 {
        return 0.0;
    }
    (num / den).max(0.0).sqrt()
}

/// The codebook of `kernel` that minimises the layer's output error on the calibration inputs
/// described by `stats` (see the module header), with the output mean corrected via the bias.
pub fn learn(
    kernel: ArrayView4<f32>,
    params: &ClusterParams,
    stats: &InputStats,
    damping: f64,
) -> Result<Codebook> {
    let (m, n, kh, kw) = kernel.dim();
    ensure!(
        stats.channels == n,
        "calibration statistics have {} channels, the kernel {n}",
        stats.channels
    );
    let plan = SubspacePlan::new(n, params.subspace);
    let factors: Vec<(Range<usize>, Vec<f64>)> = plan
        .ranges()
        .map(|r| {
            let l = damped_cholesky(&stats.covariance(r.clone()), damping);
            (r, l)
        })
        .collect();
    // Whitened kernel: Lᵀw per subspace column.
    let mut whitened = Array4::<f32>::zeros((m, n, kh, kw));
    for (r, l) in &factors {
        let d = r.len();
        for k in 0..m {
            for u in 0..kh {
                for v in 0..kw {
                    for i in 0..d {
                        let mut s = 0f64;
                        for j in i..d {
                            s += l[j * d + i] * kernel[[k, r.start + j, u, v]] as f64;
                        }
                        whitened[[k, r.start + i, u, v]] = s as f32;
                    }
                }
            }
        }
    }
    let mut cb = codebook::learn(whitened.view(), params)?;
    // Atoms back to weight space: solve Lᵀa = a′ by back substitution.
    for (sc, (r, l)) in cb.subspaces.iter_mut().zip(&factors) {
        let d = r.len();
        for row in sc.atoms.data.chunks_exact_mut(d) {
            let mut a = vec![0f64; d];
            for i in (0..d).rev() {
                let mut s = row[i] as f64;
                for j in i + 1..d {
                    s -= l[j * d + i] * a[j];
                }
                a[i] = s / l[i * d + i];
            }
            for (x, &y) in row.iter_mut().zip(&a) {
                *x = y as f32;
            }
        }
    }
    let approx = cb.reconstruct();
    let mean = stats.mean();
    let shift = (0..m)
        .map(|k| {
            let mut s = 0f64;
            for c in 0..n {
                for u in 0..kh {
                    for v in 0..kw {
                        s += (kernel[[k, c, u, v]] - approx[[k, c, u, v]]) as f64 * mean[c];
                    }
                }
            }
            s as f32
        })
        .collect();
    cb.bias_shift = Some(shift);
    Ok(cb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codebook::Method;
    use ndarray::Array;
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{RngExt, SeedableRng};

    fn random(shape: &[usize], rng: &mut Xoshiro256PlusPlus) -> ArrayD<f32> {
        Array::from_shape_fn(ndarray::IxDyn(shape), |_| rng.random_range(-1.0..1.0))
    }

    #[test]
    fn statistics_are_means_and_second_moments_over_positions() {
        let x = ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 2, 1, 2]), vec![1.0, 3.0, 2.0, -2.0])
            .unwrap();
        let s = InputStats::of(&x).unwrap();
        assert_eq!(s.positions, 2);
        assert_eq!(s.mean(), vec![2.0, 0.0]);
        let h = s.second_moment(0..2);
        assert_eq!(h[[0, 0]], 5.0);
        assert_eq!(h[[0, 1]], -2.0);
        assert_eq!(h[[1, 1]], 4.0);
        let cov = s.covariance(0..2);
        assert_eq!((cov[[0, 0]], cov[[0, 1]], cov[[1, 1]]), (1.0, -2.0, 4.0));
    }

    #[test]
    fn cholesky_factor_reproduces_the_damped_matrix() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let x = random(&[3, 6, 5, 5], &mut rng);
        let h = InputStats::of(&x).unwrap().second_moment(0..6);
        let l = damped_cholesky(&h, 0.01);
        let mean_diag = (0..6).map(|i| h[[i, i]]).sum::<f64>() / 6.0;
        for i in 0..6 {
            for j in 0..6 {
                let llt: f64 = (0..6).map(|k| l[i * 6 + k] * l[j * 6 + k]).sum();
                let want = h[[i, j]] + if i == j { 0.01 * mean_diag } else { 0.0 };
                assert!((llt - want).abs() < 1e-9 * mean_diag, "{i} {j}");
            }
        }
        // All-zero inputs: identity, no NaN.
        let l0 = damped_cholesky(&Array2::zeros((3, 3)), 0.01);
        assert_eq!(l0, vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    }

    /// Inputs that are large on some channels and tiny on others: the calibrated codebook
    /// spends its representatives where the output is sensitive, so its output error is lower
    /// than the weight-error codebook's (and its weight error higher).
    #[test]
    fn calibrated_codebook_lowers_the_output_error() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let mut x = random(&[4, 8, 6, 6], &mut rng);
        for mut img in x.axis_iter_mut(Axis(0)) {
            for c in 4..8 {
                img.index_axis_mut(Axis(0), c).mapv_inplace(|v| v * 0.01);
            }
        }
        let stats = InputStats::of(&x).unwrap();
        let kernel = Array4::from_shape_fn((16, 8, 3, 3), |_| rng.random_range(-1.0f32..1.0));
        for method in [Method::Vq, Method::Dl] {
            let p = ClusterParams::new(method, 4.0);
            let plain = codebook::learn(kernel.view(), &p).unwrap();
            let cal = learn(kernel.view(), &p, &stats, 0.01).unwrap();
            let out_plain = output_error(kernel.view(), plain.reconstruct().view(), &stats);
            let out_cal = output_error(kernel.view(), cal.reconstruct().view(), &stats);
            assert!(
                out_cal < 0.8 * out_plain,
                "{method:?}: calibrated {out_cal} vs plain {out_plain}"
            );
            assert!(cal.relative_error(kernel.view()) > plain.relative_error(kernel.view()));
            assert_eq!(cal.bias_shift.as_ref().unwrap().len(), 16);
        }
    }

    /// With the identity as H (white inputs, no damping), whitening changes nothing.
    #[test]
    fn white_inputs_give_the_plain_codebook() {
        let mut stats = InputStats::new(8);
        stats.positions = 1;
        for c in 0..8 {
            stats.products[c * 8 + c] = 1.0;
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(6);
        let kernel = Array4::from_shape_fn((8, 8, 3, 3), |_| rng.random_range(-1.0f32..1.0));
        let p = ClusterParams::new(Method::Vq, 4.0);
        let plain = codebook::learn(kernel.view(), &p).unwrap();
        let cal = learn(kernel.view(), &p, &stats, 0.0).unwrap();
        assert_eq!(plain.subspaces, cal.subspaces);
        assert_eq!(cal.bias_shift, Some(vec![0.0; 8]));
    }
}
