//! End-to-end conversion: the default model and the shared SqueezeNet / ResNet-56 are converted,
//! the results run in tract and in ONNX Runtime (after onnx.checker), the per-layer
//! multiplication reduction matches the paper's formula, and real-weight rewrites are exact.

mod common;

use std::path::Path;

use ndarray::Ix4;
use onnx_dlq::codebook::{self, ClusterParams, Method};
use onnx_dlq::convert::{self, ConvertOptions, ConvertReport, Selection};
use onnx_dlq::engine::runner::Runner;
use onnx_dlq::eval::approx::{self, Approximation};
use onnx_dlq::lower::{self, GraphPatch};
use onnx_dlq::onnx::model::{self, ExternalData};
use onnx_dlq::{analysis::select, analysis::shapes, onnx::tensor};

fn opts(selection: Selection, method: Method, ratio: f64) -> ConvertOptions {
    ConvertOptions {
        selection,
        params: ClusterParams::new(method, ratio).check().unwrap(),
        input_shapes: vec![],
        external: ExternalData::Auto,
        calibration: None,
        target_speedup: None,
        target_compression: None,
        measure_latency: false,
        form: Default::default(),
        finetune: None,
        engine: None,
        int8: None,
    }
}

/// Runs `converted` in tract and (when available) ONNX Runtime on the same input; returns the
/// tract output.
fn run_both(test: &str, converted: &Path, shape: &[usize]) -> ndarray::ArrayD<f32> {
    let m = model::load(converted).unwrap();
    let x = common::input_like(shape, 1);
    let tract = Runner::new(&m, shape)
        .unwrap_or_else(|e| panic!("tract cannot prepare {}: {e:#}", converted.display()))
        .run(&x)
        .unwrap();
    assert!(tract.iter().all(|v| v.is_finite()));
    if let Some(py) = common::ort_python(test) {
        let ort = common::run_ort(&py, converted, &x);
        Approximation::Engines.assert_close(
            &format!("{}: ONNX Runtime against tract", converted.display()),
            &ort,
            &tract,
        );
    }
    tract
}

/// Every converted layer's counted reduction equals the formula's ρ = T_o / T_dl (or T_vq) within
/// [`approx::RATIO_VS_FORMULA`]. The paper's formula counts atom responses at the m×m output positions; a strided Conv
/// needs them at every input position, so its count is taken over the H×W input positions.
fn assert_ratios_follow_the_formula(original: &Path, report: &ConvertReport) {
    let m = model::load(original).unwrap();
    let sh = shapes::infer(&m, &[]).unwrap();
    let layers = select::conv_layers(&m);
    assert!(!report.layers.is_empty());
    for l in &report.layers {
        let layer = layers.iter().find(|x| x.name == l.name).unwrap();
        let input = sh.get(&layer.input).unwrap();
        let output = sh.get(&layer.output).unwrap();
        let [mm, n, kh, kw] = l.kernel;
        let (hw_in, hw_out) = ((input[2] * input[3]) as f64, (output[2] * output[3]) as f64);
        let t_o = hw_out * (kh * kw * mm * n) as f64;
        let t_new = match l.method {
            Method::Dl => hw_in * (n * l.l + l.alpha.unwrap() * l.subspaces * l.k) as f64,
            Method::Vq => hw_in * (n * l.k_vq) as f64,
        };
        let formula = t_o / t_new;
        assert!(
            (l.achieved_ratio / formula - 1.0).abs() <= approx::RATIO_VS_FORMULA,
            "{}: counted {:.3}, formula {formula:.3}",
            l.name,
            l.achieved_ratio
        );
        if hw_in == hw_out {
            // Where the paper's assumption holds, the counted ρ is the requested one up to
            // the rounding of K_vq and L.
            assert!(
                (l.achieved_ratio / report.params.ratio - 1.0).abs() <= approx::RATIO_VS_REQUESTED,
                "{}: {:.3}",
                l.name,
                l.achieved_ratio
            );
        }
    }
}

