//! Nearest-centre search: which of k centres is closest to a point (and which is second), in a
//! portable form and an AVX2 form chosen at run time, bit-identical to each other.

#[inline]
pub fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Index and squared distance of the row of `centers` nearest to `x` (lowest index on ties).
#[inline]
pub fn nearest(x: &[f32], centers: &[f32], dim: usize) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (j, c) in centers.chunks_exact(dim).enumerate() {
        let d = sq_dist(x, c);
        if d < best.1 {
            best = (j, d);
        }
    }
    best
}

/// Lanes of the nearest-centre scan: centres are scored in blocks of this many.
const LANES: usize = 8;

/// Blocks of centres scored together by the AVX2 scan.
#[cfg(target_arch = "x86_64")]
const GROUP: usize = 4;

/// Best and second-best (score, index) of one scan, lowest index first on equal scores.
type TopTwo = ((f32, u32), (f32, u32));

/// Nearest-centre search over many points: centres stored transposed (one row per dimension,
/// padded to whole blocks of [`LANES`]) with their squared norms, so the inner loops run over
/// centres and vectorise for any small dimension. Centres are ranked by ‖c‖² − 2x·c; ties go to
/// the lowest index.
///
/// The scan runs in AVX2 where the CPU has it. That changes nothing in the results: float
/// operations are never reassociated or fused, so the wider lanes compute bit-identical scores.
pub struct NearestSearch {
    dim: usize,
    /// Centres padded to whole blocks; padding scores +∞ and is never chosen.
    padded: usize,
    centers: Vec<f32>,
    transposed: Vec<f32>,
    norms: Vec<f32>,
    scratch: Vec<f32>,
    avx2: bool,
}

impl NearestSearch {
    pub fn new(centers: &[f32], dim: usize) -> NearestSearch {
        let k = centers.len() / dim;
        let padded = k.div_ceil(LANES) * LANES;
        let mut transposed = vec![0f32; padded * dim];
        for (j, c) in centers.chunks_exact(dim).enumerate() {
            for d in 0..dim {
                transposed[d * padded + j] = c[d];
            }
        }
        let mut norms: Vec<f32> = centers
            .chunks_exact(dim)
            .map(|c| c.iter().map(|x| x * x).sum())
            .collect();
        norms.resize(padded, f32::INFINITY);
        NearestSearch {
            dim,
            padded,
            centers: centers.to_vec(),
            transposed,
            norms,
            scratch: vec![0f32; padded],
            #[cfg(target_arch = "x86_64")]
            avx2: std::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            avx2: false,
        }
    }

    #[inline]
    fn top_two(&mut self, x: &[f32]) -> TopTwo {
        let (dim, padded) = (self.dim, self.padded);
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: the CPU supports AVX2 (checked in `new`).
            return unsafe { score_top_two_avx2(&self.norms, &self.transposed, padded, dim, x) };
        }
        score_top_two(
            &self.norms,
            &self.transposed,
            padded,
            dim,
            x,
            &mut self.scratch,
        )
    }

    fn center(&self, j: usize) -> &[f32] {
        &self.centers[j * self.dim..(j + 1) * self.dim]
    }

    /// Index and squared distance of the nearest centre to `x`.
    #[inline]
    pub fn nearest(&mut self, x: &[f32]) -> (usize, f32) {
        let ((_, j), _) = self.top_two(x);
        // The expanded form loses precision far from the origin; the winner's distance is
        // recomputed directly so objectives stay exact.
        let j = j as usize;
        (j, sq_dist(x, self.center(j)))
    }

    /// Index and squared distance of the nearest centre, and the squared distance of the second
    /// nearest (infinite with one centre), both recomputed directly.
    #[inline]
    pub fn nearest_two(&mut self, x: &[f32]) -> (usize, f32, f32) {
        let ((_, j), (v2, j2)) = self.top_two(x);
        let j = j as usize;
        let d2 = if v2.is_finite() {
            sq_dist(x, self.center(j2 as usize))
        } else {
            f32::INFINITY
        };
        (j, sq_dist(x, self.center(j)), d2)
    }
}

/// Merges per-lane best and second-best candidates into the overall two, lowest index first on
/// equal scores.
fn merge_lanes(lanes: [[(f32, u32); 2]; LANES]) -> TopTwo {
    let before = |a: (f32, u32), b: (f32, u32)| a.0 < b.0 || (a.0 == b.0 && a.1 < b.1);
    let mut best = ((f32::INFINITY, u32::MAX), (f32::INFINITY, u32::MAX));
    for lane in lanes {
        for cand in lane {
            if before(cand, best.0) {
                best = (cand, best.0);
            } else if before(cand, best.1) {
                best.1 = cand;
            }
        }
    }
    best
}

