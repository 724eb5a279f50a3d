//! `convert --int8`: the compact form written as a QDQ model that ONNX Runtime runs on its
//! integer kernels. Checked in ONNX Runtime: the optimised graph holds no float Conv/Gemm and
//! nothing of the kernels' rebuilding; the integer-kernel run equals, within
//! [`INT8_STEPS`] output quantization steps (or [`INT8_FLOAT_HEAD`] of the largest output when
//! the model's head writes float), the same QDQ model run with every optimisation off (each QuantizeLinear / DequantizeLinear as written around float operators: the float
//! model with the same quantized weights and activations). Bad settings and quantized inputs
//! are refused before anything is written.

mod common;

use std::path::Path;

use onnx_dlq::onnx::build::attr_ints;
use serde_json::Value;

/// Output quantization steps the integer kernels may differ by from the float model with the
/// same quantized weights and activations: a requantization may round a value the other way
/// (a tie, or float rounding in the reference), and a step of one layer's output moves later
/// layers' by about a step. Measured 0 on the default model, ResNet-20 and SqueezeNet when
/// their logits were quantized (their heads now write float: [`INT8_FLOAT_HEAD`]).
const INT8_STEPS: f32 = 2.0;

/// The same, when the model's head writes float (the logits are not quantized): a step that
/// an intermediate requantization rounds the other way reaches the float output unrounded,
/// scaled by the head's weights, so the bound is relative to the largest output. Measured
/// 2.1e-7 of the largest output on the default model, 3.1e-3 on ResNet-20 and 0 on SqueezeNet
/// (whose Softmax follows a float pooling of a quantized tensor).
const INT8_FLOAT_HEAD: f32 = 0.01;

fn repo_path(rel: &str) -> String {
    common::repo().join(rel).display().to_string()
}

/// Converts the default model with `extra` flags into `out` (compact form, calibrated on the
/// first 100 of its images; every layer unless `extra` names them).
fn convert_digits(out: &Path, extra: &[&str]) -> std::process::Output {
    convert_like_digits(&common::default_model(), out, extra)
}

/// [`convert_digits`] of `model`, a model taking the default model's inputs.
fn convert_like_digits(model: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    common::bin()
        .args(digits_args(model, out, extra))
        .output()
        .unwrap()
}

/// The arguments of [`convert_like_digits`].
fn digits_args(model: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let (data, spec) = (
        repo_path("models/digits-test"),
        repo_path("models/digits-cnn.preprocess.json"),
    );
    let mut args = vec![
        common::path_str(model),
        common::path_str(out),
        "--form",
        "dense",
        "--calibrate",
        &data,
        "--preprocess",
        &spec,
        "--calib-samples",
        "100",
        "--no-latency",
        "--json",
    ];
    if !extra.contains(&"--layers") {
        args.push("--all");
    }
    args.extend(extra);
    args.into_iter().map(String::from).collect()
}

/// Runs the int8 checks of `scripts/ort_int8_check.py` on `model`, asserting the integer
/// kernels ran every layer and matched the reference within [`INT8_STEPS`].
fn check_in_ort(python: &Path, model: &Path, input: &ndarray::ArrayD<f32>) -> Value {
    let tmp = tempfile::tempdir().unwrap();
    let (x, fast, plain) = (
        tmp.path().join("x.npy"),
        tmp.path().join("int8.npy"),
        tmp.path().join("reference.npy"),
    );
    common::write_npy(&x, input);
    let o = std::process::Command::new(python)
        .arg(common::repo().join("scripts/ort_int8_check.py"))
        .args([model, &x, &fast, &plain])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ONNX Runtime on {}: {}",
        model.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["float_layers"], Value::Array(vec![]), "{j}");
    assert_eq!(j["rebuild_nodes"], Value::Array(vec![]), "{j}");
    let (a, b) = (common::read_npy(&fast), common::read_npy(&plain));
    let diff = common::max_abs_diff(&a, &b);
    if j["output_quantized"].as_bool() == Some(false) {
        let rel = diff / common::max_abs(&b);
        eprintln!(
            "{}: integer kernels within {rel:.2e} of the largest output of the QDQ reference",
            model.display()
        );
        assert!(
            rel <= INT8_FLOAT_HEAD,
            "{}: integer kernels differ from the QDQ reference by {diff} = {rel} of the largest output",
            model.display()
        );
        return j;
    }
    let step = j["output_scale"].as_f64().expect("a quantized output") as f32;
    eprintln!(
        "{}: integer kernels within {} output steps of the QDQ reference",
        model.display(),
        diff / step
    );
    assert!(
        diff <= INT8_STEPS * step,
        "{}: integer kernels differ from the QDQ reference by {diff} = {} output steps",
        model.display(),
        diff / step
    );
    j
}