#[test]
fn default_model_converts_and_runs_in_both_engines() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("digits-dl.onnx");
    let report_path = tmp.path().join("report.json");
    let o = common::run(&[
        common::path_str(&common::default_model()),
        common::path_str(&out),
        "--all",
        "--ratio",
        "4",
        "--report",
        common::path_str(&report_path),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let table = common::stdout(&o);
    assert!(
        table.contains("conv4") && table.contains("skipped conv1"),
        "{table}"
    );
    assert!(
        common::stderr(&o).contains("[3/3] conv4"),
        "progress lines on stderr"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["layers"].as_array().unwrap().len(), 3);
    assert!(
        report["multiplications_after"].as_u64().unwrap()
            < report["multiplications_before"].as_u64().unwrap()
    );
    // The latency check: both models timed, the comparison printed, a warning when slower
    // beyond the noise of the paired runs and none within it.
    let latency = &report["latency"];
    let (before_ms, after_ms) = (
        latency["original_ms"].as_f64().unwrap(),
        latency["converted_ms"].as_f64().unwrap(),
    );
    assert!(before_ms > 0.0 && after_ms > 0.0, "{latency}");
    assert!(table.contains("latency in tract"), "{table}");
    let warned = common::stderr(&o).contains("warning: the converted model runs");
    let within_noise = latency["within_noise"].as_bool().unwrap();
    assert_eq!(warned, after_ms > before_ms && !within_noise, "{latency}");
    assert_eq!(
        table.contains("the same speed within noise"),
        within_noise,
        "{table}"
    );
    let converted = run_both(
        "default_model_converts_and_runs_in_both_engines",
        &out,
        &[3, 3, 8, 8],
    );
    assert_eq!(converted.shape(), &[3, 10]);
    let r: ConvertReport = {
        // Same conversion through the library, for the formula check.
        convert::convert(
            &common::default_model(),
            &tmp.path().join("again.onnx"),
            &opts(
                Selection::All {
                    fully_connected: true,
                },
                Method::Dl,
                4.0,
            ),
        )
        .unwrap()
    };
    assert_ratios_follow_the_formula(&common::default_model(), &r);
    // Same input, flags and seed: the same bytes.
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(tmp.path().join("again.onnx")).unwrap()
    );
}

