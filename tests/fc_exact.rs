//! Exactness of fully connected layers (Gemm with and without transA / transB, alpha, beta and
//! every kind of C; MatMul on 2-D and 3-D inputs) at opsets 7–21, in every output form: over
//! random layers and random DL / VQ codebooks (with calibration's bias shift where the node has a
//! place for it), the standard-operator, fused and compact forms equal the node with the
//! reconstructed weight W̃ (tract; ONNX Runtime too, after onnx.checker), the compact form's
//! weight subgraph folds away in both engines, and with one centroid per sub-vector the
//! standard-operator and compact forms equal the original.

mod common;

use common::{in_memory, ort_library, ort_optimized_ops, ort_python, run_ort_with, value_info};
use ndarray::{ArrayD, IxDyn};
use onnx_dlq::analysis::{fc::FcOp, select, shapes};
use onnx_dlq::codebook::{self, ClusterParams, Codebook, Method};
use onnx_dlq::engine::runner::Runner;
use onnx_dlq::eval::approx::Approximation;
use onnx_dlq::lower::{self, GraphPatch};
use onnx_dlq::onnx::build::{attr_int, node};
use onnx_dlq::onnx::model::OnnxModel;
use onnx_dlq::onnx::tensor::{new_tensor, FloatType};
use onnx_dlq::proto::{AttributeProto, GraphProto, ModelProto, OperatorSetIdProto};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// Gemm's C: none, [M], [1, M], [B, M], or [M] computed at run time (by an Identity).
#[derive(Debug, Clone, Copy, PartialEq)]
enum CKind {
    None,
    Vector,
    Row,
    Full,
    Runtime,
}

#[derive(Debug, Clone)]
struct FcSpec {
    op: FcOp,
    batch: usize,
    n: usize,
    m: usize,
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
    beta: f32,
    c: CKind,
    /// MatMul on a [B, T, N] input.
    lead: Option<usize>,
    opset: i64,
}

impl FcSpec {
    fn input_shape(&self) -> Vec<usize> {
        match (self.op, self.trans_a, self.lead) {
            (FcOp::Gemm, true, _) => vec![self.n, self.batch],
            (FcOp::MatMul, _, Some(t)) => vec![self.batch, t, self.n],
            _ => vec![self.batch, self.n],
        }
    }
}

fn uniform(rng: &mut Xoshiro256PlusPlus, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn float_attr(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(1),
        ..Default::default()
    }
}

fn random_spec(rng: &mut Xoshiro256PlusPlus, i: usize) -> FcSpec {
    let opset = [7, 9, 11, 13, 18, 21][i % 6];
    let op = if i % 3 == 2 { FcOp::MatMul } else { FcOp::Gemm };
    let gemm = op == FcOp::Gemm;
    // C is required before opset 11.
    let kinds = [
        CKind::None,
        CKind::Vector,
        CKind::Row,
        CKind::Full,
        CKind::Runtime,
    ];
    let c = match gemm {
        false => CKind::None,
        true => kinds[rng.random_range(usize::from(opset < 11)..5)],
    };
    FcSpec {
        op,
        batch: [1, 3][rng.random_range(0..2)],
        n: rng.random_range(2..24),
        m: rng.random_range(2..20),
        trans_a: gemm && rng.random_range(0..3) == 0,
        trans_b: gemm && rng.random_range(0..2) == 0,
        alpha: if gemm && rng.random_range(0..2) == 0 {
            0.75
        } else {
            1.0
        },
        beta: if gemm && rng.random_range(0..2) == 0 {
            -1.5
        } else {
            1.0
        },
        c,
        lead: (!gemm && rng.random_range(0..2) == 0).then_some(4),
        opset,
    }
}

