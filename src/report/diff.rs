//! `diff`: what a conversion changed between two models: nodes per op type, initializers and
//! their bytes, multiplications and stored bytes per converted layer, and totals.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::analysis::cost::millions;
use crate::analysis::inventory;
use crate::analysis::shapes::InputShape;
use crate::onnx::model;
use crate::onnx::tensor;

#[derive(Debug, Clone, Serialize)]
pub struct OpChange {
    pub op_type: String,
    pub before: usize,
    pub after: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerChange {
    pub name: String,
    pub multiplications_before: u64,
    /// The layer's `{name}/dlq/` nodes in B; `None` when B still has the Conv unchanged.
    pub multiplications_after: Option<u64>,
    pub ratio: Option<f64>,
    /// The layer's weight and bias initializers in A.
    pub bytes_before: u64,
    /// B's `{name}/dlq/` initializers and what B still keeps of the layer's weight and bias
    /// (a bias the lowering reuses, say); `None` as for `multiplications_after`.
    pub bytes_after: Option<u64>,
    /// B computes the layer with int8 weights (a DequantizeLinear feeds its weight).
    pub int8: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelDiff {
    pub a: String,
    pub b: String,
    pub ops: Vec<OpChange>,
    pub initializers_before: usize,
    pub initializers_after: usize,
    pub initializer_bytes_before: u64,
    pub initializer_bytes_after: u64,
    pub layers: Vec<LayerChange>,
    pub multiplications_before: u64,
    pub multiplications_after: u64,
}

fn op_counts(m: &model::OnnxModel) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for n in &m.graph().node {
        *c.entry(n.op_type.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    c
}

fn init_bytes(m: &model::OnnxModel) -> u64 {
    init_bytes_where(m, |_| true)
}

/// The bytes of `m`'s initializers whose names `keep` accepts.
fn init_bytes_where(m: &model::OnnxModel, keep: impl Fn(&str) -> bool) -> u64 {
    m.graph()
        .initializer
        .iter()
        .filter(|t| keep(tensor::tensor_name(t)))
        .map(|t| tensor::raw_bytes_len_hint(t) as u64)
        .sum()
}

/// Whether `layer`'s node in `m` (named as the layer, or `{layer}/dlq/conv|fc`) reads its
/// weight from a DequantizeLinear: an int8 weight.
fn int8_weight(m: &model::OnnxModel, layer: &str) -> bool {
    let g = m.graph();
    let names = [
        layer.to_string(),
        format!("{layer}/dlq/conv"),
        format!("{layer}/dlq/fc"),
    ];
    let Some(node) = g
        .node
        .iter()
        .find(|n| n.name.as_ref().is_some_and(|x| names.contains(x)))
    else {
        return false;
    };
    let Some(w) = node.input.get(1) else {
        return false;
    };
    g.node
        .iter()
        .any(|n| n.op_type.as_deref() == Some("DequantizeLinear") && n.output.first() == Some(w))
}

pub fn diff(a: &Path, b: &Path, input_shapes: &[InputShape]) -> Result<ModelDiff> {
    let ma = model::load(a)?;
    let mb = model::load(b)?;
    let ia = inventory::inventory(&ma, input_shapes)?;
    let ib = inventory::inventory(&mb, input_shapes)?;
    let (ca, cb) = (op_counts(&ma), op_counts(&mb));
    let mut ops: Vec<OpChange> = ca
        .keys()
        .chain(cb.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|op| OpChange {
            op_type: op.clone(),
            before: *ca.get(op).unwrap_or(&0),
            after: *cb.get(op).unwrap_or(&0),
        })
        .filter(|c| c.before != c.after)
        .collect();
    ops.sort_by(|x, y| x.op_type.cmp(&y.op_type));
    let layers = ia
        .layers
        .iter()
        .filter(|l| {
            !ib.layers
                .iter()
                .any(|k| k.output == l.output && k.weight == l.weight)
        })
        .map(|l| {
            let before = ia.cost.nodes[l.node_index].cost.multiplications;
            let prefix = format!("{}/dlq/", l.name);
            let g = mb.graph();
            let any = g
                .node
                .iter()
                .any(|n| n.name.as_deref().is_some_and(|x| x.starts_with(&prefix)));
            let after = any.then(|| {
                ib.cost
                    .sum_where(|i| {
                        g.node[i]
                            .name
                            .as_deref()
                            .is_some_and(|x| x.starts_with(&prefix))
                    })
                    .multiplications
            });
            let own = |n: &str| n == l.weight || Some(n) == l.bias.as_deref();
            let int8 = int8_weight(&mb, &l.name);
            LayerChange {
                name: l.name.clone(),
                multiplications_before: before,
                multiplications_after: after,
                ratio: after.map(|x| before as f64 / x.max(1) as f64),
                bytes_before: init_bytes_where(&ma, own),
                bytes_after: any
                    .then(|| init_bytes_where(&mb, |n| own(n) || n.starts_with(&prefix))),
                int8,
            }
        })
        .collect();
    Ok(ModelDiff {
        a: a.display().to_string(),
        b: b.display().to_string(),
        ops,
        initializers_before: ma.graph().initializer.len(),
        initializers_after: mb.graph().initializer.len(),
        initializer_bytes_before: init_bytes(&ma),
        initializer_bytes_after: init_bytes(&mb),
        layers,
        multiplications_before: ia.cost.total.multiplications,
        multiplications_after: ib.cost.total.multiplications,
    })
}

pub fn render(d: &ModelDiff) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "--- {}\n+++ {}", d.a, d.b);
    for o in &d.ops {
        let _ = writeln!(
            s,
            "{:<20} {:>5} -> {:<5} ({:+})",
            o.op_type,
            o.before,
            o.after,
            o.after as i64 - o.before as i64
        );
    }
    let _ = writeln!(
        s,
        "initializers {} -> {} ({} -> {} bytes)",
        d.initializers_before,
        d.initializers_after,
        d.initializer_bytes_before,
        d.initializer_bytes_after
    );
    for l in &d.layers {
        match (l.multiplications_after, l.ratio) {
            (Some(a), Some(r)) => {
                let _ = writeln!(
                    s,
                    "layer {}: {} -> {} multiplications ({r:.2}x), {} -> {} bytes{}",
                    l.name,
                    millions(l.multiplications_before),
                    millions(a),
                    l.bytes_before,
                    l.bytes_after.unwrap_or_default(),
                    if l.int8 { ", int8" } else { "" }
                );
            }
            _ if l.int8 => {
                let _ = writeln!(s, "layer {}: int8 weights (no codebook)", l.name);
            }
            _ => {
                let _ = writeln!(
                    s,
                    "layer {}: removed ({} multiplications, {} bytes)",
                    l.name,
                    millions(l.multiplications_before),
                    l.bytes_before
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "total: {} -> {} multiplications ({:.3}x)",
        millions(d.multiplications_before),
        millions(d.multiplications_after),
        d.multiplications_before as f64 / d.multiplications_after.max(1) as f64
    );
    s
}
