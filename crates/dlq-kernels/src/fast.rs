//! `DlqConv::run`, the fast path: per image and subspace, atom responses Z, representative
//! responses R in zero-padded planes, then shifted row adds of R into the output channels.
//!
//! Layout choice: Z and R live in planes of the padded size `Hp × Wp` (padding = the Conv's pads),
//! with the image written at offset `(top, left)` and the border left at zero. A kernel tap
//! (u, v) then reads R at a plain offset `(oy·sh + u·dh, ox·sw + v·dw)` — no bounds tests per
//! element — and a DL representative is a whole-plane axpy over Z (zero borders stay zero).
//! Z is written in the padded layout directly, so VQ (R = Z) needs no copy; the axpy runs over the
//! whole H·W plane when there is no left/right padding, else row by row.

use crate::conv::{DlqConv, Subspace};
use crate::error::{check_len, checked_product, KernelError};

/// Scratch planes, allocated once per `run` call and reused for every image and subspace.
struct Scratch {
    /// `[Hp, Wp]`, the padded plane size.
    padded: [usize; 2],
    /// Atom responses: `max L` planes of `Hp·Wp`.
    z: Vec<f32>,
    /// Representative responses for DL subspaces: `max K` planes (empty if all subspaces are VQ).
    r: Vec<f32>,
}

impl Scratch {
    fn new(conv: &DlqConv, h: usize, w: usize) -> Result<Scratch, KernelError> {
        let too_large = KernelError::TooLarge { what: "scratch" };
        let padded = conv.geometry.padded_size(h, w).ok_or(too_large)?;
        let subs = conv.subspaces.iter();
        let max_atoms = subs.clone().map(|s| s.num_atoms).max().unwrap_or(0);
        let dl = subs.filter(|s| s.codes.is_some());
        let max_reps = dl.map(Subspace::num_representatives).max().unwrap_or(0);
        let z_len = checked_product(&[max_atoms, padded[0], padded[1]], "scratch")?;
        let r_len = checked_product(&[max_reps, padded[0], padded[1]], "scratch")?;
        Ok(Scratch {
            padded,
            z: vec![0.0; z_len],
            r: vec![0.0; r_len],
        })
    }

    fn plane(&self) -> usize {
        self.padded[0] * self.padded[1]
    }
}

impl DlqConv {
    /// Computes `U = Conv(x, W̃) + bias` for NCHW f32 `x` of shape `[batch, N, h, w]` into `out`
    /// of shape `[batch, M, oh, ow]`, and returns `[oh, ow]`. Refuses (never panics) when the
    /// kernel does not fit the padded input or a buffer length is wrong.
    pub fn run(
        &self,
        x: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        out: &mut [f32],
    ) -> Result<[usize; 2], KernelError> {
        let g = &self.geometry;
        let [oh, ow] = g.output_size(h, w).ok_or(KernelError::NoOutput { h, w })?;
        let image_len = checked_product(&[g.in_channels, h, w], "input")?;
        let out_image_len = checked_product(&[g.out_channels, oh, ow], "output")?;
        let input_len = checked_product(&[batch, image_len], "input")?;
        let output_len = checked_product(&[batch, out_image_len], "output")?;
        check_len(None, "input", input_len, x.len())?;
        check_len(None, "output", output_len, out.len())?;
        let mut scratch = Scratch::new(self, h, w)?;
        let padded = scratch.padded;
        // Both image lengths are ≥ 1 (every dimension was checked ≥ 1), so chunking is safe.
        let images = x.chunks_exact(image_len);
        for (image, dst) in images.zip(out.chunks_exact_mut(out_image_len)) {
            self.init_output(dst, oh * ow);
            for sub in &self.subspaces {
                atom_responses(sub, image, [h, w], self.geometry.pads, &mut scratch);
                let reps = representative_responses(sub, &mut scratch);
                self.add_taps(sub, reps, padded, dst, [oh, ow]);
            }
        }
        Ok([oh, ow])
    }

    /// Starts every output plane at its bias (or 0), so the bias is added exactly once.
    fn init_output(&self, dst: &mut [f32], plane: usize) {
        for (k, out_plane) in dst.chunks_exact_mut(plane).enumerate() {
            out_plane.fill(self.bias.as_ref().map_or(0.0, |b| b[k]));
        }
    }

