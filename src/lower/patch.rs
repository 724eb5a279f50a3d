//! Graph edits as one patch applied in one place: each converted layer contributes a
//! [`LayerPatch`] (its replacement nodes, new initializers, the initializers it frees and a
//! metadata entry), and [`apply`] puts them all into the model.

use std::collections::{BTreeMap, HashSet};

use anyhow::{bail, ensure, Result};

use crate::onnx::build;
use crate::onnx::model::OnnxModel;
use crate::onnx::tensor;
use crate::proto::{
    NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, ValueInfoProto,
};

/// The replacement of one Conv (or fully connected) node.
#[derive(Debug, Clone)]
pub struct LayerPatch {
    pub node_index: usize,
    pub layer: String,
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    /// Initializers the Conv used (weight, bias): removed when nothing else uses them.
    pub released: Vec<String>,
    /// `metadata_props` entry recording what was done.
    pub metadata: (String, String),
    /// Operator-set domains (name, version) the new nodes need beside the default one; [`apply`]
    /// adds each to the model's `opset_import` unless it is already there.
    pub domains: Vec<(String, i64)>,
    /// Types of new nodes' outputs that no standard schema infers (custom operators), so that
    /// `onnx.checker` can type-check their consumers: [`apply`] records each in the graph's
    /// `value_info`, or completes the graph output's type when the output is one.
    pub value_info: Vec<ValueInfoProto>,
    /// Indices of further nodes the replacement takes over (a Relu fused into the fused form's
    /// node): [`apply`] removes them.
    pub absorbed: Vec<usize>,
}

impl LayerPatch {
    /// The replacement of `layer` by `nodes` and `initializers` in the default domain, freeing
    /// `released`, recording `settings`; no custom types or absorbed nodes.
    pub fn standard(
        layer: &crate::analysis::select::ConvLayer,
        nodes: Vec<NodeProto>,
        initializers: Vec<TensorProto>,
        released: Vec<String>,
        settings: &str,
    ) -> LayerPatch {
        LayerPatch {
            node_index: layer.node_index,
            layer: layer.name.clone(),
            nodes,
            initializers,
            released,
            metadata: (format!("onnx-dlq/{}", layer.name), settings.to_string()),
            domains: vec![],
            value_info: vec![],
            absorbed: vec![],
        }
    }
}

/// All edits of a conversion, applied together by [`apply`].
#[derive(Debug, Clone, Default)]
pub struct GraphPatch {
    pub layers: Vec<LayerPatch>,
}

/// The graph-input entry an IR-3 model lists for initializer `t`.
fn value_info_for(t: &TensorProto) -> ValueInfoProto {
    let name = t.name.as_deref().unwrap_or_default();
    build::value_info(name, t.data_type.unwrap_or(0), Some(&t.dims))
}

/// Applies every layer patch: new nodes take the place of their Conv (so the graph stays
/// topologically sorted), released initializers nothing else uses are removed, and the model's
/// metadata records the settings. Nothing else in the model changes.
pub fn apply(model: &mut OnnxModel, patch: GraphPatch) -> Result<()> {
    let list_initializers_as_inputs = model.proto.ir_version.unwrap_or(0) < 4;
    let mut by_index: BTreeMap<usize, LayerPatch> = BTreeMap::new();
    let absorbed: HashSet<usize> = patch
        .layers
        .iter()
        .flat_map(|l| l.absorbed.iter().copied())
        .collect();
    for lp in patch.layers {
        if by_index.insert(lp.node_index, lp).is_some() {
            bail!("a layer is patched twice");
        }
    }
    let mut metadata = Vec::new();
    let mut released: Vec<String> = Vec::new();
    let mut domains: Vec<(String, i64)> = Vec::new();
    let mut typed: Vec<ValueInfoProto> = Vec::new();
    let graph = model.graph_mut();
    let old_nodes = std::mem::take(&mut graph.node);
    for (i, node) in old_nodes.into_iter().enumerate() {
        match by_index.remove(&i) {
            Some(lp) => {
                ensure!(
                    matches!(node.op_type.as_deref(), Some("Conv" | "Gemm" | "MatMul")),
                    "node {i} is {:?}, not the layer being replaced",
                    node.op_type
                );
                graph.node.extend(lp.nodes);
                if list_initializers_as_inputs {
                    graph
                        .input
                        .extend(lp.initializers.iter().map(value_info_for));
                }
                graph.initializer.extend(lp.initializers);
                released.extend(lp.released);
                metadata.push(lp.metadata);
                domains.extend(lp.domains);
                typed.extend(lp.value_info);
            }
            None if absorbed.contains(&i) => {}
            None => graph.node.push(node),
        }
    }
    ensure!(by_index.is_empty(), "patches name nodes that do not exist");
    let used: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let outputs: HashSet<&str> = graph
        .output
        .iter()
        .filter_map(|o| o.name.as_deref())
        .collect();
    let dead: HashSet<String> = released
        .into_iter()
        .filter(|r| !used.contains(r.as_str()) && !outputs.contains(r.as_str()))
        .collect();
    graph
        .initializer
        .retain(|t| !dead.contains(tensor::tensor_name(t)));
    graph
        .input
        .retain(|v| !v.name.as_ref().is_some_and(|n| dead.contains(n)));
    graph
        .value_info
        .retain(|v| !v.name.as_ref().is_some_and(|n| dead.contains(n)));
    add_value_info(graph, typed);
    add_domains(model, domains)?;
    let entry = |k: String, v: String| StringStringEntryProto {
        key: Some(k),
        value: Some(v),
    };
    let props = &mut model.proto.metadata_props;
    props.retain(|p| p.key.as_deref() != Some("onnx-dlq/version"));
    props.push(entry(
        "onnx-dlq/version".into(),
        env!("CARGO_PKG_VERSION").into(),
    ));
    for (k, v) in metadata {
        props.retain(|p| p.key.as_deref() != Some(k.as_str()));
        props.push(entry(k, v));
    }
    Ok(())
}

/// Records each typed output: a graph output of that name takes the type when its own has no
/// shape (onnx.checker requires one on graph outputs), otherwise `value_info` gets the entry.
fn add_value_info(graph: &mut crate::proto::GraphProto, typed: Vec<ValueInfoProto>) {
    for info in typed {
        if let Some(out) = graph.output.iter_mut().find(|o| o.name == info.name) {
            let shaped = matches!(
                out.r#type.as_ref().and_then(|t| t.value.as_ref()),
                Some(crate::proto::type_proto::Value::TensorType(t)) if t.shape.is_some()
            );
            if !shaped {
                out.r#type = info.r#type;
            }
            continue;
        }
        graph.value_info.retain(|v| v.name != info.name);
        graph.value_info.push(info);
    }
}

/// Adds each (domain, version) to the model's `opset_import`; a domain already imported at
/// another version is an error (the nodes would be read at the wrong version).
fn add_domains(model: &mut OnnxModel, domains: Vec<(String, i64)>) -> Result<()> {
    let imports = &mut model.proto.opset_import;
    for (domain, version) in domains {
        match imports
            .iter()
            .find(|o| o.domain.as_deref() == Some(domain.as_str()))
        {
            Some(o) => ensure!(
                o.version == Some(version),
                "the model imports domain `{domain}` at version {:?}, the new nodes need {version}",
                o.version
            ),
            None => imports.push(OperatorSetIdProto {
                domain: Some(domain),
                version: Some(version),
            }),
        }
    }
    Ok(())
}
