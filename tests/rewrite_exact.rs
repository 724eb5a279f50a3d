//! Exactness of the rewrite: over random layers (kernel sizes, strides, pads incl. asymmetric and
//! SAME_* with odd and even total padding, dilations, odd and even sizes, kernels 1–5 square and
//! not, batch 1 and 3, N′ dividing N or not, DL and VQ, several
//! opsets), the converted graph run in tract equals a dense Conv with the reconstructed kernel,
//! and so does the native `dlq-kernels` kernel of the same codebook (the fused operator's).
//! Also: multiplication counts equal the paper's formulas, and no intermediate holds more than
//! max(S·K, S·M) planes.

mod common;

use common::{conv_model, in_memory, ConvSpec};
use ndarray::{ArrayD, Ix4, IxDyn};
use onnx_dlq::codebook::{self, ClusterParams, Codebook, Method};
use onnx_dlq::engine::runner::Runner;
use onnx_dlq::eval::approx::Approximation;
use onnx_dlq::lower::{self, GraphPatch};
use onnx_dlq::{analysis::cost, analysis::select, analysis::shapes};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

struct Case {
    spec: ConvSpec,
    method: Method,
    subspace: usize,
    alpha: usize,
}

fn uniform(rng: &mut Xoshiro256PlusPlus, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Converts the single Conv of `case`, returning (converted model, dense model with W̃,
/// codebook, the native kernel).
fn convert(
    case: &Case,
    rng: &mut Xoshiro256PlusPlus,
    dir: &std::path::Path,
) -> (
    onnx_dlq::onnx::model::OnnxModel,
    onnx_dlq::onnx::model::OnnxModel,
    Codebook,
    dlq_kernels::DlqConv,
) {
    let s = &case.spec;
    let weight = uniform(rng, s.m * s.n * s.kh * s.kw);
    let bias = uniform(rng, s.m);
    let original = in_memory(conv_model(s, &weight, &bias), dir);
    let mut cb = learn(case, weight, rng.random());
    // Half the cases carry a calibration bias shift, which the rewrite adds to the bias.
    if rng.random_range(0..2) == 0 {
        cb.bias_shift = Some(uniform(rng, s.m));
    }
    let layers = select::conv_layers(&original);
    assert!(layers[0].convertible(), "{:?}", layers[0].eligibility);
    // The dense reference: the reconstructed kernel (and shifted bias) in the original Conv.
    let dense = common::dense_reference(&original, &cb);
    let converted = lowered(&original, &cb);
    let native = lower::fused::kernel::native(&original, &layers[0], &cb, [s.h, s.w]).unwrap();
    (converted, dense, cb, native)
}

/// The codebook of `case`'s layer, learnt from its `weight` with explicit sizes: small layers
/// would fail the paper's rules, and the rewrite must be exact for any codebook.
fn learn(case: &Case, weight: Vec<f32>, seed: u64) -> Codebook {
    let s = &case.spec;
    let kernel = ndarray::Array4::from_shape_vec((s.m, s.n, s.kh, s.kw), weight).unwrap();
    let columns = s.m * s.kh * s.kw;
    let mut p = ClusterParams::new(case.method, 2.0);
    p.subspace = case.subspace;
    p.alpha = case.alpha;
    p.iters = 3;
    p.seed = seed;
    p.k = Some((columns / 2).max(1));
    p.l = Some((columns / 4).max(case.alpha).min(columns / 2).max(1));
    if case.method == Method::Dl && p.l.unwrap() < case.alpha {
        p.alpha = 1;
    }
    codebook::learn(kernel.view(), &p.check().unwrap()).unwrap()
}

/// `original`'s single Conv rewritten with `cb` (the standard-operator form).
fn lowered(
    original: &onnx_dlq::onnx::model::OnnxModel,
    cb: &Codebook,
) -> onnx_dlq::onnx::model::OnnxModel {
    let layers = select::conv_layers(original);
    let sh = shapes::infer(original, &[]).unwrap();
    let lp = lower::lower(original, &layers[0], cb, &sh, "{}").unwrap();
    let mut converted = original.clone();
    lower::apply(&mut converted, GraphPatch { layers: vec![lp] }).unwrap();
    converted
}

/// The dense reference's and the converted model's outputs on `x`, in tract.
fn run_both(
    dense: &onnx_dlq::onnx::model::OnnxModel,
    converted: &onnx_dlq::onnx::model::OnnxModel,
    s: &ConvSpec,
    x: &ArrayD<f32>,
) -> (ArrayD<f32>, ArrayD<f32>) {
    let shape = [s.batch, s.n, s.h, s.w];
    let want = Runner::new(dense, &shape).unwrap().run(x).unwrap();
    let got = Runner::new(converted, &shape)
        .unwrap_or_else(|e| panic!("{s:?}: {e:#}"))
        .run(x)
        .unwrap();
    (want, got)
}

fn check_exact(case: &Case, rng: &mut Xoshiro256PlusPlus) {
    let tmp = tempfile::tempdir().unwrap();
    let (converted, dense, _, native) = convert(case, rng, tmp.path());
    let s = &case.spec;
    let shape = [s.batch, s.n, s.h, s.w];
    let x = ArrayD::from_shape_vec(IxDyn(&shape), uniform(rng, shape.iter().product())).unwrap();
    let (want, got) = run_both(&dense, &converted, s, &x);
    // The rewrite must compute the same function as a dense Conv, within this tolerance.
    let what = format!("{s:?} {:?} N′={}", case.method, case.subspace);
    Approximation::Exact.assert_close(&what, &got, &want);
    let mut fused = ArrayD::zeros(want.raw_dim());
    let x_flat = x.as_slice().unwrap();
    let out_flat = fused.as_slice_mut().unwrap();
    native.run(x_flat, s.batch, s.h, s.w, out_flat).unwrap();
    Approximation::Exact.assert_close(&format!("native kernel, {what}"), &fused, &want);
}

fn random_case(rng: &mut Xoshiro256PlusPlus, opset: i64) -> Case {
    // Kernels 1–5, even ones included, non-square one case in three; heights and widths of
    // either parity, so that SAME padding's total is odd (SAME_UPPER and SAME_LOWER differ).
    let kh = rng.random_range(1..6usize);
    let kw = if rng.random_range(0..3) == 0 {
        rng.random_range(1..6usize)
    } else {
        kh
    };
    let dil = [rng.random_range(1..3), rng.random_range(1..3)];
    let h = rng.random_range(4..12) + (kh - 1) * dil[0] as usize;
    let w = rng.random_range(4..12) + (kw - 1) * dil[1] as usize;
    let auto_pad = match rng.random_range(0..6) {
        0 => Some("SAME_UPPER"),
        1 => Some("SAME_LOWER"),
        2 => Some("VALID"),
        _ => None,
    };
    let n = rng.random_range(2..14);
    let subspace = rng.random_range(1..=n.min(5));
    Case {
        spec: ConvSpec {
            batch: [1, 3][rng.random_range(0..2)],
            n,
            m: rng.random_range(2..10),
            h,
            w,
            kh,
            kw,
            strides: [rng.random_range(1..3), rng.random_range(1..3)],
            dilations: dil,
            pads: [
                rng.random_range(0..3),
                rng.random_range(0..3),
                rng.random_range(0..3),
                rng.random_range(0..3),
            ],
            auto_pad,
            bias: rng.random_range(0..4) != 0,
            opset,
        },
        method: if rng.random::<bool>() {
            Method::Dl
        } else {
            Method::Vq
        },
        subspace,
        alpha: rng.random_range(1..3),
    }
}

#[test]
fn random_layers_are_exact_at_every_opset() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2026);
    // 7: the shared SqueezeNet's (Pad and Slice take attributes, Slice has no steps); 9: the
    // last opset without Slice steps; 10/11: Slice then Pad take inputs; 13: the ResNets';
    // 18, 21: newer Pad/Slice revisions; 28: the newest default-domain opset of the pinned onnx
    // package (tract reads any).
    let (mut odd_same, mut even_kernels, mut non_square) = (0, 0, 0);
    for opset in [7, 9, 10, 11, 13, 18, 21, 28] {
        for _ in 0..10 {
            let case = random_case(&mut rng, opset);
            check_exact(&case, &mut rng);
            let s = &case.spec;
            odd_same += usize::from(odd_same_padding(s));
            even_kernels += usize::from(s.kh.is_multiple_of(2) || s.kw.is_multiple_of(2));
            non_square += usize::from(s.kh != s.kw);
        }
    }
    // The generator reaches the cases it is meant to (seeded: fixed counts).
    assert!(
        odd_same >= 3 && even_kernels >= 10 && non_square >= 10,
        "{odd_same} SAME cases with an odd total pad, {even_kernels} even, {non_square} non-square"
    );
}