/// AVX2 form of [`score_top_two`]: one block of eight centres at a time kept in registers,
/// with the same operations in the same order (multiply, then add; no fusing), so scores are
/// bit-identical to the portable form.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn score_top_two_avx2(
    norms: &[f32],
    transposed: &[f32],
    padded: usize,
    dim: usize,
    x: &[f32],
) -> TopTwo {
    use std::arch::x86_64::*;
    assert!(norms.len() == padded && transposed.len() >= padded * dim && x.len() >= dim);
    let mut first = _mm256_set1_ps(f32::INFINITY);
    let mut second = first;
    let mut first_at = _mm256_setzero_si256();
    let mut second_at = first_at;
    let mut index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let step = _mm256_set1_epi32(LANES as i32);
    let blocks = padded / LANES;
    // Folds one block's scores into the per-lane best two, then steps the lane indices.
    let mut fold = |v: __m256| {
        let below_first = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(v, first));
        let below_second = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(v, second));
        second = _mm256_min_ps(_mm256_max_ps(v, first), second);
        let demoted = _mm256_blendv_epi8(index, first_at, below_first);
        second_at = _mm256_blendv_epi8(second_at, demoted, below_second);
        first_at = _mm256_blendv_epi8(first_at, index, below_first);
        first = _mm256_min_ps(v, first);
        index = _mm256_add_epi32(index, step);
    };
    let mut block = 0;
    // Four blocks at once: independent add chains hide the add latency. Four named
    // accumulators (not an array indexed by a run-time count) so they stay in registers.
    while blocks - block >= GROUP {
        // SAFETY (all loads): each reads LANES floats inside `norms` or `transposed`
        // (asserted above; block + 3 < blocks).
        let at = block * LANES;
        let mut v0 = _mm256_loadu_ps(norms.as_ptr().add(at));
        let mut v1 = _mm256_loadu_ps(norms.as_ptr().add(at + LANES));
        let mut v2 = _mm256_loadu_ps(norms.as_ptr().add(at + 2 * LANES));
        let mut v3 = _mm256_loadu_ps(norms.as_ptr().add(at + 3 * LANES));
        // Pointer steps rather than index products: no overflow checks in the inner loop.
        let mut row = transposed.as_ptr().add(at);
        for &xd in &x[..dim] {
            let xd = _mm256_set1_ps(-2.0 * xd);
            v0 = _mm256_add_ps(v0, _mm256_mul_ps(xd, _mm256_loadu_ps(row)));
            v1 = _mm256_add_ps(v1, _mm256_mul_ps(xd, _mm256_loadu_ps(row.add(LANES))));
            v2 = _mm256_add_ps(v2, _mm256_mul_ps(xd, _mm256_loadu_ps(row.add(2 * LANES))));
            v3 = _mm256_add_ps(v3, _mm256_mul_ps(xd, _mm256_loadu_ps(row.add(3 * LANES))));
            row = row.wrapping_add(padded);
        }
        fold(v0);
        fold(v1);
        fold(v2);
        fold(v3);
        block += GROUP;
    }
    while block < blocks {
        let at = block * LANES;
        let mut v = _mm256_loadu_ps(norms.as_ptr().add(at));
        let mut row = transposed.as_ptr().add(at);
        for &xd in &x[..dim] {
            let xd = _mm256_set1_ps(-2.0 * xd);
            v = _mm256_add_ps(v, _mm256_mul_ps(xd, _mm256_loadu_ps(row)));
            row = row.wrapping_add(padded);
        }
        fold(v);
        block += 1;
    }
    // The merge of `merge_lanes`, without branches: the best is the lowest (score, index) of
    // the lanes' firsts; the second best is the lowest of the firsts after the winning lane's
    // first is replaced by its second (within a lane the first always precedes the second).
    let lowest = |scores: __m256, at: __m256i| -> (f32, u32) {
        let m = _mm256_min_ps(scores, _mm256_permute2f128_ps::<1>(scores, scores));
        let m = _mm256_min_ps(m, _mm256_shuffle_ps::<0b01_00_11_10>(m, m));
        let m = _mm256_min_ps(m, _mm256_shuffle_ps::<0b10_11_00_01>(m, m));
        let tied = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(scores, m));
        let i = _mm256_blendv_epi8(_mm256_set1_epi32(-1), at, tied);
        let i = _mm256_min_epu32(i, _mm256_permute2x128_si256::<1>(i, i));
        let i = _mm256_min_epu32(i, _mm256_shuffle_epi32::<0b01_00_11_10>(i));
        let i = _mm256_min_epu32(i, _mm256_shuffle_epi32::<0b10_11_00_01>(i));
        (
            _mm256_cvtss_f32(m),
            _mm_cvtsi128_si32(_mm256_castsi256_si128(i)) as u32,
        )
    };
    let (s1, j1) = lowest(first, first_at);
    if s1 == f32::INFINITY {
        // Every score is +∞ (no centre scored): the portable merge's order on the initial
        // (∞, 0) entries.
        let (mut f, mut s) = ([0f32; LANES], [0f32; LANES]);
        let (mut fa, mut sa) = ([0u32; LANES], [0u32; LANES]);
        _mm256_storeu_ps(f.as_mut_ptr(), first);
        _mm256_storeu_ps(s.as_mut_ptr(), second);
        _mm256_storeu_si256(fa.as_mut_ptr().cast(), first_at);
        _mm256_storeu_si256(sa.as_mut_ptr().cast(), second_at);
        return merge_lanes(std::array::from_fn(|l| [(f[l], fa[l]), (s[l], sa[l])]));
    }
    let won = _mm256_and_si256(
        _mm256_cmpeq_epi32(first_at, _mm256_set1_epi32(j1 as i32)),
        _mm256_castps_si256(_mm256_cmp_ps::<_CMP_EQ_OQ>(first, _mm256_set1_ps(s1))),
    );
    let rest = _mm256_blendv_ps(first, second, _mm256_castsi256_ps(won));
    let rest_at = _mm256_blendv_epi8(first_at, second_at, won);
    let (s2, j2) = lowest(rest, rest_at);
    ((s1, j1), (s2, j2))
}

