//! `DlqConv::run`, the fast path: per image and subspace, atom responses Z, representative
//! responses R in zero-padded planes, then the look-up adds of R into the output channels.
//!
//! Layout: the subspace's input channels are first copied into zero-padded planes of the padded
//! size `Hp × Wp` (padding = the Conv's pads), each plane stored at a `stride` of `Hp·Wp` rounded
//! up to [`BLOCK`] floats (the extra floats stay zero). Z (`L × stride`) is then one contiguous
//! product `atoms · X_padded` (zero borders give zero borders) and a DL representative one
//! contiguous α-term combination of Z planes; VQ uses Z itself (R = Z). A kernel tap (u, v) reads
//! R at the plain offset `u·dh·Wp + v·dw` — no bounds tests per element.
//!
//! Look-up adds, stride 1 (the common case): the output is accumulated at the *padded* width
//! `Wp`, so a tap of output channel k is ONE contiguous run of `(oh − 1)·Wp + ow` floats (rounded
//! up to [`BLOCK`]; the extra columns are junk and never leave the accumulator). Per subspace and
//! output channel, all kh·kw taps are summed into the channel's accumulator slice in registers
//! (`simd::accumulate`), so the accumulator is read and written once per (subspace, channel), not
//! once per tap. The accumulator starts at the bias and is cropped to `ow` columns once per image.
//! The reads stay inside R: the last one of a tap ends at `Hp·Wp` exactly, plus at most
//! `BLOCK − 1` floats of rounding that land in the next plane or in [`SLACK`].
//! Other strides keep the row-by-row adds straight into the output.

use std::cell::RefCell;
use std::time::Instant;

use crate::conv::{DlqConv, Subspace};
use crate::error::{check_len, checked_product, KernelError};
use crate::simd::{self, Isa, BLOCK};

/// Zero floats after the last Z and R plane, so a tap's run rounded up to [`BLOCK`] stays inside
/// the buffer, plus one more block for the AVX-512 look-up adds, which read each run from the
/// 64-byte boundary before it up to one block past its end (see `simd::accumulate`).
const SLACK: usize = 2 * BLOCK;

/// Time spent in each phase of [`DlqConv::run_timed`], in seconds (summed over images).
#[doc(hidden)]
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct PhaseTimes {
    /// Output initialisation (bias) and the final crop of the padded-width accumulator.
    pub init: f64,
    /// Padded copy of the subspace's input channels and the atom responses Z.
    pub z: f64,
    /// Representative responses R (DL only).
    pub r: f64,
    /// Look-up adds.
    pub taps: f64,
}

/// A stopwatch that only reads the clock when timing was asked for.
struct Clock<'a> {
    times: Option<&'a mut PhaseTimes>,
    last: Option<Instant>,
}

impl Clock<'_> {
    fn start(&mut self) {
        if self.times.is_some() {
            self.last = Some(Instant::now());
        }
    }

    /// Adds the time since the last lap to the field `slot` picks.
    fn lap(&mut self, slot: fn(&mut PhaseTimes) -> &mut f64) {
        if let (Some(times), Some(last)) = (self.times.as_deref_mut(), self.last) {
            let now = Instant::now();
            *slot(times) += (now - last).as_secs_f64();
            self.last = Some(now);
        }
    }
}

/// Scratch planes, reused for every image and subspace of a `run` call and pooled per thread
/// between calls.
struct Scratch {
    /// `[Hp, Wp]`, the padded plane size.
    padded: [usize; 2],
    /// Distance between consecutive planes: `Hp·Wp` rounded up to `BLOCK`.
    stride: usize,
    /// The subspace's input channels, zero-padded: `max |s|` planes.
    x: Aligned,
    /// Atom responses: `max L` planes, then `SLACK`.
    z: Aligned,
    /// Representative responses for DL subspaces: `max K` planes, then `SLACK` (just `SLACK`
    /// if all subspaces are VQ).
    r: Aligned,
    /// Stride 1 only: the output at padded width, `M` slices of `acc_stride` floats.
    acc: Aligned,
    /// Length of one output channel's accumulator slice: `oh·Wp` rounded up to `BLOCK`.
    acc_stride: usize,
    /// The kh·kw offsets of one output channel's taps into R (reused buffer).
    offsets: Vec<usize>,
    /// Where tap (u, v) starts reading a padded plane: `u·dh·Wp + v·dw`, at `u·kw + v`.
    origins: Vec<usize>,
    /// Fused path: the kh·kw·α offsets into Z and coefficients of one output channel's taps.
    terms: Vec<usize>,
    coefs: Vec<f32>,
}

