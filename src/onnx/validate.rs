//! Structural checks a model passes before it reaches tract: every name a node, a subgraph or
//! a graph output reads is defined, and the window attributes of convolutions and poolings agree
//! with their rank. tract assumes both and panics otherwise (found by fuzzing); here they are
//! errors that name the node and the attribute.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};

use crate::onnx::conv::{attribute, ConvAttrs};
use crate::onnx::model::OnnxModel;
use crate::proto::{GraphProto, NodeProto};

/// Operators whose `kernel_shape` / `strides` / `dilations` / `pads` tract reads by axis.
const WINDOWED_OPS: [&str; 7] = [
    "Conv",
    "ConvTranspose",
    "ConvInteger",
    "QLinearConv",
    "MaxPool",
    "AveragePool",
    "LpPool",
];

/// Operators whose first input tract reads as (N, C, spatial…) without checking its rank, with
/// the least rank ONNX allows there. A lower rank is an unchecked out-of-bounds index inside
/// tract 0.23 (found by fuzzing: a rank-1 tensor fed to BatchNormalization).
const LAYOUT_OPS: [(&str, usize); 12] = [
    ("Conv", 3),
    ("ConvTranspose", 3),
    ("ConvInteger", 3),
    ("QLinearConv", 3),
    ("MaxPool", 3),
    ("AveragePool", 3),
    ("LpPool", 3),
    ("GlobalAveragePool", 3),
    ("GlobalMaxPool", 3),
    ("GlobalLpPool", 3),
    ("BatchNormalization", 2),
    ("InstanceNormalization", 3),
];

pub fn check_structure(model: &OnnxModel) -> Result<()> {
    check_graph(model.graph(), &HashSet::new(), model)
}

fn node_label(node: &NodeProto, index: usize) -> String {
    let op = node.op_type.as_deref().unwrap_or("?");
    match node.name.as_deref() {
        Some(n) if !n.is_empty() => format!("node `{n}` ({op})"),
        _ => format!("node #{index} ({op})"),
    }
}

fn check_graph(graph: &GraphProto, outer: &HashSet<&str>, model: &OnnxModel) -> Result<()> {
    let mut known: HashSet<&str> = outer.clone();
    known.extend(graph.input.iter().filter_map(|v| v.name.as_deref()));
    known.extend(graph.initializer.iter().filter_map(|t| t.name.as_deref()));
    known.extend(
        graph
            .sparse_initializer
            .iter()
            .filter_map(|s| s.values.as_ref().and_then(|v| v.name.as_deref())),
    );
    for n in &graph.node {
        known.extend(n.output.iter().map(String::as_str));
    }
    for (i, node) in graph.node.iter().enumerate() {
        let label = || node_label(node, i);
        for input in node.input.iter().filter(|s| !s.is_empty()) {
            if !known.contains(input.as_str()) {
                bail!(
                    "{} reads `{input}`, which no node, initializer or graph input defines",
                    label()
                );
            }
        }
        let default_domain = node.domain.as_deref().is_none_or(str::is_empty);
        let op = node.op_type.as_deref().unwrap_or("");
        if default_domain && WINDOWED_OPS.contains(&op) {
            check_window(node, model).with_context(label)?;
        }
        if let Some(&(_, least)) = LAYOUT_OPS.iter().find(|(o, _)| *o == op) {
            let x = node.input.first().map(String::as_str).unwrap_or("");
            if let Some(rank) = declared_rank(graph, x).filter(|_| default_domain) {
                if rank < least {
                    bail!(
                        "{} reads `{x}` of rank {rank}; {op} needs rank {least} or more (batch, channels{})",
                        label(),
                        if least > 2 { ", spatial axes" } else { "" }
                    );
                }
            }
        }
        for a in &node.attribute {
            for g in a.g.iter().chain(a.graphs.iter()) {
                check_graph(g, &known, model).with_context(|| {
                    format!(
                        "{}, subgraph `{}`",
                        label(),
                        a.name.as_deref().unwrap_or("?")
                    )
                })?;
            }
        }
    }
    for o in &graph.output {
        let name = o.name.as_deref().unwrap_or("");
        if !known.contains(name) {
            bail!("graph output `{name}` is not produced by any node, initializer or input");
        }
    }
    Ok(())
}

/// The rank of `name` where the file states it: an initializer's dims, or the declared shape
/// of a graph input or value_info entry. Tensors computed at run time without a declared shape
/// are not known here.
fn declared_rank(graph: &GraphProto, name: &str) -> Option<usize> {
    use crate::proto::type_proto;
    if let Some(t) = graph
        .initializer
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
    {
        return Some(t.dims.len());
    }
    graph
        .input
        .iter()
        .chain(&graph.value_info)
        .find(|v| v.name.as_deref() == Some(name))
        .and_then(|v| match v.r#type.as_ref()?.value.as_ref()? {
            type_proto::Value::TensorType(t) => t.shape.as_ref().map(|s| s.dim.len()),
            _ => None,
        })
}

