//! Layer selection: the model's convolution layers, whether each can be converted (and why not),
//! and resolving user-given layer names (node name, output name or weight name) to layers.

use anyhow::{bail, Context, Result};
use ndarray::{Array4, ArrayD, Ix4};
use serde::Serialize;

use super::fc::FcLayout;
use crate::onnx::conv::ConvAttrs;
use crate::onnx::model::OnnxModel;
use crate::onnx::tensor::{self, FloatType};
use crate::proto::NodeProto;

/// One Conv (or ConvTranspose) node of the main graph.
#[derive(Debug, Clone)]
pub struct ConvLayer {
    /// Index of the node in `graph.node`.
    pub node_index: usize,
    /// The name users see: the node name, or its output name when the node has none.
    pub name: String,
    pub node_name: String,
    pub op_type: String,
    pub input: String,
    pub output: String,
    pub weight: String,
    pub bias: Option<String>,
    /// Weight dimensions [M, N/group, k...], when the weight is a constant of known shape.
    pub kernel: Option<Vec<usize>>,
    pub attrs: Option<ConvAttrs>,
    /// Weight element type, when the weight is a floating-point initializer.
    pub weight_type: Option<FloatType>,
    /// `Err(why)` when the layer cannot be converted.
    pub eligibility: Result<(), Ineligible>,
    /// For a fully connected layer (Gemm, MatMul): how its weight maps onto the 1×1 Conv view
    /// (`kernel` [M, N, 1, 1], `attrs` pointwise) every later stage works on.
    pub fc: Option<FcLayout>,
}

impl ConvLayer {
    /// The layer's kernel [M, N, kh, kw] as f32, read from `model`'s weight initializer (a fully
    /// connected layer's weight as [M, N, 1, 1]).
    pub fn kernel_f32(&self, model: &OnnxModel) -> Result<Array4<f32>> {
        let ctx = || format!("layer `{}`: weight `{}`", self.name, self.weight);
        let t = model
            .initializer(&self.weight)
            .with_context(|| format!("{} is not an initializer", ctx()))?;
        let kernel = model
            .tensor_f32(t)
            .and_then(|a| match &self.fc {
                Some(fc) => fc.weight_as_kernel(a),
                None => Ok(a.into_dimensionality::<Ix4>()?),
            })
            .with_context(ctx)?;
        crate::codebook::check_values(kernel.view()).with_context(ctx)?;
        Ok(kernel)
    }

    /// Whether calibration's per-output bias shift has a place in the layer (every Conv; see
    /// [`FcLayout::takes_bias_shift`] for fully connected ones).
    pub fn takes_bias_shift(&self, model: &OnnxModel) -> bool {
        self.fc.as_ref().is_none_or(|fc| fc.takes_bias_shift(model))
    }

    /// The layer's input activation as its Conv view sees it: a Conv's unchanged, a fully
    /// connected layer's as [B′, N, 1, 1] ([`FcLayout::input_view`]).
    pub fn input_view(&self, x: ArrayD<f32>) -> Result<ArrayD<f32>> {
        match &self.fc {
            Some(fc) => fc
                .input_view(x)
                .with_context(|| format!("layer `{}`: input `{}`", self.name, self.input)),
            None => Ok(x),
        }
    }

    pub fn convertible(&self) -> bool {
        self.eligibility.is_ok()
    }

    pub fn reason(&self) -> Option<&Ineligible> {
        self.eligibility.as_ref().err()
    }

    pub fn node<'a>(&self, model: &'a OnnxModel) -> &'a NodeProto {
        &model.graph().node[self.node_index]
    }
}

/// How a user-given name matched a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolvedBy {
    NodeName,
    OutputName,
    WeightName,
}

impl ResolvedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ResolvedBy::NodeName => "node name",
            ResolvedBy::OutputName => "output name",
            ResolvedBy::WeightName => "weight name",
        }
    }
}

fn is_default_domain(node: &NodeProto) -> bool {
    matches!(node.domain.as_deref(), None | Some("") | Some("ai.onnx"))
}

/// Every Conv and ConvTranspose of the main graph and every fully connected layer (Gemm,
/// MatMul: see [`fc`](super::fc)), in graph order, with eligibility decided.
pub fn conv_layers(model: &OnnxModel) -> Vec<ConvLayer> {
    let graph = model.graph();
    graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| is_default_domain(n))
        .filter_map(|(i, node)| match node.op_type.as_deref() {
            Some("Conv") | Some("ConvTranspose") => Some(describe(model, i, node)),
            Some("Gemm") | Some("MatMul") => describe_fc(model, i, node),
            _ => None,
        })
        .collect()
}

impl ConvLayer {
    /// The names of node `node_index` (weight: its input 1), everything else empty and
    /// eligibility undecided: what both kinds of layer start from.
    pub(super) fn named(node_index: usize, node: &NodeProto) -> ConvLayer {
        let node_name = node.name.clone().unwrap_or_default();
        let output = node.output.first().cloned().unwrap_or_default();
        let name = match node_name.is_empty() {
            true => output.clone(),
            false => node_name.clone(),
        };
        ConvLayer {
            node_index,
            name,
            node_name,
            op_type: node.op_type.clone().unwrap_or_default(),
            input: node.input.first().cloned().unwrap_or_default(),
            output,
            weight: node.input.get(1).cloned().unwrap_or_default(),
            bias: None,
            kernel: None,
            attrs: None,
            weight_type: None,
            eligibility: Ok(()),
            fc: None,
        }
    }
}

