//! The AVX-512F loops (16-float zmm vectors). Every function states its preconditions; the
//! safe entry points in `simd` check them and the CPU features before calling.

use std::arch::x86_64::*;

use crate::simd::BLOCK;

use super::ends::end_pointers;

/// See [`crate::simd::accumulate`] (`coefs = None`) and [`crate::simd::accumulate_scaled`]
/// (`Some(coefs)`, fused multiply-adds): up to 16 zmm accumulators (256 floats) per pass, so
/// a typical padded-width run is one pass and the accumulators are independent chains.
///
/// # Safety
/// AVX-512F available; `acc.len() % BLOCK == 0`; `coefs`, if any, as long as `offsets`;
/// `o + acc.len() <= r.len()` for every offset.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn accumulate_avx512(
    acc: &mut [f32],
    r: &[f32],
    offsets: &[usize],
    coefs: Option<&[f32]>,
) {
    let len = acc.len();
    let mut i = 0;
    while i < len {
        let vectors = (len - i) / BLOCK;
        // Each arm covers `n` whole vectors starting at float `i`, inside `acc`, and
        // `o + i + 16·n <= o + len <= r.len()`.
        macro_rules! pass {
            ($($n:literal)*) => {
                match vectors {
                    $($n => block512::<$n>(acc.as_mut_ptr().add(i), r.as_ptr().add(i), offsets, coefs),)*
                    _ => block512::<16>(acc.as_mut_ptr().add(i), r.as_ptr().add(i), offsets, coefs),
                }
            };
        }
        pass!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        i += vectors.min(16) * BLOCK;
    }
}

/// `N` zmm accumulators loaded from `acc`, every term added (or fused-multiply-added), stored.
///
/// # Safety
/// AVX-512F available; `acc` valid for `16·N` floats; `r.add(o)` valid for `16·N` floats for
/// every offset `o`; `coefs`, if any, as long as `offsets`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block512<const N: usize>(
    acc: *mut f32,
    r: *const f32,
    offsets: &[usize],
    coefs: Option<&[f32]>,
) {
    let mut v = [_mm512_setzero_ps(); N];
    for (q, x) in v.iter_mut().enumerate() {
        *x = _mm512_loadu_ps(acc.add(16 * q));
    }
    let (op, terms) = (offsets.as_ptr(), offsets.len());
    match coefs {
        None => {
            for t in 0..terms {
                let src = r.add(*op.add(t));
                for (q, x) in v.iter_mut().enumerate() {
                    *x = _mm512_add_ps(*x, _mm512_loadu_ps(src.add(16 * q)));
                }
            }
        }
        Some(coefs) => {
            let cp = coefs.as_ptr();
            for t in 0..terms {
                let (src, c) = (r.add(*op.add(t)), _mm512_set1_ps(*cp.add(t)));
                for (q, x) in v.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(c, _mm512_loadu_ps(src.add(16 * q)), *x);
                }
            }
        }
    }
    for (q, x) in v.iter().enumerate() {
        _mm512_storeu_ps(acc.add(16 * q), *x);
    }
}

/// Index vectors for `_mm512_permutex2var_ps`: `SHIFT[s..s + 16]` picks floats `s..s + 16`
/// of two consecutive aligned vectors.
static SHIFT: [i32; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31,
];