/// `auto_pad` SAME_* whose total padding is odd along an axis: SAME_UPPER and SAME_LOWER then
/// put the extra row or column on different sides.
fn odd_same_padding(s: &ConvSpec) -> bool {
    let same = matches!(s.auto_pad, Some("SAME_UPPER") | Some("SAME_LOWER"));
    let total = |size: usize, k: usize, stride: i64, dil: i64| {
        let (st, d) = (stride as usize, dil as usize);
        let out = size.div_ceil(st);
        ((out - 1) * st + (k - 1) * d + 1).saturating_sub(size)
    };
    same && (total(s.h, s.kh, s.strides[0], s.dilations[0]) % 2 == 1
        || total(s.w, s.kw, s.strides[1], s.dilations[1]) % 2 == 1)
}

#[test]
fn the_edges_of_the_space_are_exact() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let base = ConvSpec {
        batch: 3,
        n: 10,
        m: 6,
        h: 9,
        w: 7,
        kh: 3,
        kw: 3,
        strides: [2, 2],
        dilations: [2, 2],
        pads: [0, 1, 2, 0],
        auto_pad: None,
        bias: true,
        opset: 7,
    };
    let cases = [
        // strided and dilated with asymmetric pads at opset 7 (MaxPool subsampling)
        Case {
            spec: base.clone(),
            method: Method::Dl,
            subspace: 4,
            alpha: 2,
        },
        // N′ = N (one subspace), no bias, SAME_UPPER at the newest opset
        Case {
            spec: ConvSpec {
                bias: false,
                auto_pad: Some("SAME_UPPER"),
                opset: 18,
                strides: [1, 2],
                ..base.clone()
            },
            method: Method::Dl,
            subspace: 10,
            alpha: 2,
        },
        // 1×1 kernel with stride 2, VQ
        Case {
            spec: ConvSpec {
                kh: 1,
                kw: 1,
                dilations: [1, 1],
                pads: [0, 0, 0, 0],
                ..base.clone()
            },
            method: Method::Vq,
            subspace: 3,
            alpha: 1,
        },
        // 5×5, SAME_LOWER, N′ = 1
        Case {
            spec: ConvSpec {
                kh: 5,
                kw: 5,
                h: 11,
                w: 13,
                auto_pad: Some("SAME_LOWER"),
                strides: [1, 1],
                dilations: [1, 1],
                opset: 13,
                ..base.clone()
            },
            method: Method::Dl,
            subspace: 1,
            alpha: 1,
        },
    ];
    for case in &cases {
        check_exact(case, &mut rng);
    }
}

