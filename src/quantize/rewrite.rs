//! The QDQ rewrite: a QuantizeLinear → DequantizeLinear pair after every planned tensor, each
//! int8 node's weight stored as int8 per output channel (or, for a weight the compact form
//! rebuilds from its codebook, quantized by a QuantizeLinear that engines fold at load) and its
//! bias as int32 in the accumulator's scale. Nothing else in the graph changes.

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, bail, ensure, Context, Result};
use ndarray::ArrayD;

use super::plan::QuantPlan;
use super::scales::{self, ActivationType, Affine};
use crate::analysis::fc::FcLayout;
use crate::onnx::build::{attr_int, node};
use crate::onnx::model::OnnxModel;
use crate::proto::tensor_proto::DataType;
use crate::proto::{NodeProto, TensorProto};

/// What the rewrite did to each node it was asked to run in int8.
#[derive(Debug, Clone, Default)]
pub struct Rewritten {
    /// Conv / Gemm / MatMul nodes (by output name) with int8 weights.
    pub int8_layers: Vec<String>,
    /// Those left in float, with why.
    pub float_layers: Vec<(String, String)>,
    /// Biases whose int32 value was clamped (a tiny accumulator scale).
    pub clamped_biases: usize,
}

fn op(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or_default()
}

/// An int8 node's layer name, for reports and new tensor names: the node's name (the compact
/// form's `{layer}/dlq/conv` gives `{layer}`; see [`name_layers`]), else its output's.
pub(super) fn layer_name(n: &NodeProto) -> String {
    match n.name.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => m
            .strip_suffix("/dlq/conv")
            .or_else(|| m.strip_suffix("/dlq/fc"))
            .unwrap_or(m)
            .to_string(),
        None => {
            let out = &n.output[0];
            out.strip_suffix("/f").unwrap_or(out).to_string()
        }
    }
}

/// Names every unnamed Conv, Gemm and MatMul after its output, its layer name (as `inspect`
/// and `convert` call it), before ReLU folding moves its output: so reports and `diff` find
/// the layer in the int8 model.
pub fn name_layers(model: &mut OnnxModel) {
    for n in model.graph_mut().node.iter_mut() {
        let unnamed = n.name.as_deref().is_none_or(str::is_empty);
        if unnamed && matches!(op(n), "Conv" | "Gemm" | "MatMul") && !n.output.is_empty() {
            n.name = Some(n.output[0].clone());
        }
    }
}

/// A tensor of one value (no dims) named `name`, its bytes as stored.
pub(super) fn scalar(name: &str, data_type: DataType, bytes: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        data_type: Some(data_type as i32),
        raw_data: Some(bytes),
        ..Default::default()
    }
}

fn tensor(name: &str, dims: &[usize], data_type: DataType, bytes: Vec<u8>) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        ..scalar(name, data_type, bytes)
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The graph under construction: nodes to put before / after existing nodes, new initializers,
/// and names already in use.
struct Edit {
    before: HashMap<usize, Vec<NodeProto>>,
    after: HashMap<usize, Vec<NodeProto>>,
    front: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    taken: HashSet<String>,
    /// Each pair's dequantized tensor, and the float tensor it quantizes.
    float_of: HashMap<String, String>,
}

impl Edit {
    /// `{base}/{what}`: short suffixes, since every name is stored once per use and the
    /// pairs' names are a sizeable share of a small int8 file.
    fn name(&mut self, base: &str, what: &str) -> Result<String> {
        let n = format!("{base}/{what}");
        ensure!(
            self.taken.insert(n.clone()),
            "the model already has a tensor or node called `{n}`"
        );
        Ok(n)
    }
}

/// An activation's scale and zero-point initializers, made once per calibrated tensor.
fn affine_inits(
    e: &mut Edit,
    src: &str,
    a: Affine,
    ty: ActivationType,
    made: &mut HashMap<String, (String, String)>,
) -> Result<(String, String)> {
    if let Some(names) = made.get(src) {
        return Ok(names.clone());
    }
    let scale = e.name(src, "s")?;
    e.inits
        .push(scalar(&scale, DataType::Float, f32_bytes(&[a.scale])));
    // Zero points are shared by value (after a ReLU every one is the type's minimum).
    let (dt, byte) = ty.stored_zero_point(a.zero_point);
    let prefix = match ty {
        ActivationType::Uint8 => "u8",
        ActivationType::Int8 => "i8",
    };
    let zp = format!("int8/{prefix}_zero_point_{}", a.zero_point);
    if e.taken.insert(zp.clone()) {
        e.inits.push(scalar(&zp, dt, vec![byte]));
    }
    made.insert(src.to_string(), (scale.clone(), zp.clone()));
    Ok((scale, zp))
}

