//! Real-world model forms, end to end: each model is written to disk as an exporter would write
//! it, converted by the command-line tool, then checked by onnx.checker and run in tract and in
//! ONNX Runtime. With K_vq = p²·M (one centroid per kernel column) VQ reproduces the kernel
//! exactly, so the converted model must compute what the original computes: that checks the graph
//! surgery on each form. A DL conversion of the same model must run in both engines, and they
//! must agree. Forms that cannot be converted are reported with their reason and left intact.

mod common;

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use onnx_dlq::engine::runner::Runner;
use onnx_dlq::eval::approx::Approximation;
use onnx_dlq::onnx::build::{attr_float, attr_floats, attr_int, attr_ints, attr_str, node};
use onnx_dlq::onnx::model::{self, ExternalData};
use onnx_dlq::onnx::tensor::{new_tensor, FloatType};
use onnx_dlq::proto::{
    tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, ValueInfoProto,
};
use prost::Message;

use common::{conv_model, value_info, ConvSpec};

fn weights(n: usize, seed: u64) -> Vec<f32> {
    common::input_like(&[n], seed).into_raw_vec_and_offset().0
}

/// A graph output of known rank and unknown sizes (onnx.checker wants a shape field).
fn output_info(name: &str, rank: usize) -> onnx_dlq::proto::ValueInfoProto {
    let mut v = value_info(name, 1, Some(&vec![0; rank]));
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().unwrap().value.as_mut() {
        for d in &mut t.shape.as_mut().unwrap().dim {
            d.value = None;
        }
    }
    v
}

/// Gives rank-4 outputs without a shape a shape of unknown sizes.
fn with_output_shapes(mut proto: ModelProto) -> ModelProto {
    for o in &mut proto.graph.as_mut().unwrap().output {
        if let Some(type_proto::Value::TensorType(t)) = o.r#type.as_ref().unwrap().value.as_ref() {
            if t.shape.is_none() {
                *o = output_info(o.name.as_deref().unwrap(), 4);
            }
        }
    }
    proto
}

fn write_proto(path: &Path, proto: &ModelProto) {
    let proto = with_output_shapes(proto.clone());
    std::fs::write(path, proto.encode_to_vec()).unwrap();
}

fn tract_run(path: &Path, x: &ArrayD<f32>) -> ArrayD<f32> {
    let m = model::load(path).unwrap();
    Runner::new(&m, x.shape())
        .unwrap_or_else(|e| panic!("tract cannot prepare {}: {e:#}", path.display()))
        .run(x)
        .unwrap_or_else(|e| panic!("tract cannot run {}: {e:#}", path.display()))
}