/// The single fully connected layer of `s`, named `fc` (after an Identity for a run-time C).
fn fc_model(s: &FcSpec, rng: &mut Xoshiro256PlusPlus) -> ModelProto {
    let w_dims = if s.trans_b { [s.m, s.n] } else { [s.n, s.m] };
    let mut inits = vec![new_tensor(
        "w",
        &w_dims,
        &uniform(rng, s.m * s.n),
        FloatType::F32,
    )];
    let mut nodes = vec![];
    let mut inputs = vec!["x", "w"];
    let c_dims: Vec<usize> = match s.c {
        CKind::None => vec![],
        CKind::Vector | CKind::Runtime => vec![s.m],
        CKind::Row => vec![1, s.m],
        CKind::Full => vec![s.batch, s.m],
    };
    if s.c != CKind::None {
        let count = c_dims.iter().product();
        let name = if s.c == CKind::Runtime { "c_raw" } else { "c" };
        inits.push(new_tensor(
            name,
            &c_dims,
            &uniform(rng, count),
            FloatType::F32,
        ));
        if s.c == CKind::Runtime {
            nodes.push(node("Identity", "c_node", &["c_raw"], &["c"], vec![]));
        }
        inputs.push("c");
    }
    let attrs = match s.op {
        FcOp::MatMul => vec![],
        FcOp::Gemm => vec![
            attr_int("transA", s.trans_a as i64),
            attr_int("transB", s.trans_b as i64),
            float_attr("alpha", s.alpha),
            float_attr("beta", s.beta),
        ],
    };
    let op = format!("{:?}", s.op);
    nodes.push(node(&op, "fc", &inputs, &["y"], attrs));
    ModelProto {
        ir_version: Some(if s.opset <= 9 { 4 } else { 8 }),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(s.opset),
        }],
        producer_name: Some("onnx-dlq tests".into()),
        graph: Some(GraphProto {
            name: Some("fc".into()),
            node: nodes,
            initializer: inits,
            input: vec![value_info("x", 1, Some(&s.input_shape()))],
            output: vec![value_info("y", 1, None)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn codebook_for(
    original: &OnnxModel,
    layer: &select::ConvLayer,
    method: Method,
    k: usize,
    rng: &mut Xoshiro256PlusPlus,
) -> (Codebook, usize) {
    let kernel = layer.kernel_f32(original).unwrap();
    let [m, n] = [kernel.shape()[0], kernel.shape()[1]];
    let mut p = ClusterParams::new(method, 2.0);
    p.subspace = rng.random_range(1..=n.min(5));
    p.alpha = if method == Method::Dl { 2 } else { 1 };
    p.iters = 3;
    p.seed = rng.random();
    p.k = Some(k.min(m));
    p.l = Some((m / 3).max(p.alpha).min(k.min(m)));
    if method == Method::Dl && p.l.unwrap() < p.alpha {
        p.alpha = 1;
    }
    let subspace = p.subspace;
    let mut cb = codebook::learn(kernel.view(), &p.check().unwrap()).unwrap();
    if layer.takes_bias_shift(original) && rng.random_range(0..2) == 0 {
        cb.bias_shift = Some(uniform(rng, m));
    }
    (cb, subspace)
}

/// (reference with W̃, standard-operator, fused, compact) models of `original`'s layer.
fn forms(original: &OnnxModel, cb: &Codebook) -> [OnnxModel; 4] {
    let layers = select::conv_layers(original);
    let layer = layers.iter().find(|l| l.name == "fc").unwrap();
    let sh = shapes::infer(original, &[]).unwrap();
    let mut reference = original.clone();
    lower::reconstructed::substitute(&mut reference, layer, cb).unwrap();
    let patched = |patch| {
        let mut m = original.clone();
        lower::apply(
            &mut m,
            GraphPatch {
                layers: vec![patch],
            },
        )
        .unwrap();
        m
    };
    let ops = patched(lower::ops::lower(original, layer, cb, &sh, "{}").unwrap());
    let fused = patched(lower::fused::lower(original, layer, cb, &sh, "{}").unwrap());
    let compact = patched(lower::dense::lower(original, layer, cb, &sh, "{}").unwrap());
    [reference, ops, fused, compact]
}

#[test]
fn fully_connected_forms_equal_the_reconstructed_reference_in_tract_and_ort() {
    let python = ort_python("fully_connected_forms_equal_the_reconstructed_reference");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(33);
    for i in 0..30 {
        let spec = random_spec(&mut rng, i);
        let tmp = tempfile::tempdir().unwrap();
        let original = in_memory(fc_model(&spec, &mut rng), tmp.path());
        let layers = select::conv_layers(&original);
        let layer = layers.iter().find(|l| l.name == "fc").unwrap();
        assert!(layer.convertible(), "{spec:?}: {:?}", layer.reason());
        // One centroid per sub-vector every fourth layer (K = M): the original itself.
        let exact = i % 4 == 3;
        let (method, k) = match exact {
            true => (Method::Vq, spec.m),
            false => (
                [Method::Dl, Method::Vq][i % 2],
                rng.random_range(2..=spec.m),
            ),
        };
        let (cb, subspace) = codebook_for(&original, layer, method, k, &mut rng);
        let what = format!("{spec:?} {method:?} K={k} N′={subspace}");
        let [reference, ops, fused, compact] = forms(&original, &cb);
        let shape = spec.input_shape();
        let x = ArrayD::from_shape_vec(IxDyn(&shape), uniform(&mut rng, shape.iter().product()))
            .unwrap();
        let run = |m: &OnnxModel| {
            let r = Runner::new(m, &shape).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            r.run(&x).unwrap_or_else(|e| panic!("{what}: {e:#}"))
        };
        let want = run(&reference);
        let counts = |m: &OnnxModel| Runner::new(m, &shape).unwrap().op_counts();
        assert_eq!(
            counts(&compact),
            counts(&reference),
            "tract folds the compact weight subgraph: {what}"
        );
        for (name, m) in [("ops", &ops), ("fused", &fused), ("compact", &compact)] {
            Approximation::Exact.assert_close(&format!("{name} {what}"), &run(m), &want);
        }
        if exact {
            let orig = run(&original);
            for (name, m) in [("ops", &ops), ("compact", &compact)] {
                let label = format!("K = M, {name} against the original, {what}");
                Approximation::Exact.assert_close(&label, &run(m), &orig);
            }
        }
        let Some(python) = &python else { continue };
        let lib = ort_library();
        for (name, m) in [("ops", &ops), ("fused", &fused), ("compact", &compact)] {
            let path = tmp.path().join(format!("{name}.onnx"));
            onnx_dlq::onnx::model::save(m, &path, Default::default()).unwrap();
            let library = (name == "fused").then_some(lib.as_path());
            let got = run_ort_with(python, &path, &x, library);
            Approximation::Exact.assert_close(&format!("ORT {name} {what}"), &got, &want);
        }
        let path = |name: &str| tmp.path().join(format!("{name}.onnx"));
        onnx_dlq::onnx::model::save(&reference, &path("reference"), Default::default()).unwrap();
        assert_eq!(
            ort_optimized_ops(python, &path("compact")),
            ort_optimized_ops(python, &path("reference")),
            "ONNX Runtime folds the compact weight subgraph: {what}"
        );
    }
}

/// A bias shift on a layer with no place for it (a MatMul) is refused by every form and by the
/// reference alike, naming the layer: no form may add it while another drops it.
#[test]
fn a_bias_shift_without_a_place_is_refused_by_every_form() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let spec = FcSpec {
        op: FcOp::MatMul,
        batch: 2,
        n: 8,
        m: 6,
        trans_a: false,
        trans_b: false,
        alpha: 1.0,
        beta: 1.0,
        c: CKind::None,
        lead: None,
        opset: 13,
    };
    let tmp = tempfile::tempdir().unwrap();
    let original = in_memory(fc_model(&spec, &mut rng), tmp.path());
    let layers = select::conv_layers(&original);
    let layer = layers.iter().find(|l| l.name == "fc").unwrap();
    assert!(!layer.takes_bias_shift(&original));
    let (mut cb, _) = codebook_for(&original, layer, Method::Vq, 3, &mut rng);
    cb.bias_shift = Some(vec![0.5; spec.m]);
    let sh = shapes::infer(&original, &[]).unwrap();
    let errors = [
        lower::ops::lower(&original, layer, &cb, &sh, "{}").err(),
        lower::fused::lower(&original, layer, &cb, &sh, "{}").err(),
        lower::dense::lower(&original, layer, &cb, &sh, "{}").err(),
        lower::reconstructed::substitute(&mut original.clone(), layer, &cb).err(),
    ];
    for (form, e) in ["ops", "fused", "dense", "reference"].iter().zip(errors) {
        let e = format!(
            "{:#}",
            e.unwrap_or_else(|| panic!("{form} accepted the shift"))
        );
        assert!(
            e.contains("`fc`") && e.contains("bias shift"),
            "{form}: {e}"
        );
    }
    // Calibration (the conversion and the budget's end-to-end probes) drops such a shift first.
    onnx_dlq::calibrate::place_bias_shift(&mut cb, layer, &original);
    assert!(cb.bias_shift.is_none());
    lower::reconstructed::substitute(&mut original.clone(), layer, &cb).unwrap();
}
