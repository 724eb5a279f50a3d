//! The kernel's scratch: every subspace's mode, the buffers of one call (pooled per thread),
//! and how they are cut into the regions and blocks the parallel tasks own.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Mutex;

use crate::conv::DlqConv;
use crate::error::{checked_product, KernelError};
use crate::simd::{self, Isa, Phases, BLOCK};

use super::planes::fuse_representatives;

/// Zero floats after the last Z and R plane, so a tap's run rounded up to [`BLOCK`] stays inside
/// the buffer, plus one more block for the AVX-512 look-up adds, which read each run from the
/// 64-byte boundary before it up to one block past its end (see `simd::accumulate`).
pub(super) const SLACK: usize = 2 * BLOCK;

/// How one subspace's look-up adds are computed (chosen per call from the ISA and geometry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Stride 1 with AVX-512, any stride with AVX2 (phase planes), row layout: α fused
    /// multiply-adds per tap straight from Z, no R ([`simd::accumulate_rows`]).
    Rows,
    /// Stride 1: the kh·kw runs of R (Z for VQ) added per channel ([`simd::accumulate_channels`]).
    Adds,
    /// Stride 1, DL, R not materialised: α multiply-adds per tap from Z at the padded width
    /// ([`simd::accumulate_scaled`]).
    Fused,
    /// Any stride: row-by-row adds of R (Z for VQ) straight into the output.
    Strided,
}

/// Most floats one scratch buffer may hold (16 GiB): a bigger one is refused with an error.
pub(super) const MAX_SCRATCH_FLOATS: usize = 1 << 32;

/// Most floats of Z, R and padded input one chunk of subspaces keeps (phase 1 writes them all
/// before phase 2 reads them): 4 MiB, so a chunk stays within L2 (2 MiB) to L3 even with R.
pub(super) const CHUNK_FLOATS: usize = 1 << 20;

/// Z rows one band of the row layout may span, in bytes: kept within L1 (48 KiB on the
/// AVX-512 machine) next to the accumulators and the term tables. On a 32 KiB L1 (AMD Zen 3,
/// AVX2) 24 KiB measured 9% slower at fire8 ρ = 10 (fewer rows per band) than 36 KiB.
pub(super) const ROW_BAND_BYTES: usize = 36 << 10;

/// Phase-2 tasks: M split into at most this many blocks of output channels (each block reads
/// every subspace's Z once, so fewer, larger blocks reuse Z more: fire8 on AVX2 took 0.365 ms
/// in 16 blocks, 0.323 in 4, 0.315 in 2; 4 keeps two threads busy)...
pub(super) const CHANNEL_BLOCKS: usize = 4;

/// ... of at least this many channels (each task call has a fixed cost: checks, offsets, the
/// subspaces' Z pulled into L1).
pub(super) const MIN_BLOCK: usize = 16;

/// Scratch planes, reused for every image and chunk of a call and pooled per (calling) thread
/// between calls. Phase 1 tasks write disjoint regions of `x`, `z`, `r`; phase 2 tasks disjoint
/// blocks of `acc` (and of the output), handed out through one `Mutex` each.
pub(super) struct Scratch {
    /// `[Hp, Wp]`, the padded plane size.
    pub(super) padded: [usize; 2],
    /// Floats per row of every padded plane: `Wp`, or `Wp` rounded up to [`BLOCK`] in the row
    /// layout.
    pub(super) pitch: usize,
    /// Distance between consecutive planes: `Hp·pitch` rounded up to `BLOCK`.
    pub(super) stride: usize,
    /// The chunk's subspaces' input channels, zero-padded (`|s|` planes each).
    pub(super) x: Aligned,
    /// Atom responses of the chunk's subspaces: `L` planes, then `SLACK`, each.
    pub(super) z: Aligned,
    /// Representative responses of the chunk's subspaces that need them: `K` planes, then
    /// `SLACK`, each.
    pub(super) r: Aligned,
    /// Stride 1 only: the output at row pitch, `M` slices of `acc_stride` floats.
    pub(super) acc: Aligned,
    /// Length of one output channel's accumulator slice: `oh·pitch` rounded up to `BLOCK`.
    pub(super) acc_stride: usize,
    /// Where tap (u, v) starts reading a padded plane: `u·dh·pitch + v·dw`, at `u·kw + v`.
    pub(super) origins: Vec<usize>,
    /// Per subspace: its mode and its regions in `x`, `z`, `r` (offsets relative to its chunk).
    pub(super) modes: Vec<Mode>,
    pub(super) regions: Vec<[Range<usize>; 3]>,
    /// Consecutive subspaces processed together (phase 1 then phase 2).
    pub(super) chunks: Vec<Range<usize>>,
    /// Rows per band in the row layout.
    pub(super) band_rows: usize,
    /// Strided layers in the row layout: the planes' phase layout.
    pub(super) phases: Option<Phases>,
}

