//! k-means for low-dimensional points (N′ = 4…16): greedy k-means++ seeding and Lloyd
//! iterations, with deterministic handling of empty clusters and ties. The VQ baseline, and the
//! first step of the dictionary-learning initialisation.
//!
//! Here: the public entry point and its run-time dispatch. The steps: `seeding` (k-means++),
//! `lloyd` (the iterations) and `scan` (the nearest-centre search Lloyd uses).

mod lloyd;
mod scan;
mod seeding;

use rand::rngs::Xoshiro256PlusPlus;

use super::subspace::Points;

pub use lloyd::{lloyd, KMeansParams, KMeansResult};
pub use scan::{nearest, sq_dist, NearestSearch};
use seeding::seed;

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
    use rand::{RngExt, SeedableRng};

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

    /// Shared by the tests of `seeding`, `lloyd` and `scan`.
    pub(super) fn random_points(n: usize, dim: usize, rng: &mut Xoshiro256PlusPlus) -> Points {
        Points {
            data: (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect(),
            dim,
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
}
