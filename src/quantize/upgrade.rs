//! The int8 output's preconditions: a float32 model that is not quantized already, at opset 13
//! or later (DequantizeLinear per output channel). An older model is upgraded in place where
//! every operator it uses means the same at opset 13 (or is rewritten to: an inference-time
//! Dropout becomes Identity, old Softmax's explicit axis, attributes that became inputs); any
//! other operator is refused, named.

use anyhow::{bail, ensure, Result};

use crate::analysis::shapes::ShapeMap;
use crate::onnx::build::attr_int;
use crate::onnx::conv::attribute;
use crate::onnx::model::OnnxModel;
use crate::onnx::tensor;
use crate::proto::tensor_proto::DataType;
use crate::proto::{NodeProto, TensorProto};

/// The opset the int8 output is written at when the model's is older.
pub const QDQ_OPSET: i64 = 13;

/// The IR version that goes with opset 13.
const QDQ_IR: i64 = 7;

/// Operators whose meaning (for the attributes a model can give them) does not change between
/// opset 7 and opset 13.
const SAME_AT_13: &[&str] = &[
    "Conv",
    "Relu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Concat",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Sum",
    "Max",
    "Min",
    "Gemm",
    "MatMul",
    "Flatten",
    "Reshape",
    "Transpose",
    "Identity",
    "Sigmoid",
    "Tanh",
    "LeakyRelu",
    "PRelu",
    "Exp",
    "Log",
    "Sqrt",
    "Abs",
    "Neg",
    "Pow",
    "Shape",
    "Gather",
    "Cast",
    "Constant",
    "LRN",
    "Mod",
    "Floor",
    "Ceil",
    "Round",
    "Elu",
    "Selu",
    "HardSigmoid",
    "Softplus",
    "Not",
    "And",
    "Or",
    "Equal",
    "Less",
    "Greater",
    "Where",
    "ConstantOfShape",
    "Expand",
    "Tile",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL2",
    "Erf",
    "Sin",
    "Cos",
    "BitShift",
];

const QUANTIZED_OPS: &[&str] = &[
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "QGemm",
    "QLinearAdd",
];

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or_default()
}

fn describe(n: &NodeProto) -> String {
    let name = n.name.as_deref().filter(|s| !s.is_empty());
    let out = n.output.first().map(String::as_str).unwrap_or("?");
    format!("node `{}` ({})", name.unwrap_or(out), op(n))
}

/// Refuses a model that is quantized already (QDQ or QOperator), or whose input or weights are
/// not float32, naming the first node or tensor at fault.
pub fn check_quantizable(model: &OnnxModel) -> Result<()> {
    let g = model.graph();
    if let Some(n) = g.node.iter().find(|n| QUANTIZED_OPS.contains(&op(n))) {
        bail!(
            "the model is quantized already ({} at {}); the int8 output starts from a float32 model",
            op(n),
            describe(n)
        );
    }
    for i in &g.input {
        let elem = i.r#type.as_ref().and_then(|t| match &t.value {
            Some(crate::proto::type_proto::Value::TensorType(t)) => t.elem_type,
            _ => None,
        });
        let init = g.initializer.iter().any(|t| t.name == i.name);
        if !init && elem.is_some_and(|e| e != DataType::Float as i32) {
            bail!(
                "input `{}` is {}; the int8 output needs a float32 model",
                i.name.as_deref().unwrap_or_default(),
                tensor::data_type_name(elem.unwrap_or(0))
            );
        }
    }
    Ok(())
}