/// `onnx-dlq convert IN OUT ARGS --json`, which must succeed; the report.
fn convert(input: &Path, output: &Path, args: &[String]) -> serde_json::Value {
    let mut all = vec![
        "convert".to_string(),
        common::path_str(input).into(),
        common::path_str(output).into(),
        "--json".into(),
    ];
    all.extend_from_slice(args);
    let o = common::bin().args(&all).output().unwrap();
    assert!(
        o.status.success(),
        "convert {all:?}: {}",
        common::stderr(&o)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Converts `input` twice (VQ with one centroid per column, and DL) and runs everything in both
/// engines on an input of `shape`. `select` picks the layers (`--layers …` or `--all`); `k_exact`
/// is p²·M of the selected layers. Returns the two output paths.
fn check_form(
    test: &str,
    input: &Path,
    shape: &[usize],
    select: &[&str],
    k_exact: usize,
) -> (PathBuf, PathBuf) {
    let dir = input.parent().unwrap();
    let x = common::input_like(shape, 11);
    let original = tract_run(input, &x);
    let python = common::ort_python(test);
    if let Some(py) = &python {
        let ort = common::run_ort(py, input, &x);
        Approximation::Engines.assert_close(
            &format!("{test}: original, ONNX Runtime vs tract"),
            &ort,
            &original,
        );
    }
    let select: Vec<String> = select.iter().map(|s| s.to_string()).collect();

    let vq = dir.join("vq.onnx");
    let mut args = select.clone();
    args.extend(["--method", "vq", "--k", &k_exact.to_string()].map(String::from));
    let report = convert(input, &vq, &args);
    let layers = report["layers"].as_array().unwrap();
    assert!(!layers.is_empty(), "{test}: nothing converted: {report}");
    for l in layers {
        let e = l["relative_error"].as_f64().unwrap();
        assert!(e < 1e-6, "{test}: K_vq = p²M must be exact, error {e}");
    }
    let got = tract_run(&vq, &x);
    Approximation::Exact.assert_close(
        &format!("{test}: VQ-exact conversion vs original (tract)"),
        &got,
        &original,
    );
    if let Some(py) = &python {
        let ort = common::run_ort(py, &vq, &x);
        Approximation::Engines.assert_close(
            &format!("{test}: VQ-exact conversion in ONNX Runtime vs original"),
            &ort,
            &original,
        );
    }

    let dl = dir.join("dl.onnx");
    let mut args = select;
    let (k, l) = ((k_exact / 2).max(4), 4);
    args.extend(
        [
            "--method",
            "dl",
            "--k",
            &k.to_string(),
            "--l",
            &l.to_string(),
            "--subspace",
            "4",
            "--iters",
            "3",
        ]
        .map(String::from),
    );
    convert(input, &dl, &args);
    let got = tract_run(&dl, &x);
    assert!(got.iter().all(|v| v.is_finite()), "{test}: DL output");
    assert_eq!(got.shape(), original.shape(), "{test}: DL output shape");
    if let Some(py) = &python {
        let ort = common::run_ort(py, &dl, &x);
        Approximation::Engines.assert_close(
            &format!("{test}: DL conversion, ONNX Runtime vs tract"),
            &ort,
            &got,
        );
    }
    (vq, dl)
}

fn spec(n: usize, m: usize, h: usize, w: usize, k: usize) -> ConvSpec {
    ConvSpec {
        batch: 2,
        n,
        m,
        h,
        w,
        kh: k,
        kw: k,
        strides: [1, 1],
        dilations: [1, 1],
        pads: [k as i64 / 2; 4],
        auto_pad: None,
        bias: true,
        opset: 13,
    }
}

fn single_conv(test: &str, s: &ConvSpec) {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.onnx");
    let w = weights(s.m * s.n * s.kh * s.kw, 1);
    let b = weights(s.m, 2);
    write_proto(&input, &conv_model(s, &w, &b));
    check_form(
        test,
        &input,
        &[s.batch, s.n, s.h, s.w],
        &["--layers", "conv"],
        s.m * s.kh * s.kw,
    );
}

#[test]
fn auto_pad_same_upper_with_stride_2() {
    single_conv(
        "auto_pad_same_upper_with_stride_2",
        &ConvSpec {
            strides: [2, 2],
            auto_pad: Some("SAME_UPPER"),
            ..spec(12, 8, 9, 11, 3)
        },
    );
}

#[test]
fn auto_pad_same_lower() {
    single_conv(
        "auto_pad_same_lower",
        &ConvSpec {
            auto_pad: Some("SAME_LOWER"),
            ..spec(8, 6, 8, 8, 4)
        },
    );
}

#[test]
fn auto_pad_valid() {
    single_conv(
        "auto_pad_valid",
        &ConvSpec {
            auto_pad: Some("VALID"),
            ..spec(10, 6, 9, 9, 3)
        },
    );
}

#[test]
fn asymmetric_pads_and_dilation_2() {
    single_conv(
        "asymmetric_pads_and_dilation_2",
        &ConvSpec {
            pads: [0, 1, 2, 0],
            dilations: [2, 2],
            ..spec(9, 7, 10, 10, 3)
        },
    );
}

#[test]
fn one_by_one_kernel_with_stride_2() {
    single_conv(
        "one_by_one_kernel_with_stride_2",
        &ConvSpec {
            strides: [2, 2],
            ..spec(16, 10, 9, 9, 1)
        },
    );
}

#[test]
fn five_by_five_kernel() {
    single_conv("five_by_five_kernel", &spec(8, 6, 11, 11, 5));
}

#[test]
fn non_square_input_and_kernel() {
    single_conv(
        "non_square_input_and_kernel",
        &ConvSpec {
            kw: 5,
            pads: [1, 2, 1, 2],
            strides: [1, 2],
            ..spec(8, 6, 7, 13, 3)
        },
    );
}

#[test]
fn conv_without_bias() {
    single_conv(
        "conv_without_bias",
        &ConvSpec {
            bias: false,
            ..spec(8, 6, 7, 7, 3)
        },
    );
}

/// The batch dimension is a symbol (`batch`), as exporters write it; the converted model keeps
/// it symbolic and runs with batch 3.
#[test]
fn dynamic_batch_dimension() {
    let test = "dynamic_batch_dimension";
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.onnx");
    let s = ConvSpec {
        batch: 3,
        ..spec(8, 6, 9, 9, 3)
    };
    let mut proto = conv_model(&s, &weights(s.m * s.n * 9, 3), &weights(s.m, 4));
    dim0(&mut proto).value = Some(tensor_shape_proto::dimension::Value::DimParam(
        "batch".into(),
    ));
    write_proto(&input, &proto);
    let (vq, dl) = check_form(test, &input, &[3, 8, 9, 9], &["--layers", "conv"], 54);
    for out in [vq, dl] {
        let mut p = model::load(&out).unwrap().proto;
        assert_eq!(
            dim0(&mut p).value,
            Some(tensor_shape_proto::dimension::Value::DimParam(
                "batch".into()
            )),
            "{}: the batch dimension must stay symbolic",
            out.display()
        );
    }
}

fn dim0(p: &mut ModelProto) -> &mut tensor_shape_proto::Dimension {
    let t = p.graph.as_mut().unwrap().input[0].r#type.as_mut().unwrap();
    match t.value.as_mut().unwrap() {
        type_proto::Value::TensorType(t) => &mut t.shape.as_mut().unwrap().dim[0],
        _ => unreachable!(),
    }
}

fn model_proto(
    ir: i64,
    opset: i64,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    inputs: Vec<onnx_dlq::proto::ValueInfoProto>,
    outputs: &[(&str, usize)],
) -> ModelProto {
    ModelProto {
        ir_version: Some(ir),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        producer_name: Some("onnx-dlq tests".into()),
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: inits,
            input: inputs,
            output: outputs.iter().map(|&(o, r)| output_info(o, r)).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// IR 3 / opset 7 as old exporters wrote it: every initializer is also listed as a graph input,
/// nodes have no names, the first Conv has no bias and feeds a BatchNormalization, which must
/// stay as it is (folding it is not this tool's job).
#[test]
fn ir3_opset7_initializers_as_inputs_nameless_nodes_and_batchnorm() {
    let test = "ir3_opset7_initializers_as_inputs_nameless_nodes_and_batchnorm";
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.onnx");
    let (n, m) = (8, 8);
    let conv_attrs = || {
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("pads", &[1, 1, 1, 1]),
            attr_ints("strides", &[1, 1]),
        ]
    };
    let var: Vec<f32> = weights(m, 9).iter().map(|v| 0.5 + v.abs()).collect();
    let inits = vec![
        new_tensor("w1", &[m, n, 3, 3], &weights(m * n * 9, 5), FloatType::F32),
        new_tensor("bn_scale", &[m], &weights(m, 6), FloatType::F32),
        new_tensor("bn_bias", &[m], &weights(m, 7), FloatType::F32),
        new_tensor("bn_mean", &[m], &weights(m, 8), FloatType::F32),
        new_tensor("bn_var", &[m], &var, FloatType::F32),
        new_tensor("w2", &[m, m, 3, 3], &weights(m * m * 9, 10), FloatType::F32),
        new_tensor("b2", &[m], &weights(m, 12), FloatType::F32),
    ];
    let mut inputs = vec![value_info("x", 1, Some(&[1, n, 10, 10]))];
    for t in &inits {
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        inputs.push(value_info(t.name.as_deref().unwrap(), 1, Some(&dims)));
    }
    // An empty name: the node is unnamed, as old exporters wrote them.
    let nodes = vec![
        node("Conv", "", &["x", "w1"], &["c1"], conv_attrs()),
        node(
            "BatchNormalization",
            "",
            &["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
            &["bn"],
            vec![attr_float("epsilon", 1e-5)],
        ),
        node("Relu", "", &["bn"], &["r"], vec![]),
        node("Conv", "", &["r", "w2", "b2"], &["y"], conv_attrs()),
    ];
    let proto = model_proto(3, 7, nodes, inits, inputs, &[("y", 4)]);
    write_proto(&input, &proto);
    let (vq, dl) = check_form(test, &input, &[1, n, 10, 10], &["--all"], m * 9);
    for out in [vq, dl] {
        let out = model::load(&out).unwrap();
        assert_eq!(out.proto.ir_version, Some(3));
        assert_eq!(out.default_opset(), 7);
        let g = out.graph();
        let bn: Vec<&NodeProto> = g
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("BatchNormalization"))
            .collect();
        assert_eq!(bn.len(), 1);
        assert_eq!(bn[0], &proto.graph.as_ref().unwrap().node[1], "BN changed");
        // IR 3 needs every initializer among the inputs, and no input may be left without its
        // initializer (it would become a required input): the replaced kernels are gone from
        // both lists.
        let inits: Vec<&str> = g
            .initializer
            .iter()
            .filter_map(|t| t.name.as_deref())
            .collect();
        let inputs: Vec<&str> = g.input.iter().filter_map(|v| v.name.as_deref()).collect();
        for name in &inits {
            assert!(
                inputs.contains(name),
                "initializer {name} is not a graph input"
            );
        }
        for name in &inputs {
            assert!(
                *name == "x" || inits.contains(name),
                "input {name} has no initializer"
            );
        }
        assert!(!inits.contains(&"w1") && !inits.contains(&"w2"));
    }
}

/// Weights stored outside the protobuf: the converted model keeps its tensors in a data file
/// beside it, and both engines read them.
#[test]
fn external_data_model_converts_and_keeps_external_data() {
    let test = "external_data_model_converts_and_keeps_external_data";
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.onnx");
    let s = spec(16, 16, 9, 9, 3);
    let proto = conv_model(&s, &weights(16 * 16 * 9, 13), &weights(16, 14));
    let m = common::in_memory(with_output_shapes(proto), tmp.path());
    let saved = model::save(&m, &input, ExternalData::Always { threshold: 1024 }).unwrap();
    assert!(saved.external.is_some());
    let (vq, dl) = check_form(test, &input, &[2, 16, 9, 9], &["--layers", "conv"], 144);
    for out in [vq, dl] {
        let data = PathBuf::from(format!("{}.data", out.display()));
        assert!(data.is_file(), "{} has no data file", out.display());
        let loaded = model::load(&out).unwrap();
        assert!(loaded.has_external_data(), "{}", out.display());
    }
    // The input's own data file is untouched.
    assert!(tmp.path().join("in.onnx.data").is_file());
}

/// Layers the rewrite cannot express are listed with the reason, `--all` leaves them as they
/// are (node for node), and naming one is an error that says why and writes nothing.
#[test]
fn unconvertible_forms_are_reported_skipped_and_refused_by_name() {
    let test = "unconvertible_forms_are_reported_skipped_and_refused_by_name";
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.onnx");
    let c = 8;
    let conv = |name: &str, inputs: &[&str], out: &str, k: &[i64], extra: Vec<AttributeProto>| {
        let mut attrs = vec![attr_ints("kernel_shape", k)];
        attrs.extend(extra);
        node("Conv", name, inputs, &[out], attrs)
    };
    let i64_tensor = |name: &str, v: &[i64]| TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(onnx_dlq::proto::tensor_proto::DataType::Int64 as i32),
        int64_data: v.to_vec(),
        ..Default::default()
    };
    let f = |name: &str, shape: &[usize], seed: u64| {
        new_tensor(
            name,
            shape,
            &weights(shape.iter().product(), seed),
            FloatType::F32,
        )
    };
    let inits = vec![
        f("w_ok", &[c, c, 3, 3], 20),
        f("w_grouped", &[c, c / 2, 3, 3], 21),
        f("w_depthwise", &[c, 1, 3, 3], 22),
        f("w_1d", &[c, c, 3], 23),
        f("w_3d", &[c, c, 3, 3, 3], 24),
        f("w_transpose", &[c, c, 3, 3], 25),
        f("w_base", &[c, c, 3, 3], 26),
        f("two", &[1], 27),
        i64_tensor("shape_1d", &[1, c as i64, 64]),
        i64_tensor("shape_3d", &[1, c as i64, 4, 4, 4]),
    ];
    let nodes = vec![
        conv("ok", &["x", "w_ok"], "y_ok", &[3, 3], vec![]),
        conv(
            "grouped",
            &["x", "w_grouped"],
            "y_grouped",
            &[3, 3],
            vec![attr_int("group", 2)],
        ),
        conv(
            "depthwise",
            &["x", "w_depthwise"],
            "y_depthwise",
            &[3, 3],
            vec![attr_int("group", c as i64)],
        ),
        node("Reshape", "to_1d", &["x", "shape_1d"], &["x1d"], vec![]),
        conv("conv1d", &["x1d", "w_1d"], "y_1d", &[3], vec![]),
        node("Reshape", "to_3d", &["x", "shape_3d"], &["x3d"], vec![]),
        conv("conv3d", &["x3d", "w_3d"], "y_3d", &[3, 3, 3], vec![]),
        node(
            "ConvTranspose",
            "transpose",
            &["x", "w_transpose"],
            &["y_transpose"],
            vec![attr_ints("kernel_shape", &[3, 3])],
        ),
        node(
            "Mul",
            "scale_weight",
            &["w_base", "two"],
            &["w_runtime"],
            vec![],
        ),
        conv("runtime", &["x", "w_runtime"], "y_runtime", &[3, 3], vec![]),
    ];
    let outputs = [
        ("y_ok", 4),
        ("y_grouped", 4),
        ("y_depthwise", 4),
        ("y_1d", 3),
        ("y_3d", 5),
        ("y_transpose", 4),
        ("y_runtime", 4),
    ];
    let proto = model_proto(
        8,
        13,
        nodes,
        inits,
        vec![value_info("x", 1, Some(&[1, c, 8, 8]))],
        &outputs,
    );
    write_proto(&input, &proto);

    let expected = [
        ("grouped", "grouped convolution"),
        ("depthwise", "depthwise convolution"),
        ("conv1d", "2-D"),
        ("conv3d", "2-D"),
        ("transpose", "ConvTranspose"),
        ("runtime", "computed at run time"),
    ];
    let (vq, _) = check_form(test, &input, &[1, c, 8, 8], &["--all"], c * 9);
    let report = convert(
        &input,
        &tmp.path().join("again.onnx"),
        &["--all", "--method", "vq", "--k", "72"].map(String::from),
    );
    let converted: Vec<&str> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(converted, ["ok"], "{report}");
    let skipped = report["skipped"].as_array().unwrap();
    for (name, why) in expected {
        let s = skipped
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed as skipped: {report}"));
        let reason = s["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{name}: {reason}");
    }
    // Left intact, node for node.
    let out = model::load(&vq).unwrap();
    for kept in [
        "grouped",
        "depthwise",
        "conv1d",
        "conv3d",
        "transpose",
        "runtime",
    ] {
        let before = proto
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .find(|n| n.name.as_deref() == Some(kept))
            .unwrap();
        let after = out
            .graph()
            .node
            .iter()
            .find(|n| n.name.as_deref() == Some(kept))
            .unwrap_or_else(|| panic!("{kept} vanished"));
        assert_eq!(before, after, "{kept} changed");
    }
    // Named explicitly: exit 1, the reason, no file.
    for (name, why) in expected {
        let out = tmp.path().join(format!("named-{name}.onnx"));
        let o = common::run(&[
            "convert",
            common::path_str(&input),
            common::path_str(&out),
            "--layers",
            name,
        ]);
        assert_eq!(o.status.code(), Some(1), "{name}: {}", common::stderr(&o));
        let err = common::stderr(&o);
        assert!(err.contains(name) && err.contains(why), "{name}: {err}");
        assert!(!out.exists(), "{name}: an output was written");
    }
}

/// A float input of rank 4 whose dimensions are named (symbolic) where `dims` says `None`.
fn symbolic_input(name: &str, dims: [Option<usize>; 4], params: [&str; 4]) -> ValueInfoProto {
    let mut v = value_info(name, 1, Some(&[0; 4]));
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().unwrap().value.as_mut() {
        for ((d, size), param) in t
            .shape
            .as_mut()
            .unwrap()
            .dim
            .iter_mut()
            .zip(dims)
            .zip(params)
        {
            d.value = Some(match size {
                Some(s) => tensor_shape_proto::dimension::Value::DimValue(s as i64),
                None => tensor_shape_proto::dimension::Value::DimParam(param.into()),
            });
        }
    }
    v
}

/// `onnx-dlq convert` of `input` with VQ at one centroid per kernel column (exact) over every
/// layer, and with DL; the report must say the counts are unknown rather than fail.
fn convert_exact_and_dl(test: &str, input: &Path, k_exact: usize) -> (PathBuf, PathBuf) {
    let dir = input.parent().unwrap();
    let (vq, dl) = (dir.join("vq.onnx"), dir.join("dl.onnx"));
    let k = k_exact.to_string();
    let report = convert(
        input,
        &vq,
        &["--all", "--method", "vq", "--k", &k].map(String::from),
    );
    let layers = report["layers"].as_array().unwrap();
    assert!(!layers.is_empty(), "{test}: nothing converted: {report}");
    for l in layers {
        assert!(l["relative_error"].as_f64().unwrap() < 1e-6, "{test}: {l}");
        assert_eq!(l["multiplications_known"], false, "{test}: {l}");
    }
    assert!(report["counts_unknown"].is_string(), "{test}: {report}");
    let args = [
        "--all",
        "--method",
        "dl",
        "--k",
        "16",
        "--l",
        "4",
        "--subspace",
        "4",
    ];
    convert(input, &dl, &args.map(String::from));
    (vq, dl)
}

/// A model exported with a dynamic height and width converts without `--input-shape` (the
/// lowering needs no spatial size: shift windows end relative to the padded tensor's end, and
/// SAME padding at stride 2 is computed in-graph) and the one converted file runs at two sizes
/// of either parity, in tract and ONNX Runtime, computing what the original computes there.
#[test]
fn dynamic_spatial_size_converts_once_and_runs_at_any_size() {
    let test = "dynamic_spatial_size_converts_once_and_runs_at_any_size";
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.onnx");
    let (n, m) = (6, 8);
    let inits = vec![
        new_tensor("w1", &[m, n, 3, 3], &weights(m * n * 9, 21), FloatType::F32),
        new_tensor("b1", &[m], &weights(m, 22), FloatType::F32),
        new_tensor("w2", &[m, m, 3, 3], &weights(m * m * 9, 23), FloatType::F32),
        new_tensor("w3", &[m, m, 3, 3], &weights(m * m * 9, 24), FloatType::F32),
        new_tensor("w4", &[m, m, 3, 3], &weights(m * m * 9, 25), FloatType::F32),
    ];
    let k3 = || attr_ints("kernel_shape", &[3, 3]);
    let nodes = vec![
        node(
            "Conv",
            "c1",
            &["x", "w1", "b1"],
            &["y1"],
            vec![k3(), attr_ints("pads", &[1; 4])],
        ),
        node("Relu", "r1", &["y1"], &["a1"], vec![]),
        node(
            "Conv",
            "c2",
            &["a1", "w2"],
            &["y2"],
            vec![
                k3(),
                attr_str("auto_pad", "SAME_UPPER"),
                attr_ints("strides", &[2, 2]),
            ],
        ),
        node(
            "Conv",
            "c3",
            &["y2", "w3"],
            &["y3"],
            vec![
                k3(),
                attr_str("auto_pad", "SAME_LOWER"),
                attr_ints("strides", &[2, 1]),
            ],
        ),
        node(
            "Conv",
            "c4",
            &["y3", "w4"],
            &["y"],
            vec![
                k3(),
                attr_ints("pads", &[2, 1, 2, 1]),
                attr_ints("dilations", &[2, 1]),
            ],
        ),
    ];
    let x = symbolic_input("x", [None, Some(n), None, None], ["batch", "", "H", "W"]);
    let proto = model_proto(8, 13, nodes, inits, vec![x], &[("y", 4)]);
    write_proto(&input, &proto);
    let (vq, dl) = convert_exact_and_dl(test, &input, m * 9);
    let python = common::ort_python(test);
    for shape in [[2, n, 11, 14], [1, n, 16, 9]] {
        let x = common::input_like(&shape, 31);
        let what = |s: &str| format!("{test}: {s} at {shape:?}");
        let original = tract_run(&input, &x);
        Approximation::Exact.assert_close(&what("VQ-exact, tract"), &tract_run(&vq, &x), &original);
        let got_dl = tract_run(&dl, &x);
        assert_eq!(got_dl.shape(), original.shape(), "{}", what("DL shape"));
        if let Some(py) = &python {
            let ort = common::run_ort(py, &vq, &x);
            Approximation::Engines.assert_close(&what("VQ-exact, ONNX Runtime"), &ort, &original);
            let ort = common::run_ort(py, &dl, &x);
            Approximation::Engines.assert_close(&what("DL, ONNX Runtime vs tract"), &ort, &got_dl);
        }
    }
    let out = model::load(&vq).unwrap().proto;
    assert_eq!(
        out.graph.unwrap().input[0],
        proto.graph.unwrap().input[0],
        "{test}: the input must keep its symbolic dimensions"
    );
}

/// An opset-7 model with experimental operators ONNX Runtime runs and tract does not
/// (ImageScaler before the first Conv, Crop at the end, InstanceNormalization between): no
/// shape is known for any Conv, yet every layer converts, and the converted model computes in
/// ONNX Runtime what the original computes there, at two input sizes.
#[test]
fn model_tract_cannot_load_converts_and_runs_in_onnx_runtime() {
    let test = "model_tract_cannot_load_converts_and_runs_in_onnx_runtime";
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.onnx");
    let m = 8;
    let inits = vec![
        new_tensor("w1", &[m, 3, 3, 3], &weights(m * 27, 41), FloatType::F32),
        new_tensor("b1", &[m], &weights(m, 42), FloatType::F32),
        new_tensor("in_scale", &[m], &weights(m, 43), FloatType::F32),
        new_tensor("in_bias", &[m], &weights(m, 44), FloatType::F32),
        new_tensor("w2", &[m, m, 3, 3], &weights(m * m * 9, 45), FloatType::F32),
    ];
    let mut inputs = vec![symbolic_input(
        "x",
        [None, Some(3), None, None],
        ["N", "", "H", "W"],
    )];
    for t in &inits {
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        inputs.push(value_info(t.name.as_deref().unwrap(), 1, Some(&dims)));
    }
    let k3 = || attr_ints("kernel_shape", &[3, 3]);
    let nodes = vec![
        node(
            "ImageScaler",
            "scaler",
            &["x"],
            &["s"],
            vec![
                attr_float("scale", 0.5),
                attr_floats("bias", &[0.1, -0.2, 0.3]),
            ],
        ),
        node(
            "Conv",
            "convolution1",
            &["s", "w1", "b1"],
            &["c1"],
            vec![k3(), attr_ints("pads", &[1; 4])],
        ),
        node(
            "InstanceNormalization",
            "norm",
            &["c1", "in_scale", "in_bias"],
            &["n1"],
            vec![],
        ),
        node("Relu", "relu", &["n1"], &["r1"], vec![]),
        node(
            "Conv",
            "convolution2",
            &["r1", "w2"],
            &["c2"],
            vec![
                k3(),
                attr_ints("pads", &[1; 4]),
                attr_ints("strides", &[2, 2]),
            ],
        ),
        node(
            "Crop",
            "crop",
            &["c2"],
            &["y"],
            vec![attr_ints("border", &[1, 1, 1, 1])],
        ),
    ];
    let proto = model_proto(3, 7, nodes, inits, inputs, &[("y", 4)]);
    write_proto(&input, &proto);
    let (vq, dl) = convert_exact_and_dl(test, &input, m * 9);
    let Some(py) = common::ort_python(test) else {
        return;
    };
    for shape in [[2, 3, 12, 10], [1, 3, 9, 15]] {
        let x = common::input_like(&shape, 51);
        let what = |s: &str| format!("{test}: {s} at {shape:?}");
        let original = common::run_ort(&py, &input, &x);
        let got = common::run_ort(&py, &vq, &x);
        Approximation::Exact.assert_close(
            &what("VQ-exact vs original, ONNX Runtime"),
            &got,
            &original,
        );
        let got = common::run_ort(&py, &dl, &x);
        assert_eq!(got.shape(), original.shape(), "{}", what("DL shape"));
        assert!(got.iter().all(|v| v.is_finite()), "{}", what("DL output"));
    }
    // `verify` runs it in ONNX Runtime too, where tract cannot.
    let (j, _) = run_json(
        test,
        &[
            "verify",
            common::path_str(&input),
            common::path_str(&vq),
            "--engine",
            "ort",
            "--input-shape",
            "x=2,3,12,10",
            "--runs",
            "2",
            "--json",
        ],
    );
    assert_eq!(j["top1_agreement"], 1.0, "{test}: {j}");
    assert!(j["relative_l2"].as_f64().unwrap() < 1e-5, "{test}: {j}");
    legacy_model_shapes_and_calibration_come_from_onnx_runtime(test, &input, tmp.path());
}

/// Runs onnx-dlq with `args`, which must succeed and print JSON; the JSON and stderr.
fn run_json(test: &str, args: &[&str]) -> (serde_json::Value, String) {
    let o = common::run(args);
    let stderr = common::stderr(&o);
    assert!(o.status.success(), "{test}: {args:?}: {stderr}");
    let j = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{test}: {args:?}: {e}: {}", common::stdout(&o)));
    (j, stderr)
}

/// The legacy-operator model at a concrete size: the shapes tract cannot infer come from one
/// run in ONNX Runtime (counts complete), and a calibrated conversion, which must run the
/// model, runs it in ONNX Runtime without being told to.
fn legacy_model_shapes_and_calibration_come_from_onnx_runtime(
    test: &str,
    input: &std::path::Path,
    dir: &std::path::Path,
) {
    let (j, _) = run_json(
        test,
        &[
            "inspect",
            common::path_str(input),
            "--input-shape",
            "x=1,3,8,8",
            "--json",
        ],
    );
    assert_eq!(j["counts_complete"], true, "{test}: {j}");
    // 8·3·9 per position at 8×8, then 8·8·9 at 4×4 (stride 2).
    assert_eq!(
        j["conv_multiplications"],
        8 * 27 * 64 + 8 * 72 * 16,
        "{test}: {j}"
    );
    assert!(
        j["assumptions"].to_string().contains("ONNX Runtime"),
        "{test}: {j}"
    );

    let spec = dir.join("spec.json");
    let digits_spec = common::repo().join("models/digits-cnn.preprocess.json");
    let mut s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(digits_spec).unwrap()).unwrap();
    s["input"] = "x".into();
    std::fs::write(&spec, s.to_string()).unwrap();
    let out = dir.join("calibrated.onnx");
    let data = common::repo().join("models/digits-test");
    let (j, stderr) = run_json(
        test,
        &[
            "convert",
            common::path_str(input),
            common::path_str(&out),
            "--all",
            "--k",
            "16",
            "--l",
            "4",
            "--subspace",
            "4",
            "--calibrate",
            common::path_str(&data),
            "--preprocess",
            common::path_str(&spec),
            "--calib-samples",
            "16",
            "--input-shape",
            "x=1,3,8,8",
            "--json",
        ],
    );
    assert!(stderr.contains("using ONNX Runtime"), "{test}: {stderr}");
    assert!(!j["layers"].as_array().unwrap().is_empty(), "{test}: {j}");
    for l in j["layers"].as_array().unwrap() {
        let (cal, plain) = (
            l["output_error"].as_f64().unwrap(),
            l["output_error_uncalibrated"].as_f64().unwrap(),
        );
        assert!(cal.is_finite() && plain.is_finite(), "{test}: {l}");
    }
    let engine = j["latency"]["engine"].as_str().unwrap();
    assert!(engine.starts_with("ONNX Runtime"), "{test}: {j}");
}
