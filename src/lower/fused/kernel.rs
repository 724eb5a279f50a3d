//! The native kernel's form of a layer: its codebook, geometry and bias as a validated
//! `dlq_kernels::DlqConv`, the computation the fused `DlqConv` operator will run.
//! Today it serves the exactness tests, which check the kernel against the other forms on the
//! same layers.

use anyhow::{ensure, Context, Result};
use dlq_kernels::{Codes, DlqConv, Geometry, Subspace};

use crate::analysis::select::ConvLayer;
use crate::codebook::Codebook;
use crate::onnx::model::OnnxModel;

use crate::lower::wiring::layer::{layer_bias, layer_context};

/// The kernel computing `layer` with `codebook` (and the layer's bias plus any calibration
/// shift) on inputs of spatial size `in_hw` (which resolves `auto_pad`).
pub fn native(
    model: &OnnxModel,
    layer: &ConvLayer,
    codebook: &Codebook,
    in_hw: [usize; 2],
) -> Result<DlqConv> {
    let ctx = || layer_context(layer);
    layer.eligibility.clone().with_context(ctx)?;
    let attrs = layer
        .attrs
        .as_ref()
        .expect("eligible layers have attributes");
    let [m, n, kh, kw] = codebook.kernel_shape;
    ensure!(attrs.strides.len() == 2, "{}: not a 2-D convolution", ctx());
    let pads = attrs.resolved_pads(&in_hw, &[kh, kw]);
    let geometry = Geometry {
        in_channels: n,
        out_channels: m,
        kernel: [kh, kw],
        strides: [attrs.strides[0], attrs.strides[1]],
        dilations: [attrs.dilations[0], attrs.dilations[1]],
        pads: [pads[0].0, pads[1].0, pads[0].1, pads[1].1],
    };
    let subspaces = codebook
        .subspaces
        .iter()
        .map(|s| Subspace {
            channels: s.channels.clone(),
            atoms: s.atoms.data.clone(),
            num_atoms: s.atoms.len(),
            codes: s.codes.as_ref().map(|c| Codes {
                alpha: c.alpha,
                atoms: c.atoms.clone(),
                coefficients: c.coefs.clone(),
            }),
            // Both index the assignment as (k·kh + u)·kw + v (`codebook::subspace::column`).
            assignment: s.assignment.clone(),
        })
        .collect();
    let bias = layer_bias(model, layer, codebook, m)?;
    DlqConv::new(geometry, subspaces, bias).with_context(ctx)
}