fn ops(j: &Value, op: &str) -> u64 {
    j["ops"][op].as_u64().unwrap_or(0)
}

#[test]
fn int8_output_runs_every_layer_on_integer_kernels_and_matches_its_reference() {
    let dir = tempfile::tempdir().unwrap();
    for (name, extra) in [
        ("palette.onnx", &["--shared-codebook", "--k", "16"][..]),
        ("dl.onnx", &["--method", "dl", "--ratio", "4"][..]),
        (
            "signed.onnx",
            &["--method", "vq", "--activation-type", "int8"][..],
        ),
    ] {
        let out = dir.path().join(name);
        let mut args = vec!["--int8"];
        args.extend(extra);
        let o = convert_digits(&out, &args);
        assert!(o.status.success(), "{name}: {}", common::stderr(&o));
        let report: Value = serde_json::from_slice(&o.stdout).unwrap();
        let int8 = &report["int8"];
        // conv1..conv4 and fc: every layer with a weight runs in int8.
        assert_eq!(int8["int8_layers"].as_array().unwrap().len(), 5, "{int8}");
        assert_eq!(int8["float_layers"], Value::Array(vec![]), "{int8}");
        assert_eq!(int8["folded_relus"], 4, "{int8}");
        let Some(python) = common::ort_python("int8_output_runs_every_layer_on_integer_kernels")
        else {
            return;
        };
        for (batch, seed) in [(1, 1), (3, 2)] {
            let x = common::input_like(&[batch, 3, 8, 8], seed);
            let j = check_in_ort(&python, &out, &x);
            assert_eq!(ops(&j, "QLinearConv"), 4, "{name}: {j}");
            assert_eq!(ops(&j, "QGemm"), 1, "{name}: {j}");
        }
    }
}

