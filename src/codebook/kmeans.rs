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

/// Nearest-centre search over many points: centres stored transposed (one row per dimension)
/// with their squared norms, so the inner loop runs over centres and vectorises for any small
/// dimension. Centres are ranked by ‖c‖² − 2x·c; ties go to the lowest index.
pub struct NearestSearch {
    dim: usize,
    k: usize,
    centers: Vec<f32>,
    transposed: Vec<f32>,
    norms: Vec<f32>,
    scratch: Vec<f32>,
}

impl NearestSearch {
    pub fn new(centers: &[f32], dim: usize) -> NearestSearch {
        let k = centers.len() / dim;
        let mut transposed = vec![0f32; k * dim];
        for (j, c) in centers.chunks_exact(dim).enumerate() {
            for d in 0..dim {
                transposed[d * k + j] = c[d];
            }
        }
        let norms = centers
            .chunks_exact(dim)
            .map(|c| c.iter().map(|x| x * x).sum())
            .collect();
        NearestSearch {
            dim,
            k,
            centers: centers.to_vec(),
            transposed,
            norms,
            scratch: vec![0f32; k],
        }
    }

    /// Index and squared distance of the nearest centre to `x`.
    #[inline]
    pub fn nearest(&mut self, x: &[f32]) -> (usize, f32) {
        let k = self.k;
        let acc = &mut self.scratch[..k];
        acc.copy_from_slice(&self.norms);
        for d in 0..self.dim {
            let xd = -2.0 * x[d];
            let row = &self.transposed[d * k..(d + 1) * k];
            for (a, &c) in acc.iter_mut().zip(row) {
                *a += xd * c;
            }
        }
        let mut best = (0, f32::INFINITY);
        for (j, &v) in acc.iter().enumerate() {
            if v < best.1 {
                best = (j, v);
            }
        }
        // The expanded form loses precision far from the origin; the winner's distance is
        // recomputed directly so objectives stay exact.
        let j = best.0;
        (
            j,
            sq_dist(x, &self.centers[j * self.dim..(j + 1) * self.dim]),
        )
    }
}

/// Squared distances of every point to `c`, computed over the transposed points (`pt`: one
/// row of n values per dimension) so the loop runs over points and vectorises.
fn distances_to(pt: &[f32], n: usize, c: &[f32], out: &mut [f32]) {
    out.iter_mut().for_each(|o| *o = 0.0);
    for (d, &cd) in c.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&pt[d * n..(d + 1) * n]) {
            *o += (x - cd) * (x - cd);
        }
    }
}

/// Greedy k-means++ (as scikit-learn does it: 2 + ln k candidates per new centre, keeping the one
/// that lowers the potential most).
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
    for _ in 1..k {
        let potential: f64 = closest.iter().map(|&d| d as f64).sum();
        let mut best: Option<(f64, usize)> = None;
        for _ in 0..trials {
            let cand = if potential > 0.0 {
                let target = rng.random::<f64>() * potential;
                let mut acc = 0.0;
                let mut pick = n - 1;
                for (i, &d) in closest.iter().enumerate() {
                    acc += d as f64;
                    if acc > target {
                        pick = i;
                        break;
                    }
                }
                pick
            } else {
                rng.random_range(0..n)
            };
            distances_to(&pt, n, points.row(cand), &mut trial);
            let mut pot = 0.0f64;
            for (t, &c) in trial.iter_mut().zip(&closest) {
                *t = t.min(c);
                pot += *t as f64;
            }
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

/// Lloyd iterations from `centers` (k rows). Empty clusters take the point farthest from its
/// centroid (lowest index on ties), so all k centroids stay in use while points remain.
pub fn lloyd(points: &Points, mut centers: Vec<f32>, params: &KMeansParams) -> KMeansResult {
    let (n, dim, k) = (points.len(), points.dim, params.k);
    let mut assignment = vec![0u32; n];
    let mut dist = vec![0f32; n];
    let mut sums = vec![0f64; k * dim];
    let mut counts = vec![0usize; k];
    let mut prev = f64::INFINITY;
    let mut inertia = 0.0;
    let mut iterations = 0;
    for it in 0..params.max_iters.max(1) {
        iterations = it + 1;
        inertia = 0.0;
        let mut search = NearestSearch::new(&centers, dim);
        for i in 0..n {
            let (j, d) = search.nearest(points.row(i));
            assignment[i] = j as u32;
            dist[i] = d;
            inertia += d as f64;
        }
        if prev.is_finite() && prev - inertia <= params.tolerance * prev {
            break;
        }
        prev = inertia;
        update_centroids(
            points,
            &mut assignment,
            &mut dist,
            &mut centers,
            &mut sums,
            &mut counts,
        );
    }
    KMeansResult {
        centroids: Points { data: centers, dim },
        assignment,
        inertia,
        iterations,
    }
}

/// Means of the clusters; empty clusters are re-seeded with the worst-fit points.
fn update_centroids(
    points: &Points,
    assignment: &mut [u32],
    dist: &mut [f32],
    centers: &mut [f32],
    sums: &mut [f64],
    counts: &mut [usize],
) {
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
}

/// k-means++ seeding then Lloyd. `k` is clamped to the number of points.
pub fn kmeans(
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
}
