//! The fused form: each converted Conv becomes ONE `DlqConv` node of the custom domain
//! `ai.onnx_dlq` (docs/OPERATOR.md), whose initializers hold the codebook
//! itself (atoms, sparse codes, assignment Γ) and the bias. onnx-dlq's tract engine computes it
//! with the native `dlq-kernels` kernel (`engine::dlq_op`).

pub mod kernel;
pub mod read;

use anyhow::{ensure, Context, Result};

use crate::analysis::select::ConvLayer;
use crate::analysis::shapes::ShapeMap;
use crate::codebook::Codebook;
use crate::lower::wiring::tables::{assignment_input, codebook_inputs, codebook_sizes};
use crate::onnx::build::{attr_int, attr_ints, attr_str};
use crate::onnx::model::OnnxModel;
use crate::onnx::tensor::FloatType;

use crate::lower::form::{Form, Runtime};
use crate::lower::patch::LayerPatch;
use crate::lower::stored::{Decoded, LayerNodes, StoredShape};
use crate::lower::wiring::builder::{taken_names, Builder};
use crate::lower::wiring::layer::{
    layer_bias, layer_context, output_type, refuse_channel_scale, LayerGeometry,
};

/// The operator's identity, shared with every engine that runs it.
pub use dlq_kernels::operator::{DOMAIN, OP_TYPE, VERSION as DOMAIN_VERSION};

/// Builds the `DlqConv` node replacing `layer`. `shapes` gives the input's spatial size where
/// `auto_pad` needs it to resolve into explicit pads (`SAME_*` at a stride above 1); `settings` is recorded in the model's metadata.
pub fn lower(
    model: &OnnxModel,
    layer: &ConvLayer,
    codebook: &Codebook,
    shapes: &ShapeMap,
    settings: &str,
) -> Result<LayerPatch> {
    if let Some(fc) = &layer.fc {
        return crate::lower::wiring::fc::wrap(model, layer, fc, codebook, shapes, |view| {
            lower(model, view, codebook, shapes, settings)
        });
    }
    let ctx = layer_context(layer);
    refuse_channel_scale(codebook, &ctx)?;
    let geo = LayerGeometry::of(layer, codebook, shapes)?;
    let pads = geo.pads_at_known_size(&ctx)?;
    let LayerGeometry {
        attrs, m, kh, kw, ..
    } = geo;
    ensure!(attrs.strides.len() == 2, "{ctx}: not a 2-D convolution");
    let elem = layer
        .weight_type
        .context("eligible layers have float weights")?;
    ensure!(
        matches!(elem, FloatType::F32 | FloatType::F16),
        "{ctx}: the fused form holds float and float16 layers (the DlqConv operator's T); this layer's weight is {elem:?}: use the standard-operator form"
    );
    let [s_count, l, k, alpha, width] = codebook_sizes(codebook, &ctx)?;
    let taken = taken_names(model);
    let mut b = Builder::new(&layer.name, model.default_opset(), elem, &taken);
    let mut inputs = vec![layer.input.clone()];
    inputs.extend(codebook_inputs(
        &mut b,
        codebook,
        [s_count, l, k, alpha, width],
        &ctx,
    )?);
    inputs.push(assignment_input(&mut b, codebook, [s_count, m, kh, kw], k)?);
    if let Some(values) = layer_bias(model, layer, codebook, m)? {
        inputs.push(b.float_init("bias", &[m], &values)?);
    }
    let mut node_attrs = vec![
        attr_ints(
            "strides",
            &[attrs.strides[0] as i64, attrs.strides[1] as i64],
        ),
        attr_ints(
            "pads",
            &[pads[0].0, pads[1].0, pads[0].1, pads[1].1].map(|p| p as i64),
        ),
        attr_ints(
            "dilations",
            &[attrs.dilations[0] as i64, attrs.dilations[1] as i64],
        ),
        attr_int("subspace", width as i64),
    ];
    let relu = sole_relu(model, layer);
    if relu.is_some() {
        node_attrs.push(attr_str("activation", "Relu"));
    }
    b.node(OP_TYPE, "conv", inputs, node_attrs)?;
    let mut nodes = b.nodes;
    // The node writes the Conv's own output name (or the fused Relu's), so consumers are
    // untouched.
    let output = match relu {
        Some(i) => model.graph().node[i].output[0].clone(),
        None => layer.output.clone(),
    };
    nodes[0].output[0] = output.clone();
    nodes[0].domain = Some(DOMAIN.into());
    let mut released = vec![layer.weight.clone()];
    released.extend(layer.bias.iter().cloned());
    if relu.is_some() {
        released.push(layer.output.clone()); // the Conv's output no longer exists
    }
    Ok(LayerPatch {
        node_index: layer.node_index,
        layer: layer.name.clone(),
        nodes,
        initializers: b.inits,
        released,
        metadata: (format!("onnx-dlq/{}", layer.name), settings.to_string()),
        domains: vec![(DOMAIN.into(), DOMAIN_VERSION)],
        value_info: vec![output_type(&output, elem.onnx() as i32, m)],
        absorbed: relu.into_iter().collect(),
    })
}

/// The index of the Relu that is the only consumer of `layer`'s output (which is not a graph
/// output), so the node can apply it itself and save the engine a pass and a tensor.
fn sole_relu(model: &OnnxModel, layer: &ConvLayer) -> Option<usize> {
    let g = model.graph();
    if g.output
        .iter()
        .any(|o| o.name.as_deref() == Some(&layer.output))
    {
        return None;
    }
    let mut consumers = g
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.input.contains(&layer.output));
    let (i, relu) = consumers.next()?;
    let plain = relu.op_type.as_deref() == Some("Relu")
        && matches!(relu.domain.as_deref(), None | Some("" | "ai.onnx"))
        && relu.output.len() == 1;
    (plain && consumers.next().is_none()).then_some(i)
}

/// The fused form: one `DlqConv` node per layer.
pub struct Fused;

impl Form for Fused {
    fn name(&self) -> &'static str {
        "fused"
    }

    fn lower(
        &self,
        model: &OnnxModel,
        layer: &ConvLayer,
        codebook: &Codebook,
        shapes: &ShapeMap,
        settings: &str,
    ) -> Result<LayerPatch> {
        lower(model, layer, codebook, shapes, settings)
    }

    fn read(&self, nodes: &LayerNodes, shape: StoredShape) -> Option<Result<Decoded>> {
        read::read(nodes, shape)
    }

    fn runtime(&self) -> Runtime {
        Runtime {
            timed_per_layer: true,
            may_outgrow_original: false,
        }
    }

    fn slower_because(&self) -> String {
        "the native kernel does not pay off on these layers at these ratios (BENCHMARKS.md); raise the ratio or convert fewer layers".into()
    }
}
