//! The size budget's measure: the model's stored bytes, and each candidate layer's bytes as it
//! is and as the form stores it at each candidate ratio (the form's byte model); for the int8
//! output, both sides as int8 (`quantize`).

use std::collections::HashMap;

use anyhow::Result;

use crate::analysis::inventory::Inventory;
use crate::analysis::select::ConvLayer;
use crate::codebook::ValidParams;
use crate::lower::Form;
use crate::onnx::model::OnnxModel;
use crate::onnx::tensor;
use crate::quantize;

use super::{Candidate, LayerCost, MeasuredBudget, Unit};

/// The model's stored bytes (the protobuf plus external tensor data), and per candidate layer
/// its weight's bytes and the compact form's at each candidate ratio the rules accept
/// (`Form::stored_bytes`: the compact form's byte model, `lower::dense::price`). For the int8 output, the start is
/// the original written as int8 (every weight int8, the quantization parameters added), a
/// layer left original stores its kernel as int8 (as float when `int8` keeps it float), and a
/// converted one adds the QuantizeLinear of its rebuilt kernel. `int8`: for the int8 output,
/// the weights of the layers that stay float.
pub fn size_budget(
    original: &OnnxModel,
    inv: &Inventory,
    candidates: &[Candidate],
    form: &dyn Form,
    int8: Option<&HashMap<String, String>>,
) -> Result<MeasuredBudget> {
    use prost::Message;
    let mut total = original.proto.encoded_len() as f64;
    for t in &original.graph().initializer {
        if tensor::is_external(t) {
            let width = tensor::element_size(t.data_type.unwrap_or(0)).unwrap_or(1);
            total += (tensor::element_count(t)? * width) as f64;
        }
    }
    let start = match int8 {
        Some(kept_float) => Some(quantize::int8_bytes(original, &inv.shapes, kept_float)? as f64),
        None => None,
    };
    let opset = original.default_opset();
    let layers = candidates
        .iter()
        .map(|c| LayerCost {
            before: match int8 {
                Some(kept_float) if !kept_float.contains_key(&c.layer.weight) => {
                    int8_kernel_bytes(c.layer)
                }
                _ => kernel_bytes(c.layer),
            },
            after: c
                .ratios
                .iter()
                .filter_map(|&r| {
                    let p = c.params.with_ratio(r).ok()?;
                    let extra = match int8 {
                        Some(_) => int8_layer_bytes(c.layer, &p),
                        None => 0.0,
                    };
                    Some((r, form.stored_bytes(c.layer, &p, opset)? + extra))
                })
                .collect(),
        })
        .collect();
    Ok(MeasuredBudget {
        unit: Unit::Bytes,
        total,
        layers,
        source: None,
        start,
    })
}

/// What quantizing a converted layer's rebuilt kernel adds in the int8 output: a QuantizeLinear
/// node and the longer names of its scale, zero point and outputs (measured on ResNet-20).
const INT8_LAYER_BYTES: f64 = 150.0;

/// What the int8 output adds to a converted layer's compact form, against the start's int8
/// weight: the QuantizeLinear of the rebuilt kernel, less the per-channel scales a palette
/// without channel scales does without (it is quantized with one scale).
fn int8_layer_bytes(layer: &ConvLayer, p: &ValidParams) -> f64 {
    let m = layer.kernel.as_ref().map_or(0, |k| k[0]) as f64;
    // The rebuilding nodes lose their names and get short tensor names: each stored its
    // `{layer}/dlq/…` name three times (node, output, the consumer's input), now a short name
    // twice.
    let renamed = REBUILD_NODES * (3.0 * (layer.name.len() as f64 + 17.0) - 12.0);
    let k = layer
        .kernel
        .as_ref()
        .and_then(|k| p.sizes(k[0], k[1], k[2] * k[3]).ok())
        .map_or(usize::MAX, |z| z.k);
    let one_scale = k <= quantize::PER_TENSOR_MAX_K;
    let scales = match p.shared && !p.channel_scale && layer.fc.is_none() && one_scale {
        true => 4.0 * m,
        false => 0.0,
    };
    INT8_LAYER_BYTES - scales - renamed
}

/// The nodes that rebuild a palette layer's kernel (Γ unpacked, gathered, moved, reshaped):
/// fewer than per-subspace or DL codebooks have, so their renaming is not overestimated.
const REBUILD_NODES: f64 = 8.0;

/// The bytes of `layer`'s kernel stored as int8 (0 when its shape is unknown).
fn int8_kernel_bytes(layer: &ConvLayer) -> f64 {
    layer
        .kernel
        .as_ref()
        .map_or(0, |k| k.iter().product::<usize>()) as f64
}

/// The bytes of `layer`'s kernel (0 when its shape is unknown).
pub fn kernel_bytes(layer: &ConvLayer) -> f64 {
    let e = layer.weight_type.map_or(4, |t| t.size());
    layer
        .kernel
        .as_ref()
        .map_or(0, |k| k.iter().product::<usize>() * e) as f64
}
