//! The clustering engine: a layer's kernel in, a `Codebook` out (VQ centroids or the paper's
//! dictionary-learning representatives), per subspace, in parallel and deterministically.

pub mod dl;
pub mod kmeans;
pub mod learnt;
pub mod palette;
pub mod params;
pub mod subspace;

use std::ops::Range;

use anyhow::{ensure, Result};
use ndarray::ArrayView4;
use rand::rngs::Xoshiro256PlusPlus;
use rand::SeedableRng;
use rayon::prelude::*;

pub use dl::SparseCodes;
pub use learnt::{f16_exact, Codebook, SubspaceCodebook};
pub use params::{ClusterParams, Method, SizeError, Sizes, ValidParams};
pub use subspace::{Points, SubspacePlan};

/// A per-subspace RNG stream: the same for any thread count or scheduling.
fn subspace_rng(seed: u64, s: usize) -> Xoshiro256PlusPlus {
    // SplitMix64 of (seed, s) so neighbouring seeds give unrelated streams.
    let mut z = seed ^ (s as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    Xoshiro256PlusPlus::seed_from_u64(z ^ (z >> 31))
}

/// Learns the codebook of a kernel [M, N, kh, kw]; subspaces in parallel.
/// The largest weight magnitude clustered: squared norms and Gram entries of 16-dimensional
/// sub-vectors stay far inside f32's range (3.4e38) below it. Trained networks are many orders
/// of magnitude below; a fuzzed file with 1e19 made the DL arithmetic overflow into NaN.
pub const MAX_WEIGHT_MAGNITUDE: f32 = 1e15;

/// Refuses kernels that cannot be clustered: NaN or ±inf values, or magnitudes above
/// [`MAX_WEIGHT_MAGNITUDE`].
pub fn check_values(kernel: ArrayView4<f32>) -> Result<()> {
    let non_finite = kernel.iter().filter(|v| !v.is_finite()).count();
    ensure!(
        non_finite == 0,
        "{non_finite} non-finite values (NaN or ±inf); such a kernel cannot be clustered"
    );
    let largest = kernel.iter().fold(0f32, |m, v| m.max(v.abs()));
    ensure!(
        largest <= MAX_WEIGHT_MAGNITUDE,
        "values up to {largest:e}; above {MAX_WEIGHT_MAGNITUDE:e} the clustering's f32 arithmetic overflows"
    );
    Ok(())
}

pub fn learn(kernel: ArrayView4<f32>, params: &ValidParams) -> Result<Codebook> {
    learn_weighted(kernel, params, None)
}

/// [`learn`], the error of input channel c weighted by `channel_weights[c]` — used by shared
/// codebooks only (calibration whitens per-subspace codebooks instead).
pub fn learn_weighted(
    kernel: ArrayView4<f32>,
    params: &ValidParams,
    channel_weights: Option<&[f64]>,
) -> Result<Codebook> {
    let (m, n, kh, kw) = kernel.dim();
    ensure!(
        m > 0 && n > 0 && kh > 0 && kw > 0,
        "empty kernel {:?}",
        kernel.dim()
    );
    check_values(kernel)?;
    let sizes = params.sizes(m, n, kh * kw)?;
    if params.shared {
        let (subspaces, channel_scale) = palette::learn(
            kernel,
            palette::PaletteParams {
                width: params.subspace,
                k: sizes.k_vq,
                max_iters: params.kmeans_iters,
                channel_scale: params.channel_scale,
            },
            channel_weights,
            &mut subspace_rng(params.seed, 0),
        );
        let mut cb = Codebook {
            method: params.method,
            kernel_shape: [m, n, kh, kw],
            sizes,
            shared: true,
            subspaces,
            channel_scale,
            f16_palette: params.f16_palette,
            bias_shift: None,
        };
        cb.round_palette();
        return Ok(cb);
    }
    let plan = SubspacePlan::new(n, params.subspace);
    let ranges: Vec<Range<usize>> = plan.ranges().collect();
    let subspaces = ranges
        .into_par_iter()
        .enumerate()
        .map(|(s, channels)| {
            let points = subspace::points(kernel, channels.clone());
            let mut rng = subspace_rng(params.seed, s);
            match params.method {
                Method::Vq => {
                    let km = kmeans::kmeans(
                        &points,
                        &kmeans::KMeansParams {
                            k: sizes.k_vq,
                            max_iters: params.kmeans_iters,
                            tolerance: 1e-6,
                        },
                        &mut rng,
                    );
                    SubspaceCodebook {
                        channels,
                        atoms: km.centroids,
                        codes: None,
                        assignment: km.assignment,
                    }
                }
                Method::Dl => {
                    let r = dl::learn(
                        &points,
                        &dl::DlParams {
                            k: sizes.k,
                            l: sizes.l,
                            alpha: params.alpha,
                            iters: params.iters,
                            kmeans_iters: params.kmeans_iters,
                            init_iters: 5,
                        },
                        &mut rng,
                    );
                    SubspaceCodebook {
                        channels,
                        atoms: r.dictionary,
                        codes: Some(r.codes),
                        assignment: r.assignment,
                    }
                }
            }
        })
        .collect();
    Ok(Codebook {
        method: params.method,
        kernel_shape: [m, n, kh, kw],
        sizes,
        shared: false,
        subspaces,
        channel_scale: None,
        f16_palette: false,
        bias_shift: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;
    use rand::RngExt;

    fn random_kernel(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f32> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        Array4::from_shape_fn(shape, |_| rng.random_range(-1.0..1.0))
    }

    /// `f16_palette`: the palette and scales are float16 values; beyond float16's range they
    /// stay float32 (and the compact form then stores float32).
    #[test]
    fn an_f16_palette_is_rounded_where_float16_holds_it() {
        let kernel = random_kernel((6, 4, 3, 3), 2);
        let mut p = ClusterParams::new(Method::Vq, 4.0);
        (p.subspace, p.shared, p.f16_palette, p.channel_scale) = (2, true, true, true);
        let p = p.check().unwrap();
        let cb = learn(kernel.view(), &p).unwrap();
        let palette = &cb.subspaces[0].atoms.data;
        assert!(f16_exact(palette) && !f16_exact(&[0.1]));
        assert!(cb.subspaces.iter().all(|s| &s.atoms.data == palette));
        assert!(cb.channel_scale.as_deref().is_none_or(f16_exact));
        let huge = kernel.mapv(|v| v * 1e6);
        let mut plain = ClusterParams::clone(&p);
        plain.channel_scale = false;
        let cb = learn(huge.view(), &plain.check().unwrap()).unwrap();
        assert!(!f16_exact(&cb.subspaces[0].atoms.data));
        assert!(cb.subspaces[0].atoms.data.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn reconstruction_uses_each_columns_representative() {
        let w = random_kernel((16, 12, 3, 3), 1);
        for method in [Method::Vq, Method::Dl] {
            let mut p = ClusterParams::new(method, 4.0);
            p.subspace = 4;
            p.c = 1.5;
            let cb = learn(w.view(), &p.clone().check().unwrap()).unwrap();
            assert_eq!(cb.subspaces.len(), 3);
            let rec = cb.reconstruct();
            let sc = &cb.subspaces[1];
            let reps = sc.representatives();
            let r = sc.assignment[subspace::column(5, 2, 1, 3, 3)] as usize;
            assert_eq!(
                rec.slice(ndarray::s![5, 4..8, 2, 1]).to_vec(),
                reps.row(r).to_vec()
            );
            let e = cb.relative_error(w.view());
            assert!(e > 0.0 && e < 1.0, "{method:?} {e}");
        }
    }

    #[test]
    fn a_smaller_last_subspace_is_clustered_too() {
        let w = random_kernel((8, 10, 3, 3), 2);
        let mut p = ClusterParams::new(Method::Vq, 2.0);
        p.subspace = 4;
        let cb = learn(w.view(), &p.clone().check().unwrap()).unwrap();
        assert_eq!(
            cb.subspaces
                .iter()
                .map(|s| s.channels.clone())
                .collect::<Vec<_>>(),
            vec![0..4, 4..8, 8..10]
        );
        assert_eq!(cb.subspaces[2].atoms.dim, 2);
    }

    #[test]
    fn same_seed_same_codebook_on_one_or_two_threads() {
        let w = random_kernel((32, 20, 3, 3), 9);
        for method in [Method::Vq, Method::Dl] {
            let mut p = ClusterParams::new(method, 4.0);
            p.seed = 42;
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| learn(w.view(), &p.clone().check().unwrap()).unwrap())
            };
            let (one, two) = (run(1), run(2));
            assert_eq!(one, two, "{method:?}");
            // And bit for bit, not just within float equality.
            let bits = |cb: &Codebook| {
                cb.subspaces
                    .iter()
                    .flat_map(|s| s.atoms.data.iter().map(|x| x.to_bits()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&one), bits(&two));
            p.seed = 43;
            assert_ne!(
                learn(w.view(), &p.clone().check().unwrap()).unwrap(),
                one,
                "another seed gives another codebook"
            );
        }
    }

    #[test]
    fn keeping_every_column_is_exact() {
        // ρ such that K_vq = p²M: every column its own centroid.
        let w = random_kernel((4, 8, 1, 1), 3);
        let mut p = ClusterParams::new(Method::Vq, 1.0001);
        p.k = Some(4);
        let cb = learn(w.view(), &p.clone().check().unwrap()).unwrap();
        assert!(cb.relative_error(w.view()) < 1e-6);
    }
}