fn describe(model: &OnnxModel, node_index: usize, node: &NodeProto) -> ConvLayer {
    let named = ConvLayer::named(node_index, node);
    let init = model.initializer(&named.weight);
    let kernel = init.and_then(|t| tensor::dims(t).ok());
    let rank = kernel.as_ref().map_or(2, |k| k.len().saturating_sub(2));
    let mut layer = ConvLayer {
        bias: node.input.get(2).filter(|b| !b.is_empty()).cloned(),
        kernel,
        weight_type: init.and_then(|t| FloatType::from_onnx(t.data_type.unwrap_or(0))),
        ..named
    };
    let attrs = ConvAttrs::from_node(node, rank);
    layer.eligibility = eligibility(model, &layer, attrs.as_ref().map_err(|e| e.to_string()));
    layer.attrs = attrs.ok();
    layer
}

/// Describes a Gemm or MatMul node as a layer with its eligibility decided; `None` for other
/// nodes.
fn describe_fc(model: &OnnxModel, node_index: usize, node: &NodeProto) -> Option<ConvLayer> {
    let fc = FcLayout::of(node)?;
    let named = ConvLayer::named(node_index, node);
    let weight = named.weight.clone();
    let init = model.initializer(&weight);
    let dims = init.and_then(|t| tensor::dims(t).ok());
    let kernel = dims.as_deref().and_then(|d| fc.kernel_dims(d));
    let weight_type = init.and_then(|t| FloatType::from_onnx(t.data_type.unwrap_or(0)));
    let eligibility = match (init, &kernel) {
        (None, _) => Err(runtime_weight(model, &weight)),
        (Some(t), None) => Err(Ineligible::NotMatrix {
            weight,
            dims: t.dims.clone(),
        }),
        (Some(t), Some(_)) if weight_type.is_none() => Err(Ineligible::NotFloat {
            weight,
            data_type: tensor::data_type_name(t.data_type.unwrap_or(0)),
        }),
        (Some(_), Some(k)) if k.contains(&0) => Err(Ineligible::EmptyWeight {
            weight,
            kernel: k.clone(),
        }),
        _ => Ok(()),
    };
    Some(ConvLayer {
        kernel,
        attrs: Some(ConvAttrs::pointwise()),
        weight_type,
        eligibility,
        fc: Some(fc),
        ..named
    })
}

/// Why a weight that is no initializer cannot be converted: it is quantized already (written by
/// a DequantizeLinear, as in an int8 QDQ model), or computed at run time.
pub(crate) fn runtime_weight(model: &OnnxModel, weight: &str) -> Ineligible {
    let dequantized = model.graph().node.iter().any(|n| {
        n.op_type.as_deref() == Some("DequantizeLinear") && n.output.iter().any(|o| o == weight)
    });
    match dequantized {
        true => Ineligible::QuantizedWeight(weight.to_string()),
        false => Ineligible::RuntimeWeight(weight.to_string()),
    }
}

/// Whether `layer` (described but for its eligibility) can be converted, and why not.
fn eligibility(
    model: &OnnxModel,
    layer: &ConvLayer,
    attrs: Result<&ConvAttrs, String>,
) -> Result<(), Ineligible> {
    let weight = &layer.weight;
    if layer.op_type == "ConvTranspose" {
        return Err(Ineligible::Transposed);
    }
    let init = model
        .initializer(weight)
        .ok_or_else(|| runtime_weight(model, weight))?;
    let kernel = layer
        .kernel
        .clone()
        .ok_or_else(|| Ineligible::MalformedWeight {
            weight: weight.clone(),
            dims: init.dims.clone(),
        })?;
    if kernel.len() != 4 {
        return Err(Ineligible::NotTwoD { kernel });
    }
    if layer.weight_type.is_none() {
        let data_type = tensor::data_type_name(init.data_type.unwrap_or(0)).to_string();
        return Err(Ineligible::NotFloat {
            weight: weight.clone(),
            data_type,
        });
    }
    let attrs = attrs.map_err(Ineligible::MalformedAttributes)?;
    if let Some(ks) = &attrs.kernel_shape {
        if ks[..] != kernel[2..] {
            return Err(Ineligible::KernelShapeMismatch {
                kernel_shape: ks.clone(),
                kernel,
            });
        }
    }
    if attrs.group != 1 {
        let depthwise = kernel[1] == 1;
        return Err(Ineligible::Grouped {
            group: attrs.group,
            depthwise,
        });
    }
    if kernel.contains(&0) {
        return Err(Ineligible::EmptyWeight {
            weight: weight.clone(),
            kernel,
        });
    }
    match &layer.bias {
        Some(b) if model.initializer(b).is_none() => Err(Ineligible::RuntimeBias(b.clone())),
        _ => Ok(()),
    }
}

