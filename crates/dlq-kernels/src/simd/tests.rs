//! The SIMD loops against the portable ones, on every path this CPU runs (a path it lacks is
//! named on a SKIPPED line).

use super::*;

/// Whether `test` can run `isa` on this CPU; when it cannot, says so on stderr (shown with
/// `--nocapture`, as scripts/test.sh runs the kernels' summary).
fn runs_on(isa: Isa, test: &str) -> bool {
    let ok = isa.supported();
    if !ok {
        eprintln!("SKIPPED {test}: this CPU lacks {}", isa.name());
    }
    ok
}

/// A small deterministic generator (xorshift) for the test data.
fn values(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// The AVX-512 look-up adds (aligned loads shifted in registers, or unaligned loads near the
/// buffer's ends) give the portable sums bit for bit (plain adds) and to rounding (scaled),
/// for every misalignment of the source, every shift and run lengths of 1–20 blocks.
#[test]
fn avx512_accumulate_matches_portable() {
    if !runs_on(Isa::Avx512, "avx512_accumulate_matches_portable") {
        return;
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    let backing = values(ALIGNED_MIN_LEN + 4096, &mut seed);
    for start in 0..BLOCK {
        let r = &backing[start..];
        for blocks in [1, 2, 7, 13, 16, 17, 20] {
            let len = blocks * BLOCK;
            // Interior runs (the aligned version) and runs at both ends of `r` (the
            // unaligned fallback).
            let interior = vec![16, 17, 31, 32, 47, 240, 1001, 2047, 3600];
            assert!(aligned_reads_fit(r, &interior, len));
            for offsets in [interior, vec![0, 5, r.len() - len]] {
                check_accumulate(r, len, &offsets, &mut seed);
            }
        }
    }
    let aligned = (0..BLOCK).find(|&s| (backing[s..].as_ptr() as usize).is_multiple_of(64));
    let r = &backing[aligned.unwrap_or(0)..];
    assert!(aligned_reads_fit(r, &[0, 1, 17, 240], 13 * BLOCK));
    assert!(!aligned_reads_fit(r, &[r.len() - 13 * BLOCK], 13 * BLOCK));
}

/// `accumulate_channels` on AVX-512 gives the portable sums bit for bit: 3×3 taps at padded
/// width 15 over 240-float planes, every misalignment of `r`, representative 0 included
/// (its first run starts in `r`'s first partial block: the unaligned fallback), sources
/// above and below `ALIGNED_MIN_LEN`.
#[test]
fn avx512_accumulate_channels_matches_portable() {
    if !runs_on(Isa::Avx512, "avx512_accumulate_channels_matches_portable") {
        return;
    }
    let mut seed = 0x2545_f491_4f6c_dd1d;
    let (stride, run, acc_stride) = (240, 208, 208);
    let origins: Vec<usize> = (0..9).map(|t| t / 3 * 15 + t % 3).collect();
    for reps in [20, 60] {
        let backing = values(reps * stride + 3 * BLOCK, &mut seed);
        for start in 0..BLOCK {
            let r = &backing[start..start + reps * stride + 2 * BLOCK];
            let gamma: Vec<u32> = values(9 * 12, &mut seed)
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    if j < 9 {
                        0
                    } else {
                        ((v + 1.0) * 1000.0) as u32 % reps as u32
                    }
                })
                .collect();
            let init = values(12 * acc_stride, &mut seed);
            let mut offsets = vec![0; 9];
            let (mut fast, mut slow) = (init.clone(), init);
            for (isa, acc) in [(Isa::Avx512, &mut fast), (Isa::Portable, &mut slow)] {
                accumulate_channels(
                    isa,
                    acc,
                    acc_stride,
                    run,
                    r,
                    &gamma,
                    &origins,
                    stride,
                    &mut offsets,
                );
            }
            assert_eq!(fast, slow, "{reps} representatives, start {start}");
        }
    }
}

/// The AVX-512 row-layout adds equal the portable loop (to rounding) on every edge: 1–3
/// vectors per row, bands of 1 to the most rows that fit (one-row last bands included),
/// kernels 1×1 to 5×4, column shifts up to 15 lanes, row dilation 1–2, α = 1–3, initial
/// values and the crop on and off, and Z exactly as long as the planes its terms name (the
/// last term's last row ends at the buffer's end).
#[test]
fn avx512_accumulate_rows_matches_portable() {
    if runs_on(Isa::Avx512, "avx512_accumulate_rows_matches_portable") {
        rows_match_portable(Isa::Avx512);
    }
}