thread_local! {
    /// Buffers of the last `run` on this thread, reused by the next one: allocating (and
    /// page-faulting) a few hundred KiB of fresh zeroed memory per call cost as much as the
    /// compute. Only the calling thread touches its own buffers; they are handed back on return.
    static POOL: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// A float buffer whose visible part starts on a 64-byte boundary, so that every plane (a
/// multiple of [`BLOCK`] floats) starts on a cache line: the SIMD loops then neither load nor
/// store across cache lines at plane and block starts. Derefs to the `len` visible floats.
#[derive(Default)]
struct Aligned {
    buf: Vec<f32>,
    lead: usize,
    len: usize,
}

impl Aligned {
    /// `self` resized to `len` visible floats, keeping its allocation (contents are left as
    /// they are, but may move by up to `BLOCK − 1` floats).
    fn resized(mut self, len: usize) -> Result<Aligned, KernelError> {
        let total = len
            .checked_add(BLOCK - 1)
            .ok_or(KernelError::TooLarge { what: "scratch" })?;
        self.buf.resize(total, 0.0);
        // A `Vec<f32>`'s pointer is 4-byte aligned, so `lead < BLOCK`.
        let misaligned = self.buf.as_ptr() as usize % (4 * BLOCK);
        self.lead = (4 * BLOCK - misaligned) % (4 * BLOCK) / 4;
        self.len = len;
        Ok(self)
    }
}

impl std::ops::Deref for Aligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.lead..self.lead + self.len]
    }
}

impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.lead..self.lead + self.len]
    }
}

impl Scratch {
    /// Sizes the buffers for `conv` on an `h × w` input (reusing this thread's pooled ones) and
    /// zeroes everything the compute paths read without writing first: the padded input planes
    /// (borders and stride tails) and the `SLACK` after the last Z and R plane.
    fn new(conv: &DlqConv, h: usize, w: usize, oh: usize) -> Result<Scratch, KernelError> {
        let too_large = KernelError::TooLarge { what: "scratch" };
        let g = &conv.geometry;
        let padded = g.padded_size(h, w).ok_or(too_large.clone())?;
        let plane = checked_product(&padded, "scratch")?;
        let stride = round_up(plane).ok_or(too_large.clone())?;
        let subs = conv.subspaces.iter();
        let max_width = subs.clone().map(|s| s.channels.len()).max().unwrap_or(0);
        let max_atoms = subs.clone().map(|s| s.num_atoms).max().unwrap_or(0);
        let dl = subs.filter(|s| s.codes.is_some());
        let max_reps = dl.map(Subspace::num_representatives).max().unwrap_or(0);
        let planes = |n: usize| -> Result<usize, KernelError> {
            checked_product(&[n, stride], "scratch")?
                .checked_add(SLACK)
                .ok_or(too_large.clone())
        };
        let unit_stride = g.strides == [1, 1];
        let acc_stride = if unit_stride {
            round_up(checked_product(&[oh, padded[1]], "scratch")?).ok_or(too_large.clone())?
        } else {
            0
        };
        let acc_len = checked_product(&[g.out_channels, acc_stride], "scratch")?;
        let x_len = checked_product(&[max_width, stride], "scratch")?;
        let (z_len, r_len) = (planes(max_atoms)?, planes(max_reps)?);
        let pooled = POOL.with(|pool| pool.borrow_mut().take());
        let (x, z, r, acc) = match pooled {
            Some(s) => (s.x, s.z, s.r, s.acc),
            None => Default::default(),
        };
        let mut scratch = Scratch {
            padded,
            stride,
            x: x.resized(x_len)?,
            z: z.resized(z_len)?,
            r: r.resized(r_len)?,
            acc: acc.resized(acc_len)?,
            acc_stride,
            offsets: vec![0; g.kernel[0] * g.kernel[1]],
            origins: (0..g.kernel[0] * g.kernel[1])
                .map(|tap| {
                    let (u, v) = (tap / g.kernel[1], tap % g.kernel[1]);
                    u * g.dilations[0] * padded[1] + v * g.dilations[1]
                })
                .collect(),
            terms: Vec::new(),
            coefs: Vec::new(),
        };
        scratch.x.fill(0.0);
        scratch.z[z_len - SLACK..].fill(0.0);
        scratch.r[r_len - SLACK..].fill(0.0);
        Ok(scratch)
    }