#[test]
fn squeezenet_fire8_at_ratio_20() {
    let Some(sq) = common::shared_model("squeezenet_fire8_at_ratio_20", "squeezenet1.1.onnx")
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sq-fire8.onnx");
    let o = common::run(&[
        common::path_str(&sq),
        common::path_str(&out),
        "--layers",
        "fire8/expand3x3_1",
        "--ratio",
        "20",
        "--json",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let report: ConvertReport =
        serde_json::from_slice(&o.stdout).expect("--json prints the report");
    assert_ratios_follow_the_formula(&sq, &report);
    let y = run_both("squeezenet_fire8_at_ratio_20", &out, &[1, 3, 224, 224]);
    assert_eq!(y.len(), 1000);
}

#[test]
fn squeezenet_and_resnet56_convert_all_at_ratio_10() {
    let Some(shared) = common::shared("squeezenet_and_resnet56_convert_all_at_ratio_10") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for (file, shape) in [
        ("squeezenet1.1.onnx", [1, 3, 224, 224]),
        ("resnet56-cifar10.onnx", [1, 3, 32, 32]),
    ] {
        let src = shared.join("models").join(file);
        let out = tmp.path().join(file);
        let report = convert::convert(
            &src,
            &out,
            &opts(
                Selection::All {
                    fully_connected: true,
                },
                Method::Dl,
                10.0,
            ),
        )
        .unwrap();
        assert_ratios_follow_the_formula(&src, &report);
        assert!(
            report.file_bytes_after < report.file_bytes_before,
            "{file}: the file should shrink"
        );
        run_both(
            "squeezenet_and_resnet56_convert_all_at_ratio_10",
            &out,
            &shape,
        );
    }
}

#[test]
fn real_weights_rewrite_exactly_at_opset_7() {
    let Some(sq) = common::shared_model(
        "real_weights_rewrite_exactly_at_opset_7",
        "squeezenet1.1.onnx",
    ) else {
        return;
    };
    let m = model::load(&sq).unwrap();
    assert_eq!(m.default_opset(), 7);
    let layers = select::conv_layers(&m);
    let (layer, _) = select::resolve(&layers, "fire8/expand3x3_1").unwrap();
    let w = m
        .tensor_f32(m.initializer(&layer.weight).unwrap())
        .unwrap()
        .into_dimensionality::<Ix4>()
        .unwrap();
    for method in [Method::Dl, Method::Vq] {
        let params = ClusterParams::new(method, 20.0).check().unwrap();
        let cb = codebook::learn(w.view(), &params).unwrap();
        let sh = shapes::infer(&m, &[]).unwrap();
        let mut converted = m.clone();
        lower::apply(
            &mut converted,
            GraphPatch {
                layers: vec![lower::lower(&m, layer, &cb, &sh, "{}").unwrap()],
            },
        )
        .unwrap();
        let mut dense = m.clone();
        let rec = cb.reconstruct();
        let t = common::initializer_mut(&mut dense, layer.weight.as_str());
        tensor::set_f32(
            t,
            rec.shape(),
            rec.as_slice().unwrap(),
            tensor::FloatType::F32,
        );
        // Compare the layer's own output: expose it as the graph output.
        for g in [converted.graph_mut(), dense.graph_mut()] {
            g.output = vec![common::value_info("fire8/expand3x3_1", 1, None)];
        }
        let x = common::input_like(&[1, 3, 224, 224], 5);
        let want = Runner::new(&dense, &[1, 3, 224, 224])
            .unwrap()
            .run(&x)
            .unwrap();
        let got = Runner::new(&converted, &[1, 3, 224, 224])
            .unwrap()
            .run(&x)
            .unwrap();
        Approximation::Exact.assert_close(&format!("{method:?}"), &got, &want);
    }
}

#[test]
fn output_equal_to_input_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("m.onnx");
    std::fs::copy(common::default_model(), &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    let alias = tmp.path().join(".").join("m.onnx");
    let o = common::run(&[
        common::path_str(&copy),
        common::path_str(&alias),
        "--layers",
        "conv2",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        common::stderr(&o).contains("refusing to write"),
        "{}",
        common::stderr(&o)
    );
    assert_eq!(std::fs::read(&copy).unwrap(), before);
    let o = common::run(&[
        common::path_str(&copy),
        common::path_str(&tmp.path().join("o.onnx")),
        "--layers",
        "conv1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        common::stderr(&o).contains("layer `conv1`") && common::stderr(&o).contains("N′ = 8"),
        "{}",
        common::stderr(&o)
    );
    assert!(!tmp.path().join("o.onnx").exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "no stray temporary files"
    );
}

#[test]
fn output_bytes_do_not_depend_on_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for threads in ["1", "2"] {
        let out = tmp.path().join(format!("t{threads}.onnx"));
        let o = common::bin()
            .env("RAYON_NUM_THREADS", threads)
            .args([
                common::path_str(&common::default_model()),
                common::path_str(&out),
                "--all",
                "--ratio",
                "4",
                "--seed",
                "7",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", common::stderr(&o));
        outputs.push(std::fs::read(&out).unwrap());
    }
    assert!(
        outputs[0] == outputs[1],
        "1 and 2 threads wrote different bytes"
    );
}

#[test]
fn everything_but_the_converted_layer_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("conv3.onnx");
    convert::convert(
        &common::default_model(),
        &out,
        &opts(Selection::Named(vec!["conv3".into()]), Method::Dl, 4.0),
    )
    .unwrap();
    let a = model::load(&common::default_model()).unwrap();
    let b = model::load(&out).unwrap();
    assert_eq!(a.proto.opset_import, b.proto.opset_import);
    assert_eq!(
        (
            a.proto.ir_version,
            &a.proto.producer_name,
            &a.proto.doc_string
        ),
        (
            b.proto.ir_version,
            &b.proto.producer_name,
            &b.proto.doc_string
        )
    );
    let (ga, gb) = (a.graph(), b.graph());
    assert_eq!(
        (&ga.input, &ga.output, &ga.name),
        (&gb.input, &gb.output, &gb.name)
    );
    // Every other node, in order, byte for byte.
    let kept: Vec<_> = gb
        .node
        .iter()
        .filter(|n| !n.name.as_deref().unwrap_or("").starts_with("conv3/dlq/"))
        .collect();
    let original: Vec<_> = ga
        .node
        .iter()
        .filter(|n| n.name.as_deref() != Some("conv3"))
        .collect();
    assert_eq!(kept, original);
    // Every other initializer byte-identical; the Conv's own weight and bias are gone.
    for t in &ga.initializer {
        let name = t.name.as_deref().unwrap();
        match gb
            .initializer
            .iter()
            .find(|u| u.name.as_deref() == Some(name))
        {
            Some(u) => assert_eq!(u, t, "{name} changed"),
            None => assert!(
                name == "conv3.weight" || name == "conv3.bias",
                "{name} removed"
            ),
        }
    }
    assert!(gb.initializer.iter().all(|t| {
        let n = t.name.as_deref().unwrap();
        n.starts_with("conv3/dlq/") || ga.initializer.iter().any(|u| u.name.as_deref() == Some(n))
    }));
    // The settings are recorded.
    let meta: std::collections::HashMap<_, _> = b
        .proto
        .metadata_props
        .iter()
        .map(|p| (p.key.clone().unwrap(), p.value.clone().unwrap()))
        .collect();
    let settings: serde_json::Value = serde_json::from_str(&meta["onnx-dlq/conv3"]).unwrap();
    assert_eq!(settings["method"], "dl");
    assert_eq!(settings["ratio"], 4.0);
    assert!(meta.contains_key("onnx-dlq/version"));
}

/// `--all` at a ratio a strided layer cannot profit from leaves that layer original and says
/// why; the same layer named explicitly is converted with a warning.
#[test]
fn all_skips_strided_layers_that_would_cost_more() {
    let Some(shared) = common::shared("all_skips_strided_layers_that_would_cost_more") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = shared.join("models/resnet20-cifar10.onnx");
    let mut o = opts(
        Selection::All {
            fully_connected: true,
        },
        Method::Vq,
        3.0,
    );
    let report = convert::convert(&src, &tmp.path().join("a.onnx"), &o).unwrap();
    for name in ["layer2.0.conv1", "layer3.0.conv1"] {
        let s = report.skipped.iter().find(|s| s.name == name).unwrap();
        assert!(
            s.reason.contains("would not save multiplications"),
            "{}",
            s.reason
        );
        assert!(report.layers.iter().all(|l| l.name != name));
    }
    // Every converted layer saves.
    assert!(report.layers.iter().all(|l| l.achieved_ratio > 1.0));
    o.selection = Selection::Named(vec!["layer2.0.conv1".into()]);
    let named = convert::convert(&src, &tmp.path().join("b.onnx"), &o).unwrap();
    assert!(named.layers[0].achieved_ratio < 1.0);
}

/// `--target-compression X`: the compact form with a ρ per layer chosen by bytes saved; the
/// budget's prediction holds for the written file (float16 palettes), and no other form is
/// accepted.
#[test]
fn target_compression_shrinks_the_file_as_predicted() {
    let tmp = tempfile::tempdir().unwrap();
    let input = common::default_model();
    let out = tmp.path().join("small.onnx");
    let o = common::run(&[
        common::path_str(&input),
        common::path_str(&out),
        "--target-compression",
        "2",
        "--f16-palette",
        "--no-latency",
        "--json",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    // Without --method, a size budget uses palettes (N′ = 2).
    let params = &report["params"];
    assert!(
        params["shared"] == true && params["subspace"] == 2,
        "{params}"
    );
    let m = &report["allocation"]["measured"];
    assert_eq!(m["unit"], "bytes", "{m}");
    let (original, predicted) = (
        m["original"].as_f64().unwrap(),
        m["predicted"].as_f64().unwrap(),
    );
    assert!(predicted <= original / 2.0, "{m}");
    let written = std::fs::metadata(&out).unwrap().len() as f64;
    let before = std::fs::metadata(&input).unwrap().len() as f64;
    assert!(
        written <= predicted * 1.1 && written * 1.8 <= before,
        "{written} bytes written, {predicted} predicted, {before} before"
    );
    let converted = onnx_dlq::onnx::model::load(&out).unwrap();
    assert!(converted
        .graph()
        .node
        .iter()
        .all(|n| n.op_type.as_deref() != Some("DlqConv")));
    // --f16-palette: the palettes are stored as float16 (and the prediction counts them so).
    let palettes: Vec<_> = converted
        .graph()
        .initializer
        .iter()
        .filter(|t| t.name.as_deref().unwrap().ends_with("/atoms"))
        .collect();
    assert!(
        !palettes.is_empty() && palettes.iter().all(|t| t.data_type == Some(10)),
        "{:?}",
        palettes
            .iter()
            .map(|t| (&t.name, t.data_type))
            .collect::<Vec<_>>()
    );
    let o = common::run(&[
        common::path_str(&input),
        common::path_str(&tmp.path().join("x.onnx")),
        "--target-compression",
        "2",
        "--form",
        "fused",
    ]);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("--form dense"),
        "{}",
        common::stderr(&o)
    );
    // Per-channel scales multiply a palette: without one they are refused, naming the flag.
    let o = common::run(&[
        common::path_str(&input),
        common::path_str(&tmp.path().join("y.onnx")),
        "--all",
        "--form",
        "dense",
        "--method",
        "vq",
        "--channel-scale",
    ]);
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(e.contains("--channel-scale needs --shared-codebook"), "{e}");
    assert!(!tmp.path().join("y.onnx").exists());
}

/// `--shared-codebook` with `--target-compression`, calibrated in ONNX Runtime: every layer
/// gets a palette of K = 2^b centroids (K and Γ's bits from the budget), the file meets the
/// target as predicted, and calibration reads the first layer's input — the graph input, which
/// ONNX Runtime hands back as a view of a freed buffer unless onnx-dlq reads it itself.
/// Without the compact form the flag is refused.
#[test]
fn shared_palettes_meet_a_size_budget_calibrated_in_onnx_runtime() {
    let test = "shared_palettes_meet_a_size_budget_calibrated_in_onnx_runtime";
    if common::ort_python(test).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = common::default_model();
    let repo = common::repo();
    let out = tmp.path().join("palette.onnx");
    let o = common::run(&[
        common::path_str(&input),
        common::path_str(&out),
        "--target-compression",
        "6",
        "--shared-codebook",
        "--subspace",
        "1",
        "--calibrate",
        common::path_str(&repo.join("models/digits-test")),
        "--calib-samples",
        "20",
        "--preprocess",
        common::path_str(&repo.join("models/digits-cnn.preprocess.json")),
        "--engine",
        "ort",
        "--no-latency",
        "--json",
    ]);
    assert!(o.status.success(), "{test}: {}", common::stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    let layers = report["layers"].as_array().unwrap();
    assert!(!layers.is_empty());
    for l in layers {
        let k = l["k"].as_u64().unwrap();
        assert!(k.is_power_of_two() && (2..=256).contains(&k), "{test}: {l}");
        assert!(l["output_error"].as_f64().is_some(), "{test}: {l}");
    }
    for l in report["allocation"]["layers"].as_array().unwrap() {
        let gain = l["gain"].as_f64().unwrap_or(-1.0);
        assert!(
            gain.is_finite() && gain > 0.0,
            "{test}: end-to-end gain {l}"
        );
    }
    let predicted = report["allocation"]["measured"]["predicted"]
        .as_f64()
        .unwrap();
    let written = std::fs::metadata(&out).unwrap().len() as f64;
    let before = std::fs::metadata(&input).unwrap().len() as f64;
    assert!(
        written <= predicted * 1.05 && written * 5.5 <= before,
        "{test}: {written} bytes written, {predicted} predicted, {before} before"
    );
    let model = onnx_dlq::onnx::model::load(&out).unwrap();
    let packed = model
        .graph()
        .initializer
        .iter()
        .filter(|t| t.name.as_deref().unwrap().ends_with("assignment_packed"))
        .count();
    assert!(packed > 0, "{test}: no layer packs Γ below 8 bits");
    let o = common::run(&[
        common::path_str(&input),
        common::path_str(&tmp.path().join("x.onnx")),
        "--all",
        "--shared-codebook",
        "--form",
        "ops",
    ]);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("--form dense"),
        "{}",
        common::stderr(&o)
    );
}
