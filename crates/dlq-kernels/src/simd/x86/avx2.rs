//! The AVX2 + FMA loops (8-float ymm vectors). Every function states its preconditions; the
//! safe entry points in `simd` check them and the CPU features before calling.

use std::arch::x86_64::*;

use crate::simd::BLOCK;

use super::ends::end_pointers;

/// See [`crate::simd::accumulate`]. Eight ymm accumulators (64 floats) stay in registers over all
/// taps, so `acc` is read and written once per 64 floats, not once per tap.
///
/// # Safety
/// AVX2 available; `acc.len() % BLOCK == 0`; `o + acc.len() <= r.len()` for every offset.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn accumulate(acc: &mut [f32], r: &[f32], offsets: &[usize]) {
    let len = acc.len();
    let (a, rp) = (acc.as_mut_ptr(), r.as_ptr());
    let mut i = 0;
    while i + 64 <= len {
        let mut v = [_mm256_setzero_ps(); 8];
        for (q, x) in v.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(a.add(i + 8 * q));
        }
        for &o in offsets {
            let src = rp.add(o + i);
            for (q, x) in v.iter_mut().enumerate() {
                *x = _mm256_add_ps(*x, _mm256_loadu_ps(src.add(8 * q)));
            }
        }
        for (q, x) in v.iter().enumerate() {
            _mm256_storeu_ps(a.add(i + 8 * q), *x);
        }
        i += 64;
    }
    while i + BLOCK <= len {
        let mut v0 = _mm256_loadu_ps(a.add(i));
        let mut v1 = _mm256_loadu_ps(a.add(i + 8));
        for &o in offsets {
            let src = rp.add(o + i);
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(src));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(src.add(8)));
        }
        _mm256_storeu_ps(a.add(i), v0);
        _mm256_storeu_ps(a.add(i + 8), v1);
        i += BLOCK;
    }
}

/// See [`crate::simd::accumulate_rows`] (AVX2): bands of at most `band_rows` rows (split evenly),
/// each channel's band in `rows × ⌈cols/8⌉ ≤` [`crate::simd::ROW_VECTORS_AVX2`] ymm accumulators.
///
/// # Safety
/// AVX2 + FMA available; the shape and bounds [`crate::simd::accumulate_rows`] checks (the
/// overhang included), `atoms` and `coefs` holding the terms of the channels as it slices
/// them.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn accumulate_rows_avx2(
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
    let per_row = shape.cols.div_ceil(8);
    // Each term's offset within the planes (its tap's row and column shift), in term order
    // (kernel column, kernel row, then α): one flat loop over a channel's terms.
    let [kh, kw] = shape.kernel;
    let taps: Vec<usize> = (0..kw)
        .flat_map(|v| (0..kh).map(move |u| shape.tap_offset(u, v)))
        .flat_map(|offset| std::iter::repeat_n(offset, alpha))
        .collect();
    let bands = shape.oh.div_ceil(shape.band_rows);
    let mut y0 = 0;
    for band in 0..bands {
        // Even split: every band has 1 to ⌈oh / bands⌉ ≤ band_rows rows.
        let y1 = shape.oh * (band + 1) / bands;
        for k in 0..channels {
            // As in `accumulate_rows_avx512`: channel k's band rows lie inside `acc`; a term
            // reads from atom·stride + u·row_step + y0·pitch + v·shift up to
            // (atom + 1)·stride + (kw − 1)·shift ≤ z.len() (vectors end within the pitch).
            let a = acc.as_mut_ptr().add(k * acc_stride + y0 * shape.pitch);
            let src = z.as_ptr().add(y0 * shape.pitch);
            let (ap, cp) = (atoms.as_ptr().add(k * per), coefs.as_ptr().add(k * per));
            let start = init.map(|values| values.map_or(0.0, |p| *p.add(k)));
            let out = dst.map(|p| (p.add((k * shape.oh + y0) * ow), ow));
            let args = (a, src, ap, cp, taps.as_ptr(), per, shape, start, out);
            macro_rules! pass {
                ($($r:literal $v:literal),*) => {
                    match (y1 - y0, per_row) {
                        $(($r, $v) => rows_block_avx2::<$r, $v>(args),)*
                        // rows·per_row ≤ ROW_VECTORS_AVX2 = 14, checked.
                        _ => {}
                    }
                };
            }
            pass!(1 1, 2 1, 3 1, 4 1, 5 1, 6 1, 7 1, 8 1, 9 1, 10 1, 11 1, 12 1, 13 1, 14 1,
                  1 2, 2 2, 3 2, 4 2, 5 2, 6 2, 7 2, 1 3, 2 3, 3 3, 4 3, 1 4, 2 4, 3 4,
                  1 5, 2 5, 1 6, 2 6, 1 7, 2 7, 1 8, 1 9, 1 10, 1 11, 1 12, 1 13, 1 14);
        }
        y0 = y1;
    }
}