    /// Hands the buffers back to this thread's pool for the next `run`.
    fn recycle(self) {
        POOL.with(|pool| *pool.borrow_mut() = Some(self));
    }
}

/// `n` rounded up to a multiple of `BLOCK`, or `None` on overflow.
fn round_up(n: usize) -> Option<usize> {
    Some(n.checked_add(BLOCK - 1)? / BLOCK * BLOCK)
}

impl DlqConv {
    /// Computes `U = Conv(x, W̃) + bias` for NCHW f32 `x` of shape `[batch, N, h, w]` into `out`
    /// of shape `[batch, M, oh, ow]`, and returns `[oh, ow]`. Refuses (never panics) when the
    /// kernel does not fit the padded input or a buffer length is wrong.
    ///
    /// Uses AVX-512F or AVX2 + FMA when the CPU has them (checked at run time), else portable
    /// loops; they agree to float rounding (see [`DlqConv::run_portable`]). Single-threaded.
    pub fn run(
        &self,
        x: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        out: &mut [f32],
    ) -> Result<[usize; 2], KernelError> {
        self.run_with(Isa::detect(), None, x, batch, h, w, out)
    }

    /// [`DlqConv::run`] forced onto the portable loops (for tests comparing the two paths).
    #[doc(hidden)]
    pub fn run_portable(
        &self,
        x: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        out: &mut [f32],
    ) -> Result<[usize; 2], KernelError> {
        self.run_with(Isa::Portable, None, x, batch, h, w, out)
    }

    /// [`DlqConv::run`] with the time of each phase added to `times` (for benchmarks; the
    /// clock reads cost a little).
    #[doc(hidden)]
    pub fn run_timed(
        &self,
        x: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        out: &mut [f32],
        times: &mut PhaseTimes,
    ) -> Result<[usize; 2], KernelError> {
        self.run_with(Isa::detect(), Some(times), x, batch, h, w, out)
    }

