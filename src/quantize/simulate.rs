//! The int8 output as calibration sees it. Calibration fits each layer's codebook to the
//! inputs the converted model will give that layer; in the int8 output those inputs have been
//! rounded to int8 at every quantized tensor, by layers whose weights are int8 too.
//! [`simulated`] is the float model with both roundings in place: a QuantizeLinear →
//! DequantizeLinear pair on every tensor the rewrite quantizes (the ranges measured on the
//! calibration images, as the rewrite measures them) and every weight the rewrite stores as int8
//! rounded per output channel. Each codebook then also makes up for the rounding upstream of it.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use ndarray::ArrayD;

use super::rewrite::scalar;
use super::scales::{self, ActivationType, Affine};
use super::sensitivity::{int8_rounded, weighted_layers};
use super::{plan, ranges};
use crate::engine::Engine;
use crate::lower::stored::set_initializer;
use crate::onnx::build::node;
use crate::onnx::model::OnnxModel;
use crate::proto::tensor_proto::DataType;

/// Prefix of the names the simulation adds (never written to an output file).
const PREFIX: &str = "int8-simulated";

/// `model` (at the int8 output's opset) with the int8 output's roundings simulated in float:
/// activations as the rewrite quantizes them, with the ranges `model` takes on `inputs`, and
/// the weights of the layers that will run in int8 (but those `kept_float` names) rounded.
pub fn simulated(
    model: &OnnxModel,
    activation: ActivationType,
    (inputs, engine): (&[ArrayD<f32>], Engine),
    kept_float: &HashMap<String, String>,
) -> Result<OnnxModel> {
    // Folding a ReLU into its producer renames no tensor the plan quantizes: the producer
    // writes the ReLU's output, which `model` has too.
    let mut folded = model.clone();
    let (_, planned) = plan::fold_and_plan(&mut folded);
    let ranges = ranges::min_max(engine, model, inputs, &planned.calibrated())
        .context("the activation ranges of the simulated int8 model")?;
    let quantized: HashSet<&str> = planned.tensors.iter().map(|(t, _)| t.as_str()).collect();
    let mut m = model.clone();
    round_weights(&mut m, &quantized, kept_float)?;
    let mut float_of = HashMap::new();
    for (t, src) in &planned.tensors {
        let &(lo, hi) = ranges
            .get(src)
            .with_context(|| format!("no range was measured for tensor `{src}`"))?;
        let q = scales::activation(lo, hi, activation);
        let (float, rounded) = insert_pair(&mut m, t, q, activation);
        float_of.insert(rounded, float);
    }
    read_float_inputs(&mut m, kept_float, &float_of);
    Ok(m)
}

/// Makes each layer that stays float read the float value of its input, as the rewrite does.
fn read_float_inputs(
    model: &mut OnnxModel,
    kept_float: &HashMap<String, String>,
    float_of: &HashMap<String, String>,
) {
    // `float_of`: the rounded value a reader reads → the float value it rounds.
    let layers = model.graph_mut().node.iter_mut();
    for n in layers.filter(|n| n.input.len() >= 2 && kept_float.contains_key(&n.input[1])) {
        if let Some(float) = float_of.get(&n.input[0]) {
            n.input[0] = float.clone();
        }
    }
}

/// Rounds the weight of every layer whose input the rewrite quantizes (so that it runs in
/// int8) to int8, but those `kept_float` names.
fn round_weights(
    model: &mut OnnxModel,
    quantized: &HashSet<&str>,
    kept_float: &HashMap<String, String>,
) -> Result<()> {
    for (layer, weight, i) in weighted_layers(model) {
        let input = &model.graph().node[i].input[0];
        if kept_float.contains_key(&weight) || !quantized.contains(input.as_str()) {
            continue;
        }
        if let Some(rounded) = int8_rounded(model, &weight, i)? {
            set_initializer(model, &weight, &rounded)
                .with_context(|| format!("layer `{layer}`'s int8 weights"))?;
        }
    }
    Ok(())
}

/// Puts a QuantizeLinear → DequantizeLinear pair with `q`'s parameters on tensor `t`. The pair
/// writes `t` itself (its producer now writes a new name), so every reader, and calibration's
/// look-up of a layer's input by name, sees the rounded value; a graph input, which has no
/// producer, is rounded for its readers under a new name. The pair is appended after the
/// graph's nodes so that node indices stay valid (the engines order nodes themselves).
/// Returns the names of the float value the pair rounds and of the rounded value its readers
/// read.
fn insert_pair(
    model: &mut OnnxModel,
    t: &str,
    q: Affine,
    activation: ActivationType,
) -> (String, String) {
    let float = format!("{PREFIX}/{t}/float");
    let rounded = format!("{PREFIX}/{t}/rounded");
    let (scale, zero_point) = (format!("{PREFIX}/{t}/scale"), format!("{PREFIX}/{t}/zero"));
    let graph = model.graph_mut();
    let produced = graph
        .node
        .iter_mut()
        .flat_map(|n| n.output.iter_mut())
        .find(|o| o.as_str() == t);
    let written = match produced {
        Some(out) => {
            *out = float.clone();
            (float, t.to_string())
        }
        None => {
            let dequantized = format!("{PREFIX}/{t}/dequantized");
            for i in graph.node.iter_mut().flat_map(|n| n.input.iter_mut()) {
                if i.as_str() == t {
                    *i = dequantized.clone();
                }
            }
            (t.to_string(), dequantized)
        }
    };
    let (zero_type, zero_byte) = activation.stored_zero_point(q.zero_point);
    graph.initializer.push(scalar(
        &scale,
        DataType::Float,
        q.scale.to_le_bytes().to_vec(),
    ));
    graph
        .initializer
        .push(scalar(&zero_point, zero_type, vec![zero_byte]));
    let parameters = [scale.as_str(), zero_point.as_str()];
    graph.node.push(node(
        "QuantizeLinear",
        &format!("{PREFIX}/{t}/quantize"),
        &[written.0.as_str(), parameters[0], parameters[1]],
        &[&rounded],
        vec![],
    ));
    graph.node.push(node(
        "DequantizeLinear",
        &format!("{PREFIX}/{t}/dequantize"),
        &[rounded.as_str(), parameters[0], parameters[1]],
        &[&written.1],
        vec![],
    ));
    written
}