/// The arguments of [`rows_block_avx2`]: the band's accumulator, Z at the band's first row,
/// the channel's atoms and coefficients, α, the shape, the initial value and the crop.
type RowsArgs = (
    *mut f32,
    *const f32,
    *const u32,
    *const f32,
    *const usize,
    usize,
    crate::simd::RowShape,
    Option<f32>,
    Option<(*mut f32, usize)>,
);

/// Lane masks for `_mm256_maskstore_ps`: `LANES[8 − n..16 − n]` enables the first n lanes.
static LANES: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

/// One channel's band of `R` rows × `V` ymm vectors: every term fused-multiply-added into
/// the accumulators, its column shift applied to the load address.
///
/// # Safety
/// AVX2 + FMA available; `acc` valid for `R` rows of `pitch` floats, `8·V ≤ pitch`; crop's
/// pointer valid for `R` rows of `ow ≤ 8·V` floats (and `ow > 8·(V − 1)`); `ap`/`cp` valid
/// for `kh·kw·alpha` entries; `z.add(atom·stride + u·row_step + v·shift + r·pitch)` valid
/// for `8·V` floats for every term and row.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_block_avx2<const R: usize, const V: usize>(
    (acc, z, ap, cp, taps, terms, shape, start, crop): RowsArgs,
) {
    let p = shape.pitch;
    // Vector q covers columns 8q.. except the last, which ends at column `cols` (it may
    // overlap the one before: those columns are summed twice, identically). So a row of
    // up to 16 padded columns is read from its own 64-byte line: no load splits a line.
    let last = shape.cols.saturating_sub(8);
    let col = |q: usize| if q + 1 == V { last } else { 8 * q };
    let mut out = [[_mm256_setzero_ps(); V]; R];
    for (r, row) in out.iter_mut().enumerate() {
        for (q, x) in row.iter_mut().enumerate() {
            *x = match start {
                Some(value) => _mm256_set1_ps(value),
                None => _mm256_loadu_ps(acc.add(r * p + col(q))),
            };
        }
    }
    for e in 0..terms {
        let src = z.add(*taps.add(e) + *ap.add(e) as usize * shape.stride);
        let c = _mm256_set1_ps(*cp.add(e));
        for (r, row) in out.iter_mut().enumerate() {
            let s = src.add(r * p);
            for (q, x) in row.iter_mut().enumerate() {
                *x = _mm256_fmadd_ps(c, _mm256_loadu_ps(s.add(col(q))), *x);
            }
        }
    }
    match crop {
        None => {
            for (r, row) in out.iter().enumerate() {
                for (q, x) in row.iter().enumerate() {
                    _mm256_storeu_ps(acc.add(r * p + col(q)), *x);
                }
            }
        }
        // ow = cols ≥ 8: every lane of every vector is an output column.
        Some((dst, ow)) if ow >= 8 => {
            for (r, row) in out.iter().enumerate() {
                for (q, x) in row.iter().enumerate() {
                    _mm256_storeu_ps(dst.add(r * ow + col(q)), *x);
                }
            }
        }
        // ow < 8: one vector per row, its first ow lanes stored (masked-off lanes are not
        // accessed).
        Some((dst, ow)) => {
            let mask = _mm256_loadu_si256(LANES.as_ptr().add(8 - ow).cast());
            for (r, row) in out.iter().enumerate() {
                _mm256_maskstore_ps(dst.add(r * ow), mask, row[0]);
            }
        }
    }
}

/// See [`crate::simd::accumulate_scaled`]: as [`accumulate`], one fused multiply-add per term.
///
/// # Safety
/// AVX2 + FMA available; `acc.len() % BLOCK == 0`; `coefs.len() == offsets.len()`;
/// `o + acc.len() <= z.len()` for every offset.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn accumulate_scaled(
    acc: &mut [f32],
    z: &[f32],
    offsets: &[usize],
    coefs: &[f32],
) {
    let (len, terms) = (acc.len(), offsets.len());
    let (a, zp, op, cp) = (
        acc.as_mut_ptr(),
        z.as_ptr(),
        offsets.as_ptr(),
        coefs.as_ptr(),
    );
    let mut i = 0;
    while i + 64 <= len {
        let mut v = [_mm256_setzero_ps(); 8];
        for (q, x) in v.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(a.add(i + 8 * q));
        }
        for t in 0..terms {
            let (src, c) = (zp.add(*op.add(t) + i), _mm256_set1_ps(*cp.add(t)));
            for (q, x) in v.iter_mut().enumerate() {
                *x = _mm256_fmadd_ps(c, _mm256_loadu_ps(src.add(8 * q)), *x);
            }
        }
        for (q, x) in v.iter().enumerate() {
            _mm256_storeu_ps(a.add(i + 8 * q), *x);
        }
        i += 64;
    }
    while i + BLOCK <= len {
        let mut v0 = _mm256_loadu_ps(a.add(i));
        let mut v1 = _mm256_loadu_ps(a.add(i + 8));
        for t in 0..terms {
            let (src, c) = (zp.add(*op.add(t) + i), _mm256_set1_ps(*cp.add(t)));
            v0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src), v0);
            v1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src.add(8)), v1);
        }
        _mm256_storeu_ps(a.add(i), v0);
        _mm256_storeu_ps(a.add(i + 8), v1);
        i += BLOCK;
    }
}