/// As [`accumulate_avx512`], but every run is read as 64-byte-aligned vectors (one more
/// than the run needs) and shifted into place in registers with one two-source permute per
/// vector: no load splits a cache line. Same sums in the same order, so the same result.
///
/// # Safety
/// AVX-512F available; `acc.len() % BLOCK == 0`; `coefs`, if any, as long as `offsets`;
/// `r.as_ptr()` 4-byte aligned; for every offset `o`, with `s` = the float index of `r[o]`
/// within its 64-byte block: `s <= o` and `o + acc.len() + BLOCK <= r.len()`.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn accumulate_avx512_aligned(
    acc: &mut [f32],
    r: &[f32],
    offsets: &[usize],
    coefs: Option<&[f32]>,
) {
    let len = acc.len();
    let misalignment = (r.as_ptr() as usize / 4) % BLOCK;
    let mut i = 0;
    while i < len {
        let vectors = (len - i) / BLOCK;
        // Each arm covers `n` whole vectors starting at float `i`, inside `acc`; the reads
        // run from `o + i − s ≥ 0` to `o + i − s + 16·(n + 1) <= o + len + BLOCK <= r.len()`.
        macro_rules! pass {
            ($($n:literal)*) => {
                match vectors {
                    $($n => block512_aligned::<$n>(acc.as_mut_ptr().add(i), r.as_ptr(), i, misalignment, offsets, coefs),)*
                    _ => block512_aligned::<16>(acc.as_mut_ptr().add(i), r.as_ptr(), i, misalignment, offsets, coefs),
                }
            };
        }
        pass!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        i += vectors.min(16) * BLOCK;
    }
}

/// See [`crate::simd::accumulate_channels`]: per channel, its tap offsets into a stack buffer,
/// then the passes of [`accumulate_avx512_aligned`] (when `aligned` and no run starts in
/// the first, partial block of `r`) or of [`accumulate_avx512`].
///
/// # Safety
/// AVX-512F available; `run % BLOCK == 0`, `run <= acc_stride`; `acc` holds
/// `gamma.len() / origins.len()` slices of `acc_stride`; every
/// `gamma·stride + origin + run (+ BLOCK if aligned) <= r.len()`; `r` 4-byte aligned.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn accumulate_channels_avx512(
    acc: &mut [f32],
    acc_stride: usize,
    run: usize,
    r: &[f32],
    gamma: &[u32],
    origins: &[usize],
    stride: usize,
    aligned: bool,
) {
    let taps = origins.len();
    let misalignment = (r.as_ptr() as usize / 4) % BLOCK;
    let mut buffer = [0usize; 32];
    let mut heap = Vec::new();
    let offsets: &mut [usize] = if taps <= buffer.len() {
        &mut buffer[..taps]
    } else {
        heap.resize(taps, 0);
        &mut heap
    };
    for (k, column) in gamma.chunks_exact(taps).enumerate() {
        let mut shifted_fits = aligned;
        for ((o, &g), &origin) in offsets.iter_mut().zip(column).zip(origins) {
            *o = g as usize * stride + origin;
            shifted_fits &= (misalignment + *o) % BLOCK <= *o;
        }
        let a = acc.as_mut_ptr().add(k * acc_stride);
        let mut i = 0;
        while i < run {
            let vectors = (run - i) / BLOCK;
            macro_rules! pass {
                ($($n:literal)*) => {
                    match (vectors, shifted_fits) {
                        $(($n, true) => block512_aligned::<$n>(a.add(i), r.as_ptr(), i, misalignment, offsets, None),
                          ($n, false) => block512::<$n>(a.add(i), r.as_ptr().add(i), offsets, None),)*
                        (_, true) => block512_aligned::<16>(a.add(i), r.as_ptr(), i, misalignment, offsets, None),
                        (_, false) => block512::<16>(a.add(i), r.as_ptr().add(i), offsets, None),
                    }
                };
            }
            pass!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
            i += vectors.min(16) * BLOCK;
        }
    }
}

