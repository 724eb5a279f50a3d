//! The reconstructed form: the Conv kept as it is, with the codebook's dense kernel W̃ (and
//! calibration's bias shift) in place of its weights. It is the reference every other form must
//! equal, and what calibration runs to see the inputs the converted model will produce.

use anyhow::{Context, Result};

use crate::analysis::fc::{self, FcLayout};
use crate::analysis::select::ConvLayer;
use crate::codebook::Codebook;
use crate::onnx::model::OnnxModel;
use crate::onnx::tensor::{self, FloatType};

/// Puts a layer's approximated weights (and shifted bias) into `model` as a dense Conv, so the
/// next layer's calibration inputs are what the converted model will produce.
pub fn substitute(model: &mut OnnxModel, layer: &ConvLayer, cb: &Codebook) -> Result<()> {
    if let Some(fc) = &layer.fc {
        return substitute_fc(model, layer, fc, cb);
    }
    let approx = cb.reconstruct();
    let [m, ..] = cb.kernel_shape;
    let elem = layer.weight_type.unwrap_or(FloatType::F32);
    let ctx = || format!("layer `{}`", layer.name);
    let values = approx.as_slice().expect("standard layout");
    set_weight(model, layer, &cb.kernel_shape, values)?;
    let Some(shift) = &cb.bias_shift else {
        return Ok(());
    };
    match &layer.bias {
        Some(name) => {
            let base = model.base_dir.clone();
            let graph = model.graph_mut();
            let t = graph
                .initializer
                .iter_mut()
                .find(|t| t.name.as_deref() == Some(name.as_str()))
                .with_context(ctx)?;
            let old = tensor::to_f32(t, &base).with_context(ctx)?;
            let new: Vec<f32> = old.iter().zip(shift).map(|(b, s)| b + s).collect();
            tensor::set_f32(t, &[m], &new, elem);
        }
        None => {
            let name = format!("{}/dlq/calibration_bias", layer.name);
            let graph = model.graph_mut();
            graph
                .initializer
                .push(tensor::new_tensor(&name, &[m], shift, elem));
            let node = &mut graph.node[layer.node_index];
            node.input.truncate(2);
            node.input.push(name);
        }
    }
    Ok(())
}

/// [`substitute`] for a fully connected layer: W̃ in the weight's own layout, and the bias shift
/// (when the layer takes one) in a new C.
fn substitute_fc(
    model: &mut OnnxModel,
    layer: &ConvLayer,
    fc: &FcLayout,
    cb: &Codebook,
) -> Result<()> {
    let ctx = || format!("layer `{}`", layer.name);
    let approx = cb.reconstruct();
    let [m, n, ..] = cb.kernel_shape;
    let (dims, values) = fc.kernel_as_weight(approx.as_slice().expect("standard layout"), [m, n]);
    let elem = layer.weight_type.unwrap_or(FloatType::F32);
    let c = cb
        .bias_shift
        .as_ref()
        .map(|shift| fc.c_with_shift(model, shift))
        .transpose()
        .with_context(ctx)?;
    set_weight(model, layer, &dims, &values)?;
    let graph = model.graph_mut();
    if let Some((c_dims, c_values)) = c {
        let name = format!("{}/dlq/calibration_bias", layer.name);
        graph
            .initializer
            .retain(|t| t.name.as_deref() != Some(&name));
        graph
            .initializer
            .push(tensor::new_tensor(&name, &c_dims, &c_values, elem));
        fc::attach_c(&mut graph.node[layer.node_index], name);
    }
    Ok(())
}

/// Writes `values` of `dims` into `layer`'s weight initializer, in its own element type.
fn set_weight(
    model: &mut OnnxModel,
    layer: &ConvLayer,
    dims: &[usize],
    values: &[f32],
) -> Result<()> {
    let elem = layer.weight_type.unwrap_or(FloatType::F32);
    let w = model
        .graph_mut()
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some(layer.weight.as_str()))
        .with_context(|| format!("layer `{}`: no weight `{}`", layer.name, layer.weight))?;
    tensor::set_f32(w, dims, values, elem);
    Ok(())
}