/// See [`crate::simd::atom_responses`]: a register-blocked micro-GEMM, 4 atoms × 16 columns
/// (8 ymm accumulators) per step, then single atoms for the remainder.
///
/// # Safety
/// AVX2 + FMA available; `width ≥ 1`; `atoms.len() % width == 0`; `stride % BLOCK == 0`;
/// `x.len() ≥ width·stride`; `z.len() ≥ (atoms.len() / width)·stride`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn atom_responses(
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
        let mut p = 0;
        while p < stride {
            let mut acc = [_mm256_setzero_ps(); 8];
            for j in 0..width {
                let x0 = _mm256_loadu_ps(xp.add(j * stride + p));
                let x1 = _mm256_loadu_ps(xp.add(j * stride + p + 8));
                for (row, pair) in acc.chunks_exact_mut(2).enumerate() {
                    let a = _mm256_broadcast_ss(&*ap.add((i + row) * width + j));
                    pair[0] = _mm256_fmadd_ps(a, x0, pair[0]);
                    pair[1] = _mm256_fmadd_ps(a, x1, pair[1]);
                }
            }
            for (row, pair) in acc.chunks_exact(2).enumerate() {
                let dst = zp.add((i + row) * stride + p);
                _mm256_storeu_ps(dst, pair[0]);
                _mm256_storeu_ps(dst.add(8), pair[1]);
            }
            p += BLOCK;
        }
        i += 4;
    }
    while i < l {
        let mut p = 0;
        while p < stride {
            let (mut v0, mut v1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for j in 0..width {
                let a = _mm256_broadcast_ss(&*ap.add(i * width + j));
                let src = xp.add(j * stride + p);
                v0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(src), v0);
                v1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(src.add(8)), v1);
            }
            _mm256_storeu_ps(zp.add(i * stride + p), v0);
            _mm256_storeu_ps(zp.add(i * stride + p + 8), v1);
            p += BLOCK;
        }
        i += 1;
    }
}

/// See [`crate::simd::representatives`]: per representative, 32 floats at a time, the α terms
/// fused multiply-added in registers and stored once.
///
/// # Safety
/// AVX2 + FMA available; `alpha ≥ 1`; `idx.len() == coef.len()`, a multiple of α;
/// `stride % BLOCK == 0`; `r.len() ≥ idx.len() / α · stride`; every
/// `(idx[t] + 1)·stride ≤ z.len()`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn representatives(
    r: &mut [f32],
    z: &[f32],
    idx: &[u32],
    coef: &[f32],
    alpha: usize,
    stride: usize,
) {
    // Plain index loops: iterator adapters such as `Skip` are not always inlined into a
    // `target_feature` function, and a call per term spilled the accumulators.
    let (rp, zp, ip, cp) = (r.as_mut_ptr(), z.as_ptr(), idx.as_ptr(), coef.as_ptr());
    for i in 0..idx.len() / alpha {
        let (dst, code) = (rp.add(i * stride), i * alpha);
        // The first term is a plain product (as in the portable path), so α = 1 with
        // coefficient 1 copies Z bit for bit (sign of zero included).
        let first = zp.add(*ip.add(code) as usize * stride);
        let c0 = _mm256_set1_ps(*cp.add(code));
        let mut p = 0;
        while p + 32 <= stride {
            let mut v0 = _mm256_mul_ps(c0, _mm256_loadu_ps(first.add(p)));
            let mut v1 = _mm256_mul_ps(c0, _mm256_loadu_ps(first.add(p + 8)));
            let mut v2 = _mm256_mul_ps(c0, _mm256_loadu_ps(first.add(p + 16)));
            let mut v3 = _mm256_mul_ps(c0, _mm256_loadu_ps(first.add(p + 24)));
            for t in 1..alpha {
                let src = zp.add(*ip.add(code + t) as usize * stride + p);
                let c = _mm256_set1_ps(*cp.add(code + t));
                v0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src), v0);
                v1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src.add(8)), v1);
                v2 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src.add(16)), v2);
                v3 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src.add(24)), v3);
            }
            _mm256_storeu_ps(dst.add(p), v0);
            _mm256_storeu_ps(dst.add(p + 8), v1);
            _mm256_storeu_ps(dst.add(p + 16), v2);
            _mm256_storeu_ps(dst.add(p + 24), v3);
            p += 32;
        }
        while p < stride {
            let mut v0 = _mm256_mul_ps(c0, _mm256_loadu_ps(first.add(p)));
            let mut v1 = _mm256_mul_ps(c0, _mm256_loadu_ps(first.add(p + 8)));
            for t in 1..alpha {
                let src = zp.add(*ip.add(code + t) as usize * stride + p);
                let c = _mm256_set1_ps(*cp.add(code + t));
                v0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src), v0);
                v1 = _mm256_fmadd_ps(c, _mm256_loadu_ps(src.add(8)), v1);
            }
            _mm256_storeu_ps(dst.add(p), v0);
            _mm256_storeu_ps(dst.add(p + 8), v1);
            p += BLOCK;
        }
    }
}
