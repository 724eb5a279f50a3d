//! The named tolerances of the test suite, in one place: how close two output tensors must be
//! ([`Approximation`], after tract's idea of the same name) and the bounds on scalar figures
//! (accuracy baselines, counted reductions, quality against reference figures). A test says
//! which comparison it makes; the bound and the reason for it live here.

use ndarray::ArrayD;

/// How close an output must be to the expected one. The bound is
/// `rtol · max |expected| + atol` on the largest absolute difference: relative to the largest
/// expected value, because a convolution's rounding error scales with the magnitude of the sums
/// it forms, not with each element (an element near zero can carry the error of a large sum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approximation {
    /// The same function in the same engine, summed in another order: the rewrite against a
    /// dense Conv with the reconstructed kernel, or an exact (one centroid per column) VQ
    /// conversion against the original, both in tract. Only f32 reassociation separates them,
    /// which stays far below 1e-4 of the largest output, while a wrong tap, pad or missing bias
    /// is an error of the order of the output itself. The 1e-5 floor covers outputs that are
    /// all near zero.
    Exact,
    /// tract against ONNX Runtime on the same f32 graph: other kernels and other summation
    /// orders, compounded over every layer of a model. 1e-3 of the largest output covers whole
    /// networks (SqueezeNet, ResNet-56) and is still far below any conversion error.
    Engines,
    /// ONNX Runtime computing natively in f16 against tract computing in f32: f16 has an
    /// 11-bit significand (about 5e-4 relative per rounding), accumulated over the network;
    /// 2e-3 of the largest output. No absolute floor: the outputs are classifier logits whose
    /// largest is never near zero.
    EnginesF16,
}

impl Approximation {
    /// The bound relative to the largest |expected| value.
    pub fn rtol(self) -> f32 {
        match self {
            Approximation::Exact => 1e-4,
            Approximation::Engines => 1e-3,
            Approximation::EnginesF16 => 2e-3,
        }
    }

    /// The absolute floor added to the relative bound.
    pub fn atol(self) -> f32 {
        match self {
            Approximation::Exact | Approximation::Engines => 1e-5,
            Approximation::EnginesF16 => 0.0,
        }
    }

    /// The largest absolute difference allowed against `expected`.
    pub fn bound(self, expected: &ArrayD<f32>) -> f32 {
        let largest = expected.iter().fold(0f32, |m, &x| m.max(x.abs()));
        self.rtol() * largest + self.atol()
    }

    /// `Ok` when `actual` and `expected` have the same shape and their largest absolute
    /// difference is within [`bound`](Self::bound); otherwise a message with the difference,
    /// where it is, both values there and the bound. A NaN on either side fails: it is never
    /// "close".
    pub fn check(self, actual: &ArrayD<f32>, expected: &ArrayD<f32>) -> Result<(), String> {
        if actual.shape() != expected.shape() {
            return Err(format!(
                "shapes differ: actual {:?}, expected {:?}",
                actual.shape(),
                expected.shape()
            ));
        }
        let bound = self.bound(expected);
        // The worst element, NaN counting as worst of all (f32::max would skip it).
        let mut worst: Option<(usize, f32)> = None;
        for (i, (a, e)) in actual.iter().zip(expected.iter()).enumerate() {
            let d = (a - e).abs();
            let worse = match worst {
                None => true,
                Some((_, w)) => d.is_nan() && !w.is_nan() || d > w,
            };
            if worse {
                worst = Some((i, d));
            }
        }
        let Some((flat, d)) = worst else {
            return Ok(());
        };
        if d <= bound {
            return Ok(());
        }
        let index = unravel(flat, actual.shape());
        Err(format!(
            "max |Δ| = {d} at {index:?} (actual {}, expected {}) > {bound} \
             ({self:?}: {} · max |expected| + {})",
            actual.iter().nth(flat).unwrap(),
            expected.iter().nth(flat).unwrap(),
            self.rtol(),
            self.atol()
        ))
    }

    /// [`check`](Self::check), panicking with `what` and the message.
    #[track_caller]
    pub fn assert_close(self, what: &str, actual: &ArrayD<f32>, expected: &ArrayD<f32>) {
        if let Err(e) = self.check(actual, expected) {
            panic!("{what}: {e}");
        }
    }
}

/// The multi-index of the `flat`-th element in logical (row-major) order.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (i, &n) in shape.iter().enumerate().rev() {
        if n > 0 {
            index[i] = flat % n;
            flat /= n;
        }
    }
    index
}

/// A measured top-1 / top-5 accuracy through tract against the ONNX Runtime figure of the same
/// model and data, in absolute fraction: the shared README allows ±0.5 points for resampling
/// differences between image libraries (the default model's PNGs need none, and its figure is
/// held to the same bound).
pub const BASELINE_ACCURACY: f64 = 0.005;

/// A converted layer's counted multiplication reduction (on the converted graph) against the
/// paper's formula ρ, relative: 2 % tolerates small terms the formula leaves out, while a wrong
/// count or a wrong graph is off by whole factors.
pub const RATIO_VS_FORMULA: f64 = 0.02;

/// The counted reduction against the requested ρ where the paper's assumption (output size =
/// input size) holds, relative: K_vq and L are rounded to integers.
pub const RATIO_VS_REQUESTED: f64 = 0.1;

/// How much higher (absolute, in relative weight error) our clustering error may be than an
/// independent implementation's figure on the same layer: both are seeded local optima.
pub const QUALITY_SLACK: f64 = 0.01;

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn a(shape: &[usize], v: &[f32]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap()
    }

    #[test]
    fn the_bound_scales_with_the_largest_expected_value() {
        let want = a(&[2, 2], &[100.0, -200.0, 0.0, 1.0]);
        let bound = Approximation::Engines.bound(&want);
        assert_eq!(bound, 1e-3 * 200.0 + 1e-5);
        let mut got = want.clone();
        got[[1, 0]] += 0.19;
        Approximation::Engines.check(&got, &want).unwrap();
        got[[1, 0]] += 0.02;
        let e = Approximation::Engines.check(&got, &want).unwrap_err();
        assert!(e.contains("at [1, 0]") && e.contains("Engines"), "{e}");
    }

    #[test]
    fn nan_and_shape_mismatches_fail() {
        let want = a(&[3], &[1.0, 2.0, 3.0]);
        let e = Approximation::Exact
            .check(&a(&[3], &[1.0, f32::NAN, 3.0]), &want)
            .unwrap_err();
        assert!(e.contains("NaN") && e.contains("at [1]"), "{e}");
        assert!(Approximation::Exact
            .check(&a(&[1, 3], &[1.0, 2.0, 3.0]), &want)
            .is_err());
        Approximation::Exact.check(&want, &want).unwrap();
    }
}