/// Scores every centre into `acc`, then keeps the best two per lane and merges the lanes.
fn score_top_two(
    norms: &[f32],
    transposed: &[f32],
    padded: usize,
    dim: usize,
    x: &[f32],
    acc: &mut [f32],
) -> TopTwo {
    acc.copy_from_slice(norms);
    for (d, &xd) in x.iter().enumerate().take(dim) {
        let xd = -2.0 * xd;
        let row = &transposed[d * padded..(d + 1) * padded];
        for (a, &c) in acc.iter_mut().zip(row) {
            *a += xd * c;
        }
    }
    let mut lanes = [[(f32::INFINITY, 0u32); 2]; LANES];
    for (j, &v) in acc.iter().enumerate() {
        let lane = &mut lanes[j % LANES];
        if v < lane[0].0 {
            lane[1] = lane[0];
            lane[0] = (v, j as u32);
        } else if v < lane[1].0 {
            lane[1] = (v, j as u32);
        }
    }
    merge_lanes(lanes)
}

#[cfg(test)]
mod tests {
    use super::super::tests::random_points;
    use super::*;
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::SeedableRng;

    /// The portable scan against the one actually used (AVX2 where the CPU has it), over sizes
    /// that leave partial blocks and groups: same scores, same winners, bit for bit.
    #[test]
    fn vector_scan_matches_portable_scan_exactly() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        for (k, dim) in [(1, 8), (7, 8), (8, 4), (33, 16), (115, 8), (37, 3)] {
            let centers = random_points(k, dim, &mut rng);
            let mut search = NearestSearch::new(&centers.data, dim);
            let mut acc = vec![0f32; search.padded];
            for _ in 0..50 {
                let x = random_points(1, dim, &mut rng);
                let portable = score_top_two(
                    &search.norms,
                    &search.transposed,
                    search.padded,
                    dim,
                    &x.data,
                    &mut acc,
                );
                let used = search.top_two(&x.data);
                assert_eq!(portable.0, used.0, "k {k} dim {dim}");
                assert_eq!(portable.1 .0.to_bits(), used.1 .0.to_bits());
                if used.1 .0.is_finite() {
                    assert_eq!(portable.1 .1, used.1 .1, "k {k} dim {dim}");
                }
                // The winner is the true nearest centre (lowest index on ties).
                let brute = nearest(&x.data, &centers.data, dim).0;
                let d = |j: usize| sq_dist(&x.data, centers.row(j));
                assert!(d(used.0 .1 as usize) <= d(brute) * (1.0 + 1e-5) + 1e-6);
            }
        }
        // Ties: five distinct centres, each repeated in several blocks and lanes, and points
        // on the centres themselves; the lowest index must win in both scans.
        for (k, dim) in [(20, 8), (40, 4), (9, 8)] {
            let distinct = random_points(5, dim, &mut rng);
            let centers: Vec<f32> = (0..k).flat_map(|j| distinct.row(j % 5).to_vec()).collect();
            let mut search = NearestSearch::new(&centers, dim);
            let mut acc = vec![0f32; search.padded];
            for p in 0..10 {
                let x = distinct.row(p % 5).to_vec();
                let portable = score_top_two(
                    &search.norms,
                    &search.transposed,
                    search.padded,
                    dim,
                    &x,
                    &mut acc,
                );
                let used = search.top_two(&x);
                assert_eq!(portable, used, "ties, k {k} dim {dim}");
                assert_eq!(used.0 .1 as usize, p % 5);
            }
        }
    }
}
