//! Exactness of the fused and the compact forms: over random layers (strides 1 and 2, pads,
//! dilations, batch 1 and 3, DL and VQ, N′ dividing N or not), the model with one `DlqConv`
//! node, run in tract through onnx-dlq's op register and in ONNX Runtime through
//! libonnx_dlq_ort, and the compact form (whose kernel subgraph both engines fold at load),
//! equal a dense Conv with the reconstructed kernel; so do shared codebooks (palettes) with
//! indices packed below 8 bits, with and without per-channel scales, in float32 and float16, at
//! opsets 7–18. Also: a
//! `DlqConv` whose assignment holds an index ≥ K is refused, naming the node.

mod common;

use common::{conv_model, in_memory, ort_library, ort_python, run_ort_with, ConvSpec};
use ndarray::{ArrayD, IxDyn};
use onnx_dlq::codebook::{self, ClusterParams, Method};
use onnx_dlq::engine::runner::Runner;
use onnx_dlq::eval::approx::Approximation;
use onnx_dlq::lower::{self, fused, GraphPatch};
use onnx_dlq::onnx::model::OnnxModel;
use onnx_dlq::{analysis::select, analysis::shapes};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

fn uniform(rng: &mut Xoshiro256PlusPlus, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// A model with the single Conv of `spec`, random weights and bias, and its kernel.
fn random_layer(
    spec: &ConvSpec,
    rng: &mut Xoshiro256PlusPlus,
    dir: &std::path::Path,
) -> (OnnxModel, ndarray::Array4<f32>) {
    let s = spec;
    let weight = uniform(rng, s.m * s.n * s.kh * s.kw);
    let bias = uniform(rng, s.m);
    let original = in_memory(conv_model(s, &weight, &bias), dir);
    let kernel = ndarray::Array4::from_shape_vec((s.m, s.n, s.kh, s.kw), weight).unwrap();
    (original, kernel)
}

/// The dense reference (the Conv with W̃) and the compact form of `original`'s single Conv.
fn dense_and_compact(original: &OnnxModel, cb: &codebook::Codebook) -> (OnnxModel, OnnxModel) {
    let layers = select::conv_layers(original);
    let dense = common::dense_reference(original, cb);
    let sh = shapes::infer(original, &[]).unwrap();
    let patch = lower::dense::lower(original, &layers[0], cb, &sh, "{}").unwrap();
    let mut compact = original.clone();
    lower::apply(
        &mut compact,
        GraphPatch {
            layers: vec![patch],
        },
    )
    .unwrap();
    (dense, compact)
}

/// (fused model, dense reference, compact model) for the single Conv of `spec`.
fn convert(
    spec: &ConvSpec,
    method: Method,
    subspace: usize,
    rng: &mut Xoshiro256PlusPlus,
    dir: &std::path::Path,
) -> (OnnxModel, OnnxModel, OnnxModel) {
    let s = spec;
    let (original, kernel) = random_layer(s, rng, dir);
    let columns = s.m * s.kh * s.kw;
    let mut p = ClusterParams::new(method, 2.0);
    p.subspace = subspace;
    p.alpha = if method == Method::Dl { 2 } else { 1 };
    p.iters = 3;
    p.seed = rng.random();
    p.k = Some((columns / 2).max(1));
    p.l = Some((columns / 4).max(p.alpha).min(columns / 2).max(1));
    if method == Method::Dl && p.l.unwrap() < p.alpha {
        p.alpha = 1;
    }
    let mut cb = codebook::learn(kernel.view(), &p.check().unwrap()).unwrap();
    if rng.random_range(0..2) == 0 {
        cb.bias_shift = Some(uniform(rng, s.m));
    }
    let layers = select::conv_layers(&original);
    let sh = shapes::infer(&original, &[]).unwrap();
    let lp = fused::lower(&original, &layers[0], &cb, &sh, "{}").unwrap();
    let mut converted = original.clone();
    lower::apply(&mut converted, GraphPatch { layers: vec![lp] }).unwrap();
    let (dense, compact) = dense_and_compact(&original, &cb);
    (converted, dense, compact)
}

fn random_spec(rng: &mut Xoshiro256PlusPlus) -> ConvSpec {
    // Kernels 1–5 (even ones too), non-square one case in three, sizes of either parity, and
    // every auto_pad (SAME_UPPER and SAME_LOWER differ where the total padding is odd).
    let kh = rng.random_range(1..6usize);
    let kw = if rng.random_range(0..3) == 0 {
        rng.random_range(1..6usize)
    } else {
        kh
    };
    let dil = [rng.random_range(1..3), rng.random_range(1..3)];
    ConvSpec {
        batch: [1, 3][rng.random_range(0..2)],
        n: rng.random_range(2..14),
        m: rng.random_range(2..10),
        h: rng.random_range(4..12) + (kh - 1) * dil[0] as usize,
        w: rng.random_range(4..12) + (kw - 1) * dil[1] as usize,
        kh,
        kw,
        strides: [rng.random_range(1..3), rng.random_range(1..3)],
        dilations: dil,
        pads: [0; 4].map(|_| rng.random_range(0..3)),
        auto_pad: [
            None,
            None,
            None,
            Some("SAME_UPPER"),
            Some("SAME_LOWER"),
            Some("VALID"),
        ][rng.random_range(0..6)],
        bias: rng.random_range(0..4) != 0,
        opset: 13,
    }
}

#[test]
fn random_fused_layers_equal_the_dense_reference() {
    let python = ort_python("random_fused_layers_equal_the_dense_reference");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(14);
    for i in 0..30 {
        let spec = random_spec(&mut rng);
        let method = if i % 2 == 0 { Method::Dl } else { Method::Vq };
        let subspace = rng.random_range(1..=spec.n.min(5));
        let tmp = tempfile::tempdir().unwrap();
        let (fused_model, dense, compact) = convert(&spec, method, subspace, &mut rng, tmp.path());
        let g = fused_model.graph();
        assert_eq!(g.node.len(), 1);
        assert_eq!(g.node[0].op_type.as_deref(), Some("DlqConv"));
        assert!(fused_model
            .proto
            .opset_import
            .iter()
            .any(|o| o.domain.as_deref() == Some("ai.onnx_dlq") && o.version == Some(1)));
        let shape = [spec.batch, spec.n, spec.h, spec.w];
        let x = ArrayD::from_shape_vec(IxDyn(&shape), uniform(&mut rng, shape.iter().product()))
            .unwrap();
        let want = Runner::new(&dense, &shape).unwrap().run(&x).unwrap();
        let got = Runner::new(&fused_model, &shape)
            .unwrap_or_else(|e| panic!("{spec:?}: {e:#}"))
            .run(&x)
            .unwrap();
        let what = format!("{spec:?} {method:?} N′={subspace}");
        Approximation::Exact.assert_close(&what, &got, &want);
        // The compact form: tract folds its kernel subgraph into the plain Conv of the reference.
        let compact_runner = Runner::new(&compact, &shape).unwrap();
        let reference_ops = Runner::new(&dense, &shape).unwrap().op_counts();
        assert_eq!(compact_runner.op_counts(), reference_ops, "{what}");
        let got = compact_runner.run(&x).unwrap();
        Approximation::Exact.assert_close(&format!("compact {what}"), &got, &want);
        // The same model in ONNX Runtime through libonnx_dlq_ort (after onnx.checker).
        if let Some(python) = &python {
            let path = tmp.path().join("fused.onnx");
            onnx_dlq::onnx::model::save(&fused_model, &path, Default::default()).unwrap();
            let ort = run_ort_with(python, &path, &x, Some(&ort_library()));
            Approximation::Exact.assert_close(&format!("ORT {what}"), &ort, &want);
            // The compact form keeps the original Conv: ORT refuses SAME padding with dilation
            // (in the original too), so those layers are checked in tract only.
            let ort_runs_original = spec.auto_pad.is_none() || spec.dilations == [1, 1];
            if !ort_runs_original {
                continue;
            }
            let path = tmp.path().join("compact.onnx");
            onnx_dlq::onnx::model::save(&compact, &path, Default::default()).unwrap();
            let ort = run_ort_with(python, &path, &x, None);
            Approximation::Exact.assert_close(&format!("ORT compact {what}"), &ort, &want);
            if i % 3 != 0 {
                continue; // the folding check on every third layer keeps the test short
            }
            let dense_path = tmp.path().join("dense.onnx");
            onnx_dlq::onnx::model::save(&dense, &dense_path, Default::default()).unwrap();
            assert_eq!(
                common::ort_optimized_ops(python, &path),
                common::ort_optimized_ops(python, &dense_path),
                "ONNX Runtime folds the compact kernel: {what}"
            );
        }
    }
}

/// The compact form of a shared codebook (one palette per layer, Γ packed below 8 bits) for the
/// single Conv of `spec`: (original, compact, dense reference with W̃).
fn compact_palette(
    spec: &ConvSpec,
    subspace: usize,
    k: usize,
    rng: &mut Xoshiro256PlusPlus,
    dir: &std::path::Path,
) -> (OnnxModel, OnnxModel, OnnxModel) {
    let s = spec;
    let (original, kernel) = random_layer(s, rng, dir);
    let mut p = ClusterParams::new(Method::Vq, 2.0);
    p.subspace = subspace;
    p.shared = true;
    p.k = Some(k);
    p.seed = rng.random();
    let mut cb = codebook::learn(kernel.view(), &p.check().unwrap()).unwrap();
    assert!(
        cb.shared
            && cb
                .subspaces
                .iter()
                .all(|c| c.atoms == cb.subspaces[0].atoms)
    );
    let every_vector = k == s.n / subspace * s.m * s.kh * s.kw;
    if !every_vector && rng.random_range(0..2) == 0 {
        cb.bias_shift = Some(uniform(rng, s.m));
    }
    if !every_vector && rng.random_range(0..2) == 0 {
        // Per-channel scales (`--channel-scale`), set here so that every case has them at
        // random, whether or not the learning kept them.
        cb.channel_scale = Some((0..s.m).map(|_| rng.random_range(0.25f32..2.0)).collect());
    }
    if !every_vector && rng.random_range(0..2) == 0 {
        // A float16 palette (`--f16-palette`), stored as float16 and cast back.
        cb.f16_palette = true;
        cb.round_palette();
    }
    let (dense, compact) = dense_and_compact(&original, &cb);
    (original, compact, dense)
}

/// Shared codebooks in the compact form, over opsets 7–18 (Slice and ReduceSum change form at
/// 10 and 13; groups of 1–3 bytes) and K from 2 (1-bit indices) to every sub-vector its own centroid: tract and ONNX
/// Runtime compute the dense Conv with W̃, and with K = S·p²M the original itself.
#[test]
fn shared_palettes_with_packed_indices_equal_the_dense_reference() {
    let python = ort_python("shared_palettes_with_packed_indices_equal_the_dense_reference");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(16);
    let (mut split, mut scaled, mut half) = (false, false, false);
    for i in 0..16 {
        let mut spec = random_spec(&mut rng);
        spec.opset = [7, 9, 11, 13, 18][i % 5];
        let divisors: Vec<usize> = (1..=spec.n.min(4))
            .filter(|d| spec.n.is_multiple_of(*d))
            .collect();
        let subspace = divisors[rng.random_range(0..divisors.len())];
        let vectors = spec.n / subspace * spec.m * spec.kh * spec.kw;
        let every = i % 4 == 3;
        let k = if every {
            vectors
        } else {
            [2, 3, 5, 16, 100][i % 5].min(vectors)
        };
        split |= (65..=128).contains(&k);
        let tmp = tempfile::tempdir().unwrap();
        let (original, compact, dense) = compact_palette(&spec, subspace, k, &mut rng, tmp.path());
        let what = format!("{spec:?} N′={subspace} K={k}");
        let packed = compact.graph().initializer.iter().any(|t| {
            let name = t.name.as_deref().unwrap();
            name.ends_with("assignment_packed") || name.ends_with("assignment_low_packed")
        });
        // Below 8 bits Γ is packed (7 bits as two planes: K = 100).
        assert_eq!(packed, k <= 128, "{what}");
        scaled |= compact
            .graph()
            .initializer
            .iter()
            .any(|t| t.name.as_deref().unwrap().ends_with("channel_scale"));
        half |= compact.graph().initializer.iter().any(|t| {
            t.name.as_deref().unwrap().ends_with("atoms") && t.data_type == Some(10)
            // FLOAT16
        });
        let shape = [spec.batch, spec.n, spec.h, spec.w];
        let x = ArrayD::from_shape_vec(IxDyn(&shape), uniform(&mut rng, shape.iter().product()))
            .unwrap();
        let want = Runner::new(&dense, &shape).unwrap().run(&x).unwrap();
        let runner = Runner::new(&compact, &shape).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_eq!(
            runner.op_counts(),
            Runner::new(&dense, &shape).unwrap().op_counts(),
            "tract folds the palette subgraph: {what}"
        );
        let got = runner.run(&x).unwrap();
        Approximation::Exact.assert_close(&what, &got, &want);
        if every {
            let orig = Runner::new(&original, &shape).unwrap().run(&x).unwrap();
            Approximation::Exact.assert_close(&format!("K = S·p²M {what}"), &got, &orig);
        }
        if let Some(python) = &python {
            if spec.auto_pad.is_some() && spec.dilations != [1, 1] {
                continue; // ORT refuses SAME padding with dilation, in the original too
            }
            let path = tmp.path().join("compact.onnx");
            onnx_dlq::onnx::model::save(&compact, &path, Default::default()).unwrap();
            let ort = run_ort_with(python, &path, &x, None);
            Approximation::Exact.assert_close(&format!("ORT {what}"), &ort, &want);
        }
    }
    assert!(split, "no case stored 7-bit indices (two planes)");
    assert!(scaled, "no case had per-channel scales");
    assert!(half, "no case stored a float16 palette");
}

#[test]
fn an_assignment_index_out_of_range_is_refused_naming_the_node() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let spec = ConvSpec {
        batch: 1,
        n: 6,
        m: 4,
        h: 7,
        w: 7,
        kh: 3,
        kw: 3,
        strides: [1, 1],
        dilations: [1, 1],
        pads: [1, 1, 1, 1],
        auto_pad: None,
        bias: true,
        opset: 13,
    };
    let tmp = tempfile::tempdir().unwrap();
    let (mut model, _, _) = convert(&spec, Method::Dl, 3, &mut rng, tmp.path());
    let node_name = model.graph().node[0].name.clone().unwrap();
    let assignment = model
        .graph_mut()
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref().unwrap().ends_with("/dlq/assignment"))
        .unwrap();
    // UINT8 (K is small): 255 is at least K.
    assignment.raw_data.as_mut().unwrap()[5] = 255;
    let e = match Runner::new(&model, &[1, 6, 7, 7]) {
        Ok(_) => panic!("an out-of-range assignment was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains(&node_name) && e.contains("assignment"), "{e}");
    assert!(!e.contains("internal error"), "{e}");
}

#[test]
fn convert_with_the_fused_form_equals_the_ops_form_and_counts_the_same_multiplications() {
    use onnx_dlq::convert::{self, ConvertOptions, OutputForm, Selection};
    use onnx_dlq::onnx::model::ExternalData;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(21);
    // Stride 1 with "same" padding: the paper's setting, where both forms count m²(N·L + α·S·K).
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
    let tmp = tempfile::tempdir().unwrap();
    let weight = uniform(&mut rng, spec.m * spec.n * 9);
    let bias = uniform(&mut rng, spec.m);
    let original = in_memory(conv_model(&spec, &weight, &bias), tmp.path());
    for method in [Method::Dl, Method::Vq] {
        let mut p = ClusterParams::new(method, 2.0);
        p.subspace = 5;
        p.k = Some(40);
        p.l = Some(20);
        p.iters = 3;
        let run = |form: OutputForm| {
            let opts = ConvertOptions {
                selection: Selection::All {
                    fully_connected: true,
                },
                params: p.clone().check().unwrap(),
                input_shapes: vec![],
                external: ExternalData::Auto,
                calibration: None,
                target_speedup: None,
                target_compression: None,
                measure_latency: false,
                form,
                finetune: None,
                engine: None,
                int8: None,
            };
            convert::convert_model(&original, &opts).unwrap()
        };
        let (ops, fused) = (run(OutputForm::Ops), run(OutputForm::Fused));
        assert_eq!(fused.model.graph().node.len(), 1);
        assert_eq!(
            fused.multiplications_after, ops.multiplications_after,
            "{method:?}"
        );
        assert_eq!(
            fused.layers[0].multiplications_after,
            ops.layers[0].multiplications_after
        );
        let shape = [1, spec.n, spec.h, spec.w];
        let x = ArrayD::from_shape_vec(IxDyn(&shape), uniform(&mut rng, shape.iter().product()))
            .unwrap();
        let want = Runner::new(&ops.model, &shape).unwrap().run(&x).unwrap();
        let got = Runner::new(&fused.model, &shape).unwrap().run(&x).unwrap();
        Approximation::Exact.assert_close(&format!("{method:?} fused vs ops"), &got, &want);
    }
}

/// Whole converted models with `--form fused` (the README's model, `--all`; SqueezeNet 1.1 fp16
/// with two expand3x3 layers when ../shared is there) give the same output in ONNX Runtime,
/// through libonnx_dlq_ort, as in tract, after onnx.checker's full check.
#[test]
fn fused_models_run_in_onnx_runtime_as_in_tract() {
    let Some(python) = ort_python("fused_models_run_in_onnx_runtime_as_in_tract") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut cases = vec![(
        common::default_model(),
        vec!["--all", "--ratio", "4"],
        [2, 3, 8, 8],
        Approximation::Engines,
    )];
    match common::shared_model(
        "fused_models_run_in_onnx_runtime_as_in_tract",
        "squeezenet1.1-fp16.onnx",
    ) {
        Some(sq) => cases.push((
            sq,
            vec![
                "--layers",
                "fire8/expand3x3_1,fire9/expand3x3_1",
                "--ratio",
                "10",
            ],
            [1, 3, 224, 224],
            Approximation::EnginesF16,
        )),
        None => eprintln!("SKIPPED the SqueezeNet fp16 part: ../shared is missing"),
    }
    for (i, (model, args, shape, tolerance)) in cases.into_iter().enumerate() {
        let out = tmp.path().join(format!("fused{i}.onnx"));
        let mut cli = vec![common::path_str(&model), common::path_str(&out)];
        cli.extend(args);
        cli.extend(["--form", "fused", "--no-latency"]);
        let o = common::run(&cli);
        assert!(o.status.success(), "{}", common::stderr(&o));
        let converted = onnx_dlq::onnx::model::load(&out).unwrap();
        let x = common::input_like(&shape, 3);
        let tract = Runner::new(&converted, &shape).unwrap().run(&x).unwrap();
        let ort = run_ort_with(&python, &out, &x, Some(&ort_library()));
        tolerance.assert_close(
            &format!("ORT vs tract on {}", model.display()),
            &ort,
            &tract,
        );
    }
}

/// `--target-speedup` with the fused form is a latency budget on this machine's timings: when
/// it converts, the report predicts the converted model's latency from per-layer timings, meets
/// the target by that prediction, and every converted layer was measured faster as a DlqConv
/// than as its Conv; on a CPU where too few layers gain, it refuses the target and writes
/// nothing. Which of the two happens is the machine's, not the test's: the allocation on given
/// timings is tested in `budget`, the pairing on a fake clock in
/// `budget::timing`, and speed-ups are benchmarks (BENCHMARKS.md).
#[test]
fn a_fused_target_speedup_is_a_latency_budget() {
    let Some(model) = common::shared_model(
        "a_fused_target_speedup_is_a_latency_budget",
        "resnet20-cifar10.onnx",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r20.onnx");
    let o = common::run(&[
        common::path_str(&model),
        common::path_str(&out),
        "--target-speedup",
        "1.2",
        "--form",
        "fused",
        "--json",
    ]);
    if !o.status.success() {
        let err = common::stderr(&o);
        assert!(
            err.contains("--target-speedup: a 1.2x speed-up") && !out.exists(),
            "{err}"
        );
        eprintln!("a_fused_target_speedup_is_a_latency_budget: this CPU refused 1.2x: {err}");
        return;
    }
    let report: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    let allocation = &report["allocation"];
    assert_eq!(allocation["measured"]["unit"], "milliseconds");
    let predicted = allocation["measured"]["predicted"].as_f64().unwrap();
    let original = allocation["measured"]["original"].as_f64().unwrap();
    assert!(
        predicted > 0.0 && predicted <= original / 1.2 + 1e-9,
        "{allocation}"
    );
    let layers = allocation["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for l in layers {
        let (dense, fused) = (
            l["measured"][0].as_f64().unwrap(),
            l["measured"][1].as_f64().unwrap(),
        );
        assert!(fused < dense, "{l}");
    }
    assert!(report["latency"]["converted_ms"].as_f64().unwrap() > 0.0);
}

/// With `--engine ort` the latency budget times each candidate layer fused inside the whole
/// model (ONNX Runtime's blocked layout reorders tensors around a DlqConv, never around a Conv
/// among Convs), in pairs against the original, and keeps only gains beyond the noise: every
/// layer it converts made the whole model faster there, and the report says how it timed. On
/// ResNet-20, where ORT's dense Convs take a few hundredths of a millisecond, even a 1.01x budget
/// may find too few such layers: then the refusal is the budget's, naming the target.
#[test]
fn an_ort_latency_budget_times_layers_in_the_whole_model() {
    let test = "an_ort_latency_budget_times_layers_in_the_whole_model";
    let Some(model) = common::shared_model(test, "resnet20-cifar10.onnx") else {
        return;
    };
    if ort_python(test).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r20.onnx");
    let o = common::run(&[
        common::path_str(&model),
        common::path_str(&out),
        "--target-speedup",
        "1.01",
        "--form",
        "fused",
        "--engine",
        "ort",
        "--json",
    ]);
    if !o.status.success() {
        let err = common::stderr(&o);
        assert!(
            err.contains("--target-speedup: a 1.01x speed-up") && !out.exists(),
            "{err}"
        );
        return;
    }
    let report: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    let measured = &report["allocation"]["measured"];
    let source = measured["source"].as_str().unwrap();
    assert!(
        source.starts_with("ONNX Runtime") && source.contains("in the whole model"),
        "{source}"
    );
    for l in report["allocation"]["layers"].as_array().unwrap() {
        let (before, after) = (
            l["measured"][0].as_f64().unwrap(),
            l["measured"][1].as_f64().unwrap(),
        );
        assert_eq!(before, measured["original"].as_f64().unwrap(), "{l}");
        assert!(after < before, "{l}");
    }
}

/// `--form dense` on a whole model: the file shrinks, and after loading, both engines run the
/// original graph (the kernel subgraphs fold into constant weights) — with per-subspace
/// codebooks, and with palettes in float16 scaled per channel (their Casts and Mul fold too).
#[test]
fn compact_models_are_smaller_and_fold_to_the_original_graph() {
    let test = "compact_models_are_smaller_and_fold_to_the_original_graph";
    let (model, shape) = match common::shared_model(test, "squeezenet1.1.onnx") {
        Some(sq) => (sq, [1, 3, 224, 224]),
        None => (common::default_model(), [1, 3, 8, 8]),
    };
    let tmp = tempfile::tempdir().unwrap();
    let palettes = ["--shared-codebook", "--channel-scale", "--f16-palette"];
    for (i, extra) in [&[][..], &palettes[..]].into_iter().enumerate() {
        let out = tmp.path().join(format!("compact{i}.onnx"));
        let mut args = vec![
            common::path_str(&model),
            common::path_str(&out),
            "--all",
            "--method",
            "vq",
            "--subspace",
            "2",
            "--k",
            "256",
            "--form",
            "dense",
            "--no-latency",
        ];
        args.extend(extra);
        let o = common::run(&args);
        assert!(o.status.success(), "{extra:?}: {}", common::stderr(&o));
        // With N′ = 2 and K = 256, rebuilding conv10's 512k-weight kernel outgrows its codebook
        // more than tract's own constant folding allows: onnx-dlq's runner folds it (and every
        // other compact kernel) itself, so the plan is the original's.
        let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
        assert!(
            size(&out) * 2 < size(&model),
            "{extra:?}: {} -> {} bytes",
            size(&model),
            size(&out)
        );
        compact_sizes_add_up_in_diff_and_verify(test, &model, &out);
        let original = onnx_dlq::onnx::model::load(&model).unwrap();
        let compact = onnx_dlq::onnx::model::load(&out).unwrap();
        let ops = |m: &OnnxModel| Runner::new(m, &shape).unwrap().op_counts();
        assert_eq!(ops(&compact), ops(&original), "{extra:?}");
        if let Some(python) = ort_python(test) {
            assert_eq!(
                common::ort_optimized_ops(&python, &out),
                common::ort_optimized_ops(&python, &model),
                "{extra:?}"
            );
        }
    }
}

/// `diff`'s bytes per layer account for the whole change of initializer bytes (every other
/// initializer is untouched), every converted layer shrinks, and `verify` reports both file
/// sizes.
fn compact_sizes_add_up_in_diff_and_verify(
    test: &str,
    model: &std::path::Path,
    out: &std::path::Path,
) {
    let json = |args: &[&str]| -> serde_json::Value {
        let o = common::run(args);
        assert!(o.status.success(), "{test}: {}", common::stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (a, b) = (common::path_str(model), common::path_str(out));
    let d = json(&["diff", a, b, "--json"]);
    let u = |v: &serde_json::Value| v.as_u64().unwrap();
    let layers = d["layers"].as_array().unwrap();
    assert!(!layers.is_empty(), "{test}: {d}");
    let (mut before, mut after) = (0, 0);
    for l in layers {
        let (lb, la) = (u(&l["bytes_before"]), u(&l["bytes_after"]));
        // Layers the compact form would not shrink (a 1×1 layer with as many sub-vectors per
        // subspace as K) are left original by `--all`.
        assert!(la < lb, "{test}: {l}");
        (before, after) = (before + lb, after + la);
    }
    assert_eq!(
        before - after,
        u(&d["initializer_bytes_before"]) - u(&d["initializer_bytes_after"]),
        "{test}: {d}"
    );
    let v = json(&["verify", a, b, "--samples", "2", "--runs", "1", "--json"]);
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    assert_eq!(u(&v["original"]["file_bytes"]), size(model), "{test}: {v}");
    assert_eq!(u(&v["converted"]["file_bytes"]), size(out), "{test}: {v}");
}

/// The fused form takes over the Relu that alone follows a converted Conv (attribute
/// `activation`): on the README model (Conv → Relu four times; conv1, with 3 input channels,
/// is not converted) only conv1's Relu is left, and the output equals the standard-operator
/// form's, which keeps its Relus.
#[test]
fn the_fused_form_absorbs_sole_relus_and_equals_the_ops_form() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::default_model();
    let convert = |form: &str| {
        let out = tmp.path().join(format!("{form}.onnx"));
        let o = common::run(&[
            common::path_str(&model),
            common::path_str(&out),
            "--all",
            "--ratio",
            "4",
            "--form",
            form,
            "--no-latency",
        ]);
        assert!(o.status.success(), "{}", common::stderr(&o));
        onnx_dlq::onnx::model::load(&out).unwrap()
    };
    let (ops, fused) = (convert("ops"), convert("fused"));
    let count = |m: &OnnxModel, op: &str| {
        m.graph()
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some(op))
            .count()
    };
    assert_eq!(count(&fused, "DlqConv"), 3);
    assert_eq!(count(&fused, "Relu"), 1);
    assert_eq!(count(&ops, "Relu"), 4);
    let shape = [2, 3, 8, 8];
    let x = common::input_like(&shape, 9);
    let want = Runner::new(&ops, &shape).unwrap().run(&x).unwrap();
    let got = Runner::new(&fused, &shape).unwrap().run(&x).unwrap();
    Approximation::Engines.assert_close("fused (Relu absorbed) vs ops", &got, &want);
}
