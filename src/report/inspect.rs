//! The `inspect` report: one row per convolution with its geometry, cost, share of the model's
//! multiplications and whether it can be converted; rendered as a table or as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::analysis::cost::millions;
use crate::analysis::inventory::Inventory;
use crate::onnx::conv::AutoPad;
use crate::onnx::model::OnnxModel;

#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    pub name: String,
    /// How `name` was chosen: "node name", or "output name" for nodes without a name.
    pub name_source: &'static str,
    pub op_type: String,
    pub output: String,
    pub weight: String,
    pub kernel: Option<Vec<usize>>,
    pub stride: Option<Vec<usize>>,
    pub pads: Option<Vec<usize>>,
    pub auto_pad: Option<&'static str>,
    pub dilation: Option<Vec<usize>>,
    pub group: Option<usize>,
    pub output_hw: Option<Vec<usize>>,
    pub multiplications: Option<u64>,
    pub share: Option<f64>,
    pub convertible: bool,
    pub reason: Option<String>,
    /// A fully connected layer (Gemm, MatMul): `kernel` is its [M outputs, N inputs], the
    /// convolution geometry fields are empty.
    pub fully_connected: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct InputInfo {
    pub name: String,
    pub shape: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub model: String,
    pub ir_version: i64,
    pub opset: i64,
    pub inputs: Vec<InputInfo>,
    /// Inputs kept with dynamic dimensions (see `assumptions`): no concrete shape.
    pub dynamic_inputs: Vec<String>,
    pub assumptions: Vec<String>,
    pub layers: Vec<LayerRow>,
    pub conv_multiplications: u64,
    pub total_multiplications: u64,
    pub total_additions: u64,
    /// False when shape inference did not reach every node: the totals cover only those it did.
    pub counts_complete: bool,
}

pub fn report(model: &OnnxModel, inv: &Inventory) -> InspectReport {
    let total = inv.cost.total.multiplications;
    let layers: Vec<LayerRow> = inv
        .layers
        .iter()
        .map(|l| {
            let node_cost = &inv.cost.nodes[l.node_index];
            let mults = node_cost.known.then_some(node_cost.cost.multiplications);
            let out_shape = inv.shapes.get(&l.output);
            let conv = l.attrs.as_ref().filter(|_| l.fc.is_none());
            let kernel = match &l.fc {
                Some(_) => l.kernel.as_ref().map(|k| k[..2].to_vec()),
                None => l.kernel.clone(),
            };
            LayerRow {
                name: l.name.clone(),
                name_source: if l.node_name.is_empty() {
                    "output name"
                } else {
                    "node name"
                },
                op_type: l.op_type.clone(),
                output: l.output.clone(),
                weight: l.weight.clone(),
                kernel,
                stride: conv.map(|a| a.strides.clone()),
                pads: conv.map(|a| a.pads.clone()),
                auto_pad: conv.map(|a| a.auto_pad.as_str()),
                dilation: conv.map(|a| a.dilations.clone()),
                group: conv.map(|a| a.group),
                output_hw: out_shape
                    .filter(|s| s.len() > 2 && l.fc.is_none())
                    .map(|s| s[2..].to_vec()),
                multiplications: mults,
                share: mults.filter(|_| total > 0).map(|m| m as f64 / total as f64),
                convertible: l.convertible(),
                reason: l.reason().map(|r| r.to_string()),
                fully_connected: l.fc.is_some(),
            }
        })
        .collect();
    InspectReport {
        model: model.path.display().to_string(),
        ir_version: model.proto.ir_version.unwrap_or(0),
        opset: model.default_opset(),
        inputs: inv
            .shapes
            .inputs
            .iter()
            .map(|(n, s)| InputInfo {
                name: n.clone(),
                shape: s.clone(),
            })
            .collect(),
        dynamic_inputs: inv
            .shapes
            .dynamic_inputs
            .iter()
            .map(|d| d.name.clone())
            .collect(),
        counts_complete: inv.cost.complete(),
        assumptions: inv.shapes.assumptions.clone(),
        conv_multiplications: layers
            .iter()
            .filter(|r| r.op_type == "Conv")
            .filter_map(|r| r.multiplications)
            .sum(),
        layers,
        total_multiplications: total,
        total_additions: inv.cost.total.additions,
    }
}

