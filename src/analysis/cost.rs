//! Multiplication accounting: multiplications (a MAC counts as one, as in the paper) and,
//! separately, additions for every node of a graph, from shapes inferred through tract.
//! Look-ups, slices, pads, concatenations and activations cost nothing here.

use serde::Serialize;

use crate::analysis::shapes::ShapeMap;
use crate::onnx::conv::attribute;
use crate::onnx::model::OnnxModel;
use crate::proto::NodeProto;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OpCost {
    pub multiplications: u64,
    pub additions: u64,
}

impl std::ops::Add for OpCost {
    type Output = OpCost;
    fn add(self, o: OpCost) -> OpCost {
        OpCost {
            multiplications: self.multiplications + o.multiplications,
            additions: self.additions + o.additions,
        }
    }
}

impl std::iter::Sum for OpCost {
    fn sum<I: Iterator<Item = OpCost>>(iter: I) -> OpCost {
        iter.fold(OpCost::default(), |a, b| a + b)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeCost {
    pub node_index: usize,
    pub name: String,
    pub op_type: String,
    pub cost: OpCost,
    /// False when a shape the count needs was not inferred (the node then counts as zero).
    pub known: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct GraphCost {
    pub nodes: Vec<NodeCost>,
    pub total: OpCost,
}

impl GraphCost {
    /// Whether every node whose index satisfies `pred` was counted (its shapes known).
    pub fn known_where(&self, pred: impl Fn(usize) -> bool) -> bool {
        self.nodes
            .iter()
            .filter(|n| pred(n.node_index))
            .all(|n| n.known)
    }

    /// Whether every node was counted (shape inference reached all that needed a shape).
    pub fn complete(&self) -> bool {
        self.known_where(|_| true)
    }

    /// Total cost of the nodes whose index satisfies `pred`.
    pub fn sum_where(&self, pred: impl Fn(usize) -> bool) -> OpCost {
        self.nodes
            .iter()
            .filter(|n| pred(n.node_index))
            .map(|n| n.cost)
            .sum()
    }
}

fn elems(shape: &[usize]) -> u64 {
    shape.iter().map(|&d| d as u64).product()
}

/// Cost of one node, or `None` when a shape it needs is unknown.
pub fn node_cost(node: &NodeProto, shapes: &ShapeMap) -> Option<OpCost> {
    let op = node.op_type.as_deref().unwrap_or("");
    let shape_of = |i: usize| {
        node.input
            .get(i)
            .filter(|n| !n.is_empty())
            .and_then(|n| shapes.get(n))
    };
    let out = || node.output.first().and_then(|n| shapes.get(n));
    let has_input = |i: usize| node.input.get(i).is_some_and(|n| !n.is_empty());
    let cost = |m: u64, a: u64| {
        Some(OpCost {
            multiplications: m,
            additions: a,
        })
    };
    match op {
        "Conv" => {
            let w = shape_of(1)?;
            let per_output: u64 = w[1..].iter().map(|&d| d as u64).product();
            let n = elems(out()?);
            let bias = if has_input(2) { n } else { 0 };
            cost(n * per_output, n * per_output.saturating_sub(1) + bias)
        }
        "ConvTranspose" => {
            let w = shape_of(1)?; // [C_in, C_out/group, k...]
            let per_input: u64 = w[1..].iter().map(|&d| d as u64).product();
            let n_in = elems(shape_of(0)?);
            let bias = if has_input(2) { elems(out()?) } else { 0 };
            cost(n_in * per_input, n_in * per_input + bias)
        }
        "Gemm" => {
            let a = shape_of(0)?;
            let trans_a = attribute(node, "transA").and_then(|a| a.i).unwrap_or(0) != 0;
            let k = if trans_a { a[0] } else { a[1] } as u64;
            let n = elems(out()?);
            let c = if has_input(2) { n } else { 0 };
            cost(n * k, n * k.saturating_sub(1) + c)
        }
        "MatMul" | "MatMulInteger" => {
            let a = shape_of(0)?;
            let k = *a.last()? as u64;
            let n = elems(out()?);
            cost(n * k, n * k.saturating_sub(1))
        }
        "Mul" | "Div" | "Reciprocal" | "Sqrt" | "Pow" => cost(elems(out()?), 0),
        "Add" | "Sub" => cost(0, elems(out()?)),
        "Sum" => cost(
            0,
            elems(out()?) * (node.input.len().saturating_sub(1)) as u64,
        ),
        "BatchNormalization" | "InstanceNormalization" => {
            let n = elems(out()?);
            cost(n, n)
        }
        "ReduceSum" => cost(0, elems(shape_of(0)?).saturating_sub(elems(out()?))),
        "DlqConv" => {
            // The fused form (`lower::fused`): Z = atoms · X on the input plane (N·L per pixel),
            // α coefficient products per representative (DL only: S·K·α per pixel), then
            // kh·kw·S look-up additions per output element, plus the bias.
            let (x, atoms, gamma) = (shape_of(0)?, shape_of(1)?, shape_of(4)?);
            if x.len() != 4 || atoms.len() != 3 || gamma.len() != 4 {
                return None;
            }
            let in_pixels = elems(&[x[0], x[2], x[3]]);
            let codes = match has_input(2) {
                true => elems(shape_of(2)?),
                false => 0,
            };
            let n_out = elems(out()?);
            let bias = if has_input(5) { n_out } else { 0 };
            cost(
                in_pixels * (elems(&[x[1], atoms[1]]) + codes),
                n_out * elems(&[gamma[0], gamma[2], gamma[3]]) + bias,
            )
        }
        "AveragePool" | "GlobalAveragePool" | "ReduceMean" => {
            let n_out = elems(out()?);
            cost(n_out, elems(shape_of(0)?).saturating_sub(n_out))
        }
        _ => cost(0, 0),
    }
}

/// Costs of every node of the main graph, in graph order.
pub fn graph_cost(model: &OnnxModel, shapes: &ShapeMap) -> GraphCost {
    let folded = constant_nodes(model);
    let nodes: Vec<NodeCost> = model
        .graph()
        .node
        .iter()
        .enumerate()
        .map(|(i, node)| {
            // Engines fold a node whose inputs are all constants once, at load: no cost per run.
            let c = if folded[i] {
                Some(OpCost::default())
            } else {
                node_cost(node, shapes)
            };
            NodeCost {
                node_index: i,
                name: node
                    .name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .or_else(|| node.output.first().cloned())
                    .unwrap_or_default(),
                op_type: node.op_type.clone().unwrap_or_default(),
                cost: c.unwrap_or_default(),
                known: c.is_some(),
            }
        })
        .collect();
    let total = nodes.iter().map(|n| n.cost).sum();
    GraphCost { nodes, total }
}

/// Per node (graph order): whether every input is an initializer or the output of such a node
/// (the compact form's kernel subgraph, for instance).
fn constant_nodes(model: &OnnxModel) -> Vec<bool> {
    let g = model.graph();
    let mut constant: std::collections::HashSet<&str> = g
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    g.node
        .iter()
        .map(|n| {
            let folded = n
                .input
                .iter()
                .all(|i| i.is_empty() || constant.contains(i.as_str()));
            if folded {
                constant.extend(n.output.iter().map(String::as_str));
            }
            folded
        })
        .collect()
}

/// Millions with one decimal, as people read multiplication counts.
pub fn millions(n: u64) -> String {
    format!("{:.1}M", n as f64 / 1e6)
}
