//! A learnt codebook: per subspace the atoms (DL) or centroids (VQ), DL's sparse codes Λ and
//! the assignment Γ; the kernel it reconstructs, its error, and float16 palettes.

use std::ops::Range;

use ndarray::{Array4, ArrayView4};

use super::dl::SparseCodes;
use super::params::{Method, Sizes};
use super::subspace::{self, Points};

/// The codebook of one subspace.
#[derive(Debug, Clone, PartialEq)]
pub struct SubspaceCodebook {
    pub channels: Range<usize>,
    /// DL: the L unit-norm atoms; VQ: the K_vq centroids. Rows of `channels.len()` values.
    pub atoms: Points,
    /// DL: Λ, α (atom, coefficient) slots per representative. VQ: `None`, representative i is
    /// atom i.
    pub codes: Option<SparseCodes>,
    /// Γ: the representative of every column, indexed by [`subspace::column`].
    pub assignment: Vec<u32>,
}

impl SubspaceCodebook {
    pub fn num_representatives(&self) -> usize {
        match &self.codes {
            Some(c) => c.len(),
            None => self.atoms.len(),
        }
    }

    /// The representatives C̃ = DΛ (or the centroids), one row each.
    pub fn representatives(&self) -> Points {
        let Some(codes) = &self.codes else {
            return self.atoms.clone();
        };
        let dim = self.atoms.dim;
        let mut data = vec![0f32; codes.len() * dim];
        for r in 0..codes.len() {
            for (a, z) in codes.slots(r) {
                for (v, &d) in data[r * dim..(r + 1) * dim]
                    .iter_mut()
                    .zip(self.atoms.row(a))
                {
                    *v += z * d;
                }
            }
        }
        Points { data, dim }
    }
}

/// A layer's codebook: what the rewrite consumes.
#[derive(Debug, Clone, PartialEq)]
pub struct Codebook {
    pub method: Method,
    /// [M, N, kh, kw].
    pub kernel_shape: [usize; 4],
    pub sizes: Sizes,
    /// Every subspace holds the same atoms (a palette, [`palette`]): stored once.
    pub shared: bool,
    pub subspaces: Vec<SubspaceCodebook>,
    /// A palette's scale per output channel ([`palette`]'s `channel_scale`): row k of W̃ is
    /// `channel_scale[k]` times the palette entries Γ picks, so one table serves channels of
    /// different ranges. `None`: the entries are the weights.
    pub channel_scale: Option<Vec<f32>>,
    /// A palette whose entries (and channel scales) are float16 values
    /// ([`Codebook::round_palette`]), which the compact form stores as float16.
    pub f16_palette: bool,
    /// Added to the layer's bias (one value per output channel) by the rewrite: calibration's
    /// correction of the output mean. `None` from plain weight-error learning.
    pub bias_shift: Option<Vec<f32>>,
}

impl Codebook {
    /// W̃: the kernel every column of which is replaced by its representative.
    pub fn reconstruct(&self) -> Array4<f32> {
        let [m, n, kh, kw] = self.kernel_shape;
        let mut w = Array4::<f32>::zeros((m, n, kh, kw));
        for sc in &self.subspaces {
            let reps = sc.representatives();
            for k in 0..m {
                let scale = self.channel_scale.as_ref().map_or(1.0, |s| s[k]);
                for u in 0..kh {
                    for v in 0..kw {
                        let r = sc.assignment[subspace::column(k, u, v, kh, kw)] as usize;
                        for (c, &x) in sc.channels.clone().zip(reps.row(r)) {
                            w[[k, c, u, v]] = scale * x;
                        }
                    }
                }
            }
        }
        w
    }

    /// With `f16_palette`, the palette's entries and channel scales rounded to float16, which
    /// the compact form then stores in half the bytes (`lower::dense`): the rounding (a
    /// relative 2⁻¹¹) is far below a lossy palette's clustering error, and rounding here,
    /// where the codebook is made (learnt, refitted, trained), keeps W̃ what every form and
    /// report computes. Values float16 cannot hold stay as they are (and are stored as f32).
    pub fn round_palette(&mut self) {
        if !self.shared || !self.f16_palette {
            return;
        }
        for sc in &mut self.subspaces {
            if let Some(rounded) = to_f16_values(&sc.atoms.data) {
                sc.atoms.data = rounded;
            }
        }
        if let Some(rounded) = self.channel_scale.as_deref().and_then(to_f16_values) {
            self.channel_scale = Some(rounded);
        }
    }

    /// Γ of every subspace, one after the other (`[S, M, kh, kw]` row-major).
    pub fn flat_assignment(&self) -> Vec<u32> {
        self.subspaces
            .iter()
            .flat_map(|s| s.assignment.iter().copied())
            .collect()
    }

    /// ‖W − W̃‖_F / ‖W‖_F.
    pub fn relative_error(&self, kernel: ArrayView4<f32>) -> f64 {
        let w = self.reconstruct();
        let (mut num, mut den) = (0f64, 0f64);
        for (a, b) in kernel.iter().zip(w.iter()) {
            num += ((a - b) as f64).powi(2);
            den += (*a as f64).powi(2);
        }
        if den == 0.0 {
            return 0.0;
        }
        (num / den).sqrt()
    }
}

/// `values` rounded to float16 (as f32), or `None` when one of them does not fit (beyond
/// ±65504).
fn to_f16_values(values: &[f32]) -> Option<Vec<f32>> {
    let rounded: Vec<f32> = values
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    rounded.iter().all(|v| v.is_finite()).then_some(rounded)
}

/// Whether every value is exactly a float16 (so storing it as one loses nothing).
pub fn f16_exact(values: &[f32]) -> bool {
    values.iter().all(|&v| half::f16::from_f32(v).to_f32() == v)
}
