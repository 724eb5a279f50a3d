//! What every output form reads of a layer: its geometry checked once against the codebook
//! and the input's shape, its bias (with calibration's shift), how errors name it, and the
//! type of the tensors it writes.

use anyhow::{ensure, Context, Result};

use crate::analysis::select::ConvLayer;
use crate::analysis::shapes::ShapeMap;
use crate::codebook::Codebook;
use crate::onnx::build::value_info;
use crate::onnx::conv::ConvAttrs;
use crate::onnx::model::OnnxModel;
use crate::proto::{type_proto, ValueInfoProto};

/// What a lowering needs to know of one layer, checked once by [`LayerGeometry::of`] (the
/// standard-operator and the fused form share it).
pub(in crate::lower) struct LayerGeometry<'a> {
    pub(in crate::lower) attrs: &'a ConvAttrs,
    /// Output channels M and kernel size kh × kw.
    pub(in crate::lower) m: usize,
    pub(in crate::lower) kh: usize,
    pub(in crate::lower) kw: usize,
    /// The input's spatial size when shape inference found it; the standard-operator form does
    /// not need it (it runs at any size the original accepts).
    pub(in crate::lower) input_hw: Option<[usize; 2]>,
    /// (begin, end) zero padding per spatial axis when it holds at every input size; `None`
    /// for `SAME_*` at a stride above 1 (see [`LayerGeometry::pads_at_known_size`]).
    pub(in crate::lower) size_free_pads: Option<Vec<(usize, usize)>>,
    pub(in crate::lower) subspaces: usize,
    pub(in crate::lower) atoms_per: usize,
    pub(in crate::lower) reps_per: usize,
}

impl<'a> LayerGeometry<'a> {
    /// The layer checked against its codebook and its input's shape.
    pub(in crate::lower) fn of(
        layer: &'a ConvLayer,
        codebook: &Codebook,
        shapes: &ShapeMap,
    ) -> Result<Self> {
        let ctx = || layer_context(layer);
        layer
            .eligibility
            .clone()
            .map_err(anyhow::Error::msg)
            .with_context(ctx)?;
        let attrs = layer
            .attrs
            .as_ref()
            .expect("eligible layers have attributes");
        let [m, _, kh, kw] = codebook.kernel_shape;
        ensure!(
            layer.kernel.as_deref() == Some(&codebook.kernel_shape[..]),
            "{}: codebook is for a {:?} kernel",
            ctx(),
            codebook.kernel_shape
        );
        let input_hw = match shapes.get(&layer.input) {
            Some(in_shape) => {
                ensure!(
                    in_shape.len() == 4,
                    "{}: input `{}` has shape {in_shape:?}, expected 4-D",
                    ctx(),
                    layer.input
                );
                let hw = [in_shape[2], in_shape[3]];
                attrs.output_size(&hw, &[kh, kw]).with_context(ctx)?;
                Some(hw)
            }
            None => None,
        };
        let first = &codebook.subspaces[0];
        let (atoms_per, reps_per) = (first.atoms.len(), first.num_representatives());
        ensure!(
            codebook
                .subspaces
                .iter()
                .all(|s| s.atoms.len() == atoms_per && s.num_representatives() == reps_per),
            "{}: subspaces have different codebook sizes",
            ctx()
        );
        Ok(LayerGeometry {
            attrs,
            m,
            kh,
            kw,
            input_hw,
            size_free_pads: attrs.size_free_pads(&[kh, kw]),
            subspaces: codebook.subspaces.len(),
            atoms_per,
            reps_per,
        })
    }
}

impl LayerGeometry<'_> {
    /// The (begin, end) padding per spatial axis, resolved at the input size shape inference
    /// found when it depends on it (`SAME_*` at a stride above 1): an error naming the layer when
    /// that size is unknown.
    pub(in crate::lower) fn pads_at_known_size(&self, ctx: &str) -> Result<Vec<(usize, usize)>> {
        if let Some(p) = &self.size_free_pads {
            return Ok(p.clone());
        }
        let hw = self.input_hw.with_context(|| {
            format!(
                "{ctx}: auto_pad {} at stride {:?} pads by the input's size, which shape inference could not find; give {}, or use the standard-operator form (it pads in-graph from opset 11)",
                self.attrs.auto_pad.as_str(),
                self.attrs.strides,
                crate::setting::name(crate::setting::Setting::InputShape)
            )
        })?;
        Ok(self.attrs.resolved_pads(&hw, &[self.kh, self.kw]))
    }
}

/// How errors name a layer.
pub(in crate::lower) fn layer_context(layer: &ConvLayer) -> String {
    format!(
        "layer `{}` (node {} {})",
        layer.name, layer.node_index, layer.op_type
    )
}

/// The forms that compute with the representatives (ops, fused) have no place for a palette's
/// per-channel scales; only the compact form stores them.
pub(in crate::lower) fn refuse_channel_scale(codebook: &Codebook, ctx: &str) -> Result<()> {
    ensure!(
        codebook.channel_scale.is_none(),
        "{ctx}: per-channel scales are stored by the compact form ({} dense) only",
        crate::setting::name(crate::setting::Setting::Form)
    );
    Ok(())
}

/// The original bias (if any) plus calibration's shift (if any): what the subgraph adds last.
pub(in crate::lower) fn layer_bias(
    model: &OnnxModel,
    layer: &ConvLayer,
    codebook: &Codebook,
    m: usize,
) -> Result<Option<Vec<f32>>> {
    let ctx = || layer_context(layer);
    let mut bias: Option<Vec<f32>> = match &layer.bias {
        Some(name) => {
            let bias_t = model.initializer(name).context("bias initializer")?;
            let values = model
                .tensor_f32(bias_t)
                .with_context(|| format!("{}: bias `{name}`", ctx()))?;
            ensure!(
                values.len() == m,
                "{}: bias `{name}` has {} values, expected {m}",
                ctx(),
                values.len()
            );
            Some(values.iter().copied().collect())
        }
        None => None,
    };
    if let Some(shift) = &codebook.bias_shift {
        ensure!(
            shift.len() == m,
            "{}: the codebook's bias shift has {} values, expected {m}",
            ctx(),
            shift.len()
        );
        let values = bias.get_or_insert_with(|| vec![0.0; m]);
        for (v, s) in values.iter_mut().zip(shift) {
            *v += s;
        }
    }
    Ok(bias)
}

/// The type of the node's output, `[?, M, ?, ?]` of the layer's element type: batch and spatial
/// sizes stay open, so the model keeps working for any size the original accepted.
pub(in crate::lower) fn output_type(name: &str, elem: i32, m: usize) -> ValueInfoProto {
    channels_type(name, elem, m, 4, 1)
}

/// The type of a tensor `name` of `rank` axes whose axis `axis` has `m` entries, the others of
/// unknown size.
pub(in crate::lower) fn channels_type(
    name: &str,
    elem: i32,
    m: usize,
    rank: usize,
    axis: usize,
) -> ValueInfoProto {
    use crate::proto::tensor_shape_proto::{dimension::Value, Dimension};
    let mut dims = vec![0i64; rank];
    dims[axis] = m as i64;
    let mut info = value_info(name, elem, Some(&dims));
    if let Some(type_proto::Value::TensorType(t)) =
        info.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        for (i, dim) in t
            .shape
            .iter_mut()
            .flat_map(|s| s.dim.iter_mut())
            .enumerate()
        {
            if i != axis {
                *dim = Dimension {
                    value: None::<Value>,
                    denotation: None,
                };
            }
        }
    }
    info
}