/// `N` zmm accumulators loaded from `acc`; for every term, the `N + 1` aligned vectors
/// around `r[o + i..]` loaded, shifted into place, added (or fused-multiply-added); stored.
///
/// # Safety
/// As [`accumulate_avx512_aligned`], with `acc` valid for `16·N` floats and
/// `i + 16·N <= acc.len()`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block512_aligned<const N: usize>(
    acc: *mut f32,
    r: *const f32,
    i: usize,
    misalignment: usize,
    offsets: &[usize],
    coefs: Option<&[f32]>,
) {
    let mut v = [_mm512_setzero_ps(); N];
    for (q, x) in v.iter_mut().enumerate() {
        *x = _mm512_loadu_ps(acc.add(16 * q));
    }
    let (op, terms) = (offsets.as_ptr(), offsets.len());
    for t in 0..terms {
        let o = *op.add(t) + i;
        let shift = (misalignment + o) % BLOCK;
        let src = r.add(o - shift);
        let idx = _mm512_loadu_si512(SHIFT.as_ptr().add(shift).cast());
        let c = _mm512_set1_ps(coefs.map_or(1.0, |c| *c.as_ptr().add(t)));
        let mut prev = _mm512_loadu_ps(src);
        for (q, x) in v.iter_mut().enumerate() {
            let next = _mm512_loadu_ps(src.add(16 * (q + 1)));
            let run = _mm512_permutex2var_ps(prev, idx, next);
            *x = match coefs {
                None => _mm512_add_ps(*x, run),
                Some(_) => _mm512_fmadd_ps(c, run, *x),
            };
            prev = next;
        }
    }
    for (q, x) in v.iter().enumerate() {
        _mm512_storeu_ps(acc.add(16 * q), *x);
    }
}

/// See [`crate::simd::accumulate_rows`]: bands of at most `band_rows` rows (split evenly), each
/// channel's band in up to [`crate::simd::ROW_VECTORS`] zmm accumulators.
///
/// # Safety
/// AVX-512F available; the shape and bounds [`crate::simd::accumulate_rows`] checks, `atoms` and
/// `coefs` holding the terms of `acc.len() / acc_stride`-ish channels as it slices them.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn accumulate_rows_avx512(
    acc: &mut [f32],
    acc_stride: usize,
    z: &[f32],
    atoms: &[u32],
    coefs: &[f32],
    alpha: usize,
    shape: crate::simd::RowShape,
    ends: crate::simd::RowEnds,
) {
    let per = shape.kernel[0] * shape.kernel[1] * alpha;
    let (init, dst, ow) = end_pointers(ends);
    let channels = atoms.len() / per;
    let per_row = shape.pitch / BLOCK;
    let bands = shape.oh.div_ceil(shape.band_rows);
    let mut y0 = 0;
    for band in 0..bands {
        // Even split: every band has 1 to ⌈oh / bands⌉ ≤ band_rows rows.
        let y1 = shape.oh * (band + 1) / bands;
        let vectors = (y1 - y0) * per_row;
        for k in 0..channels {
            // The band's rows of channel k: inside `acc` since
            // k·acc_stride + y1·pitch ≤ (channels − 1)·acc_stride + oh·pitch ≤ acc.len().
            // A term reads `atom·stride + u·row_step + y0·pitch` onwards for `vectors`
            // vectors, up to atom·stride + (kh − 1)·row_step + oh·pitch ≤ (atom + 1)·stride
            // ≤ z.len() (the column shift is applied in registers, never to an address).
            let a = acc.as_mut_ptr().add(k * acc_stride + y0 * shape.pitch);
            let src = z.as_ptr().add(y0 * shape.pitch);
            let (ap, cp) = (atoms.as_ptr().add(k * per), coefs.as_ptr().add(k * per));
            // Channel k's initial value (init has one per channel) and its output rows
            // y0.. (dst holds channels·oh·ow floats; row y's ow columns end at
            // (k·oh + y + 1)·ow ≤ dst.len()).
            let start = init.map(|values| values.map_or(0.0, |p| *p.add(k)));
            let out = dst.map(|p| (p.add((k * shape.oh + y0) * ow), ow));
            macro_rules! pass {
                ($($n:literal)*) => {
                    match vectors {
                        $($n => rows_block::<$n>(a, src, ap, cp, alpha, shape, start, out),)*
                        // vectors ≤ band_rows·per_row ≤ ROW_VECTORS = 13, checked.
                        _ => {}
                    }
                };
            }
            pass!(1 2 3 4 5 6 7 8 9 10 11 12 13);
        }
        y0 = y1;
    }
}