/// `verify` runs an int8 model in either engine with the same result (tract computes the
/// QDQ operators as written), and `diff` says which layers are int8.
#[test]
fn int8_model_verifies_in_tract_and_onnx_runtime_alike_and_diff_names_int8_layers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("int8.onnx");
    let o = convert_digits(
        &out,
        &["--int8", "--layers", "conv2,conv3", "--shared-codebook"],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let verify = |engine: &str| -> Value {
        let o = common::run(&[
            "verify",
            &repo_path("models/digits-cnn.onnx"),
            common::path_str(&out),
            "--data",
            &repo_path("models/digits-test"),
            "--preprocess",
            &repo_path("models/digits-cnn.preprocess.json"),
            "--skip",
            "100",
            "--engine",
            engine,
            "--json",
        ]);
        assert!(o.status.success(), "{engine}: {}", common::stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let tract = verify("tract");
    if common::ort_python("int8_model_verifies_in_tract_and_onnx_runtime_alike").is_some() {
        let ort = verify("ort");
        assert_eq!(tract["converted"]["top1"], ort["converted"]["top1"]);
        let (a, b) = (
            tract["max_abs_diff"].as_f64().unwrap(),
            ort["max_abs_diff"].as_f64().unwrap(),
        );
        assert!((a - b).abs() <= 1e-3 * a.max(1.0), "tract {a}, ORT {b}");
    }
    let o = common::run(&[
        "diff",
        &repo_path("models/digits-cnn.onnx"),
        common::path_str(&out),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let text = common::stdout(&o);
    assert!(
        text.contains("layer conv1: int8 weights (no codebook)"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("layer conv2:") && l.ends_with(", int8")),
        "{text}"
    );
}

#[test]
fn int8_size_budget_meets_its_target_on_the_written_file_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let out = |n: &str| dir.path().join(n);
    let flags = ["--int8", "--target-compression", "6"];
    let o = convert_digits(&out("a.onnx"), &flags);
    assert!(o.status.success(), "{}", common::stderr(&o));
    // Same input, flags and seed on one thread: the same bytes.
    let o = common::bin()
        .args(digits_args(
            &common::default_model(),
            &out("b.onnx"),
            &flags,
        ))
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    let read = |n: &str| std::fs::read(out(n)).unwrap();
    assert!(
        read("a.onnx") == read("b.onnx"),
        "one thread and several differ"
    );
    let original = std::fs::metadata(common::default_model()).unwrap().len() as f64;
    let written = read("a.onnx").len() as f64;
    // The target met; on so small a model the byte model's fixed allowances overestimate by a
    // few per cent (4% measured), so the written file may undershoot by up to 5%.
    assert!(
        original / written >= 6.0 && original / written <= 6.0 * 1.05,
        "{original} -> {written} bytes: {:.2}x, target 6x",
        original / written
    );
}

#[test]
fn int8_refuses_other_forms_missing_calibration_and_quantized_models() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let model = repo_path("models/digits-cnn.onnx");
    let o = common::run(&[&model, common::path_str(&out), "--all", "--int8"]);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("--form dense"),
        "{}",
        common::stderr(&o)
    );
    let o = common::run(&[
        &model,
        common::path_str(&out),
        "--all",
        "--form",
        "dense",
        "--int8",
    ]);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("--calibrate"),
        "{}",
        common::stderr(&o)
    );
    assert!(
        !out.exists(),
        "a refused conversion wrote {}",
        out.display()
    );
    // An int8 model is refused as input, naming a quantization node.
    let quantized = dir.path().join("quantized.onnx");
    let o = convert_digits(&quantized, &["--int8", "--shared-codebook", "--k", "16"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let again = dir.path().join("again.onnx");
    let args = [
        common::path_str(&quantized),
        common::path_str(&again),
        "--layers",
        "conv2",
        "--form",
        "dense",
        "--int8",
        "--calibrate",
        &repo_path("models/digits-test"),
        "--preprocess",
        &repo_path("models/digits-cnn.preprocess.json"),
    ];
    let o = common::run(&args);
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(
        err.contains("quantized already") && err.contains("node `"),
        "{err}"
    );
    assert!(!again.exists());
    // inspect says why its layers are not convertible.
    let o = common::run(&["inspect", common::path_str(&quantized)]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let table = common::stdout(&o);
    assert!(
        table.contains("weight `conv2/w` is dequantized from int8"),
        "{table}"
    );
}

/// The shared models: ResNet-20 (opset 13, residual Adds) and SqueezeNet 1.1 (opset 7, IR 3:
/// upgraded; Concat, MaxPool, Dropout, Softmax) come out on integer kernels throughout.
#[test]
fn shared_models_int8_run_on_integer_kernels() {
    let Some(python) = common::ort_python("shared_models_int8_run_on_integer_kernels") else {
        return;
    };
    let cases = [
        (
            "resnet20-cifar10",
            "cifar10-train",
            vec![1, 3, 32, 32],
            19,
            "QLinearAdd",
        ),
        (
            "squeezenet1.1",
            "imagenet-sample",
            vec![1, 3, 224, 224],
            26,
            "QLinearConcat",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, data, shape, convs, op) in cases {
        let test = format!("shared_models_int8_run_on_integer_kernels ({name})");
        let Some(shared) = common::shared(&test) else {
            return;
        };
        let model = shared.join(format!("models/{name}.onnx"));
        let spec = shared.join(format!("models/{name}.preprocess.json"));
        let out = dir.path().join(format!("{name}.onnx"));
        let o = common::run(&[
            common::path_str(&model),
            common::path_str(&out),
            "--all",
            "--form",
            "dense",
            "--shared-codebook",
            "--subspace",
            "1",
            "--k",
            "16",
            "--int8",
            "--calibrate",
            common::path_str(&shared.join("data").join(data)),
            "--calib-samples",
            "16",
            "--preprocess",
            common::path_str(&spec),
            "--no-latency",
        ]);
        assert!(o.status.success(), "{name}: {}", common::stderr(&o));
        let j = check_in_ort(&python, &out, &common::input_like(&shape, 3));
        assert_eq!(ops(&j, "QLinearConv"), convs, "{name}: {j}");
        assert!(ops(&j, op) > 0, "{name}: {j}");
    }
}

/// A layer whose weights int8 cannot hold stays float, and the report says by how much its
/// int8 weights would change the outputs. conv1 of the default model is made to read its outer
/// taps only from padding (dilation 8 and pads 8 on the 8×8 input) and given weights of 1000
/// there: they never touch the outputs, but they set every output channel's int8 scale so that
/// the weights the layer does use round to zero.
#[test]
fn a_layer_int8_cannot_hold_stays_float_and_the_report_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = onnx_dlq::onnx::model::load(&common::default_model()).unwrap();
    let conv1 = m
        .graph()
        .node
        .iter()
        .position(|n| n.output[0] == "conv1" || n.name.as_deref() == Some("conv1"))
        .expect("conv1");
    let weight = m.graph().node[conv1].input[1].clone();
    let node = &mut m.graph_mut().node[conv1];
    node.attribute
        .retain(|a| !matches!(a.name.as_deref(), Some("dilations" | "pads")));
    node.attribute.push(attr_ints("dilations", &[8, 8]));
    node.attribute.push(attr_ints("pads", &[8, 8, 8, 8]));
    let mut w: Vec<f32> = m
        .tensor_f32(m.initializer(&weight).unwrap())
        .unwrap()
        .iter()
        .copied()
        .collect();
    for (k, v) in w.iter_mut().enumerate() {
        if k % 9 != 4 {
            *v = 1000.0; // every tap but the centre reads only padding
        }
    }
    onnx_dlq::lower::stored::set_initializer(&mut m, &weight, &w).unwrap();
    let model = dir.path().join("outlier.onnx");
    onnx_dlq::onnx::model::save(&m, &model, Default::default()).unwrap();
    let out = dir.path().join("int8.onnx");
    let o = convert_like_digits(&model, &out, &["--int8", "--layers", "conv3"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let int8 = &report["int8"];
    let float = int8["float_layers"].as_array().unwrap();
    assert_eq!(float.len(), 1, "{int8}");
    assert_eq!(float[0]["name"], "conv1", "{int8}");
    let why = float[0]["reason"].as_str().unwrap();
    assert!(why.contains("int8 weights alone change"), "{why}");
    // conv2..conv4 and fc keep int8 weights.
    assert_eq!(int8["int8_layers"].as_array().unwrap().len(), 4, "{int8}");
    let Some(python) = common::ort_python("a_layer_int8_cannot_hold_stays_float") else {
        return;
    };
    // ONNX Runtime runs conv1 as the one float Conv and the others on integer kernels.
    let j: Value = serde_json::from_str(&common::ort_optimized_ops(&python, &out)).unwrap();
    assert_eq!(j["Conv"], 1, "{j}");
    assert_eq!(j["QLinearConv"], 3, "{j}");
}

/// How far the simulation of the int8 output's roundings may be from the int8 output, relative
/// to its largest output, on the default model in tract: measured 2.5e-3 with every layer int8
/// and 5.5e-3 with the first layer float (the rewrite's int32 biases and tract's integer
/// rounding); a float layer reading its input rounded, unlike the rewrite's, is 9.3e-3 away.
const SIMULATION_TOLERANCE: f32 = 0.007;

/// What calibration converts layer by layer for the int8 output (`quantize::simulate`: the
/// float model with the int8 output's roundings in place) computes what the int8 output
/// computes: on the default model, before any layer is converted, the simulation and the int8
/// rewrite agree within [`SIMULATION_TOLERANCE`] of the largest output (the rewrite's int32
/// biases are the only rounding the simulation leaves out), both run in tract, while the float
/// model is further from either — with every layer int8, and with the first layer kept float.
#[test]
fn int8_simulation_for_calibration_computes_what_the_int8_output_computes() {
    use onnx_dlq::quantize::{self, simulate, ActivationType, Int8Options};
    use onnx_dlq::{engine::Engine, onnx::model::OnnxModel};
    use std::collections::HashMap;

    let mut float = onnx_dlq::onnx::model::load(&common::default_model()).unwrap();
    let shapes = onnx_dlq::analysis::shapes::infer(&float, &[]).unwrap();
    quantize::upgrade::to_qdq_opset(&mut float, &shapes).unwrap();
    let shapes = onnx_dlq::analysis::shapes::infer(&float, &[]).unwrap();
    let inputs = digits_inputs(32);
    let first_weight = float
        .graph()
        .node
        .iter()
        .find(|n| n.op_type.as_deref() == Some("Conv"))
        .map(|n| n.input[1].clone())
        .unwrap();
    let one_float = HashMap::from([(first_weight, "kept float by the test".to_string())]);
    for kept_float in [HashMap::new(), one_float] {
        let simulated = simulate::simulated(
            &float,
            ActivationType::Uint8,
            (&inputs, Engine::Tract),
            &kept_float,
        )
        .unwrap();
        let mut int8: OnnxModel = float.clone();
        quantize::quantize(
            &mut int8,
            &Int8Options::default(),
            &shapes,
            (&inputs, Engine::Tract),
            (&HashMap::new(), &kept_float),
        )
        .unwrap();
        let (to_int8, to_float) = largest_differences(&simulated, &int8, &float, &inputs[..8]);
        eprintln!(
            "{} layer(s) float: simulated against int8 {to_int8:.3e}, against float {to_float:.3e} of the largest output",
            kept_float.len()
        );
        assert!(
            to_int8 <= SIMULATION_TOLERANCE,
            "{to_int8} > {SIMULATION_TOLERANCE}"
        );
        assert!(
            to_float > to_int8,
            "the simulation left the float model as it was"
        );
    }
}

/// The first `count` images of the default model's folder, preprocessed.
fn digits_inputs(count: usize) -> Vec<ndarray::ArrayD<f32>> {
    onnx_dlq::eval::images::preprocessed_images(
        Path::new(&repo_path("models/digits-test")),
        Path::new(&repo_path("models/digits-cnn.preprocess.json")),
        Some(count),
        onnx_dlq::eval::seen::ImageSelection::First,
        "calibration images",
        onnx_dlq::setting::Setting::CalibSamples,
    )
    .unwrap()
    .into_iter()
    .map(|a| a.into_dyn())
    .collect()
}

/// The largest output differences of `simulated` from `int8` and from `float` over `inputs`
/// in tract, relative to the int8 model's largest output.
fn largest_differences(
    simulated: &onnx_dlq::onnx::model::OnnxModel,
    int8: &onnx_dlq::onnx::model::OnnxModel,
    float: &onnx_dlq::onnx::model::OnnxModel,
    inputs: &[ndarray::ArrayD<f32>],
) -> (f32, f32) {
    use onnx_dlq::engine::{self, Engine};
    let run = |m: &onnx_dlq::onnx::model::OnnxModel, x: &ndarray::ArrayD<f32>| {
        engine::prepare(Engine::Tract, m, x.shape())
            .unwrap()
            .run(x)
            .unwrap()
    };
    let (mut to_int8, mut to_float, mut largest) = (0f32, 0f32, 0f32);
    for x in inputs {
        let (s, q, f) = (run(simulated, x), run(int8, x), run(float, x));
        to_int8 = to_int8.max(common::max_abs_diff(&s, &q));
        to_float = to_float.max(common::max_abs_diff(&s, &f));
        largest = largest.max(common::max_abs(&q));
    }
    (to_int8 / largest, to_float / largest)
}
