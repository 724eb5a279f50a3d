//! Lloyd's iterations from given centres, with Hamerly's bounds to skip searches that cannot
//! change a point's centre, and deterministic repair of empty clusters.

use super::scan::{sq_dist, NearestSearch};
use super::{KMeansParams, KMeansResult};
use crate::codebook::subspace::Points;

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

#[cfg(test)]
mod tests {
    use super::super::seeding::seed;
    use super::super::tests::random_points;
    use super::*;
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::SeedableRng;

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