/// Inserts the pair after each planned tensor. A node's output is renamed `…/f` and
/// the DequantizeLinear writes the original name, so consumers and graph outputs are untouched;
/// a graph input keeps its name and its consumers read the pair's output.
fn insert_pairs(
    model: &mut OnnxModel,
    e: &mut Edit,
    plan: &QuantPlan,
    affine: &HashMap<String, Affine>,
    ty: ActivationType,
) -> Result<HashMap<String, (Affine, String)>> {
    let mut made = HashMap::new();
    let mut of_tensor = HashMap::new();
    let producer: HashMap<String, usize> = model
        .graph()
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i)))
        .collect();
    let node_names: HashSet<String> = model
        .graph()
        .node
        .iter()
        .filter_map(|n| n.name.clone())
        .collect();
    for (t, src) in &plan.tensors {
        let a = *affine
            .get(src)
            .ok_or_else(|| anyhow!("tensor `{src}`: no calibrated range"))?;
        let (scale, zp) = affine_inits(e, src, a, ty, &mut made)?;
        of_tensor.insert(t.clone(), (a, scale.clone()));
        let q = e.name(t, "q")?;
        // Pair nodes go unnamed (bytes), except where an engine that names a node by its output
        // (tract) would then give two nodes one name.
        let dq_name = match node_names.contains(t.as_str()) {
            true => e.name(t, "dq_node")?,
            false => String::new(),
        };
        let pair = |input: &str, output: &str| {
            [
                node("QuantizeLinear", "", &[input, &scale, &zp], &[&q], vec![]),
                node(
                    "DequantizeLinear",
                    &dq_name,
                    &[&q, &scale, &zp],
                    &[output],
                    vec![],
                ),
            ]
        };
        match producer.get(t) {
            Some(&p) => {
                let float = e.name(t, "f")?;
                let n = &mut model.graph_mut().node[p];
                for o in n.output.iter_mut().filter(|o| *o == t) {
                    *o = float.clone();
                }
                e.float_of.insert(t.clone(), float.clone());
                e.after.entry(p).or_default().extend(pair(&float, t));
            }
            None => {
                let dq = e.name(t, "dq")?;
                of_tensor.insert(dq.clone(), (a, scale.clone()));
                e.float_of.insert(dq.clone(), t.clone());
                for n in model.graph_mut().node.iter_mut() {
                    for i in n.input.iter_mut().filter(|i| *i == t) {
                        *i = dq.clone();
                    }
                }
                e.front.extend(pair(t, &dq));
            }
        }
    }
    Ok(of_tensor)
}

/// The axis of a node's weight that holds its output channels, and the weight's layout as
/// `[outer, channels, inner]`; `None`: one scale for the whole weight (MatMul).
pub(super) fn weight_layout(
    n: &NodeProto,
    dims: &[usize],
) -> Result<Option<(usize, [usize; 3])>, String> {
    let axis = match (op(n), FcLayout::of(n)) {
        ("Conv", _) => 0,
        ("Gemm", Some(fc)) => usize::from(fc.weight_in_by_out),
        _ => return Ok(None),
    };
    if axis >= dims.len() {
        return Err(format!(
            "its weight has shape {dims:?}, without an output-channel axis {axis}"
        ));
    }
    let outer: usize = dims[..axis].iter().product();
    let inner: usize = dims[axis + 1..].iter().product();
    Ok(Some((axis, [outer, dims[axis], inner])))
}

/// A weight's int8 form: scales per output channel (or one), their initializer, and the name
/// of the dequantized value the node reads.
struct QuantWeight {
    dequantized: String,
    scales: Vec<f32>,
    scale_name: String,
}

/// A weight the graph computes from constants (the compact form's rebuilt kernel): its values,
/// and whether one scale serves the whole tensor (a palette's few values lose nothing on a
/// per-tensor int8 grid, and the per-channel scales' bytes are saved).
#[derive(Debug, Clone)]
pub struct Rebuilt {
    pub values: ArrayD<f32>,
    pub per_tensor: bool,
}

