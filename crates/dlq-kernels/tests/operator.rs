//! The operator's node form (`dlq_kernels::operator`): attributes are checked like ONNX Conv's,
//! SAME padding follows ONNX's rule, a node decodes to the kernel it describes (run = dense Conv
//! with the reconstructed kernel), and every malformed node is refused with a message naming the
//! attribute or input.

use dlq_kernels::operator::{Attributes, Constant, Inputs, Padding, RawAttributes};
use dlq_kernels::{dense_conv, KernelError};

/// Relative tolerance of the fast kernel against the f64 dense reference (as tests/exactness.rs).
const EXACT_TOL: f32 = 1e-5;

fn attrs(auto_pad: &str, strides: [i64; 2], dilations: [i64; 2]) -> Attributes {
    RawAttributes {
        strides: Some(strides.to_vec()),
        dilations: Some(dilations.to_vec()),
        auto_pad: Some(auto_pad.into()),
        subspace: Some(3),
        ..Default::default()
    }
    .check()
    .expect("valid attributes")
}

#[test]
fn same_padding_follows_onnx() {
    let upper = attrs("SAME_UPPER", [2, 2], [1, 1]);
    let lower = attrs("SAME_LOWER", [2, 2], [1, 1]);
    // h = 5, s = 2, k = 3: out 3, needs (3 − 1)·2 + 3 = 7, total 2 → 1 and 1.
    // w = 6: out 3, needs 7, total 1 → the odd pixel after (UPPER) or before (LOWER).
    assert_eq!(upper.pads_for(5, 6, [3, 3]), Some([1, 0, 1, 1]));
    assert_eq!(lower.pads_for(5, 6, [3, 3]), Some([1, 1, 1, 0]));
    // Dilation 2 makes a 3-tap kernel span 5: h = 4, s = 1 → total 4.
    let dilated = attrs("SAME_UPPER", [1, 1], [2, 2]);
    assert_eq!(dilated.pads_for(4, 4, [3, 3]), Some([2, 2, 2, 2]));
    // A stride larger than the kernel needs no padding.
    assert_eq!(upper.pads_for(8, 8, [1, 1]), Some([0, 0, 0, 0]));
    let valid = attrs("VALID", [1, 1], [1, 1]);
    assert_eq!(valid.padding, Padding::Explicit([0; 4]));
}

/// A tiny seeded generator (xorshift), so the test needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> u32 {
        (self.next() % n as u64) as u32
    }
    fn value(&mut self) -> f32 {
        (self.next() % 2001) as f32 / 1000.0 - 1.0
    }
}

/// A DL node for 7 input channels in subspaces of 3 (the last has 1), M = 5, 3×2 kernel.
fn node(rng: &mut Rng, dl: bool) -> Inputs {
    let (s, l, k, alpha, width, m, kh, kw) = (3, 4, 6, 2, 3, 5, 3, 2);
    let mut atoms = Vec::new();
    for channels in [3, 3, 1] {
        for _ in 0..l {
            for c in 0..width {
                atoms.push(if c < channels { rng.value() } else { 0.0 });
            }
        }
    }
    let reps = if dl { k } else { l };
    let assignment = (0..s * m * kh * kw).map(|_| rng.below(reps)).collect();
    let codes = (0..s * k * alpha).map(|_| rng.below(l)).collect();
    let coefficients = (0..s * k * alpha).map(|_| rng.value()).collect();
    Inputs {
        atoms: Constant {
            shape: vec![s, l, width],
            values: atoms,
        },
        atom_indices: dl.then(|| Constant {
            shape: vec![s, k, alpha],
            values: codes,
        }),
        coefficients: dl.then(|| Constant {
            shape: vec![s, k, alpha],
            values: coefficients,
        }),
        assignment: Constant {
            shape: vec![s, m, kh, kw],
            values: assignment,
        },
        bias: Some(Constant {
            shape: vec![m],
            values: (0..m).map(|_| rng.value()).collect(),
        }),
    }
}

#[test]
fn decoded_node_equals_dense_conv_with_auto_pad() {
    let mut rng = Rng(0x5eed_1234_abcd);
    let (batch, n) = (2, 7);
    for dl in [true, false] {
        for (mode, strides, dilations, h, w) in [
            ("SAME_UPPER", [2, 1], [1, 1], 7, 6),
            ("SAME_LOWER", [2, 3], [1, 2], 6, 9),
            ("VALID", [1, 2], [2, 1], 9, 5),
            ("NOTSET", [1, 1], [1, 1], 5, 5),
        ] {
            let inputs = node(&mut rng, dl);
            let a = attrs(mode, strides, dilations);
            let pads = a.pads_for(h, w, inputs.kernel().unwrap()).unwrap();
            let conv = inputs.build(&a, pads, n).expect("a valid node");
            let x: Vec<f32> = (0..batch * n * h * w).map(|_| rng.value()).collect();
            let g = conv.geometry().clone();
            let [oh, ow] = g.output_size(h, w).unwrap();
            if mode.starts_with("SAME") {
                assert_eq!(
                    [oh, ow],
                    [
                        h.div_ceil(strides[0] as usize),
                        w.div_ceil(strides[1] as usize)
                    ]
                );
            }
            let mut fast = vec![0.0f32; batch * 5 * oh * ow];
            conv.run(&x, batch, h, w, &mut fast).unwrap();
            let mut dense = vec![0.0f32; fast.len()];
            let weight = conv.reconstruct();
            dense_conv(&x, batch, n, h, w, &weight, &g, conv.bias(), &mut dense).unwrap();
            let scale = dense.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let err = fast
                .iter()
                .zip(&dense)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err <= EXACT_TOL * scale,
                "{mode} dl={dl}: error {err} of {scale}"
            );
        }
    }
}