#[test]
fn multiplications_match_the_paper_formulas_and_planes_stay_bounded() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let tmp = tempfile::tempdir().unwrap();
    for (method, subspace) in [(Method::Dl, 4), (Method::Vq, 4), (Method::Dl, 3)] {
        // stride 1, "same" padding: the output size m equals the input size, as the paper assumes.
        let spec = ConvSpec {
            batch: 1,
            n: 12,
            m: 16,
            h: 11,
            w: 11,
            kh: 3,
            kw: 3,
            strides: [1, 1],
            dilations: [1, 1],
            pads: [1, 1, 1, 1],
            auto_pad: None,
            bias: true,
            opset: 13,
        };
        let case = Case {
            spec: spec.clone(),
            method,
            subspace,
            alpha: 2,
        };
        let (converted, _, cb, _) = convert(&case, &mut rng, tmp.path());
        let sh = shapes::infer(&converted, &[]).unwrap();
        let total = cost::graph_cost(&converted, &sh).total.multiplications as usize;
        let m2 = spec.h * spec.w;
        let (s, k, l) = (
            cb.subspaces.len(),
            cb.subspaces[0].num_representatives(),
            cb.subspaces[0].atoms.len(),
        );
        let expected = match method {
            Method::Dl => m2 * (spec.n * l + 2 * s * k),
            Method::Vq => m2 * spec.n * k,
        };
        assert_eq!(total, expected, "{method:?} N′={subspace}");
        // No intermediate holds more than max(S·K, S·M) planes.
        let bound = (s * k).max(s * spec.m);
        for (name, dims) in &sh.shapes {
            if dims.len() == 4 && name.contains("/dlq/") {
                assert!(dims[1] <= bound, "{name} has {} planes > {bound}", dims[1]);
            }
        }
        // Hygiene: the Conv and its weight are gone, new names are prefixed, order is topological.
        let g = converted.graph();
        assert!(g
            .initializer
            .iter()
            .all(|t| t.name.as_deref() != Some("w") && t.name.as_deref() != Some("b")));
        assert!(g
            .node
            .iter()
            .all(|n| n.name.as_deref().unwrap().starts_with("conv/dlq/")));
        let mut known: std::collections::HashSet<&str> = g
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect();
        known.insert("x");
        for n in &g.node {
            for i in &n.input {
                assert!(known.contains(i.as_str()), "{i} used before it is computed");
            }
            known.extend(n.output.iter().map(String::as_str));
        }
        assert_eq!(g.node.last().unwrap().output[0], "y");
        let meta: Vec<_> = converted
            .proto
            .metadata_props
            .iter()
            .filter_map(|p| p.key.clone())
            .collect();
        assert!(
            meta.contains(&"onnx-dlq/conv".to_string())
                && meta.contains(&"onnx-dlq/version".to_string()),
            "{meta:?}"
        );
        let _ = cb.reconstruct().into_dimensionality::<Ix4>();
    }
}

