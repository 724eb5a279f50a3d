//! `verify` and `convert --verify`: accuracy of both models on a labelled set, agreement,
//! multiplications and latency; the baselines through tract against the shared ONNX Runtime
//! figures; bad data gets a clear error.

mod common;

use onnx_dlq::eval::approx::{Approximation, BASELINE_ACCURACY};
use serde_json::Value;

/// The default model's test top-1 as measured by ONNX Runtime (models/README.md).
const DIGITS_TOP1: f64 = 0.9917;
/// ResNet-20 on the shared CIFAR-10 subset through ONNX Runtime (../shared/README.md).
const RESNET20_TOP1: f64 = 0.8135;
const RESNET20_TOP5: f64 = 0.9875;
const RESNET56_TOP1: f64 = 0.8315;
const RESNET56_TOP5: f64 = 0.9920;
/// SqueezeNet 1.1 on the shared ImageNet sample through ONNX Runtime (../shared/README.md).
const SQUEEZENET_TOP1: f64 = 0.5960;
const SQUEEZENET_TOP5: f64 = 0.8020;

fn digits_data() -> [String; 4] {
    let repo = common::repo();
    [
        "--data".into(),
        repo.join("models/digits-test").display().to_string(),
        "--preprocess".into(),
        repo.join("models/digits-cnn.preprocess.json")
            .display()
            .to_string(),
    ]
}

fn json(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "{}", common::stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", common::stdout(o)))
}

#[test]
fn a_model_verified_against_itself_agrees_exactly() {
    let m = common::default_model();
    let mut args = vec![
        "verify",
        common::path_str(&m),
        common::path_str(&m),
        "--json",
        "--runs",
        "3",
    ];
    let data = digits_data();
    args.extend(data.iter().map(String::as_str));
    let j = json(&common::run(&args));
    assert_eq!(j["samples"], 360);
    assert_eq!(j["max_abs_diff"], 0.0);
    assert_eq!(j["top1_agreement"], 1.0);
    assert_eq!(j["accuracy_drop"], 0.0);
    // A model against itself: no image lost or gained, so its drop has no noise.
    assert_eq!(j["top1_change"]["images_lost"], 0);
    assert_eq!(j["top1_change"]["images_gained"], 0);
    assert_eq!(j["top1_change"]["standard_error"], 0.0);
    let top1 = j["original"]["top1"].as_f64().unwrap();
    assert!(
        (top1 - DIGITS_TOP1).abs() <= BASELINE_ACCURACY,
        "tract top-1 {top1} vs ONNX Runtime {DIGITS_TOP1}"
    );
    assert!(j["original"]["top5"].as_f64().unwrap() >= top1);
    let lat = &j["original"]["latency_ms"];
    assert!(lat["min"].as_f64().unwrap() <= lat["median"].as_f64().unwrap());
    assert!(lat["median"].as_f64().unwrap() <= lat["max"].as_f64().unwrap());
    assert_eq!(j["multiplication_ratio"], 1.0);
}

#[test]
fn convert_then_verify_reports_accuracy_and_cost() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("digits-dl.onnx");
    let m = common::default_model();
    let mut args = vec![
        common::path_str(&m),
        common::path_str(&out),
        "--all",
        "--ratio",
        "4",
        "--verify",
        "--json",
        "--runs",
        "2",
    ];
    let data = digits_data();
    args.extend(data.iter().map(String::as_str));
    let j = json(&common::run(&args));
    let (c, v) = (&j["convert"], &j["verify"]);
    assert!(!c["layers"].as_array().unwrap().is_empty());
    // verify counts multiplications on the same graphs as convert does.
    assert_eq!(
        v["original"]["multiplications"],
        c["multiplications_before"]
    );
    assert_eq!(
        v["converted"]["multiplications"],
        c["multiplications_after"]
    );
    assert!(v["multiplication_ratio"].as_f64().unwrap() > 1.5);
    let (a, b) = (
        v["original"]["top1"].as_f64().unwrap(),
        v["converted"]["top1"].as_f64().unwrap(),
    );
    let drop = v["accuracy_drop"].as_f64().unwrap();
    assert!((a - b - drop).abs() < 1e-12);
    // The drop is the images lost less those gained, over the samples.
    let change = &v["top1_change"];
    let (lost, gained) = (
        change["images_lost"].as_f64().unwrap(),
        change["images_gained"].as_f64().unwrap(),
    );
    let n = v["samples"].as_f64().unwrap();
    assert!((drop - (lost - gained) / n).abs() < 1e-9, "{change}");
    assert!(change["standard_error"].as_f64().unwrap() >= 0.0);
    assert!(
        v["max_abs_diff"].as_f64().unwrap() > 0.0,
        "a converted model differs"
    );
    assert!(v["top1_agreement"].as_f64().unwrap() > 0.5);

    // Without data: seeded random inputs, no accuracy, the table form.
    let o = common::run(&["verify", common::path_str(&m), common::path_str(&out)]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let text = common::stdout(&o);
    assert!(text.contains("samples 8;"), "{text}");
    assert!(text.contains("converted "), "{text}");
}

