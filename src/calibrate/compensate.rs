//! Error-compensating assignment for shared codebooks (GPTQ's sequential quantisation, with a
//! palette as the grid, as in GPTVQ): along every kernel column (output channel k, position
//! (u, v)), the subspaces are assigned in channel order, and each choice's error is pushed onto
//! the channels not yet assigned through the inverse input covariance H⁻¹, so later choices
//! cancel it in the layer's output instead of adding to it. A palette cannot whiten per
//! subspace (`learn`'s route); this is how its output error is lowered instead.

use ndarray::{Array2, ArrayView4};
use rayon::prelude::*;

use crate::codebook::kmeans::nearest;
use crate::codebook::{subspace, Codebook};

use super::linalg::damped_cholesky;
use super::InputStats;

/// The upper factor U of H⁻¹ = UᵀU (row-major n × n) for the damped covariance `h`.
fn inverse_upper_factor(h: &Array2<f64>, damping: f64) -> Vec<f64> {
    let n = h.nrows();
    let l = damped_cholesky(h, damping);
    // L⁻¹ by forward substitution, column by column.
    let mut li = vec![0f64; n * n];
    for c in 0..n {
        for i in c..n {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for k in c..i {
                s -= l[i * n + k] * li[k * n + c];
            }
            li[i * n + c] = s / l[i * n + i];
        }
    }
    // H⁻¹ = L⁻ᵀ L⁻¹; its lower Cholesky factor transposed is U.
    let hinv = Array2::from_shape_fn((n, n), |(i, j)| {
        (i.max(j)..n).map(|k| li[k * n + i] * li[k * n + j]).sum()
    });
    let lower = damped_cholesky(&hinv, 0.0);
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = lower[i * n + j];
        }
    }
    u
}

/// Re-assigns every column of the shared codebook `cb` (learnt for `kernel`) with error
/// feedback through the damped H of `stats`; the palette itself is kept.
pub fn reassign(kernel: ArrayView4<f32>, cb: &mut Codebook, stats: &InputStats, damping: f64) {
    let (m, n, kh, kw) = kernel.dim();
    let Some(first) = cb.subspaces.first() else {
        return;
    };
    let width = first.channels.len();
    let palette = first.atoms.data.clone();
    let scales = cb.channel_scale.clone();
    let u = inverse_upper_factor(&stats.covariance(0..n), damping);
    let columns: Vec<(usize, usize, usize)> = (0..m)
        .flat_map(|k| (0..kh).flat_map(move |a| (0..kw).map(move |b| (k, a, b))))
        .collect();
    let choices: Vec<Vec<u32>> = columns
        .par_iter()
        .map(|&(k, a, b)| {
            // A scaled palette's entries are relative to the channel's scale: the error is
            // measured, and fed forward, in the kernel's own units.
            let scale = scales.as_ref().map_or(1.0, |s| s[k] as f64);
            let mut w: Vec<f64> = (0..n).map(|c| kernel[[k, c, a, b]] as f64).collect();
            let mut chosen = Vec::with_capacity(cb.subspaces.len());
            let mut x = vec![0f32; width];
            for start in (0..n).step_by(width) {
                for (d, v) in x.iter_mut().enumerate() {
                    *v = (w[start + d] / scale) as f32;
                }
                let (q, _) = nearest(&x, &palette, width);
                chosen.push(q as u32);
                for d in 0..width {
                    let c = start + d;
                    let e = (w[c] - scale * palette[q * width + d] as f64) / u[c * n + c];
                    for j in c + 1..n {
                        w[j] -= e * u[c * n + j];
                    }
                }
            }
            chosen
        })
        .collect();
    for (&(k, a, b), chosen) in columns.iter().zip(&choices) {
        let col = subspace::column(k, a, b, kh, kw);
        for (sc, &q) in cb.subspaces.iter_mut().zip(chosen) {
            sc.assignment[col] = q;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_factor_inverts_the_damped_covariance() {
        let h = Array2::from_shape_fn((4, 4), |(i, j)| {
            if i == j {
                2.0 + i as f64
            } else {
                0.3 / (1.0 + (i + j) as f64)
            }
        });
        let u = inverse_upper_factor(&h, 0.0);
        // (UᵀU) H = I.
        for i in 0..4 {
            for j in 0..4 {
                let mut s = 0.0;
                for k in 0..4 {
                    let hinv_ik: f64 = (0..4).map(|r| u[r * 4 + i] * u[r * 4 + k]).sum();
                    s += hinv_ik * h[[k, j]];
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-6, "{i} {j}: {s}");
            }
        }
        for i in 1..4 {
            for j in 0..i {
                assert_eq!(u[i * 4 + j], 0.0, "upper triangular");
            }
        }
    }
}