/// The int8 zero point shared by every weight with `len` scales (0: one scale).
fn weight_zero_point(e: &mut Edit, len: usize) -> String {
    let name = match len {
        0 => "int8/weight_zero_point".to_string(),
        n => format!("int8/weight_zero_point_{n}"),
    };
    if e.taken.insert(name.clone()) {
        let dims: Vec<usize> = if len == 0 { vec![] } else { vec![len] };
        e.inits
            .push(tensor(&name, &dims, DataType::Int8, vec![0; len.max(1)]));
    }
    name
}

/// Quantizes the weight of int8 node `i`: an initializer is replaced by int8 values; a weight
/// computed from constants (the compact form's rebuilt kernel, whose values `computed` holds)
/// goes through a QuantizeLinear that engines fold at load.
fn quantize_weight(
    model: &OnnxModel,
    e: &mut Edit,
    i: usize,
    computed: &HashMap<String, Rebuilt>,
) -> Result<QuantWeight, String> {
    let n = &model.graph().node[i];
    let w = &n.input[1];
    let (values, stored, per_tensor) = match (model.initializer(w), computed.get(w)) {
        (Some(t), _) => {
            let v = model
                .tensor_f32(t)
                .map_err(|err| format!("weight `{w}`: {err:#}"))?;
            (v, true, false)
        }
        (None, Some(r)) => (r.values.clone(), false, r.per_tensor),
        (None, None) => return Err(format!("its weight `{w}` is computed at run time")),
    };
    let dims = values.shape().to_vec();
    let flat: Vec<f32> = values.iter().copied().collect();
    let base = layer_name(n);
    let layout = weight_layout(n, &dims)?.filter(|_| !per_tensor);
    let (axis, [outer, channels, inner]) = match layout {
        Some(l) => (Some(l.0), l.1),
        None => (None, [1, 1, flat.len()]),
    };
    let scales = scales::channel_scales(&flat, outer, channels, inner);
    let shape = if axis.is_some() {
        vec![channels]
    } else {
        vec![]
    };
    let err = |e: anyhow::Error| format!("{e:#}");
    let scale = e.name(&base, "ws").map_err(err)?;
    let dq = e.name(&base, "w").map_err(err)?;
    e.inits
        .push(tensor(&scale, &shape, DataType::Float, f32_bytes(&scales)));
    let attrs = || {
        axis.map(|a| vec![attr_int("axis", a as i64)])
            .unwrap_or_default()
    };
    let q = e.name(&base, "wq").map_err(err)?;
    let mut nodes = vec![];
    // The zero point gives QuantizeLinear its int8 output type, and ONNX Runtime's Gemm fusion
    // reads the weight's type from it.
    let zp = weight_zero_point(e, shape.first().copied().unwrap_or(0));
    if stored {
        let int8 = scales::quantize_weight(&flat, &scales, outer, inner);
        let bytes = int8.iter().map(|&v| v as u8).collect();
        e.inits.push(tensor(&q, &dims, DataType::Int8, bytes));
    } else {
        nodes.push(node(
            "QuantizeLinear",
            "",
            &[w, &scale, &zp],
            &[&q],
            attrs(),
        ));
    }
    nodes.push(node(
        "DequantizeLinear",
        "",
        &[&q, &scale, &zp],
        &[&dq],
        attrs(),
    ));
    e.before.entry(i).or_default().extend(nodes);
    Ok(QuantWeight {
        dequantized: dq,
        scales,
        scale_name: scale,
    })
}

