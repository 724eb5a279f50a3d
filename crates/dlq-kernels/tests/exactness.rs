//! Exactness of `DlqConv::run` against `dense_conv` with the `reconstruct`ed kernel, over a grid
//! and random cases of geometry × codebook, plus refusal of every kind of bad input (an error,
//! never a panic). Self-contained: a tiny seeded xorshift RNG, no dev-dependencies.

use dlq_kernels::{dense_conv, Codes, DlqConv, Geometry, KernelError, KernelPath, Subspace};

/// Allowed |run − reference|, relative to the largest |reference output|. The two paths are the
/// same sum in different orders (run: atoms → representatives → taps per subspace, in f32;
/// reference: channel-major over the dense W̃, in f64), and W̃ itself is rounded to f32 by
/// `reconstruct`, so they agree to a few f32 ulps of the output's magnitude, not bit for bit.
const EXACT_TOL: f32 = 1e-5;
/// Absolute floor so outputs that are all (near) zero do not demand a zero error.
const ABS_FLOOR: f32 = 1e-6;

/// xorshift64* — deterministic, good enough to draw test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n ≥ 1; the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in [−1, 1).
    fn value(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.value()).collect()
    }

    fn indices(&mut self, n: usize, limit: usize) -> Vec<u32> {
        (0..n).map(|_| self.below(limit) as u32).collect()
    }
}

/// One exactness case: the layer's geometry and codebook shape, and the input to run.
#[derive(Debug, Clone)]
struct Case {
    geometry: Geometry,
    h: usize,
    w: usize,
    batch: usize,
    /// N′, channels per subspace (the last may be smaller).
    width: usize,
    /// `None` = VQ, else DL with this α.
    alpha: Option<usize>,
    atoms: usize,
    /// K for DL (VQ has K = L).
    reps: usize,
    bias: bool,
}

/// Largest errors seen by a group of cases (absolute, and relative to max |output|).
#[derive(Debug, Default)]
struct Worst {
    cases: usize,
    abs: f32,
    rel: f32,
}

impl Worst {
    fn report(&self, name: &str) {
        eprintln!(
            "{name}: {} cases, largest error {:.3e} abs, {:.3e} relative to max |output| \
             (tolerance {EXACT_TOL:e} relative + {ABS_FLOOR:e})",
            self.cases, self.abs, self.rel
        );
    }
}

fn random_subspace(rng: &mut Rng, channels: std::ops::Range<usize>, case: &Case) -> Subspace {
    let g = &case.geometry;
    let columns = g.out_channels * g.kernel[0] * g.kernel[1];
    let l = case.atoms;
    let codes = case.alpha.map(|alpha| Codes {
        alpha,
        atoms: rng.indices(case.reps * alpha, l),
        coefficients: rng.values(case.reps * alpha),
    });
    let k = if codes.is_some() { case.reps } else { l };
    Subspace {
        atoms: rng.values(l * channels.len()),
        channels,
        num_atoms: l,
        codes,
        assignment: rng.indices(columns, k),
    }
}

fn build(case: &Case, rng: &mut Rng) -> DlqConv {
    let n = case.geometry.in_channels;
    let subspaces = (0..n)
        .step_by(case.width)
        .map(|start| random_subspace(rng, start..(start + case.width).min(n), case))
        .collect();
    let bias = case.bias.then(|| rng.values(case.geometry.out_channels));
    DlqConv::new(case.geometry.clone(), subspaces, bias).expect("a valid random case")
}

/// `conv` as a dense Conv with its reconstructed kernel W̃ on `x` (NaN-filled first, so an
/// element it forgot to write fails any comparison).
fn dense_reference(conv: &DlqConv, case: &Case, x: &[f32]) -> Vec<f32> {
    let g = conv.geometry();
    let [oh, ow] = g.output_size(case.h, case.w).expect("case fits");
    let mut reference = vec![f32::NAN; case.batch * g.out_channels * oh * ow];
    let (n, bias, weight) = (g.in_channels, conv.bias(), conv.reconstruct());
    let size = dense_conv(
        x,
        case.batch,
        n,
        case.h,
        case.w,
        &weight,
        g,
        bias,
        &mut reference,
    );
    assert_eq!(size, Ok([oh, ow]));
    reference
}

/// Runs the fast path and the reference on random data; asserts they agree within tolerance.
fn check_case(case: &Case, rng: &mut Rng, worst: &mut Worst) {
    let conv = build(case, rng);
    let g = &case.geometry;
    let (n, m, batch) = (g.in_channels, g.out_channels, case.batch);
    let x = rng.values(batch * n * case.h * case.w);
    let [oh, ow] = g.output_size(case.h, case.w).expect("case fits");
    // NaN-filled, so an output element either path forgets to write fails the comparison.
    let mut fast = vec![f32::NAN; batch * m * oh * ow];
    assert_eq!(conv.run(&x, batch, case.h, case.w, &mut fast), Ok([oh, ow]));
    let reference = dense_reference(&conv, case, &x);
    let scale = reference.iter().fold(0f32, |acc, v| acc.max(v.abs()));
    for (i, (a, b)) in fast.iter().zip(&reference).enumerate() {
        let err = (a - b).abs();
        assert!(
            err <= EXACT_TOL * scale + ABS_FLOOR,
            "{case:?}: element {i}: run {a} vs dense {b} (error {err}, max |output| {scale})"
        );
        worst.abs = worst.abs.max(err);
        worst.rel = worst.rel.max(err / scale.max(f32::MIN_POSITIVE));
    }
    worst.cases += 1;
}

