//! The clustered layer (`DlqConv`, `Subspace`, `Codes`): construction validates every length,
//! index and value once, so `run` and `reconstruct` can index without further checks failing;
//! `reconstruct` expands the clustered kernel back to the dense W̃ it stands for.

use std::ops::Range;

use crate::error::{check_len, checked_product, KernelError};
use crate::geometry::Geometry;
use crate::simd::{self, RowTerms};

/// Sparse codes of a DL subspace: representative `i` is
/// `Σ_{t < alpha} coefficients[i·alpha + t] · atom[atoms[i·alpha + t]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Codes {
    /// α, the number of atoms per representative (at least 1).
    pub alpha: usize,
    /// K·α atom indices, each below the subspace's `num_atoms`.
    pub atoms: Vec<u32>,
    /// K·α finite coefficients, parallel to `atoms`.
    pub coefficients: Vec<f32>,
}

/// One subspace of consecutive input channels and its clustered kernel columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Subspace {
    /// The input channels this subspace covers.
    pub channels: Range<usize>,
    /// `num_atoms` rows of `channels.len()` values each, row-major.
    pub atoms: Vec<f32>,
    /// L, the number of atoms.
    pub num_atoms: usize,
    /// `None` = VQ: representative `i` is atom `i` (so K = L).
    pub codes: Option<Codes>,
    /// Γ: `M·kh·kw` representative indices, position `k·kh·kw + u·kw + v`.
    pub assignment: Vec<u32>,
}

impl Subspace {
    /// The codes as the look-up terms read them.
    fn row_codes(&self) -> Option<simd::CodeTerms<'_>> {
        self.codes.as_ref().map(|c| simd::CodeTerms {
            atoms: &c.atoms,
            coefficients: &c.coefficients,
            alpha: c.alpha,
        })
    }

    /// K, the number of representatives the assignment may refer to.
    pub fn num_representatives(&self) -> usize {
        match &self.codes {
            None => self.num_atoms,
            Some(codes) => codes.atoms.len().checked_div(codes.alpha).unwrap_or(0),
        }
    }

    /// The K representatives as dense rows of `channels.len()` values (the columns of `DΛ`).
    /// Relies on the subspace having been validated.
    fn representatives(&self) -> Vec<f32> {
        let width = self.channels.len();
        let Some(codes) = &self.codes else {
            return self.atoms.clone();
        };
        let mut reps = vec![0.0f32; self.num_representatives() * width];
        let atoms = codes.atoms.chunks_exact(codes.alpha);
        let coefficients = codes.coefficients.chunks_exact(codes.alpha);
        for ((rep, idx), coef) in reps.chunks_exact_mut(width).zip(atoms).zip(coefficients) {
            for (&atom, &coef) in idx.iter().zip(coef) {
                let atom = &self.atoms[atom as usize * width..][..width];
                for (r, &a) in rep.iter_mut().zip(atom) {
                    *r += coef * a;
                }
            }
        }
        reps
    }
}

/// A Conv layer whose kernel is stored clustered: geometry, subspaces and optional bias,
/// all validated by [`DlqConv::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct DlqConv {
    pub(crate) geometry: Geometry,
    pub(crate) subspaces: Vec<Subspace>,
    pub(crate) bias: Option<Vec<f32>>,
    /// Per subspace, its look-up terms in the order of the row-layout adds (derived from the
    /// subspaces once, here, rather than per call).
    pub(crate) row_terms: Vec<RowTerms>,
}

impl DlqConv {
    /// Builds the layer after checking: geometry fields ≥ 1; subspaces non-empty, contiguous, in
    /// order and covering `0..N` exactly; per subspace `num_atoms ≥ 1`, `atoms.len() == L·|s|`,
    /// codes with α ≥ 1, `K·α` atom indices < L and as many coefficients, assignment of length
    /// `M·kh·kw` with every entry < K; bias of length M; every stored value finite.
    pub fn new(
        geometry: Geometry,
        subspaces: Vec<Subspace>,
        bias: Option<Vec<f32>>,
    ) -> Result<DlqConv, KernelError> {
        let assignment_len = geometry.validate()?;
        check_coverage(&subspaces, geometry.in_channels)?;
        for (index, sub) in subspaces.iter().enumerate() {
            validate_subspace(index, sub, assignment_len)?;
        }
        if let Some(bias) = &bias {
            check_len(None, "bias", geometry.out_channels, bias.len())?;
            check_finite(None, "bias", bias)?;
        }
        let row_terms = subspaces
            .iter()
            .map(|sub| RowTerms::new(&sub.assignment, sub.row_codes(), geometry.kernel))
            .collect();
        Ok(DlqConv {
            geometry,
            subspaces,
            bias,
            row_terms,
        })
    }

