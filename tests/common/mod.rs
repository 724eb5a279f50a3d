//! Helpers shared by the integration tests: where the shared assets and the default model are,
//! and how to run the binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn default_model() -> PathBuf {
    repo().join("models/digits-cnn.onnx")
}

/// `../shared`, or `None` with a loud note. In CI (`CI=true`) its absence fails the test:
/// shared-asset tests must never silently skip there.
pub fn shared(test: &str) -> Option<PathBuf> {
    let dir = repo().join("../shared");
    if dir.join("models").is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: ../shared is missing but CI=true; shared-asset tests must run in CI");
    }
    eprintln!("SKIPPED {test}: ../shared (real models and data) not found beside the repository");
    None
}

pub fn shared_model(test: &str, file: &str) -> Option<PathBuf> {
    shared(test).map(|d| d.join("models").join(file))
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onnx-dlq"))
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run onnx-dlq")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

use onnx_dlq::proto::attribute_proto::AttributeType;
use onnx_dlq::proto::{
    tensor_shape_proto, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// Geometry of a single-Conv test model.
#[derive(Debug, Clone)]
pub struct ConvSpec {
    pub batch: usize,
    pub n: usize,
    pub m: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub strides: [i64; 2],
    pub dilations: [i64; 2],
    /// [top, left, bottom, right], ignored when `auto_pad` is set.
    pub pads: [i64; 4],
    pub auto_pad: Option<&'static str>,
    pub bias: bool,
    pub opset: i64,
}

pub fn value_info(name: &str, elem: i32, dims: Option<&[usize]>) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: dims.map(|d| TensorShapeProto {
                    dim: d
                        .iter()
                        .map(|&v| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(v as i64)),
                            denotation: None,
                        })
                        .collect(),
                }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A model `y = Conv(x, w[, b])` with the given weights, named `conv`, weight `w`, bias `b`.
pub fn conv_model(spec: &ConvSpec, weight: &[f32], bias: &[f32]) -> ModelProto {
    use onnx_dlq::tensor::{new_tensor, FloatType};
    let mut attrs = vec![
        ints("kernel_shape", &[spec.kh as i64, spec.kw as i64]),
        ints("strides", &spec.strides),
        ints("dilations", &spec.dilations),
    ];
    match spec.auto_pad {
        Some(mode) => attrs.push(AttributeProto {
            name: Some("auto_pad".into()),
            r#type: Some(AttributeType::String as i32),
            s: Some(mode.as_bytes().to_vec()),
            ..Default::default()
        }),
        None => attrs.push(ints("pads", &spec.pads)),
    }
    let mut inputs = vec!["x".to_string(), "w".to_string()];
    let mut inits = vec![new_tensor(
        "w",
        &[spec.m, spec.n, spec.kh, spec.kw],
        weight,
        FloatType::F32,
    )];
    if spec.bias {
        inputs.push("b".into());
        inits.push(new_tensor("b", &[spec.m], bias, FloatType::F32));
    }
    ModelProto {
        ir_version: Some(if spec.opset <= 9 { 4 } else { 8 }),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(spec.opset),
        }],
        producer_name: Some("onnx-dlq tests".into()),
        graph: Some(GraphProto {
            name: Some("conv".into()),
            node: vec![NodeProto {
                input: inputs,
                output: vec!["y".into()],
                name: Some("conv".into()),
                op_type: Some("Conv".into()),
                attribute: attrs,
                ..Default::default()
            }],
            initializer: inits,
            input: vec![value_info(
                "x",
                1,
                Some(&[spec.batch, spec.n, spec.h, spec.w]),
            )],
            output: vec![value_info("y", 1, None)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Wraps a protobuf as a loaded model living in `dir` (for tract and the rewrite).
pub fn in_memory(proto: ModelProto, dir: &Path) -> onnx_dlq::model::OnnxModel {
    onnx_dlq::model::OnnxModel {
        proto,
        path: dir.join("model.onnx"),
        base_dir: dir.to_path_buf(),
    }
}