    /// The name of the implementation [`DlqConv::run`] uses on this CPU.
    #[doc(hidden)]
    pub fn simd_level() -> &'static str {
        Isa::detect().name()
    }

    #[allow(clippy::too_many_arguments)]
    fn run_with(
        &self,
        isa: Isa,
        times: Option<&mut PhaseTimes>,
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
        let mut scratch = Scratch::new(self, h, w, oh)?;
        let mut clock = Clock { times, last: None };
        let unit_stride = g.strides == [1, 1];
        // Both image lengths are ≥ 1 (every dimension was checked ≥ 1), so chunking is safe.
        let images = x.chunks_exact(image_len);
        for (image, dst) in images.zip(out.chunks_exact_mut(out_image_len)) {
            clock.start();
            if unit_stride {
                self.init_planes(&mut scratch.acc, scratch.acc_stride);
            } else {
                self.init_planes(dst, oh * ow);
            }
            clock.lap(|t| &mut t.init);
            for sub in &self.subspaces {
                pad_channels(sub, image, [h, w], g.pads, &mut scratch);
                simd::atom_responses(
                    isa,
                    &mut scratch.z,
                    &sub.atoms,
                    sub.channels.len(),
                    &scratch.x,
                    scratch.stride,
                );
                clock.lap(|t| &mut t.z);
                let fused = unit_stride && fuse_representatives(isa, sub, sub.assignment.len());
                if let (Some(codes), false) = (&sub.codes, fused) {
                    simd::representatives(
                        isa,
                        &mut scratch.r,
                        &scratch.z,
                        &codes.atoms,
                        &codes.coefficients,
                        codes.alpha,
                        scratch.stride,
                    );
                }
                clock.lap(|t| &mut t.r);
                if unit_stride && fused {
                    self.add_taps_fused(isa, sub, &mut scratch, oh, ow);
                } else if unit_stride {
                    self.add_taps_unit_stride(isa, sub, &mut scratch, oh, ow);
                } else {
                    self.add_taps_strided(sub, &scratch, dst, [oh, ow]);
                }
                clock.lap(|t| &mut t.taps);
            }
            if unit_stride {
                crop(
                    &scratch.acc,
                    scratch.acc_stride,
                    scratch.padded[1],
                    dst,
                    [oh, ow],
                );
            }
            clock.lap(|t| &mut t.init);
        }
        scratch.recycle();
        Ok([oh, ow])
    }

    /// Starts every `len`-long plane of `dst` at its channel's bias (or 0), so the bias is added
    /// exactly once.
    fn init_planes(&self, dst: &mut [f32], len: usize) {
        for (k, plane) in dst.chunks_exact_mut(len).enumerate() {
            plane.fill(self.bias.as_ref().map_or(0.0, |b| b[k]));
        }
    }

    /// Stride 1: for every output channel k, adds the kh·kw tap runs of R (each one contiguous
    /// run at padded width) into k's accumulator slice in one pass.
    fn add_taps_unit_stride(
        &self,
        isa: Isa,
        sub: &Subspace,
        scratch: &mut Scratch,
        oh: usize,
        ow: usize,
    ) {
        let (wp, stride) = (scratch.padded[1], scratch.stride);
        // (oh − 1)·wp + ow ≤ oh·wp ≤ acc_stride, so the rounded run fits the accumulator slice.
        let run = round_up((oh - 1) * wp + ow).unwrap_or(scratch.acc_stride);
        let reps: &[f32] = if sub.codes.is_some() {
            &scratch.r
        } else {
            &scratch.z
        };
        simd::accumulate_channels(
            isa,
            &mut scratch.acc,
            scratch.acc_stride,
            run,
            reps,
            &sub.assignment,
            &scratch.origins,
            stride,
            &mut scratch.offsets,
        );
    }

    /// Stride 1, DL subspace, R not materialised: for every output channel k, adds
    /// `Σ_t coef · Z[idx]` of each tap's representative straight from the (small) Z planes into
    /// k's accumulator slice, α fused multiply-adds per tap and element.
    fn add_taps_fused(
        &self,
        isa: Isa,
        sub: &Subspace,
        scratch: &mut Scratch,
        oh: usize,
        ow: usize,
    ) {
        let Some(codes) = &sub.codes else {
            return self.add_taps_unit_stride(isa, sub, scratch, oh, ow);
        };
        let g = &self.geometry;
        let [kh, kw] = g.kernel;
        let (wp, stride, alpha) = (scratch.padded[1], scratch.stride, codes.alpha);
        let run = round_up((oh - 1) * wp + ow).unwrap_or(scratch.acc_stride);
        let terms = kh * kw * alpha;
        scratch.terms.resize(terms, 0);
        scratch.coefs.resize(terms, 0.0);
        let columns = sub.assignment.chunks_exact(kh * kw);
        let accs = scratch.acc.chunks_exact_mut(scratch.acc_stride);
        for (acc, gamma) in accs.zip(columns) {
            let slots = scratch.terms.chunks_exact_mut(alpha);
            let coef_slots = scratch.coefs.chunks_exact_mut(alpha);
            let taps = slots.zip(coef_slots).zip(gamma).zip(&scratch.origins);
            for (((offsets, coefs), &rep), &origin) in taps {
                let code = rep as usize * alpha;
                let idx = &codes.atoms[code..code + alpha];
                offsets
                    .iter_mut()
                    .zip(idx)
                    .for_each(|(o, &i)| *o = i as usize * stride + origin);
                coefs.copy_from_slice(&codes.coefficients[code..code + alpha]);
            }
            simd::accumulate_scaled(
                isa,
                &mut acc[..run],
                &scratch.z,
                &scratch.terms,
                &scratch.coefs,
            );
        }
    }

    /// Any stride: for every output channel k and tap (u, v), adds the plane of representative
    /// `Γ[k][u][v]`, shifted by the tap, row by row into channel k of the output.
    fn add_taps_strided(
        &self,
        sub: &Subspace,
        scratch: &Scratch,
        dst: &mut [f32],
        [oh, ow]: [usize; 2],
    ) {
        let g = &self.geometry;
        let [kh, kw] = g.kernel;
        let [hp, wp] = scratch.padded;
        let reps: &[f32] = if sub.codes.is_some() {
            &scratch.r
        } else {
            &scratch.z
        };
        let columns = sub.assignment.chunks_exact(kh * kw);
        for (out_plane, gamma) in dst.chunks_exact_mut(oh * ow).zip(columns) {
            for (tap, &rep) in gamma.iter().enumerate() {
                let (u, v) = (tap / kw, tap % kw);
                let r = &reps[rep as usize * scratch.stride..][..hp * wp];
                let origin = u * g.dilations[0] * wp + v * g.dilations[1];
                add_shifted(out_plane, &r[origin..], ow, wp, g.strides);
            }
        }
    }
}