fn refused(raw: RawAttributes, inputs: &Inputs, wanted: &str) {
    let result = raw
        .check()
        .and_then(|a| inputs.build(&a, a.pads_for(5, 5, [3, 2]).unwrap_or([0; 4]), 7));
    match result {
        Err(KernelError::Node { message }) => {
            assert!(message.contains(wanted), "`{message}` lacks `{wanted}`")
        }
        Err(other) => assert!(
            other.to_string().contains(wanted),
            "{other} lacks `{wanted}`"
        ),
        Ok(_) => panic!("accepted, wanted an error with `{wanted}`"),
    }
}

#[test]
fn malformed_nodes_are_refused_by_name() {
    let mut rng = Rng(99);
    let good = node(&mut rng, true);
    let raw = RawAttributes {
        subspace: Some(3),
        ..Default::default()
    };
    let with = |f: &dyn Fn(&mut RawAttributes)| {
        let mut r = raw.clone();
        f(&mut r);
        r
    };
    refused(with(&|r| r.subspace = None), &good, "subspace is missing");
    refused(with(&|r| r.subspace = Some(0)), &good, "subspace is 0");
    refused(with(&|r| r.strides = Some(vec![1, 0])), &good, "strides");
    refused(with(&|r| r.pads = Some(vec![1, 1, 1])), &good, "pads");
    refused(
        with(&|r| r.dilations = Some(vec![-1, 1])),
        &good,
        "dilations",
    );
    refused(
        with(&|r| r.activation = Some("Sigmoid".into())),
        &good,
        "attribute activation",
    );
    refused(
        with(&|r| r.auto_pad = Some("SAME".into())),
        &good,
        "auto_pad",
    );
    refused(
        with(&|r| {
            r.auto_pad = Some("VALID".into());
            r.pads = Some(vec![0; 4]);
        }),
        &good,
        "exclude each other",
    );
    refused(
        with(&|r| r.subspace = Some(2)),
        &good,
        "input atoms has shape",
    );
    let edit = |f: &dyn Fn(&mut Inputs)| {
        let mut i = good.clone();
        f(&mut i);
        i
    };
    refused(
        raw.clone(),
        &edit(&|i| i.assignment.values[7] = 6),
        "assignment[7] = 6",
    );
    refused(
        raw.clone(),
        &edit(&|i| i.atom_indices.as_mut().unwrap().values[3] = 4),
        "= 4",
    );
    refused(
        raw.clone(),
        &edit(&|i| i.coefficients = None),
        "go together",
    );
    refused(
        raw.clone(),
        &edit(&|i| i.atoms.values[2 * 12 + 1] = 0.5),
        "beyond its 1 channels",
    );
    refused(
        raw.clone(),
        &edit(&|i| i.atoms.values[0] = f32::NAN),
        "not finite",
    );
    refused(
        raw.clone(),
        &edit(&|i| i.assignment.shape[0] = 2),
        "expected [3, M, kh, kw]",
    );
    refused(
        raw.clone(),
        &edit(&|i| i.assignment.values.pop().map(drop).unwrap()),
        "values",
    );
    refused(
        raw.clone(),
        &edit(&|i| i.bias.as_mut().unwrap().shape = vec![4]),
        "input B",
    );
    refused(
        raw,
        &edit(&|i| i.atom_indices.as_mut().unwrap().shape[2] = 1),
        "[3, K, alpha]",
    );
}

#[test]
fn the_relu_activation_clamps_the_output_and_nothing_else_does() {
    let raw = |activation: Option<&str>| RawAttributes {
        subspace: Some(1),
        activation: activation.map(String::from),
        ..Default::default()
    };
    let mut out = vec![-1.5f32, 0.0, 2.0, -0.0];
    raw(None).check().unwrap().activate(&mut out);
    assert_eq!(out, [-1.5, 0.0, 2.0, -0.0]);
    raw(Some("Relu")).check().unwrap().activate(&mut out);
    assert_eq!(out, [0.0, 0.0, 2.0, 0.0]);
}