/// Why a Conv layer cannot be converted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Ineligible {
    #[error("ConvTranspose: only Conv is converted")]
    Transposed,
    #[error("weight `{0}` is computed at run time, not a constant initializer")]
    RuntimeWeight(String),
    #[error("int8: weight `{0}` is dequantized from int8 (a QDQ model); convert the float model")]
    QuantizedWeight(String),
    #[error("weight `{weight}` has a malformed shape {dims:?}")]
    MalformedWeight { weight: String, dims: Vec<i64> },
    #[error("{}-D convolution (weight {kernel:?}): only 2-D convolutions are converted", kernel.len().saturating_sub(2))]
    NotTwoD { kernel: Vec<usize> },
    #[error("weight `{weight}` is {data_type}, not a floating-point tensor")]
    NotFloat { weight: String, data_type: String },
    #[error("malformed attributes: {0}")]
    MalformedAttributes(String),
    #[error("kernel_shape {kernel_shape:?} disagrees with the weight shape {kernel:?}")]
    KernelShapeMismatch {
        kernel_shape: Vec<usize>,
        kernel: Vec<usize>,
    },
    #[error("{} convolution (group = {group}): only group = 1 is converted", if *depthwise { "depthwise" } else { "grouped" })]
    Grouped { group: usize, depthwise: bool },
    #[error("weight `{weight}` is empty {kernel:?}")]
    EmptyWeight { weight: String, kernel: Vec<usize> },
    #[error("bias `{0}` is computed at run time, not a constant initializer")]
    RuntimeBias(String),
    #[error("weight `{weight}` has shape {dims:?}, not a matrix")]
    NotMatrix { weight: String, dims: Vec<i64> },
}

/// Finds the layer a user-given name refers to: node name first, then output, then weight name.
pub fn resolve<'a>(layers: &'a [ConvLayer], query: &str) -> Result<(&'a ConvLayer, ResolvedBy)> {
    let by = |f: &dyn Fn(&ConvLayer) -> bool| layers.iter().find(|l| f(l));
    if let Some(l) = by(&|l| !l.node_name.is_empty() && l.node_name == query) {
        return Ok((l, ResolvedBy::NodeName));
    }
    if let Some(l) = by(&|l| l.output == query) {
        return Ok((l, ResolvedBy::OutputName));
    }
    if let Some(l) = by(&|l| l.weight == query) {
        return Ok((l, ResolvedBy::WeightName));
    }
    let candidates: Vec<&str> = layers
        .iter()
        .flat_map(|l| [l.node_name.as_str(), l.output.as_str(), l.weight.as_str()])
        .filter(|s| !s.is_empty())
        .collect();
    let close = close_matches(query, &candidates, 5);
    if close.is_empty() {
        bail!("no Conv or fully connected layer is called `{query}` (by node, output or weight name); `onnx-dlq inspect` lists them");
    }
    bail!(
        "no Conv or fully connected layer is called `{query}` (by node, output or weight name); did you mean {}?",
        close
            .iter()
            .map(|c| format!("`{c}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Resolves every name, refusing unknown names, the same layer twice, and ineligible layers.
pub fn resolve_all<'a>(layers: &'a [ConvLayer], queries: &[String]) -> Result<Vec<&'a ConvLayer>> {
    let mut seen: Vec<(usize, &str)> = Vec::new();
    let mut out = Vec::new();
    for q in queries {
        let (layer, _) = resolve(layers, q)?;
        if let Some((_, first)) = seen.iter().find(|(i, _)| *i == layer.node_index) {
            bail!(
                "layer `{}` is named twice (as `{first}` and as `{q}`)",
                layer.name
            );
        }
        if let Err(reason) = &layer.eligibility {
            bail!("layer `{}` cannot be converted: {reason}", layer.name);
        }
        seen.push((layer.node_index, q));
        out.push(layer);
    }
    Ok(out)
}

/// Up to `n` candidates closest to `query`: substring matches first, then by edit distance.
pub fn close_matches<'a>(query: &str, candidates: &[&'a str], n: usize) -> Vec<&'a str> {
    let q = query.to_lowercase();
    let mut scored: Vec<(f64, &str)> = candidates
        .iter()
        .map(|&c| {
            let lc = c.to_lowercase();
            let sub = if lc.contains(&q) || q.contains(&lc) {
                1.0
            } else {
                0.0
            };
            (sub + strsim::normalized_levenshtein(&q, &lc), c)
        })
        .filter(|(score, _)| *score >= 0.5)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    let mut out: Vec<&str> = Vec::new();
    for (_, c) in scored {
        if !out.contains(&c) {
            out.push(c);
        }
        if out.len() == n {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_matches_prefer_substrings_then_edit_distance() {
        let c = [
            "fire8/expand3x3",
            "fire8/expand3x3_1",
            "fire9/expand3x3_1",
            "conv1",
        ];
        assert_eq!(
            close_matches("fire8/expand3x3_2", &c, 2),
            vec!["fire8/expand3x3", "fire8/expand3x3_1"]
        );
        assert!(close_matches("zzzzzz", &c, 3).is_empty());
    }
}
