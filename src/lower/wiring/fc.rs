//! Fully connected layers in the forms that compute with the codebook (standard operators,
//! fused): the layer's input is reshaped into its 1×1 Conv view, the form's own lowering
//! replaces that Conv, and the result is reshaped back and finished as the node did.
//!
//! ```text
//! x4 = Reshape(Transpose(A) if transA, [-1, N, 1, 1])
//! y4 = <the form's subgraph for the 1×1 Conv of kernel [M, N, 1, 1]>(x4)
//! Y  = Reshape(y4, Shape(x)[:-1] ++ [M]) · α + β·C
//! ```
//!
//! The compact form keeps the node itself (only its weight is rebuilt): see `dense`.

use anyhow::{ensure, Context, Result};

use crate::analysis::fc::{FcLayout, FcOp};
use crate::analysis::select::ConvLayer;
use crate::analysis::shapes::ShapeMap;
use crate::codebook::Codebook;
use crate::onnx::build::attr_ints;
use crate::onnx::model::OnnxModel;
use crate::proto::ValueInfoProto;

use super::builder::{taken_names, Builder};
use super::layer::channels_type;
use crate::lower::patch::LayerPatch;

/// The 1×1 Conv that `layer` is, reading `input` and writing `output` (C and α stay outside).
fn conv_view(layer: &ConvLayer, input: String, output: String) -> ConvLayer {
    ConvLayer {
        op_type: "Conv".into(),
        input,
        output,
        bias: None,
        fc: None,
        ..layer.clone()
    }
}

/// Replaces fully connected `layer` by `form`'s lowering of its Conv view, wrapped as above.
/// The view adds `codebook`'s bias shift before α, as the reference's C does, so a layer with
/// no place for one is refused here as there. `shapes` gives a MatMul input's rank for the
/// output's type (which onnx.checker cannot infer through the computed Reshape), Gemm's being 2.
pub fn wrap(
    model: &OnnxModel,
    layer: &ConvLayer,
    fc: &FcLayout,
    codebook: &Codebook,
    shapes: &ShapeMap,
    form: impl FnOnce(&ConvLayer) -> Result<LayerPatch>,
) -> Result<LayerPatch> {
    if codebook.bias_shift.is_some() {
        fc.check_bias_shift(model)
            .with_context(|| format!("layer `{}`", layer.name))?;
    }
    let kernel = layer.kernel.as_deref().unwrap_or(&[]);
    ensure!(
        kernel.len() == 4,
        "layer `{}`: no constant weight",
        layer.name
    );
    let (m, n) = (kernel[0] as i64, kernel[1] as i64);
    let elem = layer
        .weight_type
        .ok_or_else(|| anyhow::anyhow!("layer `{}`: no float weight", layer.name))?;
    let taken = taken_names(model);
    let mut b = Builder::new(&layer.name, model.default_opset(), elem, &taken);
    let mut x = layer.input.clone();
    if fc.trans_a {
        x = b.node(
            "Transpose",
            "fc_a",
            vec![x],
            vec![attr_ints("perm", &[1, 0])],
        )?;
    }
    let shape4 = b.i64_init("fc_input_shape", &[-1, n, 1, 1])?;
    let x4 = b.node("Reshape", "fc_input", vec![x.clone(), shape4], vec![])?;
    let pre = std::mem::take(&mut b.nodes);
    let y4 = b.name("fc_output4")?;
    let inner = form(&conv_view(layer, x4, y4.clone()))?;
    let shape = b.node("Shape", "fc_a_shape", vec![x], vec![])?;
    let lead = b.slice("fc_lead", &shape, &[0], &[0], &[-1], &[1])?;
    let outputs = b.i64_init("fc_outputs", &[m])?;
    let out_shape = b.node(
        "Concat",
        "fc_output_shape",
        vec![lead, outputs],
        vec![crate::onnx::build::attr_int("axis", 0)],
    )?;
    let mut y = b.node("Reshape", "fc_output", vec![y4, out_shape], vec![])?;
    if fc.alpha != 1.0 {
        let alpha = b.float_init("fc_alpha", &[1], &[fc.alpha])?;
        y = b.node("Mul", "fc_scaled", vec![y, alpha], vec![])?;
    }
    if let Some(c) = &fc.c {
        let mut c = c.clone();
        if fc.beta != 1.0 {
            let beta = b.float_init("fc_beta", &[1], &[fc.beta])?;
            c = b.node("Mul", "fc_beta_c", vec![c, beta], vec![])?;
        }
        y = b.node("Add", "fc_plus_c", vec![y, c], vec![])?;
    }
    let last = b.nodes.last_mut().expect("nodes were emitted");
    ensure!(last.output[0] == y, "internal: last node is not the output");
    last.output[0] = layer.output.clone();
    let mut nodes = pre;
    nodes.extend(inner.nodes);
    nodes.extend(b.nodes);
    let mut initializers = b.inits;
    initializers.extend(inner.initializers);
    let mut value_info = inner.value_info;
    value_info.extend(output_info(layer, fc, shapes, m as usize));
    Ok(LayerPatch {
        nodes,
        initializers,
        value_info,
        ..inner
    })
}

/// The type of the layer's output, [..., M] (rank 2 for Gemm, the input's for MatMul when
/// shape inference found it): onnx.checker needs a graph output's shape and cannot infer it
/// through the forms' computed shapes and weights.
pub(in crate::lower) fn output_info(
    layer: &ConvLayer,
    fc: &FcLayout,
    shapes: &ShapeMap,
    m: usize,
) -> Option<ValueInfoProto> {
    let rank = match fc.op {
        FcOp::Gemm => Some(2),
        FcOp::MatMul => shapes.get(&layer.input).map(<[usize]>::len),
    }?;
    let elem = layer.weight_type?.onnx() as i32;
    (rank >= 1).then(|| channels_type(&layer.output, elem, m, rank, rank - 1))
}