/// Smallest input, starting at the odd 7 × 9, that the (dilated, padded) kernel fits.
fn fitting_size(g: &Geometry) -> (usize, usize) {
    let (mut h, mut w) = (7, 9);
    while g.output_size(h, w).is_none() {
        (h, w) = (h + 2, w + 2);
    }
    (h, w)
}

/// Every combination of kernel, strides, dilations, pads and N′ (dividing N = 6 or not), for one
/// codebook mode; batch (1 / 3) and bias (on / off) alternate between cases.
fn grid(alpha: Option<usize>, rng: &mut Rng, worst: &mut Worst) {
    let kernels = [[1, 1], [3, 3], [5, 3]];
    let strides = [[1, 1], [2, 2], [3, 3], [2, 1]];
    let dilations = [[1, 1], [2, 2], [1, 2]];
    let pads = [[0; 4], [1, 1, 1, 1], [0, 1, 2, 1], [2, 0, 1, 3]];
    let mut index = 0;
    for kernel in kernels {
        for strides in strides {
            for dilations in dilations {
                for pads in pads {
                    for width in [3, 4] {
                        let geometry = Geometry {
                            in_channels: 6,
                            out_channels: 5,
                            kernel,
                            strides,
                            dilations,
                            pads,
                        };
                        let (h, w) = fitting_size(&geometry);
                        let case = Case {
                            geometry,
                            h,
                            w,
                            batch: if index % 2 == 0 { 1 } else { 3 },
                            width,
                            alpha,
                            atoms: 4,
                            reps: 7,
                            bias: index % 3 != 0,
                        };
                        check_case(&case, rng, worst);
                        index += 1;
                    }
                }
            }
        }
    }
}

#[test]
fn vq_matches_dense_on_grid() {
    let (mut rng, mut worst) = (Rng::new(1), Worst::default());
    grid(None, &mut rng, &mut worst);
    worst.report("vq_matches_dense_on_grid");
}

#[test]
fn dl_matches_dense_on_grid() {
    let (mut rng, mut worst) = (Rng::new(2), Worst::default());
    for alpha in 1..=3 {
        grid(Some(alpha), &mut rng, &mut worst);
    }
    worst.report("dl_matches_dense_on_grid");
}

/// A random geometry and codebook; every size independently drawn, N′ anywhere in 1..=N.
fn random_case(rng: &mut Rng) -> Case {
    let geometry = Geometry {
        in_channels: rng.range(1, 12),
        out_channels: rng.range(1, 9),
        kernel: [rng.range(1, 5), rng.range(1, 5)],
        strides: [rng.range(1, 3), rng.range(1, 3)],
        dilations: [rng.range(1, 2), rng.range(1, 2)],
        pads: [0; 4].map(|_| rng.range(0, 2)),
    };
    let (mut h, mut w) = (rng.range(1, 11), rng.range(1, 11));
    while geometry.output_size(h, w).is_none() {
        (h, w) = (h + 1, w + 1);
    }
    let alpha = [None, Some(1), Some(2), Some(3)][rng.below(4)];
    Case {
        width: rng.range(1, geometry.in_channels),
        geometry,
        h,
        w,
        batch: rng.range(1, 3),
        alpha,
        atoms: rng.range(1, 6),
        reps: rng.range(1, 10),
        bias: rng.below(2) == 1,
    }
}

#[test]
fn random_cases_match_dense() {
    let (mut rng, mut worst) = (Rng::new(3), Worst::default());
    for _ in 0..400 {
        let case = random_case(&mut rng);
        check_case(&case, &mut rng, &mut worst);
    }
    worst.report("random_cases_match_dense");
}

fn geometry_1x2() -> Geometry {
    Geometry {
        in_channels: 2,
        out_channels: 1,
        kernel: [1, 2],
        strides: [1, 1],
        dilations: [1, 1],
        pads: [0, 0, 0, 1],
    }
}

/// A case small enough to check by hand: 2 channels, one 1 × 2 tap pair, right pad 1.
#[test]
fn hand_computed_example() {
    // Atoms (1, 2) and (−1, 0.5); tap v = 0 uses atom 1, tap v = 1 uses atom 0.
    let sub = Subspace {
        channels: 0..2,
        atoms: vec![1.0, 2.0, -1.0, 0.5],
        num_atoms: 2,
        codes: None,
        assignment: vec![1, 0],
    };
    let conv = DlqConv::new(geometry_1x2(), vec![sub], Some(vec![10.0])).unwrap();
    assert_eq!(conv.reconstruct(), vec![-1.0, 1.0, 0.5, 2.0]);
    // x: channel 0 = [1, 2], channel 1 = [4, 8] (a 1 × 2 image).
    let x = [1.0, 2.0, 4.0, 8.0];
    let mut out = [0.0; 2];
    assert_eq!(conv.run(&x, 1, 1, 2, &mut out), Ok([1, 2]));
    // ox = 0: 10 + (−1·1 + 0.5·4) + (1·2 + 2·8) = 29; ox = 1: 10 + (−1·2 + 0.5·8) + 0 = 12.
    assert_eq!(out, [29.0, 12.0]);
}