fn list(v: &Option<Vec<usize>>, sep: &str) -> String {
    match v {
        Some(v) => v
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(sep),
        None => "?".into(),
    }
}

pub fn render_table(r: &InspectReport) -> String {
    let mut s = String::new();
    let inputs: Vec<String> = r
        .inputs
        .iter()
        .map(|i| format!("{} {:?}", i.name, i.shape))
        .chain(r.dynamic_inputs.iter().map(|n| format!("{n} (dynamic)")))
        .collect();
    let _ = writeln!(
        s,
        "model {} (IR {}, opset {}), input {}",
        r.model,
        r.ir_version,
        r.opset,
        inputs.join(", ")
    );
    for a in &r.assumptions {
        let _ = writeln!(s, "note: {a}");
    }
    let header = [
        "#",
        "layer",
        "kernel MxNxkhxkw / MxN",
        "stride",
        "pads",
        "dil",
        "grp",
        "out",
        "mults",
        "share",
        "convertible",
    ];
    let rows: Vec<[String; 11]> = r
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut name = if l.name_source == "output name" {
                format!("{} (output)", l.name)
            } else {
                l.name.clone()
            };
            if l.fully_connected {
                name = format!("{name} [{}]", l.op_type);
            }
            let geometry = |v: &Option<Vec<usize>>| match l.fully_connected {
                true => "-".to_string(),
                false => list(v, ","),
            };
            let pads = match l.auto_pad {
                Some(p) if p != AutoPad::NotSet.as_str() => p.to_string(),
                _ => geometry(&l.pads),
            };
            [
                (i + 1).to_string(),
                name,
                list(&l.kernel, "x"),
                geometry(&l.stride),
                pads,
                geometry(&l.dilation),
                match l.fully_connected {
                    true => "-".into(),
                    false => l.group.map_or("?".into(), |g| g.to_string()),
                },
                list(&l.output_hw, "x"),
                l.multiplications.map_or("?".into(), millions),
                l.share.map_or("?".into(), |s| format!("{:.1}%", 100.0 * s)),
                match &l.reason {
                    None => "yes".into(),
                    Some(r) => format!("no: {r}"),
                },
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &rows {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{:<w$}  ", c, w = width[i]);
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(s, "{}", line(&header.map(String::from)));
    for row in &rows {
        let _ = writeln!(s, "{}", line(row));
    }
    s.push_str(&summary_line(r));
    s
}

/// The closing line: layer counts and the model's multiplications, or why they are not known.
fn summary_line(r: &InspectReport) -> String {
    let convertible = r.layers.iter().filter(|l| l.convertible).count();
    let fc = r.layers.iter().filter(|l| l.fully_connected).count();
    let fc_mults: u64 = r
        .layers
        .iter()
        .filter(|l| l.fully_connected)
        .filter_map(|l| l.multiplications)
        .sum();
    let fc_counts = match fc {
        0 => String::new(),
        _ => format!(", fully connected {}", millions(fc_mults)),
    };
    let counts = match r.counts_complete {
        true => format!(
            "convolutions {}{fc_counts} of {} multiplications in the model ({} additions)",
            millions(r.conv_multiplications),
            millions(r.total_multiplications),
            millions(r.total_additions)
        ),
        false => "multiplications unknown where tract inferred no shape (`?`)".into(),
    };
    let layers = match fc {
        0 => format!("{} convolution layers", r.layers.len()),
        _ => format!(
            "{} convolution and {fc} fully connected layers",
            r.layers.len() - fc
        ),
    };
    format!("{layers} ({convertible} convertible); {counts}\n")
}
