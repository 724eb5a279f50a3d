//! k-means for low-dimensional points (N′ = 4…16): greedy k-means++ seeding and Lloyd
//! iterations, with deterministic handling of empty clusters and ties. The VQ baseline, and the
//! first step of the dictionary-learning initialisation.

use rand::rngs::Xoshiro256PlusPlus;
use rand::RngExt;

use super::subspace::Points;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KMeansParams {
    pub k: usize,
    pub max_iters: usize,
    /// Stop when the objective improves by less than this fraction in one iteration.
    pub tolerance: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KMeansResult {
    /// k rows of `dim` values.
    pub centroids: Points,
    pub assignment: Vec<u32>,
    /// Sum of squared distances of the points to their centroids.
    pub inertia: f64,
    pub iterations: usize,
}

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

/// Squared distances of every point to `c`, computed over the transposed points (`pt`: one
/// row of n values per dimension) so the loop runs over points and vectorises.
#[inline(always)]
fn distances_to(pt: &[f32], n: usize, c: &[f32], out: &mut [f32]) {
    out.iter_mut().for_each(|o| *o = 0.0);
    for (d, &cd) in c.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&pt[d * n..(d + 1) * n]) {
            *o += (x - cd) * (x - cd);
        }
    }
}

/// With `c` added as a centre: every point's squared distance to its nearest centre (into
/// `trial`) and their sum. One pass over the points in blocks of eight, with the operations of
/// [`distances_to`], a `min` and an f64 sum over eight interleaved lanes combined in a fixed order (the
/// same result on every run, without the latency chain of one running sum), so the figures are theirs to the
/// bit.
#[inline(always)]
fn trial_potential(pt: &[f32], n: usize, c: &[f32], closest: &[f32], trial: &mut [f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let whole = n - n % 8;
    for i in (0..whole).step_by(8) {
        let mut o = [0f32; 8];
        for (d, &cd) in c.iter().enumerate() {
            let row = &pt[d * n + i..d * n + i + 8];
            for l in 0..8 {
                o[l] += (row[l] - cd) * (row[l] - cd);
            }
        }
        for l in 0..8 {
            let t = o[l].min(closest[i + l]);
            trial[i + l] = t;
            lanes[l] += t as f64;
        }
    }
    let mut rest = 0f64;
    for i in whole..n {
        let mut o = 0f32;
        for (d, &cd) in c.iter().enumerate() {
            let x = pt[d * n + i];
            o += (x - cd) * (x - cd);
        }
        let t = o.min(closest[i]);
        trial[i] = t;
        rest += t as f64;
    }
    lanes.iter().sum::<f64>() + rest
}

/// Greedy k-means++ (as scikit-learn does it: 2 + ln k candidates per new centre, drawn from the
/// cumulative potential, keeping the one that lowers the potential most).
#[inline(always)]
fn seed(points: &Points, k: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f32> {
    let (n, dim) = (points.len(), points.dim);
    let mut pt = vec![0f32; n * dim];
    for i in 0..n {
        for (d, &x) in points.row(i).iter().enumerate() {
            pt[d * n + i] = x;
        }
    }
    let mut centers = Vec::with_capacity(k * dim);
    let first = rng.random_range(0..n);
    centers.extend_from_slice(points.row(first));
    let mut closest = vec![0f32; n];
    distances_to(&pt, n, points.row(first), &mut closest);
    let trials = 2 + (k as f64).ln().floor() as usize;
    let mut trial = vec![0f32; n];
    let mut best_dist = vec![0f32; n];
    let mut cumulative = vec![0f64; n];
    for _ in 1..k {
        let mut acc = 0f64;
        for (c, &d) in cumulative.iter_mut().zip(&closest) {
            acc += d as f64;
            *c = acc;
        }
        let potential = acc;
        let mut best: Option<(f64, usize)> = None;
        for _ in 0..trials {
            let cand = if potential > 0.0 {
                let target = rng.random::<f64>() * potential;
                // The first point whose cumulative potential exceeds the target.
                cumulative.partition_point(|&c| c <= target).min(n - 1)
            } else {
                rng.random_range(0..n)
            };
            let pot = trial_potential(&pt, n, points.row(cand), &closest, &mut trial);
            if best.is_none_or(|b| pot < b.0) {
                best = Some((pot, cand));
                std::mem::swap(&mut best_dist, &mut trial);
            }
        }
        let (_, cand) = best.expect("at least one trial");
        centers.extend_from_slice(points.row(cand));
        std::mem::swap(&mut closest, &mut best_dist);
    }
    centers
}

/// Relative slack on Hamerly's bounds, so float rounding in them never skips a point whose
/// nearest centre may have changed.
const BOUND_SLACK: f32 = 1e-5;

/// Lloyd iterations from `centers` (k rows). Empty clusters take the point farthest from its
/// centroid (lowest index on ties), so all k centroids stay in use while points remain.
///
/// Hamerly's bounds skip the full nearest-centre search for a point whose centre is certainly
/// still the nearest: closer than half the gap to any other centre, or than a lower bound on
/// its second-nearest distance (kept up to date by subtracting how far centres moved). Each
/// point's distance to its own centre is recomputed exactly every iteration, so the objective
/// and the empty-cluster repair see exact distances.
#[inline(always)]
pub fn lloyd(points: &Points, mut centers: Vec<f32>, params: &KMeansParams) -> KMeansResult {
    let (n, dim, k) = (points.len(), points.dim, params.k);
    let mut assignment = vec![0u32; n];
    let mut dist = vec![0f32; n];
    // Lower bound on each point's distance (not squared) to its second-nearest centre.
    let mut lower = vec![0f32; n];
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    let mut half_gap = vec![0f32; k];
    let mut moved = vec![0f32; k];
    let mut previous = centers.clone();
    let mut prev = f64::INFINITY;
    let mut inertia = 0.0;
    let mut iterations = 0;
    for it in 0..params.max_iters.max(1) {
        iterations = it + 1;
        inertia = 0.0;
        let mut search = NearestSearch::new(&centers, dim);
        if it == 0 {
            for i in 0..n {
                let (j, d, d2) = search.nearest_two(points.row(i));
                assignment[i] = j as u32;
                dist[i] = d;
                lower[i] = d2.sqrt();
                inertia += d as f64;
            }
        } else {
            half_gaps(&centers, dim, &mut half_gap);
            // The largest and second-largest moves: a point's other centres moved at most the
            // largest move among centres other than its own.
            let (mut top, mut top_at, mut runner_up) = (0f32, usize::MAX, 0f32);
            for (j, &m) in moved.iter().enumerate() {
                if m > top {
                    runner_up = top;
                    (top, top_at) = (m, j);
                } else if m > runner_up {
                    runner_up = m;
                }
            }
            for i in 0..n {
                let a = assignment[i] as usize;
                let x = points.row(i);
                let other_moved = if a == top_at { runner_up } else { top };
                lower[i] -= other_moved;
                let d = sq_dist(x, &centers[a * dim..(a + 1) * dim]);
                let bound = lower[i].max(half_gap[a]) * (1.0 - BOUND_SLACK);
                if d.sqrt() < bound {
                    dist[i] = d;
                } else {
                    let (j, d, d2) = search.nearest_two(x);
                    assignment[i] = j as u32;
                    dist[i] = d;
                    lower[i] = d2.sqrt();
                }
                inertia += dist[i] as f64;
            }
        }
        if prev.is_finite() && prev - inertia <= params.tolerance * prev {
            break;
        }
        prev = inertia;
        previous.copy_from_slice(&centers);
        let reseeded = update_centroids(
            points,
            &mut assignment,
            &mut dist,
            &mut centers,
            &mut sums,
            &mut counts,
        );
        for w in reseeded {
            // Its centre is now the point itself; nothing is known about the others.
            lower[w] = 0.0;
        }
        for (j, m) in moved.iter_mut().enumerate() {
            *m = sq_dist(
                &centers[j * dim..(j + 1) * dim],
                &previous[j * dim..(j + 1) * dim],
            )
            .sqrt();
        }
    }
    KMeansResult {
        centroids: Points { data: centers, dim },
        assignment,
        inertia,
        iterations,
    }
}

/// Half the distance from every centre to its nearest other centre (infinite with one centre).
#[inline(always)]
fn half_gaps(centers: &[f32], dim: usize, out: &mut [f32]) {
    out.iter_mut().for_each(|g| *g = f32::INFINITY);
    for (a, ca) in centers.chunks_exact(dim).enumerate() {
        for (b, cb) in centers.chunks_exact(dim).enumerate().skip(a + 1) {
            let d = sq_dist(ca, cb);
            out[a] = out[a].min(d);
            out[b] = out[b].min(d);
        }
    }
    out.iter_mut().for_each(|g| *g = 0.5 * g.sqrt());
}

/// Means of the clusters; empty clusters are re-seeded with the worst-fit points, which are
/// returned.
#[inline(always)]
fn update_centroids(
    points: &Points,
    assignment: &mut [u32],
    dist: &mut [f32],
    centers: &mut [f32],
    sums: &mut [f64],
    counts: &mut [usize],
) -> Vec<usize> {
    let mut reseeded = Vec::new();
    let dim = points.dim;
    sums.iter_mut().for_each(|s| *s = 0.0);
    counts.iter_mut().for_each(|c| *c = 0);
    for (i, &a) in assignment.iter().enumerate() {
        let a = a as usize;
        counts[a] += 1;
        for (s, &x) in sums[a * dim..(a + 1) * dim].iter_mut().zip(points.row(i)) {
            *s += x as f64;
        }
    }
    for j in 0..counts.len() {
        if counts[j] == 0 {
            // The point farthest from its centre, taken from a cluster that keeps a member.
            let mut worst: Option<usize> = None;
            for i in 0..dist.len() {
                if counts[assignment[i] as usize] > 1 && worst.is_none_or(|w| dist[i] > dist[w]) {
                    worst = Some(i);
                }
            }
            let Some(w) = worst else { continue };
            let old = assignment[w] as usize;
            counts[old] -= 1;
            for (s, &x) in sums[old * dim..(old + 1) * dim]
                .iter_mut()
                .zip(points.row(w))
            {
                *s -= x as f64;
            }
            assignment[w] = j as u32;
            dist[w] = 0.0;
            reseeded.push(w);
            counts[j] = 1;
            for (s, &x) in sums[j * dim..(j + 1) * dim].iter_mut().zip(points.row(w)) {
                *s = x as f64;
            }
        }
    }
    for j in 0..counts.len() {
        if counts[j] > 0 {
            for d in 0..dim {
                centers[j * dim + d] = (sums[j * dim + d] / counts[j] as f64) as f32;
            }
        }
    }
    reseeded
}

/// k-means++ seeding then Lloyd. `k` is clamped to the number of points.
///
/// Compiled twice, for AVX2 and for the baseline CPU, and chosen at run time. The results are
/// bit-identical: Rust never reassociates or fuses float operations, so wider vectors only run
/// independent lanes side by side.
pub fn kmeans(
    points: &Points,
    params: &KMeansParams,
    rng: &mut Xoshiro256PlusPlus,
) -> KMeansResult {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2.
        return unsafe { kmeans_avx2(points, params, rng) };
    }
    kmeans_body(points, params, rng)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn kmeans_avx2(
    points: &Points,
    params: &KMeansParams,
    rng: &mut Xoshiro256PlusPlus,
) -> KMeansResult {
    kmeans_body(points, params, rng)
}

#[inline(always)]
fn kmeans_body(
    points: &Points,
    params: &KMeansParams,
    rng: &mut Xoshiro256PlusPlus,
) -> KMeansResult {
    let k = params.k.min(points.len()).max(1);
    let params = KMeansParams { k, ..*params };
    let centers = seed(points, k, rng);
    lloyd(points, centers, &params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The seeding's reference: the lane sum `trial_potential` fuses.
    /// Sum of `values` in f64 over eight interleaved lanes combined in a fixed order: the same result
    /// on every run, without the latency chain of one running f64 sum.
    fn lane_sum(values: &[f32]) -> f64 {
        let mut lanes = [0f64; 8];
        let chunks = values.chunks_exact(8);
        let rest: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
        for c in chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += v as f64;
            }
        }
        lanes.iter().sum::<f64>() + rest
    }

    #[test]
    fn fused_trial_potential_matches_the_separate_passes() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        for (n, dim) in [(1, 8), (7, 8), (8, 4), (2304, 8), (101, 3)] {
            let points = random_points(n, dim, &mut rng);
            let mut pt = vec![0f32; n * dim];
            for i in 0..n {
                for (d, &x) in points.row(i).iter().enumerate() {
                    pt[d * n + i] = x;
                }
            }
            let closest: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..4.0)).collect();
            let c = random_points(1, dim, &mut rng);
            let mut separate = vec![0f32; n];
            distances_to(&pt, n, &c.data, &mut separate);
            for (t, &cl) in separate.iter_mut().zip(&closest) {
                *t = t.min(cl);
            }
            let mut fused = vec![0f32; n];
            let pot = trial_potential(&pt, n, &c.data, &closest, &mut fused);
            assert_eq!(fused, separate, "n {n} dim {dim}");
            assert_eq!(
                pot.to_bits(),
                lane_sum(&separate).to_bits(),
                "n {n} dim {dim}"
            );
        }
    }

    /// K well-separated blobs of `per` points around known centres.
    pub fn blobs(
        k: usize,
        per: usize,
        dim: usize,
        rng: &mut Xoshiro256PlusPlus,
    ) -> (Points, Vec<f32>, Vec<u32>) {
        let centres: Vec<f32> = (0..k * dim)
            .map(|_| rng.random_range(-100.0..100.0))
            .collect();
        let mut data = Vec::new();
        let mut labels = Vec::new();
        for i in 0..per {
            for c in 0..k {
                let _ = i;
                data.extend((0..dim).map(|d| centres[c * dim + d] + rng.random_range(-0.01..0.01)));
                labels.push(c as u32);
            }
        }
        (Points { data, dim }, centres, labels)
    }

    #[test]
    fn recovers_well_separated_clusters_exactly() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let (points, _, labels) = blobs(12, 20, 8, &mut rng);
        let r = kmeans(
            &points,
            &KMeansParams {
                k: 12,
                max_iters: 100,
                tolerance: 0.0,
            },
            &mut rng,
        );
        // Same partition up to a relabelling: points with the same true label share a cluster,
        // points with different labels do not.
        for i in 0..labels.len() {
            for j in 0..labels.len() {
                assert_eq!(
                    labels[i] == labels[j],
                    r.assignment[i] == r.assignment[j],
                    "{i} {j}"
                );
            }
        }
        assert!(r.inertia < 12.0 * 20.0 * 8.0 * 1e-4);
    }

    #[test]
    fn as_many_clusters_as_points_gives_each_its_own() {
        let points = Points {
            data: vec![0.0, 0.0, 0.0, 1.0, 5.0, 5.0, 9.0, 9.0],
            dim: 2,
        };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let r = kmeans(
            &points,
            &KMeansParams {
                k: 4,
                max_iters: 20,
                tolerance: 0.0,
            },
            &mut rng,
        );
        assert_eq!(r.inertia, 0.0);
        let mut used = r.assignment.clone();
        used.sort();
        used.dedup();
        assert_eq!(used.len(), 4);
    }

    fn random_points(n: usize, dim: usize, rng: &mut Xoshiro256PlusPlus) -> Points {
        Points {
            data: (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect(),
            dim,
        }
    }

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

    /// k-means through the run-time dispatch against the portable build of the same code.
    #[test]
    fn dispatched_kmeans_matches_portable_kmeans_bit_for_bit() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
        let points = random_points(1500, 8, &mut rng);
        let params = KMeansParams {
            k: 60,
            max_iters: 100,
            tolerance: 1e-6,
        };
        let a = kmeans(&points, &params, &mut Xoshiro256PlusPlus::seed_from_u64(9));
        let b = kmeans_body(&points, &params, &mut Xoshiro256PlusPlus::seed_from_u64(9));
        assert_eq!(a, b);
        assert!(a.iterations > 2);
    }

    /// Hamerly's bounds only skip work: the result equals plain Lloyd (full search every
    /// iteration) from the same seeds.
    #[test]
    fn bounded_lloyd_matches_plain_lloyd() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let points = random_points(800, 8, &mut rng);
        let k = 40;
        let centers = seed(&points, k, &mut Xoshiro256PlusPlus::seed_from_u64(1));
        let params = KMeansParams {
            k,
            max_iters: 30,
            tolerance: 0.0,
        };
        let fast = lloyd(&points, centers.clone(), &params);
        // Plain Lloyd: full search for every point, same update rule.
        let mut c = centers;
        let (mut assignment, mut dist) = (vec![0u32; 800], vec![0f32; 800]);
        let (mut sums, mut counts) = (vec![0f64; k * 8], vec![0usize; k]);
        for it in 0..fast.iterations {
            if it > 0 {
                update_centroids(
                    &points,
                    &mut assignment,
                    &mut dist,
                    &mut c,
                    &mut sums,
                    &mut counts,
                );
            }
            let mut search = NearestSearch::new(&c, 8);
            for i in 0..800 {
                let (j, d) = search.nearest(points.row(i));
                assignment[i] = j as u32;
                dist[i] = d;
            }
        }
        assert!(fast.iterations > 3);
        assert_eq!(assignment, fast.assignment);
    }
}