/// Reconstruct must put representative Γ[k][u][v] exactly (bitwise) at W̃[k, s, u, v].
#[test]
fn reconstruct_places_vq_atoms_exactly() {
    let mut rng = Rng::new(4);
    let case = random_case(&mut rng);
    let case = Case {
        alpha: None,
        ..case
    };
    let conv = build(&case, &mut rng);
    let g = conv.geometry();
    let (n, taps) = (g.in_channels, g.kernel[0] * g.kernel[1]);
    let weight = conv.reconstruct();
    for sub in conv.subspaces() {
        let width = sub.channels.len();
        for (column, &rep) in sub.assignment.iter().enumerate() {
            let (k, tap) = (column / taps, column % taps);
            for (j, c) in sub.channels.clone().enumerate() {
                let expected = sub.atoms[rep as usize * width + j];
                assert_eq!(
                    weight[(k * n + c) * taps + tap].to_bits(),
                    expected.to_bits()
                );
            }
        }
    }
}

/// DL with α = 1, coefficient 1 and representative i = atom i is VQ: outputs must match bitwise
/// (1 · z is exact), which pins the DL path to the VQ path independently of the reference.
#[test]
fn unit_dl_equals_vq_bitwise() {
    let mut rng = Rng::new(5);
    for _ in 0..50 {
        let case = Case {
            alpha: None,
            ..random_case(&mut rng)
        };
        let vq = build(&case, &mut rng);
        let as_dl = vq.subspaces().iter().cloned().map(|mut sub| {
            let l = sub.num_atoms;
            sub.codes = Some(Codes {
                alpha: 1,
                atoms: (0..l as u32).collect(),
                coefficients: vec![1.0; l],
            });
            sub
        });
        let bias = vq.bias().map(<[f32]>::to_vec);
        let dl = DlqConv::new(vq.geometry().clone(), as_dl.collect(), bias).unwrap();
        let (g, h, w, batch) = (vq.geometry(), case.h, case.w, case.batch);
        let x = rng.values(batch * g.in_channels * h * w);
        let [oh, ow] = g.output_size(h, w).unwrap();
        let mut a = vec![0.0; batch * g.out_channels * oh * ow];
        let mut b = a.clone();
        vq.run(&x, batch, h, w, &mut a).unwrap();
        dl.run(&x, batch, h, w, &mut b).unwrap();
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals: every kind of bad input is an error naming the problem, never a panic.

/// A valid layer to break: N = 5 as a DL subspace 0..3 (L = 4, α = 2, K = 3) and a VQ subspace
/// 3..5 (L = 3); M = 2, 3 × 3 kernel, so assignments have 18 entries.
fn parts() -> (Geometry, Vec<Subspace>, Option<Vec<f32>>) {
    let mut rng = Rng::new(6);
    let geometry = Geometry {
        in_channels: 5,
        out_channels: 2,
        kernel: [3, 3],
        strides: [1, 1],
        dilations: [1, 1],
        pads: [1, 1, 1, 1],
    };
    let dl = Subspace {
        channels: 0..3,
        atoms: rng.values(12),
        num_atoms: 4,
        codes: Some(Codes {
            alpha: 2,
            atoms: rng.indices(6, 4),
            coefficients: rng.values(6),
        }),
        assignment: rng.indices(18, 3),
    };
    let vq = Subspace {
        channels: 3..5,
        atoms: rng.values(6),
        num_atoms: 3,
        codes: None,
        assignment: rng.indices(18, 3),
    };
    (geometry, vec![dl, vq], Some(rng.values(2)))
}

/// `DlqConv::new` on `parts()` after `edit`; the error must be displayable and non-empty.
fn refused(
    edit: impl FnOnce(&mut Geometry, &mut Vec<Subspace>, &mut Option<Vec<f32>>),
) -> KernelError {
    let (mut g, mut subs, mut bias) = parts();
    edit(&mut g, &mut subs, &mut bias);
    let err = DlqConv::new(g, subs, bias).expect_err("bad input must be refused");
    assert!(!err.to_string().is_empty());
    err
}

fn codes(sub: &mut Subspace) -> &mut Codes {
    sub.codes.as_mut().expect("subspace 0 is DL")
}

#[test]
fn parts_are_valid() {
    let (g, subs, bias) = parts();
    assert!(DlqConv::new(g, subs, bias).is_ok());
}

#[test]
fn refuses_zero_geometry_fields() {
    let zero_stride = refused(|g, _, _| g.strides[1] = 0);
    assert_eq!(
        zero_stride,
        KernelError::ZeroGeometry {
            field: "strides[1]"
        }
    );
    assert!(zero_stride.to_string().contains("strides[1]"));
    let zero_dilation = refused(|g, _, _| g.dilations[0] = 0);
    assert_eq!(
        zero_dilation,
        KernelError::ZeroGeometry {
            field: "dilations[0]"
        }
    );
    let zero_kernel = refused(|g, _, _| g.kernel[0] = 0);
    assert_eq!(
        zero_kernel,
        KernelError::ZeroGeometry { field: "kernel[0]" }
    );
    let zero_outputs = refused(|g, _, _| g.out_channels = 0);
    assert_eq!(
        zero_outputs,
        KernelError::ZeroGeometry {
            field: "out_channels"
        }
    );
}

#[test]
fn refuses_subspaces_not_covering_n() {
    assert_eq!(refused(|_, s, _| s.clear()), KernelError::NoSubspaces);
    let short = refused(|g, _, _| g.in_channels = 6);
    assert_eq!(
        short,
        KernelError::SubspacesDoNotCover {
            end: 5,
            in_channels: 6
        }
    );
    assert!(short.to_string().contains("0..5") && short.to_string().contains('6'));
    let beyond = refused(|g, _, _| g.in_channels = 4);
    assert_eq!(
        beyond,
        KernelError::SubspacesDoNotCover {
            end: 5,
            in_channels: 4
        }
    );
    let gap = refused(|_, s, _| s[1].channels = 4..5);
    let expected = KernelError::SubspaceNotContiguous {
        subspace: 1,
        expected_start: 3,
        start: 4,
    };
    assert_eq!(gap, expected);
    let overlap = refused(|_, s, _| s[1].channels = 2..5);
    assert!(matches!(
        overlap,
        KernelError::SubspaceNotContiguous { start: 2, .. }
    ));
    let out_of_order = refused(|_, s, _| s.swap(0, 1));
    assert!(matches!(
        out_of_order,
        KernelError::SubspaceNotContiguous { subspace: 0, .. }
    ));
    let empty = refused(|_, s, _| {
        s.insert(
            1,
            Subspace {
                channels: 3..3,
                ..s[1].clone()
            },
        )
    });
    assert_eq!(empty, KernelError::EmptySubspace { subspace: 1 });
}

#[test]
fn refuses_wrong_lengths() {
    let atoms = refused(|_, s, _| {
        s[1].atoms.pop();
    });
    let expected = KernelError::Length {
        subspace: Some(1),
        what: "atoms",
        expected: 6,
        found: 5,
    };
    assert_eq!(atoms, expected);
    assert!(atoms.to_string().contains("subspace 1") && atoms.to_string().contains('6'));
    let assignment = refused(|_, s, _| s[0].assignment.push(0));
    let expected = KernelError::Length {
        subspace: Some(0),
        what: "assignment",
        expected: 18,
        found: 19,
    };
    assert_eq!(assignment, expected);
    let coefficients = refused(|_, s, _| codes(&mut s[0]).coefficients.push(1.0));
    assert!(matches!(
        coefficients,
        KernelError::Length {
            what: "coefficients",
            ..
        }
    ));
    let bias = refused(|_, _, b| *b = Some(vec![0.0; 3]));
    assert_eq!(
        bias,
        KernelError::Length {
            subspace: None,
            what: "bias",
            expected: 2,
            found: 3
        }
    );
    let num_atoms = refused(|_, s, _| s[1].num_atoms = 2);
    assert!(matches!(
        num_atoms,
        KernelError::Length {
            what: "atoms",
            expected: 4,
            ..
        }
    ));
}

#[test]
fn refuses_bad_codes() {
    assert_eq!(
        refused(|_, s, _| s[1].num_atoms = 0),
        KernelError::NoAtoms { subspace: 1 }
    );
    let zero_alpha = refused(|_, s, _| codes(&mut s[0]).alpha = 0);
    assert_eq!(zero_alpha, KernelError::ZeroAlpha { subspace: 0 });
    let not_multiple = refused(|_, s, _| codes(&mut s[0]).alpha = 4);
    assert_eq!(
        not_multiple,
        KernelError::CodeCount {
            subspace: 0,
            alpha: 4,
            len: 6
        }
    );
    let none = refused(|_, s, _| {
        let c = codes(&mut s[0]);
        (c.atoms, c.coefficients) = (vec![], vec![]);
    });
    assert_eq!(
        none,
        KernelError::CodeCount {
            subspace: 0,
            alpha: 2,
            len: 0
        }
    );
}

#[test]
fn refuses_out_of_range_indices() {
    let atom = refused(|_, s, _| codes(&mut s[0]).atoms[5] = 4);
    let expected = KernelError::IndexOutOfRange {
        subspace: 0,
        what: "code atoms",
        position: 5,
        value: 4,
        limit: 4,
    };
    assert_eq!(atom, expected);
    assert!(atom.to_string().contains("code atoms[5] = 4"));
    // DL: K = 3 representatives although L = 4 atoms.
    let dl = refused(|_, s, _| s[0].assignment[17] = 3);
    assert!(matches!(
        dl,
        KernelError::IndexOutOfRange {
            what: "assignment",
            limit: 3,
            ..
        }
    ));
    let vq = refused(|_, s, _| s[1].assignment[0] = u32::MAX);
    let expected = KernelError::IndexOutOfRange {
        subspace: 1,
        what: "assignment",
        position: 0,
        value: u32::MAX,
        limit: 3,
    };
    assert_eq!(vq, expected);
}

#[test]
fn refuses_non_finite_values() {
    let atom = refused(|_, s, _| s[1].atoms[2] = f32::NAN);
    let expected = KernelError::NonFinite {
        subspace: Some(1),
        what: "atoms",
        position: 2,
    };
    assert_eq!(atom, expected);
    let coefficient = refused(|_, s, _| codes(&mut s[0]).coefficients[1] = f32::INFINITY);
    assert!(matches!(
        coefficient,
        KernelError::NonFinite {
            what: "coefficients",
            ..
        }
    ));
    let bias = refused(|_, _, b| b.as_mut().unwrap()[1] = f32::NEG_INFINITY);
    assert_eq!(
        bias,
        KernelError::NonFinite {
            subspace: None,
            what: "bias",
            position: 1
        }
    );
}

#[test]
fn run_refuses_bad_buffers_and_sizes() {
    let (g, subs, bias) = parts();
    let conv = DlqConv::new(g, subs, bias).unwrap();
    // 2 images of 5 × 4 × 6 in, 2 × 2 × 4 × 6 out (pads 1 keep the size).
    let x = vec![0.5; 2 * 5 * 4 * 6];
    let mut out = vec![0.0; 2 * 2 * 4 * 6];
    assert_eq!(conv.run(&x, 2, 4, 6, &mut out), Ok([4, 6]));
    let short_x = conv.run(&x[1..], 2, 4, 6, &mut out);
    let expected = KernelError::Length {
        subspace: None,
        what: "input",
        expected: 240,
        found: 239,
    };
    assert_eq!(short_x, Err(expected));
    let long_out = conv.run(&x, 2, 4, 6, &mut vec![0.0; 97]);
    assert!(matches!(
        long_out,
        Err(KernelError::Length {
            what: "output",
            expected: 96,
            ..
        })
    ));
    assert_eq!(
        conv.run(&x, 2, 0, 6, &mut out),
        Err(KernelError::NoOutput { h: 0, w: 6 })
    );
    let mut unpadded = parts();
    unpadded.0.pads = [0; 4];
    let unpadded = DlqConv::new(unpadded.0, unpadded.1, unpadded.2).unwrap();
    assert_eq!(
        unpadded.run(&x, 2, 2, 60, &mut out),
        Err(KernelError::NoOutput { h: 2, w: 60 })
    );
    let huge = conv.run(&x, 2, usize::MAX / 4, 6, &mut out);
    assert!(
        matches!(huge, Err(KernelError::TooLarge { .. })),
        "{huge:?}"
    );
    // An empty batch is valid and touches nothing.
    assert_eq!(conv.run(&[], 0, 4, 6, &mut []), Ok([4, 6]));
}

#[test]
fn dense_conv_refuses_bad_buffers() {
    let g = geometry_1x2();
    let (x, weight, mut out) = ([1.0; 4], [1.0; 4], [0.0; 2]);
    assert_eq!(
        dense_conv(&x, 1, 2, 1, 2, &weight, &g, None, &mut out),
        Ok([1, 2])
    );
    let channels = dense_conv(&x, 1, 1, 2, 2, &weight, &g, None, &mut out);
    assert_eq!(
        channels,
        Err(KernelError::ChannelMismatch {
            expected: 2,
            found: 1
        })
    );
    let weight_len = dense_conv(&x, 1, 2, 1, 2, &weight[..3], &g, None, &mut out);
    assert!(matches!(
        weight_len,
        Err(KernelError::Length { what: "weight", .. })
    ));
    let bias_len = dense_conv(&x, 1, 2, 1, 2, &weight, &g, Some(&[1.0, 2.0]), &mut out);
    assert!(matches!(
        bias_len,
        Err(KernelError::Length { what: "bias", .. })
    ));
    let stride = Geometry {
        strides: [0, 1],
        ..g
    };
    let zero = dense_conv(&x, 1, 2, 1, 2, &weight, &stride, None, &mut out);
    assert_eq!(
        zero,
        Err(KernelError::ZeroGeometry {
            field: "strides[0]"
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Dispatch: every kernel path this CPU runs, forced, against the dense reference.

/// Largest |a − b| over two outputs, and whether it is within the tolerance of `scale`.
fn within_tolerance(a: &[f32], b: &[f32], scale: f32) -> (f32, bool) {
    let err = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    (err, err <= EXACT_TOL * scale + ABS_FLOOR)
}

/// Every kernel path this CPU can run (portable, AVX2 + FMA, AVX-512F; `run` picks the best)
/// matches the dense reference within EXACT_TOL, and `run` equals its own path bit for bit, on
/// the random grid plus larger stride-1 layers whose padded-width runs cover the SIMD loops'
/// 64-float blocks and their 16-float remainders. A path the CPU lacks is refused with an error
/// and named on a SKIPPED line; scripts/test.sh prints this test's lines in its summary.
#[test]
fn every_kernel_path_matches_dense() {
    let mut rng = Rng::new(6);
    let mut cases: Vec<Case> = (0..400).map(|_| random_case(&mut rng)).collect();
    for (m, n, hw, k, pad, width, alpha) in [
        (24, 16, 13, 3, 1, 8, Some(2)),
        (16, 16, 8, 3, 1, 8, None),
        (8, 12, 21, 5, 2, 5, Some(3)),
        (7, 9, 17, 1, 0, 4, Some(1)),
    ] {
        cases.push(Case {
            geometry: Geometry {
                in_channels: n,
                out_channels: m,
                kernel: [k, k],
                strides: [1, 1],
                dilations: [1, 1],
                pads: [pad; 4],
            },
            h: hw,
            w: hw + 1,
            batch: 2,
            width,
            alpha,
            atoms: 11,
            reps: 37,
            bias: true,
        });
    }
    let convs: Vec<DlqConv> = cases.iter().map(|c| build(c, &mut rng)).collect();
    let inputs: Vec<Vec<f32>> = cases
        .iter()
        .zip(&convs)
        .map(|(c, conv)| rng.values(c.batch * conv.geometry().in_channels * c.h * c.w))
        .collect();
    for path in KernelPath::all() {
        if !path.supported() {
            let refused = convs[0].run_on(path, &inputs[0], 1, 1, 1, &mut []);
            assert!(refused.is_err(), "{} ran on a CPU without it", path.name());
            eprintln!("SKIPPED kernel path {}: this CPU lacks it", path.name());
            continue;
        }
        let mut worst = 0f32;
        for ((case, conv), x) in cases.iter().zip(&convs).zip(&inputs) {
            worst = worst.max(path_matches_dense(path, case, conv, x));
        }
        eprintln!(
            "kernel path {}: {} cases match the dense reference, largest error {worst:.3e} \
             relative to max |output|{}",
            path.name(),
            cases.len(),
            if path == KernelPath::best() {
                " (the one `run` uses)"
            } else {
                ""
            }
        );
    }
}

/// Runs `conv` on `path` (and, for the best path, through `run`, bit for bit the same) and
/// checks it against the dense reference; returns the error relative to the largest output.
fn path_matches_dense(path: KernelPath, case: &Case, conv: &DlqConv, x: &[f32]) -> f32 {
    let g = conv.geometry();
    let [oh, ow] = g.output_size(case.h, case.w).expect("case fits");
    let mut got = vec![f32::NAN; case.batch * g.out_channels * oh * ow];
    let size = conv.run_on(path, x, case.batch, case.h, case.w, &mut got);
    assert_eq!(size, Ok([oh, ow]), "{case:?} on {}", path.name());
    if path == KernelPath::best() {
        let mut dispatched = vec![f32::NAN; got.len()];
        assert_eq!(
            conv.run(x, case.batch, case.h, case.w, &mut dispatched),
            Ok([oh, ow])
        );
        assert_eq!(dispatched, got, "{case:?}: run differs from its own path");
    }
    let reference = dense_reference(conv, case, x);
    let scale = reference.iter().fold(0f32, |acc, v| acc.max(v.abs()));
    let (err, ok) = within_tolerance(&got, &reference, scale);
    assert!(
        ok,
        "{case:?}: {} vs dense: error {err}, max |output| {scale}",
        path.name()
    );
    err / scale.max(f32::MIN_POSITIVE)
}

// ---------------------------------------------------------------------------------------------
// Wide and tall stride-1 layers (the AVX-512 row layout: several vectors per row, several bands
// of rows, column shifts near and past 16 lanes) and the parallel entry point.

/// Stride-1 cases around the row layout's edges: padded widths of 1–4 vectors of 16 (and past
/// the 13-vector limit, which falls back), up to 40 output rows (several bands), dilated
/// kernels whose column shifts reach 15 lanes (and 18, which falls back).
fn wide_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (i, (h, w, kernel, dilations, pads)) in [
        (13, 13, [3, 3], [1, 1], [1, 1, 1, 1]),
        (8, 8, [3, 3], [1, 1], [1, 1, 1, 1]),
        (40, 17, [3, 3], [1, 1], [1, 1, 1, 1]),
        (20, 47, [5, 3], [2, 7], [0, 2, 3, 1]),
        (9, 60, [1, 4], [1, 5], [0, 0, 0, 0]),
        (6, 230, [3, 3], [1, 1], [1, 1, 1, 1]),
        (12, 30, [1, 7], [1, 3], [0, 3, 0, 3]),
        (15, 16, [2, 2], [3, 15], [1, 0, 2, 0]),
    ]
    .into_iter()
    .enumerate()
    {
        for alpha in [None, Some(1), Some(2), Some(3)] {
            cases.push(Case {
                geometry: Geometry {
                    in_channels: 10,
                    out_channels: 7 + 13 * (i % 3),
                    kernel,
                    strides: [1, 1],
                    dilations,
                    pads,
                },
                h,
                w,
                batch: 1 + i % 2,
                width: 4,
                alpha,
                atoms: 9,
                reps: 23,
                bias: i % 2 == 0,
            });
        }
    }
    cases
}

#[test]
fn wide_stride1_layers_match_dense() {
    let (mut rng, mut worst) = (Rng::new(7), Worst::default());
    for case in wide_cases() {
        check_case(&case, &mut rng, &mut worst);
    }
    worst.report("wide_stride1_layers_match_dense");
}

/// A `par` that runs the tasks on `workers` scoped threads, each taking the next index.
fn threads(workers: usize) -> impl Fn(usize, &(dyn Fn(usize) + Sync)) {
    move |n, f| {
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    f(i);
                });
            }
        });
    }
}

