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
//! `BLOCK − 1` floats of rounding that land in the next plane or in `scratch::SLACK`.
//! Other strides: with AVX2 the row layout over *phase planes* (padded row `py`, column `px`
//! stored in plane `(py mod sh, px mod sw)` at `(py / sh, px / sw)`, see `simd::Phases`), where
//! every tap reads at unit stride, so the row path runs them too (ResNet-20's stride-2 layers:
//! 0.18–0.21 → 0.06 ms in ORT); AVX-512 and the portable path keep the row-by-row adds straight
//! into the output.

use std::ops::Range;
use std::sync::Mutex;
use std::time::Instant;

use crate::conv::{DlqConv, Subspace};
use crate::error::{check_len, checked_product, KernelError};
use crate::simd::{self, Isa};

mod planes;
mod scratch;

use planes::*;
use scratch::*;

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

/// A stopwatch that only reads the clock when timing was asked for; laps are added to the
/// shared times under their lock.
struct Clock<'a> {
    times: Option<&'a Mutex<PhaseTimes>>,
    last: Option<Instant>,
}

impl<'a> Clock<'a> {
    fn new(times: Option<&'a Mutex<PhaseTimes>>) -> Clock<'a> {
        let last = times.map(|_| Instant::now());
        Clock { times, last }
    }

    /// Adds the time since the last lap to the field `slot` picks.
    fn lap(&mut self, slot: fn(&mut PhaseTimes) -> &mut f64) {
        if let (Some(times), Some(last)) = (self.times, self.last) {
            let now = Instant::now();
            *slot(&mut lock(times)) += (now - last).as_secs_f64();
            self.last = Some(now);
        }
    }
}

/// Locks a task's slot; a poisoned lock (a panicking task, which validated input never causes)
/// still hands out its data.
fn lock<T>(slot: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The driver a host engine passes to [`DlqConv::run_parallel`]: `par(n, f)` must call `f(i)`
/// for every `i` in `0..n` (in any order, on any threads, possibly concurrently) and return
/// only once all those calls have returned.
pub type ParallelFor<'a> = &'a dyn Fn(usize, &(dyn Fn(usize) + Sync));

/// A [`ParallelFor`] that runs the tasks one after the other on the calling thread.
fn sequential(n: usize, f: &(dyn Fn(usize) + Sync)) {
    (0..n).for_each(f);
}

/// One implementation of the kernel's loops: portable, AVX2 + FMA, or AVX-512F (for tests and
/// benchmarks; [`DlqConv::run`] picks the best this CPU has).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelPath(Isa);

impl KernelPath {
    pub const PORTABLE: KernelPath = KernelPath(Isa::Portable);

    /// Every implementation, whether this CPU can run it or not.
    pub fn all() -> [KernelPath; 3] {
        Isa::ALL.map(KernelPath)
    }

    /// The one [`DlqConv::run`] uses on this CPU.
    pub fn best() -> KernelPath {
        KernelPath(Isa::detect())
    }

    pub fn supported(self) -> bool {
        self.0.supported()
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

impl DlqConv {
    /// Computes `U = Conv(x, W̃) + bias` for NCHW f32 `x` of shape `[batch, N, h, w]` into `out`
    /// of shape `[batch, M, oh, ow]`, and returns `[oh, ow]`. Refuses (never panics) when the
    /// kernel does not fit the padded input or a buffer length is wrong.
    ///
    /// Uses AVX-512F or AVX2 + FMA when the CPU has them (checked at run time), else portable
    /// loops; they agree to float rounding (see [`DlqConv::run_on`]). Single-threaded:
    /// [`DlqConv::run_parallel`] with every task on the calling thread (bit-identical to it).
    pub fn run(
        &self,
        x: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        out: &mut [f32],
    ) -> Result<[usize; 2], KernelError> {
        self.run_with(Isa::detect(), None, x, batch, h, w, out, &sequential)
    }

    /// [`DlqConv::run`] with its work split into tasks that the caller's thread pool runs.
    ///
    /// `par(n, f)` must call `f(i)` exactly once for every `i` in `0..n` — in any order, on any
    /// threads, possibly concurrently — and return only after all of those calls returned
    /// (ONNX Runtime's `KernelContext_ParallelFor` is such a driver; `|n, f| (0..n).for_each(f)`
    /// is the sequential one). `run_parallel` calls `par` twice per image and group of
    /// subspaces (phase 1: the Z and R planes of each subspace; phase 2: the look-up adds of
    /// each block of output channels); it never calls `par` from inside a task.
    ///
    /// **The output is bit-identical to [`DlqConv::run`]'s whatever the number of threads and
    /// the order of the tasks**: every output element is summed by one task, in an order fixed
    /// by the layer and input sizes alone. Tasks borrow disjoint parts of the scratch buffers
    /// (pooled per calling thread) through one mutex each. Refuses (never panics) as `run`
    /// does; should `par` skip a task the output is left partly unwritten (never memory-unsafe),
    /// and a task run twice recomputes the same values.
    pub fn run_parallel(
        &self,
        x: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        out: &mut [f32],
        par: ParallelFor<'_>,
    ) -> Result<[usize; 2], KernelError> {
        self.run_with(Isa::detect(), None, x, batch, h, w, out, par)
    }

    /// [`DlqConv::run`] on one given implementation instead of the best this CPU has, for
    /// tests and benchmarks that run every path the CPU supports. Refuses a path the CPU lacks.
    #[doc(hidden)]
    pub fn run_on(
        &self,
        path: KernelPath,
        x: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        out: &mut [f32],
    ) -> Result<[usize; 2], KernelError> {
        if !path.supported() {
            return Err(KernelError::UnsupportedPath { path: path.name() });
        }
        self.run_with(path.0, None, x, batch, h, w, out, &sequential)
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
        let shared = Mutex::new(*times);
        let size = self.run_with(
            Isa::detect(),
            Some(&shared),
            x,
            batch,
            h,
            w,
            out,
            &sequential,
        );
        *times = *lock(&shared);
        size
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
        times: Option<&Mutex<PhaseTimes>>,
        x: &[f32],
        batch: usize,
        h: usize,
        w: usize,
        out: &mut [f32],
        par: ParallelFor<'_>,
    ) -> Result<[usize; 2], KernelError> {
        let g = &self.geometry;
        let [oh, ow] = g.output_size(h, w).ok_or(KernelError::NoOutput { h, w })?;
        let image_len = checked_product(&[g.in_channels, h, w], "input")?;
        let out_image_len = checked_product(&[g.out_channels, oh, ow], "output")?;
        let input_len = checked_product(&[batch, image_len], "input")?;
        let output_len = checked_product(&[batch, out_image_len], "output")?;
        check_len(None, "input", input_len, x.len())?;
        check_len(None, "output", output_len, out.len())?;
        let mut scratch = Scratch::new(self, isa, [h, w], [oh, ow])?;
        let m = g.out_channels;
        let block = m.div_ceil(CHANNEL_BLOCKS).max(MIN_BLOCK);
        // Both image lengths are ≥ 1 (every dimension was checked ≥ 1), so chunking is safe.
        let images = x.chunks_exact(image_len);
        for (image, dst) in images.zip(out.chunks_exact_mut(out_image_len)) {
            let chunks = scratch.chunks.clone();
            let last = chunks.len() - 1;
            // Phase-2 slots (kept across chunks: the accumulator carries the sum over subspaces).
            let acc_stride = scratch.acc_stride;
            let slots2 = channel_blocks(&mut scratch.acc, acc_stride, dst, oh * ow, [m, block]);
            for (c, chunk) in chunks.into_iter().enumerate() {
                // Phase 1: Z (and R) of the chunk's subspaces.
                let layout = Layout {
                    padded: scratch.padded,
                    pitch: scratch.pitch,
                    stride: scratch.stride,
                    acc_stride: scratch.acc_stride,
                    origins: &scratch.origins,
                    band_rows: scratch.band_rows,
                    phases: scratch.phases,
                };
                self.phase_one(
                    isa,
                    &chunk,
                    &scratch.regions[chunk.clone()],
                    [&mut scratch.x, &mut scratch.z, &mut scratch.r],
                    (image, [h, w]),
                    &layout,
                    times,
                    par,
                );
                // Phase 2: each block of output channels adds the chunk's subspaces.
                let (z, r) = (&scratch.z[..], &scratch.r[..]);
                let (regions, modes) = (&scratch.regions, &scratch.modes);
                let task = |b: usize| {
                    let Some(slot) = slots2.get(b) else { return };
                    let mut slot = lock(slot);
                    let (acc, dst) = &mut *slot;
                    let channels = b * block..(b * block + block).min(m);
                    let mut clock = Clock::new(times);
                    let rows = modes.first() == Some(&Mode::Rows);
                    if c == 0 && !rows {
                        if layout.acc_stride > 0 {
                            self.init_planes(acc, layout.acc_stride, channels.start);
                        } else {
                            self.init_planes(dst, oh * ow, channels.start);
                        }
                        clock.lap(|t| &mut t.init);
                    }
                    for s in chunk.clone() {
                        let [_, zr, rr] = &regions[s];
                        let (zs, rs) = (&z[zr.clone()], &r[rr.clone()]);
                        let ctx = (&mut **acc, &mut **dst, channels.clone());
                        self.add_taps(isa, s, modes[s], &layout, zs, rs, ctx, [oh, ow]);
                    }
                    clock.lap(|t| &mut t.taps);
                    if c == last && layout.acc_stride > 0 && !rows {
                        crop(acc, layout.acc_stride, layout.pitch, dst, [oh, ow]);
                        clock.lap(|t| &mut t.init);
                    }
                };
                par(slots2.len(), &task);
            }
        }
        scratch.recycle();
        Ok([oh, ow])
    }

    /// Phase 1 of `run_with` for one chunk: each of its subspaces pads its input channels and
    /// writes its Z (and R) into its own regions of `buffers` (x, z, r), one task each.
    #[allow(clippy::too_many_arguments)]
    fn phase_one(
        &self,
        isa: Isa,
        chunk: &Range<usize>,
        regions: &[[Range<usize>; 3]],
        [x, z, r]: [&mut [f32]; 3],
        (image, [h, w]): (&[f32], [usize; 2]),
        layout: &Layout,
        times: Option<&Mutex<PhaseTimes>>,
        par: ParallelFor<'_>,
    ) {
        let piece = |i: usize| regions.iter().map(move |r| r[i].len());
        let xs = split_lengths(x, piece(0));
        let zs = split_lengths(z, piece(1));
        let rs = split_lengths(r, piece(2));
        let slots1: Vec<Mutex<Regions>> = xs
            .into_iter()
            .zip(zs)
            .zip(rs)
            .map(|((x, z), r)| Mutex::new((x, z, r)))
            .collect();
        let task = |i: usize| {
            let Some(slot) = slots1.get(i) else { return };
            let mut slot = lock(slot);
            let (xs, zs, rs) = &mut *slot;
            let s = chunk.start + i;
            self.responses(isa, s, image, [h, w], layout, xs, zs, rs, times);
        };
        par(slots1.len(), &task);
    }

    /// Phase 1 for subspace `s`: its input channels into the zero-padded planes `xs`, Z into
    /// `zs` (then `SLACK` zeros) and, if its mode needs R, R into `rs` (then `SLACK` zeros).
    #[allow(clippy::too_many_arguments)]
    fn responses(
        &self,
        isa: Isa,
        s: usize,
        image: &[f32],
        hw: [usize; 2],
        layout: &Layout,
        xs: &mut [f32],
        zs: &mut [f32],
        rs: &mut [f32],
        times: Option<&Mutex<PhaseTimes>>,
    ) {
        let sub = &self.subspaces[s];
        let mut clock = Clock::new(times);
        pad_channels(sub, image, hw, self.geometry.pads, layout, xs);
        let width = sub.channels.len();
        simd::atom_responses(isa, zs, &sub.atoms, width, xs, layout.stride);
        let z_end = zs.len() - SLACK;
        zs[z_end..].fill(0.0);
        clock.lap(|t| &mut t.z);
        if let (Some(codes), false) = (&sub.codes, rs.is_empty()) {
            let r_end = rs.len() - SLACK;
            simd::representatives(
                isa,
                rs,
                zs,
                &codes.atoms,
                &codes.coefficients,
                codes.alpha,
                layout.stride,
            );
            rs[r_end..].fill(0.0);
            clock.lap(|t| &mut t.r);
        }
    }

    /// Starts every `len`-long plane of `dst` (output channels `first..`) at its channel's bias
    /// (or 0), so the bias is added exactly once.
    fn init_planes(&self, dst: &mut [f32], len: usize, first: usize) {
        for (k, plane) in dst.chunks_exact_mut(len).enumerate() {
            plane.fill(self.bias.as_ref().map_or(0.0, |b| b[first + k]));
        }
    }

    /// Phase 2 for subspace `s` and the output channels `channels`: their look-up adds, from Z
    /// (`zs`) or R (`rs`), into their accumulator slices `acc` (stride 1) or output planes `dst`.
    #[allow(clippy::too_many_arguments)]
    fn add_taps(
        &self,
        isa: Isa,
        s: usize,
        mode: Mode,
        layout: &Layout,
        zs: &[f32],
        rs: &[f32],
        (acc, dst, channels): (&mut [f32], &mut [f32], Range<usize>),
        [oh, ow]: [usize; 2],
    ) {
        let sub = &self.subspaces[s];
        let g = &self.geometry;
        let [kh, kw] = g.kernel;
        let taps = kh * kw;
        let gamma = &sub.assignment[channels.start * taps..channels.end * taps];
        let reps = if sub.codes.is_some() && !rs.is_empty() {
            rs
        } else {
            zs
        };
        match mode {
            Mode::Rows => {
                let shape = simd::RowShape {
                    pitch: layout.pitch,
                    stride: layout.stride,
                    oh,
                    kernel: [kh, kw],
                    row_step: g.dilations[0].saturating_mul(layout.pitch),
                    shift: g.dilations[1],
                    band_rows: layout.band_rows,
                    cols: ow,
                    phases: layout.phases,
                };
                let terms = &self.row_terms[s];
                // The first subspace starts the accumulators at the bias, the last one writes
                // the output.
                let ends = simd::RowEnds {
                    init: (s == 0).then_some(self.bias.as_ref().map(|b| &b[channels.clone()])),
                    crop: (s + 1 == self.subspaces.len()).then_some((dst, ow)),
                };
                let stride = layout.acc_stride;
                simd::accumulate_rows(isa, acc, stride, zs, terms, channels, shape, ends);
            }
            Mode::Adds => {
                let (wp, stride) = (layout.pitch, layout.stride);
                // (oh − 1)·wp + ow ≤ oh·wp ≤ acc_stride, so the rounded run fits the slice.
                let run = round_up((oh - 1) * wp + ow).unwrap_or(layout.acc_stride);
                let mut offsets = vec![0; taps];
                simd::accumulate_channels(
                    isa,
                    acc,
                    layout.acc_stride,
                    run,
                    reps,
                    gamma,
                    layout.origins,
                    stride,
                    &mut offsets,
                );
            }
            Mode::Fused => self.add_taps_fused(isa, sub, layout, zs, acc, gamma, oh, ow),
            Mode::Strided => self.add_taps_strided(layout, reps, dst, gamma, [oh, ow]),
        }
    }

    /// Stride 1, DL subspace, R not materialised: for every output channel k, adds
    /// `Σ_t coef · Z[idx]` of each tap's representative straight from the (small) Z planes into
    /// k's accumulator slice, α fused multiply-adds per tap and element.
    #[allow(clippy::too_many_arguments)]
    fn add_taps_fused(
        &self,
        isa: Isa,
        sub: &Subspace,
        layout: &Layout,
        zs: &[f32],
        acc: &mut [f32],
        gamma: &[u32],
        oh: usize,
        ow: usize,
    ) {
        let Some(codes) = &sub.codes else {
            return;
        };
        let [kh, kw] = self.geometry.kernel;
        let (wp, stride, alpha) = (layout.pitch, layout.stride, codes.alpha);
        let run = round_up((oh - 1) * wp + ow).unwrap_or(layout.acc_stride);
        let terms = kh * kw * alpha;
        let mut offsets = vec![0; terms];
        let mut coefs = vec![0.0; terms];
        let columns = gamma.chunks_exact(kh * kw);
        for (acc, gamma) in acc.chunks_exact_mut(layout.acc_stride).zip(columns) {
            let slots = offsets.chunks_exact_mut(alpha);
            let coef_slots = coefs.chunks_exact_mut(alpha);
            let taps = slots.zip(coef_slots).zip(gamma).zip(layout.origins);
            for (((offsets, coefs), &rep), &origin) in taps {
                let code = rep as usize * alpha;
                let idx = &codes.atoms[code..code + alpha];
                offsets
                    .iter_mut()
                    .zip(idx)
                    .for_each(|(o, &i)| *o = i as usize * stride + origin);
                coefs.copy_from_slice(&codes.coefficients[code..code + alpha]);
            }
            simd::accumulate_scaled(isa, &mut acc[..run], zs, &offsets, &coefs);
        }
    }

    /// Any stride: for every output channel k and tap (u, v), adds the plane of representative
    /// `Γ[k][u][v]`, shifted by the tap, row by row into channel k of the output.
    fn add_taps_strided(
        &self,
        layout: &Layout,
        reps: &[f32],
        dst: &mut [f32],
        gamma: &[u32],
        [oh, ow]: [usize; 2],
    ) {
        let g = &self.geometry;
        let [kh, kw] = g.kernel;
        let [hp, wp] = layout.padded;
        let columns = gamma.chunks_exact(kh * kw);
        for (out_plane, gamma) in dst.chunks_exact_mut(oh * ow).zip(columns) {
            for (tap, &rep) in gamma.iter().enumerate() {
                let (u, v) = (tap / kw, tap % kw);
                let r = &reps[rep as usize * layout.stride..][..hp * wp];
                let origin = u * g.dilations[0] * wp + v * g.dilations[1];
                add_shifted(out_plane, &r[origin..], ow, wp, g.strides);
            }
        }
    }
}

/// A phase-1 task's regions of the padded input, Z and R.
type Regions<'a> = (&'a mut [f32], &'a mut [f32], &'a mut [f32]);