/// An old-style Softmax (input coerced to 2-D at `axis`) given its explicit axis, when the
/// dimensions after it are all 1 (then both meanings agree).
fn upgrade_softmax(n: &mut NodeProto, shapes: &ShapeMap) -> Result<()> {
    let axis = attribute(n, "axis").and_then(|a| a.i).unwrap_or(1);
    let shape = n.input.first().and_then(|x| shapes.get(x));
    let Some(shape) = shape else {
        bail!(
            "{}: its input's shape is unknown, so its opset-{QDQ_OPSET} axis cannot be chosen",
            describe(n)
        );
    };
    let a = if axis < 0 {
        axis + shape.len() as i64
    } else {
        axis
    } as usize;
    ensure!(
        a < shape.len() && shape[a + 1..].iter().all(|&d| d == 1),
        "{}: it normalises over dimensions {a}.. of {shape:?} together, which a Softmax of opset {QDQ_OPSET} cannot express",
        describe(n)
    );
    n.attribute.retain(|x| x.name.as_deref() != Some("axis"));
    n.attribute.push(attr_int("axis", a as i64));
    Ok(())
}

/// Upgrades `model` to opset 13 when it is older; returns the opset it had.
pub fn to_qdq_opset(model: &mut OnnxModel, shapes: &ShapeMap) -> Result<Option<i64>> {
    let from = model.default_opset();
    if from >= QDQ_OPSET {
        return Ok(None);
    }
    ensure!(
        from >= 7,
        "the model's opset {from} is older than 7, which the int8 output does not upgrade"
    );
    let g = model.graph();
    let read: std::collections::HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(g.output.iter().filter_map(|o| o.name.as_deref()))
        .collect();
    let mut rewritten: Vec<NodeProto> = vec![];
    let mut axes_inits: Vec<TensorProto> = vec![];
    for (i, n) in model.graph().node.iter().enumerate() {
        let mut n = n.clone();
        match op(&n) {
            o if SAME_AT_13.contains(&o) => {}
            "BatchNormalization" => {
                let spatial = attribute(&n, "spatial").and_then(|a| a.i).unwrap_or(1);
                ensure!(spatial == 1, "{}: spatial = 0 has no opset-13 form", describe(&n));
                n.attribute.retain(|a| a.name.as_deref() != Some("spatial"));
            }
            "Dropout" => {
                ensure!(
                    n.output.len() < 2 || !read.contains(n.output[1].as_str()),
                    "{}: its mask output is used",
                    describe(&n)
                );
                n.op_type = Some("Identity".into());
                n.attribute.clear();
                n.input.truncate(1);
                n.output.truncate(1);
            }
            "Softmax" | "LogSoftmax" | "Hardmax" => upgrade_softmax(&mut n, shapes)?,
            "Squeeze" | "Unsqueeze" => {
                if let Some(axes) = attribute(&n, "axes").map(|a| a.ints.clone()) {
                    let name = format!("{}/int8/axes{i}", n.output[0]);
                    axes_inits.push(tensor::new_i64_tensor(&name, &[axes.len()], &axes));
                    n.attribute.retain(|a| a.name.as_deref() != Some("axes"));
                    n.input.push(name);
                }
            }
            _ => bail!(
                "{}: the int8 output needs opset {QDQ_OPSET} and the model has opset {from}; this operator is not upgraded automatically (convert the model to opset {QDQ_OPSET} first, e.g. with onnx.version_converter)",
                describe(&n)
            ),
        }
        rewritten.push(n);
    }
    let ir3 = model.proto.ir_version.unwrap_or(0) < 4;
    let g = model.graph_mut();
    g.node = rewritten;
    g.initializer.extend(axes_inits);
    if ir3 {
        // IR 3 listed every initializer as a graph input; from IR 4 such an input may be fed
        // at run time, so engines would no longer treat the weights as constants.
        let inits: std::collections::HashSet<String> = g
            .initializer
            .iter()
            .filter_map(|t| t.name.clone())
            .collect();
        g.input
            .retain(|i| !inits.contains(i.name.as_deref().unwrap_or_default()));
    }
    for o in model.proto.opset_import.iter_mut() {
        if matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")) {
            o.version = Some(QDQ_OPSET);
        }
    }
    let ir = model.proto.ir_version.unwrap_or(0).max(QDQ_IR);
    model.proto.ir_version = Some(ir);
    Ok(Some(from))
}