/// `run_parallel` gives `run`'s output bit for bit with 1, 2, 3 and 7 worker threads and with
/// the tasks run in reverse order, on random layers (every stride, dilation, padding, VQ and DL)
/// and on the wide stride-1 ones.
#[test]
fn run_parallel_is_bit_identical_to_run() {
    let mut rng = Rng::new(8);
    let mut cases: Vec<Case> = (0..150).map(|_| random_case(&mut rng)).collect();
    cases.extend(wide_cases());
    let reverse = |n: usize, f: &(dyn Fn(usize) + Sync)| (0..n).rev().for_each(f);
    for case in &cases {
        let conv = build(case, &mut rng);
        let g = conv.geometry();
        let x = rng.values(case.batch * g.in_channels * case.h * case.w);
        let [oh, ow] = g.output_size(case.h, case.w).expect("case fits");
        let mut single = vec![f32::NAN; case.batch * g.out_channels * oh * ow];
        assert_eq!(
            conv.run(&x, case.batch, case.h, case.w, &mut single),
            Ok([oh, ow])
        );
        assert!(single.iter().all(|v| v.is_finite()), "{case:?}");
        for workers in [1, 2, 3, 7] {
            let mut out = vec![f32::NAN; single.len()];
            let par = threads(workers);
            let size = conv.run_parallel(&x, case.batch, case.h, case.w, &mut out, &par);
            assert_eq!(size, Ok([oh, ow]));
            let same = out
                .iter()
                .zip(&single)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{case:?}: {workers} workers");
        }
        let mut out = vec![f32::NAN; single.len()];
        let size = conv.run_parallel(&x, case.batch, case.h, case.w, &mut out, &reverse);
        assert_eq!(size, Ok([oh, ow]));
        assert!(out
            .iter()
            .zip(&single)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

/// `run_parallel` refuses bad buffers like `run` (before calling `par`).
#[test]
fn run_parallel_refuses_bad_buffers() {
    let (g, subs, bias) = parts();
    let conv = DlqConv::new(g, subs, bias).unwrap();
    let never = |_: usize, _: &(dyn Fn(usize) + Sync)| panic!("par called on refused input");
    let mut out = vec![0.0; 2 * 2 * 4 * 6];
    let short = conv.run_parallel(&[0.0; 3], 2, 4, 6, &mut out, &never);
    assert!(
        matches!(short, Err(KernelError::Length { .. })),
        "{short:?}"
    );
    let none = conv.run_parallel(&[], 1, 0, 6, &mut [], &never);
    assert_eq!(none, Err(KernelError::NoOutput { h: 0, w: 6 }));
}

/// Layers whose Z (and R) regions exceed the kernel's per-chunk budget (2²⁰ floats), so the
/// subspaces run in several chunks: stride 1 (row layout on AVX-512) and stride 2 (R), checked
/// against the reference and, bit for bit, across thread counts.
#[test]
fn multi_chunk_layers() {
    let (mut rng, mut worst) = (Rng::new(9), Worst::default());
    for (strides, atoms, reps) in [([1, 1], 700, 5), ([2, 2], 150, 400)] {
        let case = Case {
            geometry: Geometry {
                in_channels: 6,
                out_channels: 5,
                kernel: [3, 3],
                strides,
                dilations: [1, 1],
                pads: [1, 1, 1, 1],
            },
            h: 40,
            w: 37,
            batch: 2,
            width: 2,
            alpha: Some(2),
            atoms,
            reps,
            bias: true,
        };
        check_case(&case, &mut rng, &mut worst);
        let conv = build(&case, &mut rng);
        let x = rng.values(2 * 6 * 40 * 37);
        let [oh, ow] = conv.geometry().output_size(40, 37).unwrap();
        let mut single = vec![f32::NAN; 2 * 5 * oh * ow];
        conv.run(&x, 2, 40, 37, &mut single).unwrap();
        let mut out = vec![f32::NAN; single.len()];
        conv.run_parallel(&x, 2, 40, 37, &mut out, &threads(3))
            .unwrap();
        assert!(out
            .iter()
            .zip(&single)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    worst.report("multi_chunk_layers");
}

// ---------------------------------------------------------------------------------------------
// Mutated inputs: the entry points refuse or compute, never panic (run in the checked profile
// too, where overflow checks and debug assertions are on: scripts/test.sh).

/// One random corruption of a valid layer: a field of the geometry, a subspace, its codes or
/// its assignment set to a boundary or out-of-range value, or a buffer's length changed.
fn mutate(rng: &mut Rng, g: &mut Geometry, subs: &mut [Subspace], bias: &mut Option<Vec<f32>>) {
    let big = [0usize, 1, 2, 7, 1 << 20, usize::MAX / 2, usize::MAX][rng.below(7)];
    let s = rng.below(subs.len());
    let sub = &mut subs[s];
    match rng.below(14) {
        0 => g.in_channels = big,
        1 => g.out_channels = big,
        2 => g.kernel[rng.below(2)] = big,
        3 => g.strides[rng.below(2)] = big,
        4 => g.dilations[rng.below(2)] = big,
        5 => g.pads[rng.below(4)] = big,
        6 => sub.num_atoms = big,
        7 => sub.channels = sub.channels.start..sub.channels.end.saturating_add(big % 5),
        8 => sub.atoms.truncate(sub.atoms.len().saturating_sub(1)),
        9 => {
            let i = rng.below(sub.assignment.len());
            sub.assignment[i] = [u32::MAX, big as u32, 1 << 31][rng.below(3)];
        }
        10 => sub.assignment.push(0),
        11 => match &mut sub.codes {
            Some(c) if !c.atoms.is_empty() => {
                let i = rng.below(c.atoms.len());
                c.atoms[i] = [u32::MAX, big as u32][rng.below(2)];
            }
            _ => sub.atoms[0] = f32::NAN,
        },
        12 => match &mut sub.codes {
            Some(c) => c.alpha = big,
            None => sub.atoms[0] = f32::INFINITY,
        },
        _ => *bias = Some(vec![0.0; big % 17]),
    }
}

#[test]
fn mutated_layers_are_refused_or_computed_never_a_panic() {
    let mut rng = Rng::new(99);
    let (mut refused, mut ran) = (0, 0);
    for i in 0..3000 {
        let case = random_case(&mut rng);
        let n = case.geometry.in_channels;
        let mut g = case.geometry.clone();
        let mut subs: Vec<Subspace> = (0..n)
            .step_by(case.width)
            .map(|start| random_subspace(&mut rng, start..(start + case.width).min(n), &case))
            .collect();
        let mut bias = case.bias.then(|| rng.values(g.out_channels));
        mutate(&mut rng, &mut g, &mut subs, &mut bias);
        let built =
            std::panic::catch_unwind(|| DlqConv::new(g.clone(), subs.clone(), bias.clone()));
        let conv = match built {
            Ok(Ok(conv)) => conv,
            Ok(Err(_)) => {
                refused += 1;
                continue;
            }
            Err(_) => panic!("case {i}: DlqConv::new panicked on {g:?}"),
        };
        let (h, w) = (case.h, case.w);
        let x = rng.values(case.batch * n * h * w);
        let Some([oh, ow]) = conv.geometry().output_size(h, w) else {
            refused += 1;
            continue;
        };
        let Some(len) = [case.batch, g.out_channels, oh, ow]
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
            .filter(|&l| l <= 1 << 22)
        else {
            refused += 1;
            continue;
        };
        let mut out = vec![0f32; len];
        match conv.run(&x, case.batch, h, w, &mut out) {
            Ok(_) => ran += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!("mutated layers: {refused} refused, {ran} computed");
    assert!(
        refused > 1000 && ran > 100,
        "{refused} refused, {ran} computed"
    );
}

/// Found by fuzzing the entry points with overflow checks on: a 1×k kernel's row dilation
/// never moves a tap, so a huge one is valid and must not overflow the row step; pads that make
/// the padded planes terabytes large are refused with an error instead of aborting on the
/// allocation.
#[test]
fn extreme_dilations_compute_and_extreme_pads_are_refused() {
    let mut rng = Rng::new(5);
    let g = Geometry {
        in_channels: 2,
        out_channels: 2,
        kernel: [1, 3],
        strides: [1, 1],
        dilations: [usize::MAX / 4, 1],
        pads: [0; 4],
    };
    let sub = |g: &Geometry, rng: &mut Rng| Subspace {
        channels: 0..2,
        atoms: rng.values(4),
        num_atoms: 2,
        codes: None,
        assignment: rng.indices(g.out_channels * g.kernel[0] * g.kernel[1], 2),
    };
    let conv = DlqConv::new(g.clone(), vec![sub(&g, &mut rng)], None).unwrap();
    let mut out = vec![0f32; 2 * 4 * 2];
    assert_eq!(
        conv.run(&rng.values(2 * 4 * 4), 1, 4, 4, &mut out),
        Ok([4, 2])
    );
    // Strides as large as the pads keep the output a few pixels wide while the padded plane
    // is (2²¹)² floats.
    let g = Geometry {
        dilations: [1, 1],
        strides: [1 << 20; 2],
        pads: [1 << 20; 4],
        ..g
    };
    let conv = DlqConv::new(g.clone(), vec![sub(&g, &mut rng)], None).unwrap();
    let [oh, ow] = g.output_size(1, 1).unwrap();
    assert!(oh * ow <= 9, "{oh}x{ow}");
    let mut out = vec![0f32; 2 * oh * ow];
    let refused = conv.run(&rng.values(2), 1, 1, 1, &mut out);
    assert!(
        matches!(refused, Err(KernelError::ScratchTooLarge { .. })),
        "{refused:?}"
    );
}