/// One channel's band of `N` vectors: column 0's terms fused-multiply-added straight into the
/// accumulators, each further column summed in `N` registers, shifted left by `v·shift`
/// lanes (lanes of the next vector moving in; zeros after the last) and added.
///
/// # Safety
/// AVX-512F available; `acc` valid for `16·N` floats; `crop`'s pointer valid for the band's
/// `N / (pitch/16)` rows of `ow` floats, `ow ≤ pitch`; `ap`/`cp` valid for `kh·kw·alpha`
/// entries; `z.add(atom·stride + u·row_step)` valid for `16·N` floats for every term;
/// `(kw − 1)·shift < 16`.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn rows_block<const N: usize>(
    acc: *mut f32,
    z: *const f32,
    ap: *const u32,
    cp: *const f32,
    alpha: usize,
    shape: crate::simd::RowShape,
    start: Option<f32>,
    crop: Option<(*mut f32, usize)>,
) {
    let [kh, kw] = shape.kernel;
    let mut out = [_mm512_setzero_ps(); N];
    for (q, x) in out.iter_mut().enumerate() {
        *x = match start {
            Some(value) => _mm512_set1_ps(value),
            None => _mm512_loadu_ps(acc.add(16 * q)),
        };
    }
    let mut e = 0;
    for u in 0..kh {
        let row = z.add(u * shape.row_step);
        for _ in 0..alpha {
            let src = row.add(*ap.add(e) as usize * shape.stride);
            let c = _mm512_set1_ps(*cp.add(e));
            for (q, x) in out.iter_mut().enumerate() {
                *x = _mm512_fmadd_ps(c, _mm512_loadu_ps(src.add(16 * q)), *x);
            }
            e += 1;
        }
    }
    let zero = _mm512_setzero_ps();
    for v in 1..kw {
        let mut part = [_mm512_setzero_ps(); N];
        for u in 0..kh {
            let row = z.add(u * shape.row_step);
            for _ in 0..alpha {
                let src = row.add(*ap.add(e) as usize * shape.stride);
                let c = _mm512_set1_ps(*cp.add(e));
                for (q, x) in part.iter_mut().enumerate() {
                    *x = _mm512_fmadd_ps(c, _mm512_loadu_ps(src.add(16 * q)), *x);
                }
                e += 1;
            }
        }
        // SHIFT[s..s + 16] with s = v·shift ≤ 15: inside the 32 entries.
        let idx = _mm512_loadu_si512(SHIFT.as_ptr().add(v * shape.shift).cast());
        for q in 0..N {
            let next = if q + 1 < N { part[q + 1] } else { zero };
            out[q] = _mm512_add_ps(out[q], _mm512_permutex2var_ps(part[q], idx, next));
        }
    }
    match crop {
        None => {
            for (q, x) in out.iter().enumerate() {
                _mm512_storeu_ps(acc.add(16 * q), *x);
            }
        }
        Some((dst, ow)) => {
            // Vector q is part q % per_row of band row q / per_row: its first
            // min(16, ow − 16·part) lanes are output columns 16·part.., written with a
            // masked store (masked-off lanes are not accessed); parts past ow write nothing.
            let per_row = shape.pitch / BLOCK;
            for (q, x) in out.iter().enumerate() {
                let (row, part) = (q / per_row, q % per_row);
                let lanes = ow.saturating_sub(16 * part).min(16);
                if lanes > 0 {
                    let mask = ((1u32 << lanes) - 1) as __mmask16;
                    _mm512_mask_storeu_ps(dst.add(row * ow + 16 * part), mask, *x);
                }
            }
        }
    }
}

/// See [`crate::simd::atom_responses`]: a register-blocked micro-GEMM in AVX-512, `A` atoms ×
/// 32 columns (2·A zmm accumulators) per step, a 16-column step for an odd tail, then the
/// remaining atoms one by one (`A` = 4).
///
/// # Safety
/// AVX-512F available; otherwise as [`atom_responses`].
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn atom_responses_avx512(
    z: &mut [f32],
    atoms: &[f32],
    width: usize,
    x: &[f32],
    stride: usize,
) {
    let l = atoms.len() / width;
    let (zp, ap, xp) = (z.as_mut_ptr(), atoms.as_ptr(), x.as_ptr());
    let mut i = 0;
    while i + 4 <= l {
        zresp_block::<4>(zp, ap, xp, i, width, stride);
        i += 4;
    }
    while i < l {
        zresp_block::<1>(zp, ap, xp, i, width, stride);
        i += 1;
    }
}