/// The spatial rank from `kernel_shape`, else from a constant weight; unknown (not checked)
/// when neither says.
fn check_window(node: &NodeProto, model: &OnnxModel) -> Result<()> {
    let weight_index = match node.op_type.as_deref() {
        Some("QLinearConv") => Some(3),
        Some("Conv" | "ConvTranspose" | "ConvInteger") => Some(1),
        _ => None,
    };
    let rank = match attribute(node, "kernel_shape") {
        Some(k) => Some(k.ints.len()),
        None => weight_index
            .and_then(|i| node.input.get(i))
            .and_then(|w| model.initializer(w))
            .map(|t| t.dims.len().saturating_sub(2)),
    };
    if let Some(rank) = rank {
        if rank == 0 {
            bail!("no spatial axis: `kernel_shape` or the weight has rank below 3");
        }
        ConvAttrs::from_node(node, rank)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::build::{attr_ints, node};
    use crate::proto::{AttributeProto, ModelProto, TensorProto, ValueInfoProto};

    fn model(nodes: Vec<NodeProto>, outputs: &[&str]) -> OnnxModel {
        let info = |n: &str| ValueInfoProto {
            name: Some(n.into()),
            ..Default::default()
        };
        OnnxModel {
            proto: ModelProto {
                ir_version: Some(8),
                graph: Some(GraphProto {
                    node: nodes,
                    input: vec![info("x")],
                    output: outputs.iter().map(|o| info(o)).collect(),
                    initializer: vec![TensorProto {
                        name: Some("w".into()),
                        dims: vec![4, 2, 3, 3],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
            path: "m.onnx".into(),
            base_dir: ".".into(),
        }
    }

    fn conv(name: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
        node("Conv", name, inputs, &["y"], attrs)
    }

    #[test]
    fn well_formed_graphs_pass() {
        let m = model(
            vec![conv(
                "c",
                &["x", "w"],
                vec![attr_ints("pads", &[1, 1, 1, 1])],
            )],
            &["y"],
        );
        check_structure(&m).unwrap();
    }

    #[test]
    fn undefined_names_are_reported_with_the_node() {
        let m = model(vec![conv("c", &["x", "nowhere"], vec![])], &["y"]);
        let e = check_structure(&m).unwrap_err().to_string();
        assert!(e.contains("node `c` (Conv) reads `nowhere`"), "{e}");
        let m = model(vec![conv("c", &["x", "w"], vec![])], &["y", "ghost"]);
        let e = check_structure(&m).unwrap_err().to_string();
        assert!(e.contains("graph output `ghost`"), "{e}");
    }

    /// The fuzzer's find: BatchNormalization fed a rank-1 initializer made tract index out of
    /// bounds (an abort with debug assertions, undefined behaviour without).
    #[test]
    fn layout_ops_need_their_least_rank() {
        let bn = node("BatchNormalization", "bn", &["b"; 5], &["y"], vec![]);
        let mut m = model(vec![bn], &["y"]);
        m.graph_mut().initializer.push(TensorProto {
            name: Some("b".into()),
            dims: vec![4],
            ..Default::default()
        });
        let e = check_structure(&m).unwrap_err().to_string();
        assert!(
            e.contains("node `bn` (BatchNormalization) reads `b` of rank 1")
                && e.contains("rank 2 or more"),
            "{e}"
        );
        // A Conv on the rank-4 weight itself is fine; on a rank-1 tensor it is not.
        let m = model(vec![conv("c", &["w", "w"], vec![])], &["y"]);
        check_structure(&m).unwrap();
        let mut m = model(vec![conv("c", &["b", "w"], vec![])], &["y"]);
        m.graph_mut().initializer.push(TensorProto {
            name: Some("b".into()),
            dims: vec![4],
            ..Default::default()
        });
        let e = check_structure(&m).unwrap_err().to_string();
        assert!(e.contains("Conv needs rank 3 or more"), "{e}");
    }

    #[test]
    fn window_attributes_must_match_the_rank() {
        // The weight says 2-D: two pads are too few.
        let m = model(
            vec![conv("c", &["x", "w"], vec![attr_ints("pads", &[1, 1])])],
            &["y"],
        );
        let e = format!("{:#}", check_structure(&m).unwrap_err());
        assert!(
            e.contains("node `c` (Conv)") && e.contains("`pads` has 2 values, expected 4"),
            "{e}"
        );
        // kernel_shape says 1-D while strides has two values.
        let m = model(
            vec![conv(
                "c",
                &["x", "w"],
                vec![
                    attr_ints("kernel_shape", &[3]),
                    attr_ints("strides", &[1, 1]),
                ],
            )],
            &["y"],
        );
        let e = format!("{:#}", check_structure(&m).unwrap_err());
        assert!(e.contains("`strides` has 2 values, expected 1"), "{e}");
    }
}