/// `model` with its weight and bias stored as float16 and its input and output typed float16
/// (a model exported in half precision).
fn as_f16(mut model: onnx_dlq::onnx::model::OnnxModel) -> onnx_dlq::onnx::model::OnnxModel {
    use onnx_dlq::onnx::tensor::{new_tensor, to_f32, FloatType};
    let base = model.base_dir.clone();
    let g = model.graph_mut();
    for t in &mut g.initializer {
        let values = to_f32(t, &base).unwrap().as_standard_layout().to_owned();
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        *t = new_tensor(
            t.name.as_deref().unwrap(),
            &dims,
            values.as_slice().unwrap(),
            FloatType::F16,
        );
    }
    for v in g.input.iter_mut().chain(g.output.iter_mut()) {
        if let Some(onnx_dlq::proto::type_proto::Value::TensorType(t)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            t.elem_type = Some(10);
        }
    }
    model
}

/// The codebook's stored parts rounded to float16, as the converted float16 model stores them.
fn rounded_to_f16(mut cb: Codebook) -> Codebook {
    let r = |v: &mut f32| *v = half::f16::from_f32(*v).to_f32();
    for sub in &mut cb.subspaces {
        sub.atoms.data.iter_mut().for_each(r);
        if let Some(codes) = &mut sub.codes {
            codes.coefs.iter_mut().for_each(r);
        }
    }
    if let Some(shift) = &mut cb.bias_shift {
        shift.iter_mut().for_each(r);
    }
    cb
}

/// Float16 layers: the rewrite of a half-precision Conv (codebook stored as float16) equals the
/// dense Conv with the reconstructed kernel in float16, within float16's rounding.
#[test]
fn f16_layers_match_the_dense_reference_within_f16_rounding() {
    use onnx_dlq::onnx::tensor::{new_tensor, FloatType};
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(16);
    for _ in 0..16 {
        let case = random_case(&mut rng, 13);
        let s = &case.spec;
        let tmp = tempfile::tempdir().unwrap();
        let weight = uniform(&mut rng, s.m * s.n * s.kh * s.kw);
        let bias = uniform(&mut rng, s.m);
        let original = as_f16(in_memory(conv_model(s, &weight, &bias), tmp.path()));
        let cb = learn(&case, weight, 0);
        let converted = lowered(&original, &cb);
        let f32_floats: Vec<(String, Vec<i64>)> = converted
            .graph()
            .initializer
            .iter()
            .filter(|t| t.data_type == Some(1))
            .map(|t| (t.name.clone().unwrap_or_default(), t.dims.clone()))
            // SAME padding at a stride above 1 is computed in-graph in float32, by design.
            .filter(|(name, _)| !name.contains("/dlq/same_"))
            .collect();
        assert!(
            f32_floats.is_empty(),
            "float32 in a float16 model: {f32_floats:?}"
        );
        // The reference: W̃ from the float16 parts, itself stored as float16.
        let w = common::independent_reconstruction(&rounded_to_f16(cb));
        let mut dense = original.clone();
        *common::initializer_mut(&mut dense, "w") =
            new_tensor("w", &[s.m, s.n, s.kh, s.kw], &w, FloatType::F16);
        let shape = [s.batch, s.n, s.h, s.w];
        let x = ArrayD::from_shape_vec(IxDyn(&shape), uniform(&mut rng, shape.iter().product()))
            .unwrap();
        let (want, got) = run_both(&dense, &converted, s, &x);
        let what = format!("float16 {s:?} {:?} N′={}", case.method, case.subspace);
        Approximation::EnginesF16.assert_close(&what, &got, &want);
    }
}