/// Atoms `i..i + A` over all `stride` columns (a multiple of 16): 32 at a time, then 16.
///
/// # Safety
/// AVX-512F available; atoms `i..i + A` exist (`(i + A)·width <= atoms.len()`), `x` holds
/// `width` planes and `z` planes `i..i + A` of `stride` floats.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn zresp_block<const A: usize>(
    zp: *mut f32,
    ap: *const f32,
    xp: *const f32,
    i: usize,
    width: usize,
    stride: usize,
) {
    let mut p = 0;
    while p + 32 <= stride {
        let mut acc = [[_mm512_setzero_ps(); 2]; A];
        for j in 0..width {
            let x0 = _mm512_loadu_ps(xp.add(j * stride + p));
            let x1 = _mm512_loadu_ps(xp.add(j * stride + p + 16));
            for (row, pair) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*ap.add((i + row) * width + j));
                pair[0] = _mm512_fmadd_ps(a, x0, pair[0]);
                pair[1] = _mm512_fmadd_ps(a, x1, pair[1]);
            }
        }
        for (row, pair) in acc.iter().enumerate() {
            let dst = zp.add((i + row) * stride + p);
            _mm512_storeu_ps(dst, pair[0]);
            _mm512_storeu_ps(dst.add(16), pair[1]);
        }
        p += 32;
    }
    if p < stride {
        let mut acc = [_mm512_setzero_ps(); A];
        for j in 0..width {
            let x0 = _mm512_loadu_ps(xp.add(j * stride + p));
            for (row, v) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*ap.add((i + row) * width + j));
                *v = _mm512_fmadd_ps(a, x0, *v);
            }
        }
        for (row, v) in acc.iter().enumerate() {
            _mm512_storeu_ps(zp.add((i + row) * stride + p), *v);
        }
    }
}

/// See [`crate::simd::representatives`]: per representative, one zmm (16 floats) at a time, the
/// α terms fused multiply-added in a register and stored once.
///
/// # Safety
/// AVX-512F available; otherwise as [`representatives`].
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn representatives_avx512(
    r: &mut [f32],
    z: &[f32],
    idx: &[u32],
    coef: &[f32],
    alpha: usize,
    stride: usize,
) {
    let (rp, zp, ip, cp) = (r.as_mut_ptr(), z.as_ptr(), idx.as_ptr(), coef.as_ptr());
    for i in 0..idx.len() / alpha {
        let (dst, code) = (rp.add(i * stride), i * alpha);
        // The first term is a plain product, as in the portable path.
        let first = zp.add(*ip.add(code) as usize * stride);
        let c0 = _mm512_set1_ps(*cp.add(code));
        if alpha == 2 {
            // The common case with its two sources and coefficients hoisted out of the loop.
            let second = zp.add(*ip.add(code + 1) as usize * stride);
            let c1 = _mm512_set1_ps(*cp.add(code + 1));
            let mut p = 0;
            while p < stride {
                let v = _mm512_mul_ps(c0, _mm512_loadu_ps(first.add(p)));
                let v = _mm512_fmadd_ps(c1, _mm512_loadu_ps(second.add(p)), v);
                _mm512_storeu_ps(dst.add(p), v);
                p += BLOCK;
            }
            continue;
        }
        let mut p = 0;
        while p < stride {
            let mut v = _mm512_mul_ps(c0, _mm512_loadu_ps(first.add(p)));
            for t in 1..alpha {
                let src = zp.add(*ip.add(code + t) as usize * stride + p);
                v = _mm512_fmadd_ps(_mm512_set1_ps(*cp.add(code + t)), _mm512_loadu_ps(src), v);
            }
            _mm512_storeu_ps(dst.add(p), v);
            p += BLOCK;
        }
    }
}