thread_local! {
    /// Buffers of the last `run` on this thread, reused by the next one: allocating (and
    /// page-faulting) a few hundred KiB of fresh zeroed memory per call cost as much as the
    /// compute. Only the calling thread takes and returns them; tasks on other threads borrow
    /// disjoint parts for the duration of a call.
    static POOL: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// A float buffer whose visible part starts on a 64-byte boundary, so that every plane (a
/// multiple of [`BLOCK`] floats) starts on a cache line: the SIMD loops then neither load nor
/// store across cache lines at plane and block starts. Derefs to the `len` visible floats.
#[derive(Default)]
pub(super) struct Aligned {
    pub(super) buf: Vec<f32>,
    pub(super) lead: usize,
    pub(super) len: usize,
}

impl Aligned {
    /// `self` resized to `len` visible floats, keeping its allocation (contents are left as
    /// they are, but may move by up to `BLOCK − 1` floats).
    pub(super) fn resized(mut self, len: usize) -> Result<Aligned, KernelError> {
        let total = len
            .checked_add(BLOCK - 1)
            .ok_or(KernelError::TooLarge { what: "scratch" })?;
        // Refused rather than aborting the process: a layer with huge pads or strides asks
        // for planes no machine holds.
        let refused = KernelError::ScratchTooLarge { floats: total };
        if total > MAX_SCRATCH_FLOATS {
            return Err(refused);
        }
        let more = total.saturating_sub(self.buf.len());
        self.buf.try_reserve_exact(more).map_err(|_| refused)?;
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

/// Each subspace's look-up mode for this layout.
pub(super) fn choose_modes(conv: &DlqConv, isa: Isa, unit_stride: bool, rows: bool) -> Vec<Mode> {
    conv.subspaces
        .iter()
        .map(|sub| {
            if rows {
                Mode::Rows
            } else if !unit_stride {
                Mode::Strided
            } else if fuse_representatives(isa, sub, sub.assignment.len()) {
                Mode::Fused
            } else {
                Mode::Adds
            }
        })
        .collect()
}

/// Per subspace, the lengths of its x, z and r regions.
pub(super) fn region_lengths(
    conv: &DlqConv,
    modes: &[Mode],
    stride: usize,
) -> Result<Vec<[usize; 3]>, KernelError> {
    let too_large = KernelError::TooLarge { what: "scratch" };
    let mut lengths = Vec::with_capacity(modes.len());
    for (sub, &mode) in conv.subspaces.iter().zip(modes) {
        let planes = |n: usize| -> Result<usize, KernelError> {
            checked_product(&[n, stride], "scratch")?
                .checked_add(SLACK)
                .ok_or(too_large.clone())
        };
        let x = checked_product(&[sub.channels.len(), stride], "scratch")?;
        let z = planes(sub.num_atoms)?;
        let needs_r = sub.codes.is_some() && matches!(mode, Mode::Adds | Mode::Strided);
        let r = if needs_r {
            planes(sub.num_representatives())?
        } else {
            0
        };
        lengths.push([x, z, r]);
    }
    Ok(lengths)
}

/// Chunks of consecutive subspaces whose regions fit CHUNK_FLOATS (at least one each), each
/// subspace's regions within its chunk, and the buffer lengths the largest chunk needs.
#[allow(clippy::type_complexity)]
pub(super) fn chunk_regions(
    lengths: &[[usize; 3]],
) -> Result<(Vec<Range<usize>>, Vec<[Range<usize>; 3]>, [usize; 3]), KernelError> {
    let too_large = KernelError::TooLarge { what: "scratch" };
    let (mut chunks, mut regions) = (Vec::new(), Vec::with_capacity(lengths.len()));
    let (mut start, mut used, mut ends) = (0, 0usize, [0usize; 3]);
    let mut totals = [0usize; 3];
    for (s, len) in lengths.iter().enumerate() {
        let size = len.iter().try_fold(0usize, |a, &b| a.checked_add(b));
        let size = size.ok_or(too_large.clone())?;
        if s > start && used.saturating_add(size) > CHUNK_FLOATS {
            chunks.push(start..s);
            (start, used, ends) = (s, 0, [0; 3]);
        }
        used += size;
        let region = [0, 1, 2].map(|i| ends[i]..ends[i] + len[i]);
        for i in 0..3 {
            ends[i] += len[i];
            totals[i] = totals[i].max(ends[i]);
        }
        regions.push(region);
    }
    chunks.push(start..lengths.len());
    Ok((chunks, regions, totals))
}

/// Rows per band: the band's Z rows (band + (kh − 1)·dh rows of every atom) within
/// ROW_BAND_BYTES, at least one row, at most the vectors a band keeps in registers.
pub(super) fn band_rows(conv: &DlqConv, isa: Isa, pitch: usize, [oh, ow]: [usize; 2]) -> usize {
    let g = &conv.geometry;
    let kh = g.kernel[0];
    let max_atoms = conv
        .subspaces
        .iter()
        .map(|s| s.num_atoms)
        .max()
        .unwrap_or(1);
    // A strided layer's band reads sh·sw phase planes, each (kh − 1)·dh / sh rows past it.
    let [sh, sw] = g.strides;
    // Saturating: a valid layer may have a stride or dilation near usize::MAX (one output).
    let halo = (kh - 1).saturating_mul(g.dilations[0]) / sh;
    let row_bytes = max_atoms
        .saturating_mul(pitch)
        .saturating_mul(4usize.saturating_mul(sh).saturating_mul(sw))
        .max(1);
    let fit = (ROW_BAND_BYTES / row_bytes).saturating_sub(halo);
    let per_row = simd::row_vectors(isa, pitch, ow).max(1);
    fit.min(simd::row_band_vectors(isa) / per_row)
        .min(oh)
        .max(1)
}

impl Scratch {
    /// Chooses every subspace's mode, the layout and the chunks, sizes the buffers for `conv`
    /// on an `h × w` input (reusing this thread's pooled ones) and zeroes the padded input planes
    /// (their borders and stride tails are never written).
    pub(super) fn new(
        conv: &DlqConv,
        isa: Isa,
        [h, w]: [usize; 2],
        [oh, ow]: [usize; 2],
    ) -> Result<Scratch, KernelError> {
        let too_large = KernelError::TooLarge { what: "scratch" };
        let g = &conv.geometry;
        let [kh, kw] = g.kernel;
        let padded = g.padded_size(h, w).ok_or(too_large.clone())?;
        let unit_stride = g.strides == [1, 1];
        let [sh, sw] = g.strides;
        // The row layout: at stride 1 the padded planes; otherwise (AVX2) their sh·sw phase
        // planes of ⌈Hp/sh⌉ × ⌈Wp/sw⌉ (see `Phases`), read at unit stride.
        let phase_size = [padded[0].div_ceil(sh), padded[1].div_ceil(sw)];
        let row_pitch = round_up(phase_size[1]).ok_or(too_large.clone())?;
        let rows = (isa == Isa::Avx2Fma || (isa == Isa::Avx512 && unit_stride))
            && (kw - 1)
                .checked_mul(g.dilations[1])
                .is_some_and(|s| s / sw < BLOCK)
            && simd::row_vectors(isa, row_pitch, ow) <= simd::row_band_vectors(isa);
        let pitch = if rows { row_pitch } else { padded[1] };
        let phases = if rows && !unit_stride {
            let col_phase = checked_product(&[phase_size[0], pitch], "scratch")?;
            Some(Phases {
                strides: g.strides,
                dilations: g.dilations,
                row_phase: checked_product(&[sw, col_phase], "scratch")?,
                col_phase,
            })
        } else {
            None
        };
        let plane = match phases {
            Some(p) => checked_product(&[sh, p.row_phase], "scratch")?,
            None => checked_product(&[padded[0], pitch], "scratch")?,
        };
        let stride = round_up(plane).ok_or(too_large.clone())?;
        let taps = kh * kw;
        let modes = choose_modes(conv, isa, unit_stride, rows);
        let lengths = region_lengths(conv, &modes, stride)?;
        let (chunks, regions, totals) = chunk_regions(&lengths)?;
        let acc_stride = if unit_stride || rows {
            round_up(checked_product(&[oh, pitch], "scratch")?).ok_or(too_large.clone())?
        } else {
            0
        };
        let acc_len = checked_product(&[g.out_channels, acc_stride], "scratch")?;
        let band_rows = band_rows(conv, isa, pitch, [oh, ow]);
        let pooled = POOL.with(|pool| pool.borrow_mut().take());
        let (x, z, r, acc) = match pooled {
            Some(s) => (s.x, s.z, s.r, s.acc),
            None => Default::default(),
        };
        let mut scratch = Scratch {
            padded,
            pitch,
            stride,
            x: x.resized(totals[0])?,
            z: z.resized(totals[1])?,
            r: r.resized(totals[2])?,
            acc: acc.resized(acc_len)?,
            acc_stride,
            origins: (0..taps)
                .map(|tap| {
                    let (u, v) = (tap / kw, tap % kw);
                    u * g.dilations[0] * pitch + v * g.dilations[1]
                })
                .collect(),
            modes,
            regions,
            chunks,
            band_rows,
            phases,
        };
        scratch.x.fill(0.0);
        Ok(scratch)
    }

    /// Hands the buffers back to this thread's pool for the next `run`.
    pub(super) fn recycle(self) {
        POOL.with(|pool| *pool.borrow_mut() = Some(self));
    }
}

/// `n` rounded up to a multiple of `BLOCK`, or `None` on overflow.
pub(super) fn round_up(n: usize) -> Option<usize> {
    Some(n.checked_add(BLOCK - 1)? / BLOCK * BLOCK)
}

/// Splits `buf` into consecutive pieces of the given lengths (the last piece takes whatever the
/// lengths leave, so `buf` must hold at least their sum).
pub(super) fn split_lengths(
    mut buf: &mut [f32],
    lengths: impl Iterator<Item = usize>,
) -> Vec<&mut [f32]> {
    let mut pieces = Vec::new();
    for len in lengths {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(len);
        pieces.push(head);
        buf = tail;
    }
    pieces
}

/// Per block of `block` output channels (of `m`), its accumulator slices (`acc_stride` floats
/// per channel) and output planes (`plane` floats per channel), one lock each.
#[allow(clippy::type_complexity)]
pub(super) fn channel_blocks<'a>(
    acc: &'a mut [f32],
    acc_stride: usize,
    dst: &'a mut [f32],
    plane: usize,
    [m, block]: [usize; 2],
) -> Vec<Mutex<(&'a mut [f32], &'a mut [f32])>> {
    let sizes = move |per: usize| (0..m).step_by(block).map(move |k| (m - k).min(block) * per);
    let acc_blocks = split_lengths(acc, sizes(acc_stride));
    let dst_blocks = split_lengths(dst, sizes(plane));
    acc_blocks
        .into_iter()
        .zip(dst_blocks)
        .map(Mutex::new)
        .collect()
}