/// Replaces int8 node `i`'s float bias (Conv's B, Gemm's 1-D C) by int32 values in the scale
/// `input scale × weight scale`, when it is an initializer of the right length. Per-channel
/// scales are multiplied in the graph (a Mul the engine folds at load) rather than stored.
fn quantize_bias(
    model: &mut OnnxModel,
    e: &mut Edit,
    i: usize,
    input: &(Affine, String),
    weight: &QuantWeight,
) -> Result<usize> {
    let n = &model.graph().node[i];
    let Some(b) = n.input.get(2).filter(|b| !b.is_empty()).cloned() else {
        return Ok(0);
    };
    let Some(t) = model.initializer(&b) else {
        return Ok(0);
    };
    let beta = FcLayout::of(n).map_or(1.0, |fc| fc.beta);
    let values: Vec<f32> = model.tensor_f32(t)?.iter().copied().collect();
    let channels = weight.scales.len();
    if t.dims.len() != 1 || beta != 1.0 || (channels > 1 && values.len() != channels) {
        return Ok(0);
    }
    let out = layer_name(n);
    let (q, clamped) = scales::quantize_bias(&values, input.0.scale, &weight.scales);
    let qn = e.name(&out, "bq")?;
    let sn = e.name(&out, "bs")?;
    let dq = e.name(&out, "b")?;
    let bytes = q.iter().flat_map(|v| v.to_le_bytes()).collect();
    e.inits
        .push(tensor(&qn, &[values.len()], DataType::Int32, bytes));
    let mut nodes = vec![];
    let mut attrs = vec![];
    if channels > 1 {
        let inputs = [input.1.as_str(), weight.scale_name.as_str()];
        nodes.push(node("Mul", "", &inputs, &[&sn], vec![]));
        attrs.push(attr_int("axis", 0));
    } else {
        let s = input.0.scale * weight.scales[0];
        e.inits.push(scalar(&sn, DataType::Float, f32_bytes(&[s])));
    }
    nodes.push(node("DequantizeLinear", "", &[&qn, &sn], &[&dq], attrs));
    e.before.entry(i).or_default().extend(nodes);
    model.graph_mut().node[i].input[2] = dq;
    Ok(clamped)
}

/// Lets node `i` compute in float: a float layer between a DequantizeLinear and a
/// QuantizeLinear would have its weight quantized by ONNX Runtime itself (its weight-and-bias
/// quantization, one scale per tensor), so it reads the float value its input pair quantizes.
fn keep_float(model: &mut OnnxModel, e: &Edit, i: usize) {
    if let Some(float) = e.float_of.get(&model.graph().node[i].input[0]) {
        model.graph_mut().node[i].input[0] = float.clone();
    }
}

/// Rewrites `model` (already ReLU-folded and planned) into its QDQ form with the calibrated
/// `affine` parameters of each calibrated tensor; the layers whose weight `kept_float` names
/// keep their float weights, with its reason.
pub fn rewrite(
    model: &mut OnnxModel,
    plan: &QuantPlan,
    affine: &HashMap<String, Affine>,
    ty: ActivationType,
    (computed, kept_float): (&HashMap<String, Rebuilt>, &HashMap<String, String>),
) -> Result<Rewritten> {
    let mut e = Edit {
        before: HashMap::new(),
        after: HashMap::new(),
        front: vec![],
        inits: vec![],
        taken: crate::lower::wiring::builder::taken_names(model),
        float_of: HashMap::new(),
    };
    let mut done = Rewritten::default();
    let of_tensor = insert_pairs(model, &mut e, plan, affine, ty)?;
    let mut weights: HashMap<String, QuantWeight> = HashMap::new();
    let mut replaced = HashSet::new();
    for &i in &plan.nodes {
        let n = &model.graph().node[i];
        if !matches!(op(n), "Conv" | "Gemm" | "MatMul") || n.input.len() < 2 {
            continue;
        }
        let name = layer_name(n);
        let w = n.input[1].clone();
        let input = of_tensor
            .get(&n.input[0])
            .with_context(|| format!("node `{name}`: its input is not quantized"))?
            .clone();
        let why = match (kept_float.get(&w), weights.contains_key(&w)) {
            (Some(why), _) => Some(why.clone()),
            (None, true) => None,
            (None, false) => match quantize_weight(model, &mut e, i, computed) {
                Ok(q) => {
                    weights.insert(w.clone(), q);
                    None
                }
                Err(why) => Some(why),
            },
        };
        if let Some(why) = why {
            keep_float(model, &e, i);
            done.float_layers.push((name, why));
            continue;
        }
        let q = &weights[&w];
        model.graph_mut().node[i].input[1] = q.dequantized.clone();
        replaced.insert(w);
        let bias = model.graph().node[i].input.get(2).cloned();
        let clamped = quantize_bias(model, &mut e, i, &input, q)?;
        done.clamped_biases += clamped;
        if model.graph().node[i].input.get(2) != bias.as_ref() {
            replaced.extend(bias);
        }
        done.int8_layers.push(name);
    }
    assemble(model, e, &replaced)?;
    Ok(done)
}