/// The same for the AVX2 row path, which also runs on AVX-512 machines (only the columns it
/// computes, `cols`, are compared: each case's `ow`, the most the kernel ever asks, and on
/// odd cases fewer, down to one).
#[test]
fn avx2_accumulate_rows_matches_portable() {
    if runs_on(Isa::Avx2Fma, "avx2_accumulate_rows_matches_portable") {
        rows_match_portable(Isa::Avx2Fma);
    }
}

/// Every case of the row tests on `isa`.
fn rows_match_portable(isa: Isa) {
    let mut seed = 0x5851_f42d_4c95_7f2d;
    let mut cases = 0;
    for per_row in 1..=3 {
        let pitch = per_row * BLOCK;
        for [kh, kw, dh, dw] in [
            [1, 1, 1, 1],
            [3, 3, 1, 1],
            [3, 3, 2, 7],
            [5, 4, 1, 5],
            [2, 2, 1, 15],
        ] {
            let width = pitch - (kw - 1) * dw;
            for oh in [1, 4, 13, 14, 27] {
                for band_rows in [1, 2, 3, 6, 12] {
                    // Odd cases ask for fewer columns (AVX2 computes fewer vectors).
                    let ow = if cases % 2 == 1 {
                        1 + cases % width
                    } else {
                        width
                    };
                    let most = row_band_vectors(isa) / row_vectors(isa, pitch, ow);
                    if band_rows > most.max(1) {
                        continue;
                    }
                    for alpha in [None, Some(1), Some(2), Some(3)] {
                        let hp = oh + (kh - 1) * dh;
                        let stride = (hp * pitch).div_ceil(BLOCK) * BLOCK;
                        check_rows(
                            isa,
                            [kh, kw, dh, dw],
                            [pitch, oh, ow, stride],
                            (band_rows, None),
                            alpha,
                            cases,
                            &mut seed,
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases > 400, "{cases} cases");
}

/// The AVX2 row path on strided layers' phase planes equals the portable loop: strides
/// 2×2, 2×1, 1×3 and 3×3, kernels 1×1 to 5×4 with dilations, 1–2 vectors per row, Z exactly
/// as long as its planes (plus AVX2's overhang).
#[test]
fn avx2_strided_rows_match_portable() {
    if !runs_on(Isa::Avx2Fma, "avx2_strided_rows_match_portable") {
        return;
    }
    let mut seed = 0x2545_f491_4f6c_dd1d;
    let mut cases = 0;
    for strides in [[2usize, 2], [2, 1], [1, 3], [3, 3]] {
        for [kh, kw, dh, dw] in [[1, 1, 1, 1], [3, 3, 1, 1], [3, 3, 2, 3], [5, 4, 1, 2]] {
            for pitch in [BLOCK, 2 * BLOCK] {
                for oh in [1, 5, 9] {
                    let [sh, sw] = strides;
                    let shift = (kw - 1) * dw / sw;
                    // Padded planes whose column phases are `pitch` wide.
                    let hp = (oh - 1) * sh + (kh - 1) * dh + 1;
                    let col_phase = hp.div_ceil(sh) * pitch;
                    let phases = Phases {
                        strides,
                        dilations: [dh, dw],
                        row_phase: sw * col_phase,
                        col_phase,
                    };
                    let stride = (sh * sw * col_phase).div_ceil(BLOCK) * BLOCK;
                    let ow = if cases % 2 == 1 {
                        1 + cases % 7
                    } else {
                        pitch - shift
                    };
                    let band_rows = 1 + cases % (ROW_VECTORS_AVX2 / ow.div_ceil(8));
                    for alpha in [None, Some(2)] {
                        check_rows(
                            Isa::Avx2Fma,
                            [kh, kw, dh, dw],
                            [pitch, oh, ow, stride],
                            (band_rows, Some(phases)),
                            alpha,
                            cases,
                            &mut seed,
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 192);
}

/// One case of [`avx512_accumulate_rows_matches_portable`]: 5 channels, the middle three
/// computed; init and crop chosen by `case`.
fn check_rows(
    isa: Isa,
    [kh, kw, dh, dw]: [usize; 4],
    [pitch, oh, ow, stride]: [usize; 4],
    (band_rows, phases): (usize, Option<Phases>),
    alpha: Option<usize>,
    case: usize,
    seed: &mut u64,
) {
    let (m, atoms) = (5, 6);
    let reps = if alpha.is_some() { 7 } else { atoms };
    let pick = |n: usize, limit: usize, seed: &mut u64| -> Vec<u32> {
        values(n, seed)
            .iter()
            .map(|v| ((v + 1.0) * 1000.0) as u32 % limit as u32)
            .collect()
    };
    // The largest atom is always used, so Z ends exactly where its last plane ends.
    let mut code_atoms = pick(reps * alpha.unwrap_or(1), atoms, seed);
    code_atoms[0] = atoms as u32 - 1;
    let mut assignment = pick(m * kh * kw, reps, seed);
    assignment[0] = if alpha.is_some() { 0 } else { atoms as u32 - 1 };
    assignment[m * kh * kw - 1] = assignment[0];
    let sub = crate::conv::Subspace {
        channels: 0..1,
        atoms: values(atoms, seed),
        num_atoms: atoms,
        codes: alpha.map(|alpha| crate::conv::Codes {
            alpha,
            atoms: code_atoms[..reps * alpha].to_vec(),
            coefficients: values(reps * alpha, seed),
        }),
        assignment,
    };
    let codes = sub.codes.as_ref().map(|c| CodeTerms {
        atoms: &c.atoms,
        coefficients: &c.coefficients,
        alpha: c.alpha,
    });
    let terms = RowTerms::new(&sub.assignment, codes, [kh, kw]);
    let shape = RowShape {
        pitch,
        stride,
        oh,
        kernel: [kh, kw],
        row_step: dh * pitch,
        shift: dw,
        band_rows,
        cols: ow,
        phases,
    };
    // AVX2's overhang past the last plane: only as much as it may read.
    let overhang = if isa == Isa::Avx2Fma {
        shape.max_shift()
    } else {
        0
    };
    let z = values(atoms * stride + overhang, seed);
    let acc_stride = oh * pitch + if case.is_multiple_of(2) { 0 } else { BLOCK };
    let init_acc = values(3 * acc_stride, seed);
    let bias = values(3, seed);
    let init = match case % 4 {
        0 | 1 => None,
        2 => Some(None),
        _ => Some(Some(&bias[..])),
    };
    let crop = case.is_multiple_of(3);
    let mut results = Vec::new();
    for isa in [isa, Isa::Portable] {
        let mut acc = init_acc.clone();
        let mut dst = vec![f32::NAN; 3 * oh * ow];
        let ends = RowEnds {
            init,
            crop: crop.then_some((&mut dst[..], ow)),
        };
        accumulate_rows(isa, &mut acc, acc_stride, &z, &terms, 1..4, shape, ends);
        results.push((acc, dst));
    }
    let what = format!("kernel {kh}×{kw} dil {dh},{dw} pitch {pitch} oh {oh} band {band_rows} α {alpha:?} case {case}");
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * (1.0 + b.abs());
    if crop {
        let (fast, slow) = (&results[0].1, &results[1].1);
        assert!(fast.iter().zip(slow).all(|(&a, &b)| close(a, b)), "{what}");
    } else {
        let (fast, slow) = (&results[0].0, &results[1].0);
        for i in 0..3 {
            for y in 0..oh {
                for c in 0..ow {
                    let p = i * acc_stride + y * pitch + c;
                    assert!(close(fast[p], slow[p]), "{what}: channel {i} ({y}, {c})");
                }
            }
        }
    }
}

/// Runs both look-up adds on AVX-512 and portably and compares them.
fn check_accumulate(r: &[f32], len: usize, offsets: &[usize], seed: &mut u64) {
    let coefs = values(offsets.len(), seed);
    let init = values(len, seed);
    let (mut fast, mut slow) = (init.clone(), init.clone());
    accumulate(Isa::Avx512, &mut fast, r, offsets);
    accumulate(Isa::Portable, &mut slow, r, offsets);
    assert_eq!(fast, slow, "len {len}, offsets {offsets:?}");
    let (mut fast, mut slow) = (init.clone(), init);
    accumulate_scaled(Isa::Avx512, &mut fast, r, offsets, &coefs);
    accumulate_scaled(Isa::Portable, &mut slow, r, offsets, &coefs);
    for (a, b) in fast.iter().zip(&slow) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}