/// Whether a DL subspace's look-up adds read Z directly (α fused multiply-adds per tap) instead
/// of a materialised R. Only with SIMD and stride 1. Fusing saves the R phase (K planes of α
/// multiply-adds, written out to L2) and costs α − 1 extra multiply-adds per tap run (M·kh·kw
/// runs, read from the far smaller Z). The factor 1.0 (cost of an R term relative to an extra
/// tap term) was refitted on the benchmark machine after the AVX-512 R and aligned look-up adds:
/// fusing wins on ResNet-20 layer3 at ρ = 4 (extra terms / R terms = 0.67: 0.062 vs 0.071 ms)
/// and loses at ρ = 8 (1.33: 0.058 vs 0.046 ms) and on fire8 at ρ = 10 (1.67: 0.41 vs 0.37 ms).
/// Both choices give the same result to float rounding.
fn fuse_representatives(isa: Isa, sub: &Subspace, taps: usize) -> bool {
    let Some(codes) = &sub.codes else {
        return false;
    };
    let extra_terms = (codes.alpha - 1) as f64 * taps as f64;
    isa != Isa::Portable && extra_terms < 1.0 * (codes.alpha * sub.num_representatives()) as f64
}

/// Copies the subspace's input channels into the interior of the zero-padded planes of
/// `scratch.x` (the borders and the stride's tail are never written, so they stay zero).
fn pad_channels(
    sub: &Subspace,
    image: &[f32],
    [h, w]: [usize; 2],
    pads: [usize; 4],
    scratch: &mut Scratch,
) {
    let wp = scratch.padded[1];
    let [top, left, ..] = pads;
    let channels = &image[sub.channels.start * h * w..sub.channels.end * h * w];
    let planes = scratch.x.chunks_exact_mut(scratch.stride);
    for (plane, channel) in planes.zip(channels.chunks_exact(h * w)) {
        for (y, row) in channel.chunks_exact(w).enumerate() {
            plane[(top + y) * wp + left..][..w].copy_from_slice(row);
        }
    }
}

/// Copies the valid `ow` columns of each padded-width accumulator row into the output.
fn crop(acc: &[f32], acc_stride: usize, wp: usize, dst: &mut [f32], [oh, ow]: [usize; 2]) {
    let planes = dst
        .chunks_exact_mut(oh * ow)
        .zip(acc.chunks_exact(acc_stride));
    for (out_plane, acc_plane) in planes {
        for (oy, out_row) in out_plane.chunks_exact_mut(ow).enumerate() {
            out_row.copy_from_slice(&acc_plane[oy * wp..][..ow]);
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
