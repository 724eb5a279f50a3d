//! Output-aware codebooks: the kernel whitened by the damped input covariance is clustered as
//! usual, the atoms mapped back, and the output mean corrected through the bias (see the module
//! header of `calibrate`).

use std::ops::Range;

use anyhow::{ensure, Result};
use ndarray::{Array4, ArrayView4};

use crate::codebook::{self, Codebook, SubspacePlan, ValidParams};

use super::linalg::damped_cholesky;
use super::InputStats;

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
    params: &ValidParams,
    stats: &InputStats,
    damping: f64,
) -> Result<Codebook> {
    let (m, n, kh, kw) = kernel.dim();
    ensure!(
        stats.channels == n,
        "calibration statistics have {} channels, the kernel {n}",
        stats.channels
    );
    let mut cb = if params.shared {
        let mut cb =
            codebook::learn_weighted(kernel, params, Some(&channel_weights(stats, n, damping)))?;
        super::compensate::reassign(kernel, &mut cb, stats, damping);
        cb
    } else {
        whitened_codebook(kernel, params, stats, damping)?
    };
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

/// A shared codebook's per-channel weights: the damped diagonal of H = E[x xᵀ] (a palette is
/// shared by subspaces whose covariances differ, so it weighs coordinates, it cannot whiten).
fn channel_weights(stats: &InputStats, n: usize, damping: f64) -> Vec<f64> {
    let h = stats.covariance(0..n);
    let mean_diag = (0..n).map(|i| h[[i, i]]).sum::<f64>() / n as f64;
    if !mean_diag.is_finite() || mean_diag <= 0.0 {
        return vec![1.0; n];
    }
    (0..n)
        .map(|i| h[[i, i]].max(0.0) + (damping + 1e-10) * mean_diag)
        .collect()
}

/// Per-subspace codebooks of the kernel whitened by each subspace's damped covariance, mapped
/// back to weight space.
fn whitened_codebook(
    kernel: ArrayView4<f32>,
    params: &ValidParams,
    stats: &InputStats,
    damping: f64,
) -> Result<Codebook> {
    let (m, n, kh, kw) = kernel.dim();
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
    Ok(cb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codebook::{ClusterParams, Method};
    use ndarray::Array;
    use ndarray::{ArrayD, Axis};
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{RngExt, SeedableRng};

    fn random(shape: &[usize], rng: &mut Xoshiro256PlusPlus) -> ArrayD<f32> {
        Array::from_shape_fn(ndarray::IxDyn(shape), |_| rng.random_range(-1.0..1.0))
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
            let p = ClusterParams::new(method, 4.0).check().unwrap();
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
        let p = ClusterParams::new(Method::Vq, 4.0).check().unwrap();
        let plain = codebook::learn(kernel.view(), &p).unwrap();
        let cal = learn(kernel.view(), &p, &stats, 0.0).unwrap();
        assert_eq!(plain.subspaces, cal.subspaces);
        assert_eq!(cal.bias_shift, Some(vec![0.0; 8]));
    }
}
