//! Greedy k-means++ seeding: the initial centres, drawn point by point from the cumulative
//! potential, keeping the candidate that lowers the potential most.

use rand::rngs::Xoshiro256PlusPlus;
use rand::RngExt;

use crate::codebook::subspace::Points;

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
pub(super) fn seed(points: &Points, k: usize, rng: &mut Xoshiro256PlusPlus) -> Vec<f32> {
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

#[cfg(test)]
mod tests {
    use super::super::tests::random_points;
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
}
