//! Lloyd's iterations from given centres, with Hamerly's bounds to skip searches that cannot
//! change a point's centre, and deterministic repair of empty clusters.

use super::scan::{sq_dist, NearestSearch};
use crate::codebook::subspace::Points;

/// Relative slack on Hamerly's bounds, so float rounding in them never skips a point whose
/// nearest centre may have changed.
const BOUND_SLACK: f32 = 1e-5;

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
    let mut labels = Labels {
        assignment: vec![0u32; n],
        dist: vec![0f32; n],
        lower: vec![0f32; n],
    };
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
        let mut search = NearestSearch::new(&centers, dim);
        inertia = if it == 0 {
            assign_all(points, &mut search, &mut labels)
        } else {
            assign_bounded(
                points,
                &centers,
                &mut search,
                &mut half_gap,
                &moved,
                &mut labels,
            )
        };
        if prev.is_finite() && prev - inertia <= params.tolerance * prev {
            break;
        }
        prev = inertia;
        previous.copy_from_slice(&centers);
        let reseeded = update_centroids(
            points,
            &mut labels.assignment,
            &mut labels.dist,
            &mut centers,
            &mut sums,
            &mut counts,
        );
        for w in reseeded {
            // Its centre is now the point itself; nothing is known about the others.
            labels.lower[w] = 0.0;
        }
        centre_moves(&centers, &previous, dim, &mut moved);
    }
    KMeansResult {
        centroids: Points { data: centers, dim },
        assignment: labels.assignment,
        inertia,
        iterations,
    }
}

/// What Lloyd keeps per point between iterations.
struct Labels {
    assignment: Vec<u32>,
    /// Squared distance to the assigned centre, exact for the current centres.
    dist: Vec<f32>,
    /// Lower bound on each point's distance (not squared) to its second-nearest centre.
    lower: Vec<f32>,
}

/// The first iteration: a full search for every point, which also sets its lower bound.
/// Returns the objective, summed in point order.
#[inline(always)]
fn assign_all(points: &Points, search: &mut NearestSearch, labels: &mut Labels) -> f64 {
    let mut inertia = 0.0;
    for i in 0..points.len() {
        let (j, d, d2) = search.nearest_two(points.row(i));
        labels.assignment[i] = j as u32;
        labels.dist[i] = d;
        labels.lower[i] = d2.sqrt();
        inertia += d as f64;
    }
    inertia
}

/// Later iterations: each point's bounds are loosened by how far the other centres moved, and
/// the full search runs only where they no longer prove its centre the nearest. Returns the
/// objective, summed in point order.
#[inline(always)]
fn assign_bounded(
    points: &Points,
    centers: &[f32],
    search: &mut NearestSearch,
    half_gap: &mut [f32],
    moved: &[f32],
    labels: &mut Labels,
) -> f64 {
    let dim = points.dim;
    half_gaps(centers, dim, half_gap);
    let (top, top_at, runner_up) = largest_moves(moved);
    let mut inertia = 0.0;
    for i in 0..points.len() {
        let a = labels.assignment[i] as usize;
        let x = points.row(i);
        let other_moved = if a == top_at { runner_up } else { top };
        labels.lower[i] -= other_moved;
        let d = sq_dist(x, &centers[a * dim..(a + 1) * dim]);
        let bound = labels.lower[i].max(half_gap[a]) * (1.0 - BOUND_SLACK);
        if d.sqrt() < bound {
            labels.dist[i] = d;
        } else {
            let (j, d, d2) = search.nearest_two(x);
            labels.assignment[i] = j as u32;
            labels.dist[i] = d;
            labels.lower[i] = d2.sqrt();
        }
        inertia += labels.dist[i] as f64;
    }
    inertia
}

/// The largest and second-largest moves, and which centre made the largest: a point's other
/// centres moved at most the largest move among centres other than its own.
#[inline(always)]
fn largest_moves(moved: &[f32]) -> (f32, usize, f32) {
    let (mut top, mut top_at, mut runner_up) = (0f32, usize::MAX, 0f32);
    for (j, &m) in moved.iter().enumerate() {
        if m > top {
            runner_up = top;
            (top, top_at) = (m, j);
        } else if m > runner_up {
            runner_up = m;
        }
    }
    (top, top_at, runner_up)
}

/// How far (not squared) each centre moved in the last update.
#[inline(always)]
fn centre_moves(centers: &[f32], previous: &[f32], dim: usize, moved: &mut [f32]) {
    for (j, m) in moved.iter_mut().enumerate() {
        *m = sq_dist(
            &centers[j * dim..(j + 1) * dim],
            &previous[j * dim..(j + 1) * dim],
        )
        .sqrt();
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