/// Puts the new nodes in place (graph order kept: before, node, after) and the new
/// initializers in; float initializers nothing reads any more are dropped.
fn assemble(model: &mut OnnxModel, mut e: Edit, replaced: &HashSet<String>) -> Result<()> {
    let g = model.graph_mut();
    let old = std::mem::take(&mut g.node);
    let mut nodes = std::mem::take(&mut e.front);
    for (i, n) in old.into_iter().enumerate() {
        nodes.extend(e.before.remove(&i).unwrap_or_default());
        nodes.push(n);
        nodes.extend(e.after.remove(&i).unwrap_or_default());
    }
    if !e.before.is_empty() || !e.after.is_empty() {
        bail!("internal error: new nodes placed at a node that does not exist");
    }
    g.node = nodes;
    drop_unread_pairs(g);
    let read: HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(g.output.iter().filter_map(|o| o.name.as_deref()))
        .collect();
    let unused: HashSet<String> = replaced
        .iter()
        .filter(|r| !read.contains(r.as_str()))
        .cloned()
        .collect();
    g.initializer
        .retain(|t| !unused.contains(t.name.as_deref().unwrap_or_default()));
    g.input
        .retain(|i| !unused.contains(i.name.as_deref().unwrap_or_default()));
    // New parameters only a dropped pair read are not written.
    g.initializer.extend(
        e.inits
            .into_iter()
            .filter(|t| read.contains(t.name.as_deref().unwrap_or_default())),
    );
    Ok(())
}

/// Removes QuantizeLinear and DequantizeLinear nodes whose output nothing reads (a pair
/// before a layer that stays float and reads the float value).
fn drop_unread_pairs(g: &mut crate::proto::GraphProto) {
    loop {
        let read: HashSet<String> = g
            .node
            .iter()
            .flat_map(|n| n.input.iter().cloned())
            .chain(g.output.iter().filter_map(|o| o.name.clone()))
            .collect();
        let before = g.node.len();
        g.node.retain(|n| {
            !matches!(op(n), "QuantizeLinear" | "DequantizeLinear")
                || n.output.iter().any(|o| read.contains(o))
        });
        if g.node.len() == before {
            return;
        }
    }
}

/// Gives the compact form's kernel-rebuilding nodes (named `{layer}/dlq/…`) short tensor names
/// (`dlq/{k}`) and no node names: the engine folds them at load, and in an int8 file, a few
/// bytes per weight, their long names were a tenth of a small model's bytes. Initializers keep
/// their names (the codebook is read back by them), so do the layers' own nodes.
pub fn shorten_rebuild_names(model: &mut OnnxModel) -> Result<()> {
    let taken = crate::lower::wiring::builder::taken_names(model);
    let g = model.graph_mut();
    let kept: HashSet<String> = g
        .output
        .iter()
        .filter_map(|o| o.name.clone())
        .chain(g.initializer.iter().filter_map(|t| t.name.clone()))
        .collect();
    let mut renamed: HashMap<String, String> = HashMap::new();
    let mut k = 0usize;
    for n in g.node.iter_mut() {
        // Every node of a layer's patch is `{layer}/dlq/…`; its own is `…/dlq/conv` or `…/fc`.
        let rebuild = n.name.as_deref().is_some_and(|m| {
            m.contains("/dlq/") && !m.ends_with("/dlq/conv") && !m.ends_with("/dlq/fc")
        });
        if !rebuild {
            continue;
        }
        n.name = None;
        for o in n
            .output
            .iter_mut()
            .filter(|o| !o.is_empty() && !kept.contains(*o))
        {
            let short = loop {
                let c = format!("dlq/{k}");
                k += 1;
                if !taken.contains(&c) {
                    break c;
                }
            };
            renamed.insert(o.clone(), short.clone());
            *o = short;
        }
    }
    for n in g.node.iter_mut() {
        for i in n.input.iter_mut() {
            if let Some(s) = renamed.get(i) {
                *i = s.clone();
            }
        }
    }
    g.value_info
        .retain(|v| !renamed.contains_key(v.name.as_deref().unwrap_or_default()));
    ensure!(
        renamed.len() == renamed.values().collect::<HashSet<_>>().len(),
        "internal error: two rebuilt tensors given one name"
    );
    Ok(())
}