    /// For every output channel k (stationary: its plane stays hot in cache) and tap (u, v),
    /// adds the plane of representative `Γ[k][u][v]`, shifted by the tap, into channel k.
    fn add_taps(
        &self,
        sub: &Subspace,
        reps: &[f32],
        [hp, wp]: [usize; 2],
        dst: &mut [f32],
        [oh, ow]: [usize; 2],
    ) {
        let g = &self.geometry;
        let [kh, kw] = g.kernel;
        let plane = hp * wp;
        let columns = sub.assignment.chunks_exact(kh * kw);
        for (out_plane, gamma) in dst.chunks_exact_mut(oh * ow).zip(columns) {
            for (tap, &rep) in gamma.iter().enumerate() {
                let (u, v) = (tap / kw, tap % kw);
                let r = &reps[rep as usize * plane..][..plane];
                let origin = u * g.dilations[0] * wp + v * g.dilations[1];
                add_shifted(out_plane, &r[origin..], ow, wp, g.strides);
            }
        }
    }
}

/// `out[oy][ox] += r[oy·sh·wp + ox·sw]` for the `ow`-wide output rows: one contiguous add per
/// row when `sw = 1` (vectorises), a strided add otherwise. The output-size formula guarantees
/// every read lies inside the padded plane.
fn add_shifted(out_plane: &mut [f32], r: &[f32], ow: usize, wp: usize, [sh, sw]: [usize; 2]) {
    let span = (ow - 1) * sw + 1;
    for (oy, out_row) in out_plane.chunks_exact_mut(ow).enumerate() {
        let src = &r[oy * sh * wp..][..span];
        if sw == 1 {
            for (o, &s) in out_row.iter_mut().zip(src) {
                *o += s;
            }
        } else {
            for (o, &s) in out_row.iter_mut().zip(src.iter().step_by(sw)) {
                *o += s;
            }
        }
    }
}

/// `Z[l] = Σ_j atom[l][j] · X[channel j]` into the interior of padded plane l. Loop order: atom,
/// channel, contiguous run — the first channel assigns (no zeroing pass), the rest axpy.
fn atom_responses(
    sub: &Subspace,
    image: &[f32],
    [h, w]: [usize; 2],
    pads: [usize; 4],
    scratch: &mut Scratch,
) {
    let (plane, wp) = (scratch.plane(), scratch.padded[1]);
    let [top, left, ..] = pads;
    let width = sub.channels.len();
    // Without left/right padding the padded rows are contiguous: one run of h·w.
    let (runs, run_len) = if wp == w { (1, h * w) } else { (h, w) };
    let atoms = sub.atoms.chunks_exact(width);
    for (z, atom) in scratch.z.chunks_exact_mut(plane).zip(atoms) {
        for (j, &a) in atom.iter().enumerate() {
            let channel = &image[(sub.channels.start + j) * h * w..][..h * w];
            for run in 0..runs {
                let src = &channel[run * run_len..][..run_len];
                let dst = &mut z[(top + run) * wp + left..][..run_len];
                if j == 0 {
                    scale(dst, a, src);
                } else {
                    axpy(dst, a, src);
                }
            }
        }
    }
}

/// The response planes of the subspace's representatives: Z itself for VQ, else
/// `R[i] = Σ_t coef · Z[idx]` over whole padded planes (zero borders stay zero).
fn representative_responses<'a>(sub: &Subspace, scratch: &'a mut Scratch) -> &'a [f32] {
    let plane = scratch.plane();
    let Some(codes) = &sub.codes else {
        return &scratch.z[..sub.num_atoms * plane];
    };
    let k = sub.num_representatives();
    let atoms = codes.atoms.chunks_exact(codes.alpha);
    let coefficients = codes.coefficients.chunks_exact(codes.alpha);
    let reps = scratch.r.chunks_exact_mut(plane).take(k);
    for ((r, idx), coef) in reps.zip(atoms).zip(coefficients) {
        for (t, (&atom, &c)) in idx.iter().zip(coef).enumerate() {
            let z = &scratch.z[atom as usize * plane..][..plane];
            if t == 0 {
                scale(r, c, z);
            } else {
                axpy(r, c, z);
            }
        }
    }
    &scratch.r[..k * plane]
}

/// `dst = a · src` (equal lengths; zip keeps the loop free of bounds checks).
fn scale(dst: &mut [f32], a: f32, src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = a * s;
    }
}

/// `dst += a · src`.
fn axpy(dst: &mut [f32], a: f32, src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += a * s;
    }
}
