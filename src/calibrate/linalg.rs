//! The dense linear algebra calibration shares: the damped Cholesky factor of an input's
//! second moment (calibrated learning whitens by it; compensation inverts through it).

use ndarray::Array2;

/// Lower-triangular L with L Lᵀ = h + damping·mean(diag h)·I (row-major d × d). A matrix that is
/// zero (a subspace whose inputs never fire) gives the identity: every error then counts alike.
pub(crate) fn damped_cholesky(h: &Array2<f64>, damping: f64) -> Vec<f64> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::InputStats;
    use ndarray::Array;
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn cholesky_factor_reproduces_the_damped_matrix() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let x = Array::from_shape_fn(ndarray::IxDyn(&[3, 6, 5, 5]), |_| {
            rng.random_range(-1.0f32..1.0)
        });
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
}
