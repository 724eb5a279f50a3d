//! W̃, the dense kernel a codebook stands for, checked against values known in advance and
//! against the tests' own plain-loop reconstruction (`common::independent_reconstruction`),
//! which the exactness tests' dense references use instead of the library's.

mod common;

use onnx_dlq::codebook::{self, ClusterParams, Codebook, Method, Points, SparseCodes};
use onnx_dlq::codebook::{Sizes, SubspaceCodebook};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// A DL codebook small enough to reconstruct by hand: M = 2, N = 2, a 1×2 kernel, one subspace
/// of both channels, atoms e₀ and e₁, representatives 2e₀ + 3e₁ and −e₀ + ½e₁.
fn hand_made(channel_scale: Option<Vec<f32>>) -> Codebook {
    Codebook {
        method: Method::Dl,
        kernel_shape: [2, 2, 1, 2],
        sizes: Sizes {
            k_vq: 2,
            k: 2,
            l: 2,
            subspaces: 1,
        },
        shared: false,
        subspaces: vec![SubspaceCodebook {
            channels: 0..2,
            atoms: Points {
                data: vec![1.0, 0.0, 0.0, 1.0],
                dim: 2,
            },
            codes: Some(SparseCodes {
                alpha: 2,
                atoms: vec![0, 1, 0, 1],
                coefs: vec![2.0, 3.0, -1.0, 0.5],
            }),
            // Columns (k, u, v) in the order (0,0,0), (0,0,1), (1,0,0), (1,0,1).
            assignment: vec![0, 1, 1, 0],
        }],
        channel_scale,
        f16_palette: false,
        bias_shift: None,
    }
}

#[test]
fn a_hand_made_dl_codebook_reconstructs_to_its_known_kernel() {
    // W̃[k, c, 0, v], in [M, N, kh, kw] order.
    let want = vec![2.0, -1.0, 3.0, 0.5, -1.0, 2.0, 0.5, 3.0];
    let cb = hand_made(None);
    assert_eq!(cb.reconstruct().iter().copied().collect::<Vec<_>>(), want);
    assert_eq!(common::independent_reconstruction(&cb), want);
    let scaled = hand_made(Some(vec![1.0, -2.0]));
    let want_scaled: Vec<f32> = want
        .iter()
        .enumerate()
        .map(|(i, w)| if i < 4 { *w } else { -2.0 * w })
        .collect();
    assert_eq!(
        scaled.reconstruct().iter().copied().collect::<Vec<_>>(),
        want_scaled
    );
    assert_eq!(common::independent_reconstruction(&scaled), want_scaled);
}

/// Learned codebooks (DL, VQ, palettes with and without channel scales, several subspace
/// widths and kernel shapes) reconstruct to the same W̃ both ways.
#[test]
fn learned_codebooks_reconstruct_as_the_plain_loops_do() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let mut checked = 0;
    for (m, n, kh, kw) in [(8, 6, 3, 3), (5, 4, 1, 2), (6, 8, 2, 3)] {
        let weight: Vec<f32> = (0..m * n * kh * kw)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let kernel = ndarray::Array4::from_shape_vec((m, n, kh, kw), weight).unwrap();
        let columns = m * kh * kw;
        for (method, shared, channel_scale, subspace) in [
            (Method::Dl, false, false, 2),
            (Method::Vq, false, false, 3),
            (Method::Vq, true, false, 2),
            (Method::Vq, true, true, 1),
        ] {
            if n % subspace != 0 {
                continue;
            }
            let mut p = ClusterParams::new(method, 2.0);
            p.subspace = subspace;
            p.shared = shared;
            p.channel_scale = channel_scale;
            p.iters = 3;
            p.k = Some((columns / 2).max(2));
            p.l = Some((columns / 4).max(2));
            let cb = codebook::learn(kernel.view(), &p.check().unwrap()).unwrap();
            let library: Vec<f32> = cb.reconstruct().iter().copied().collect();
            assert_eq!(
                library,
                common::independent_reconstruction(&cb),
                "{method:?} shared {shared} scale {channel_scale} N′ {subspace} [{m},{n},{kh},{kw}]"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} codebooks");
}