#[test]
fn bad_verify_data_gets_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let m = common::default_model();
    let ms = common::path_str(&m);
    let repo = common::repo();
    let spec = repo.join("models/digits-cnn.preprocess.json");
    let set = tmp.path().join("set");
    std::fs::create_dir(&set).unwrap();
    std::fs::write(set.join("classes.txt"), "a\nb\n").unwrap();
    let cases: [(&str, &str, &str); 4] = [
        (
            "file,label\nx.png,7\n",
            "label 7 is out of range",
            "label out of range",
        ),
        ("name;label\n", "expected `file,label`", "bad header"),
        (
            "file,label\nmissing.png,1\n",
            "missing.png",
            "missing image",
        ),
        (
            "file,label\nbad.png,1\n",
            "cannot decode image",
            "unreadable image",
        ),
    ];
    std::fs::write(set.join("bad.png"), b"not a png").unwrap();
    for (labels, expected, what) in cases {
        std::fs::write(set.join("labels.csv"), labels).unwrap();
        let o = common::run(&[
            "verify",
            ms,
            ms,
            "--data",
            common::path_str(&set),
            "--preprocess",
            common::path_str(&spec),
        ]);
        assert_eq!(o.status.code(), Some(1), "{what}");
        let err = common::stderr(&o);
        assert!(err.contains(expected), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
    // A spec that feeds another input, and one that is not JSON.
    let other = tmp.path().join("other.json");
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("\"input\": \"input\"", "\"input\": \"data_0\"");
    std::fs::write(&other, text).unwrap();
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{").unwrap();
    let digits = repo.join("models/digits-test");
    for (spec, expected) in [(&other, "feeds `data_0`"), (&bad, "is not valid")] {
        let o = common::run(&[
            "verify",
            ms,
            ms,
            "--data",
            common::path_str(&digits),
            "--preprocess",
            common::path_str(spec),
        ]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            common::stderr(&o).contains(expected),
            "{}",
            common::stderr(&o)
        );
    }
    // A one-channel model fed the three colour channels of the images.
    let gray = tmp.path().join("gray.onnx");
    let spec1 = common::ConvSpec {
        batch: 1,
        n: 1,
        m: 4,
        h: 8,
        w: 8,
        kh: 3,
        kw: 3,
        strides: [1, 1],
        dilations: [1, 1],
        pads: [1, 1, 1, 1],
        auto_pad: None,
        bias: false,
        opset: 13,
    };
    let proto = common::conv_model(&spec1, &[0.1; 36], &[]);
    std::fs::write(&gray, prost::Message::encode_to_vec(&proto)).unwrap();
    let gray_spec = tmp.path().join("gray.json");
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("\"input\": \"input\"", "\"input\": \"x\"");
    std::fs::write(&gray_spec, text).unwrap();
    let gs = common::path_str(&gray);
    let o = common::run(&[
        "verify",
        gs,
        gs,
        "--data",
        common::path_str(&digits),
        "--preprocess",
        common::path_str(&gray_spec),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        common::stderr(&o).contains("has shape [1, 1, 8, 8]")
            && common::stderr(&o).contains("give [1, 3, 8, 8]"),
        "{}",
        common::stderr(&o)
    );
    // --data without --preprocess is a usage error.
    let o = common::run(&["verify", ms, ms, "--data", common::path_str(&digits)]);
    assert_eq!(o.status.code(), Some(2));
}

/// `verify MODEL MODEL` on a shared CIFAR-10 model: its baseline through tract against the
/// ONNX Runtime figures.
fn cifar_baseline_matches_onnx_runtime(test: &str, name: &str, want_top1: f64, want_top5: f64) {
    cifar_baseline_in(test, name, "tract", [want_top1, want_top5]);
}

/// [`cifar_baseline_matches_onnx_runtime`] in `engine`.
fn cifar_baseline_in(test: &str, name: &str, engine: &str, [want_top1, want_top5]: [f64; 2]) {
    let Some(shared) = common::shared(test) else {
        return;
    };
    let m = shared.join(format!("models/{name}.onnx"));
    let o = common::run(&[
        "verify",
        "--engine",
        engine,
        common::path_str(&m),
        common::path_str(&m),
        "--data",
        common::path_str(&shared.join("data/cifar10-test")),
        "--preprocess",
        common::path_str(&shared.join(format!("models/{name}.preprocess.json"))),
        "--runs",
        "3",
        "--json",
    ]);
    let j = json(&o);
    assert_eq!(j["samples"], 2000);
    let (top1, top5) = (
        j["original"]["top1"].as_f64().unwrap(),
        j["original"]["top5"].as_f64().unwrap(),
    );
    assert!(
        (top1 - want_top1).abs() <= BASELINE_ACCURACY,
        "{name} top-1 {top1} vs {want_top1}"
    );
    assert!(
        (top5 - want_top5).abs() <= BASELINE_ACCURACY,
        "{name} top-5 {top5} vs {want_top5}"
    );
}

#[test]
fn resnet20_baseline_through_tract_matches_onnx_runtime() {
    cifar_baseline_matches_onnx_runtime(
        "resnet20_baseline_through_tract_matches_onnx_runtime",
        "resnet20-cifar10",
        RESNET20_TOP1,
        RESNET20_TOP5,
    );
}

/// `verify --engine ort` reproduces the shared ONNX Runtime baseline and names the engine.
#[test]
fn resnet20_baseline_through_the_onnx_runtime_engine() {
    let test = "resnet20_baseline_through_the_onnx_runtime_engine";
    if common::ort_python(test).is_none() {
        return;
    }
    cifar_baseline_in(
        test,
        "resnet20-cifar10",
        "ort",
        [RESNET20_TOP1, RESNET20_TOP5],
    );
}

/// Converted digits model verified in both engines on the same random inputs: the same
/// agreement and output differences (up to the engines' own rounding), ONNX Runtime named.
#[test]
fn verify_in_onnx_runtime_agrees_with_tract() {
    let test = "verify_in_onnx_runtime_agrees_with_tract";
    if common::ort_python(test).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("c.onnx");
    let m = common::default_model();
    let o = common::run(&[
        "convert",
        common::path_str(&m),
        common::path_str(&out),
        "--all",
        "--ratio",
        "4",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let verify = |engine: &str| {
        json(&common::run(&[
            "verify",
            common::path_str(&m),
            common::path_str(&out),
            "--engine",
            engine,
            "--samples",
            "16",
            "--runs",
            "3",
            "--json",
        ]))
    };
    let (t, r) = (verify("tract"), verify("ort"));
    assert!(
        r["engine"].as_str().unwrap().starts_with("ONNX Runtime 1."),
        "{r}"
    );
    assert!(t["engine"].as_str().unwrap().starts_with("tract"), "{t}");
    let (lt, lr) = (
        t["relative_l2"].as_f64().unwrap(),
        r["relative_l2"].as_f64().unwrap(),
    );
    assert!(lt > 1e-4, "the conversion changes the outputs: {t}");
    assert!(
        (lt - lr).abs() <= 1e-3 * lt.max(1.0),
        "tract {lt} vs ORT {lr}"
    );
    assert!(r["converted"]["latency_ms"]["median"].as_f64().unwrap() > 0.0);
    assert_eq!(t["samples"], r["samples"]);
}

/// Without a usable ONNX Runtime, `--engine ort` says what to provide.
#[test]
fn verify_in_onnx_runtime_without_the_library_says_what_to_provide() {
    let m = common::default_model();
    let o = common::bin()
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .args([
            "verify",
            common::path_str(&m),
            common::path_str(&m),
            "--engine",
            "ort",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(
        e.contains("ORT_DYLIB_PATH is /nonexistent/libonnxruntime.so, which is not a file"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn resnet56_baseline_through_tract_matches_onnx_runtime() {
    cifar_baseline_matches_onnx_runtime(
        "resnet56_baseline_through_tract_matches_onnx_runtime",
        "resnet56-cifar10",
        RESNET56_TOP1,
        RESNET56_TOP5,
    );
}

#[test]
fn stages_convert_cumulatively_and_report_each_stage() {
    let m = common::default_model();
    let mut args = vec![
        "stages",
        common::path_str(&m),
        "--stages",
        "conv2,conv3,conv4",
        "--ratios",
        "4",
        "--methods",
        "dl,vq",
        "--samples",
        "120",
        "--json",
    ];
    let data = digits_data();
    args.extend(data.iter().map(String::as_str));
    let j = json(&common::run(&args));
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        1 + 2 * 3,
        "the original, then 2 methods × 3 stages"
    );
    assert_eq!(j["samples"], 120);
    assert!(rows[0]["method"].is_null());
    assert_eq!(rows[0]["top1_agreement"], 1.0);
    for method in ["dl", "vq"] {
        let r: Vec<&Value> = rows.iter().filter(|r| r["method"] == method).collect();
        assert_eq!(r.len(), 3);
        let layers: Vec<usize> = r
            .iter()
            .map(|x| x["layers"].as_array().unwrap().len())
            .collect();
        assert_eq!(layers, [1, 2, 3], "{method}: stages are cumulative");
        for x in &r {
            let e = x["weight_error"].as_f64().unwrap();
            assert!(e > 0.0 && e < 1.0, "{method}: combined weight error {e}");
        }
        let speedups: Vec<f64> = r.iter().map(|x| x["speedup"].as_f64().unwrap()).collect();
        assert!(
            speedups.windows(2).all(|w| w[1] > w[0]) && speedups[0] > 1.0,
            "{method}: {speedups:?}"
        );
    }
    // An unknown stage prefix is an error naming it.
    let o = common::run(&[
        "stages",
        common::path_str(&m),
        "--stages",
        "nope",
        "--ratios",
        "4",
        &data[0],
        &data[1],
        &data[2],
        &data[3],
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        common::stderr(&o).contains("stage `nope`"),
        "{}",
        common::stderr(&o)
    );
}

/// `stages --engine ort`: the same conversions (no calibration, so the same codebooks) run in
/// ONNX Runtime, named in the report, classify as they do in tract (up to the engines' own
/// rounding), and every row has a latency.
#[test]
fn stages_run_in_onnx_runtime_as_in_tract() {
    let test = "stages_run_in_onnx_runtime_as_in_tract";
    if common::ort_python(test).is_none() {
        return;
    }
    let m = common::default_model();
    let stages = |engine: &str| {
        let mut args = vec![
            "stages",
            common::path_str(&m),
            "--stages",
            "conv2,conv3",
            "--ratios",
            "4",
            "--methods",
            "dl",
            "--samples",
            "100",
            "--runs",
            "2",
            "--engine",
            engine,
            "--json",
        ];
        let data = digits_data();
        args.extend(data.iter().map(String::as_str));
        json(&common::run(&args))
    };
    let (t, o) = (stages("tract"), stages("ort"));
    assert!(t["engine"].as_str().unwrap().starts_with("tract "), "{t}");
    assert!(
        o["engine"].as_str().unwrap().starts_with("ONNX Runtime "),
        "{o}"
    );
    let (rt, ro) = (t["rows"].as_array().unwrap(), o["rows"].as_array().unwrap());
    assert_eq!(rt.len(), 3, "the original and two stages");
    assert_eq!(ro.len(), rt.len());
    for (a, b) in rt.iter().zip(ro) {
        assert_eq!(a["layers"], b["layers"]);
        assert_eq!(a["multiplications"], b["multiplications"]);
        let (ta, tb) = (a["top1"].as_f64().unwrap(), b["top1"].as_f64().unwrap());
        assert!(
            (ta - tb).abs() <= 0.011,
            "{test}: top-1 {ta} in tract, {tb} in ORT"
        );
        for r in [a, b] {
            assert!(r["latency_ms"].as_f64().unwrap() > 0.0, "{test}: {r}");
        }
    }
}

/// The fp16 SqueezeNet as published (f16 input, f16 weights, IR 3): its baseline through tract
/// reproduces the ONNX Runtime figures, and a converted copy keeps f16 weights and input and
/// still classifies about as well.
#[test]
fn fp16_squeezenet_baseline_and_converted_model_through_tract() {
    let test = "fp16_squeezenet_baseline_and_converted_model_through_tract";
    let Some(shared) = common::shared(test) else {
        return;
    };
    let m = shared.join("models/squeezenet1.1-fp16.onnx");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fp16-dl.onnx");
    let o = common::run(&[
        "convert",
        common::path_str(&m),
        common::path_str(&out),
        "--layers",
        "fire9/expand3x3_1",
        "--ratio",
        "4",
        "--verify",
        "--data",
        common::path_str(&shared.join("data/imagenet-sample")),
        "--preprocess",
        common::path_str(&shared.join("models/squeezenet1.1-fp16.preprocess.json")),
        "--runs",
        "1",
        "--json",
    ]);
    let j = json(&o);
    let v = &j["verify"];
    assert_eq!(v["samples"], 500, "{j}");
    let (top1, top5) = (
        v["original"]["top1"].as_f64().unwrap(),
        v["original"]["top5"].as_f64().unwrap(),
    );
    assert!(
        (top1 - SQUEEZENET_TOP1).abs() <= BASELINE_ACCURACY,
        "top-1 {top1} vs {SQUEEZENET_TOP1}"
    );
    assert!(
        (top5 - SQUEEZENET_TOP5).abs() <= BASELINE_ACCURACY,
        "top-5 {top5} vs {SQUEEZENET_TOP5}"
    );
    // One layer at ρ = 4 costs a few points at most, never the model.
    let converted = v["converted"]["top1"].as_f64().unwrap();
    assert!(converted > top1 - 0.05, "converted top-1 {converted}");
    assert!(v["top1_agreement"].as_f64().unwrap() > 0.85, "{v}");
    // The output is still an f16 model: f16 input and f16 weights.
    let model = onnx_dlq::onnx::model::load(&out).unwrap();
    let f16 = onnx_dlq::proto::tensor_proto::DataType::Float16 as i32;
    let input = &model.proto.graph.as_ref().unwrap().input[0];
    let elem = match &input.r#type.as_ref().unwrap().value {
        Some(onnx_dlq::proto::type_proto::Value::TensorType(t)) => t.elem_type,
        other => panic!("input type {other:?}"),
    };
    assert_eq!(elem, Some(f16));
    // Every float initializer (the new atoms, coefficients and biases included) is f16.
    let float = onnx_dlq::proto::tensor_proto::DataType::Float as i32;
    let inits = &model.proto.graph.as_ref().unwrap().initializer;
    assert!(inits.iter().all(|t| t.data_type != Some(float)));
    assert!(inits.iter().any(|t| t.data_type == Some(f16)));
    // ONNX Runtime runs the converted f16 model natively in f16 (after onnx.checker); tract
    // computes in f32, so they agree to f16 precision.
    if let Some(py) = common::ort_python(test) {
        let shape = [1, 3, 224, 224];
        let x = common::input_like(&shape, 3);
        let ort = common::run_ort(&py, &out, &x);
        let tract = onnx_dlq::engine::runner::Runner::new(&model, &shape)
            .unwrap()
            .run(&x)
            .unwrap();
        let d = common::max_abs_diff(&ort, &tract);
        let bound = Approximation::EnginesF16.bound(&tract);
        eprintln!("ONNX Runtime (f16) vs tract (f32): max |Δ| {d}, bound {bound}");
        Approximation::EnginesF16.assert_close("ONNX Runtime (f16) vs tract (f32)", &ort, &tract);
    }
}