    /// The layer's geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The validated subspaces, in channel order.
    pub fn subspaces(&self) -> &[Subspace] {
        &self.subspaces
    }

    /// The bias, one value per output channel, if any.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// The dense kernel W̃ `[M, N, kh, kw]` (row-major) the clustered layer stands for.
    pub fn reconstruct(&self) -> Vec<f32> {
        let g = &self.geometry;
        let taps = g.kernel[0] * g.kernel[1];
        let n = g.in_channels;
        // Sizes were checked in `new` (assignment length fits, atoms lengths fit).
        let mut weight = vec![0.0f32; g.out_channels * n * taps];
        for sub in &self.subspaces {
            let width = sub.channels.len();
            let reps = sub.representatives();
            for (column, &rep) in sub.assignment.iter().enumerate() {
                let (k, tap) = (column / taps, column % taps);
                let rep = &reps[rep as usize * width..][..width];
                for (j, &value) in rep.iter().enumerate() {
                    weight[(k * n + sub.channels.start + j) * taps + tap] = value;
                }
            }
        }
        weight
    }
}

/// Subspaces must tile `0..in_channels` in order, without gaps, overlaps or empty ranges.
fn check_coverage(subspaces: &[Subspace], in_channels: usize) -> Result<(), KernelError> {
    if subspaces.is_empty() {
        return Err(KernelError::NoSubspaces);
    }
    let mut end = 0;
    for (subspace, sub) in subspaces.iter().enumerate() {
        if sub.channels.is_empty() {
            return Err(KernelError::EmptySubspace { subspace });
        }
        if sub.channels.start != end {
            return Err(KernelError::SubspaceNotContiguous {
                subspace,
                expected_start: end,
                start: sub.channels.start,
            });
        }
        end = sub.channels.end;
    }
    if end != in_channels {
        return Err(KernelError::SubspacesDoNotCover { end, in_channels });
    }
    Ok(())
}

fn validate_subspace(
    index: usize,
    sub: &Subspace,
    assignment_len: usize,
) -> Result<(), KernelError> {
    let s = Some(index);
    if sub.num_atoms == 0 {
        return Err(KernelError::NoAtoms { subspace: index });
    }
    let atoms_len = checked_product(&[sub.num_atoms, sub.channels.len()], "atoms")?;
    check_len(s, "atoms", atoms_len, sub.atoms.len())?;
    check_finite(s, "atoms", &sub.atoms)?;
    if let Some(codes) = &sub.codes {
        validate_codes(index, codes, sub.num_atoms)?;
    }
    check_len(s, "assignment", assignment_len, sub.assignment.len())?;
    check_indices(
        index,
        "assignment",
        &sub.assignment,
        sub.num_representatives(),
    )
}

fn validate_codes(index: usize, codes: &Codes, num_atoms: usize) -> Result<(), KernelError> {
    if codes.alpha == 0 {
        return Err(KernelError::ZeroAlpha { subspace: index });
    }
    let len = codes.atoms.len();
    if len == 0 || !len.is_multiple_of(codes.alpha) {
        return Err(KernelError::CodeCount {
            subspace: index,
            alpha: codes.alpha,
            len,
        });
    }
    check_len(Some(index), "coefficients", len, codes.coefficients.len())?;
    check_indices(index, "code atoms", &codes.atoms, num_atoms)?;
    check_finite(Some(index), "coefficients", &codes.coefficients)
}

fn check_indices(
    subspace: usize,
    what: &'static str,
    indices: &[u32],
    limit: usize,
) -> Result<(), KernelError> {
    match indices.iter().position(|&i| i as usize >= limit) {
        None => Ok(()),
        Some(position) => Err(KernelError::IndexOutOfRange {
            subspace,
            what,
            position,
            value: indices[position],
            limit,
        }),
    }
}

fn check_finite(
    subspace: Option<usize>,
    what: &'static str,
    values: &[f32],
) -> Result<(), KernelError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(position) => Err(KernelError::NonFinite {
            subspace,
            what,
            position,
        }),
    }
}
