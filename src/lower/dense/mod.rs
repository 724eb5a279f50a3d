//! The compact form (`--form dense`): the Conv stays as it is, and its weight becomes a small
//! constant subgraph that rebuilds the dense kernel W̃ from the codebook — atoms (float),
//! sparse codes (smallest unsigned index type, and float coefficients) and the assignment Γ
//! (smallest unsigned type that holds K). Every input of that subgraph is an initializer, so
//! engines fold it when they load the model (tract's optimisation, ONNX Runtime's constant
//! folding) and run the original Conv: the file shrinks, the latency stays. Plain ONNX at the
//! model's opset (7 or later: broadcasting Add), valid for any input size the original accepts.
//! Γ below 8 bits is stored packed (`packing`); a shared codebook (a palette) is stored once,
//! as the `[K, N′]` table itself, and Γ indexes it directly (no per-subspace offsets); a
//! float16 palette (`--f16-palette`) is stored so and cast to the layer's type.
//!
//! ```text
//! DL:  reps[S·K, N′] = Reshape(MatMul(coef[S,K,1,α], Gather(atoms[S·L,N′], idx + s·L)))
//! VQ:  reps[S·K, N′] = Reshape(atoms[S,L,N′])
//! W̃   = Gather(Transpose(Reshape(Gather(reps, Γ + s·K)), [M, S·N′, kh, kw]), channels < N)
//! W̃   = W̃ · channel_scale[M, 1, 1, 1]    (a palette with per-channel scales)
//! ```

pub mod packing;
pub mod price;
pub mod read;

use anyhow::{ensure, Context, Result};

use crate::analysis::fc::{self, FcLayout};
use crate::analysis::select::ConvLayer;
use crate::analysis::shapes::ShapeMap;
use crate::codebook::{Codebook, ValidParams};
use crate::onnx::build::{attr_int, attr_ints};
use crate::onnx::model::OnnxModel;
use crate::onnx::tensor;
use crate::proto::tensor_proto::DataType;

use crate::lower::wiring::builder::{taken_names, Builder};
use crate::lower::wiring::layer::{layer_bias, layer_context, output_type};
use crate::lower::wiring::tables::{assignment_input, codebook_inputs, codebook_sizes};

use crate::lower::form::{Form, Runtime, Saving};
use crate::lower::patch::LayerPatch;
use crate::lower::stored::{Decoded, LayerNodes, StoredShape};

/// The lowest opset the form supports (Cast's `to` as an integer, broadcasting Add).
pub const MIN_OPSET: i64 = 7;

fn cast_i64(b: &mut Builder, what: &str, x: &str) -> Result<String> {
    b.node(
        "Cast",
        &format!("{what}_i64"),
        vec![x.to_string()],
        vec![attr_int("to", DataType::Int64 as i64)],
    )
}

/// `x + offsets` (INT64), the offset of subspace s being `s · step` (shape `[S, 1, …]` with
/// `rank − 1` ones), so each subspace's indices address its own rows of a flat table.
fn add_offsets(
    b: &mut Builder,
    what: &str,
    x: &str,
    s: usize,
    step: usize,
    rank: usize,
) -> Result<String> {
    let name = b.name(&format!("{what}_offsets"))?;
    let offsets: Vec<i64> = (0..s).map(|i| (i * step) as i64).collect();
    let mut shape = vec![s];
    shape.resize(rank, 1);
    b.inits
        .push(tensor::new_i64_tensor(&name, &shape, &offsets));
    b.node(
        "Add",
        &format!("{what}_global"),
        vec![x.to_string(), name],
        vec![],
    )
}

/// Γ as INT64 rows of the flat table, `[S, M, kh, kw]`: stored packed below 8 bits (else as
/// UINT8/UINT16), offset by s·K per subspace unless the codebook is shared.
fn assignment_rows(
    b: &mut Builder,
    codebook: &Codebook,
    shape: [usize; 4],
    k: usize,
) -> Result<String> {
    let rows = if packing::packs(k) {
        let values = codebook.flat_assignment();
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        packing::unpacked(b, "assignment", &values, packing::bits_for(k), &dims)?
    } else {
        let gamma = assignment_input(b, codebook, shape, k)?;
        cast_i64(b, "assignment", &gamma)?
    };
    if codebook.shared {
        return Ok(rows);
    }
    add_offsets(b, "assignment", &rows, shape[0], k, 4)
}

fn reshape(b: &mut Builder, what: &str, x: &str, shape: &[i64]) -> Result<String> {
    let s = b.i64_init(&format!("{what}_shape"), shape)?;
    b.node("Reshape", what, vec![x.to_string(), s], vec![])
}

/// The representatives as a flat `[S·K, N′]` table.
fn representatives(
    b: &mut Builder,
    inputs: &[String],
    [s, l, k, alpha, width]: [usize; 5],
) -> Result<String> {
    let flat_atoms = reshape(b, "atoms_flat", &inputs[0], &[(s * l) as i64, width as i64])?;
    if inputs[1].is_empty() {
        return Ok(flat_atoms); // VQ: representative i is atom i (K = L)
    }
    let idx = cast_i64(b, "atom_indices", &inputs[1])?;
    let idx = add_offsets(b, "atom_indices", &idx, s, l, 3)?;
    let terms = b.node(
        "Gather",
        "terms",
        vec![flat_atoms, idx],
        vec![attr_int("axis", 0)],
    )?;
    let coef = reshape(
        b,
        "coefficients_row",
        &inputs[2],
        &[s as i64, k as i64, 1, alpha as i64],
    )?;
    let reps = b.node("MatMul", "representatives", vec![coef, terms], vec![])?;
    reshape(
        b,
        "representatives_flat",
        &reps,
        &[(s * k) as i64, width as i64],
    )
}

/// A palette's table or scales: float16 when the codebook's palette is
/// (`Codebook::f16_palette`), so stored in half the bytes and cast to the layer's type.
fn palette_init(
    b: &mut Builder,
    codebook: &Codebook,
    what: &str,
    shape: &[usize],
    values: &[f32],
) -> Result<String> {
    match codebook.f16_palette {
        true => b.narrow_float_init(what, shape, values),
        false => b.float_init(what, shape, values),
    }
}

/// W̃ `[M, N, kh, kw]` times the palette's per-channel scales, when it has them.
fn scaled(b: &mut Builder, codebook: &Codebook, weight: String, ctx: &str) -> Result<String> {
    let Some(scale) = &codebook.channel_scale else {
        return Ok(weight);
    };
    let m = codebook.kernel_shape[0];
    ensure!(
        scale.len() == m,
        "{ctx}: {} channel scales for {m} output channels",
        scale.len()
    );
    let scale = palette_init(b, codebook, "channel_scale", &[m, 1, 1, 1], scale)?;
    b.node("Mul", "weight_scaled", vec![weight, scale], vec![])
}

/// Builds the compact replacement of `layer`: the original Conv reading W̃ from the subgraph.
pub fn lower(
    model: &OnnxModel,
    layer: &ConvLayer,
    codebook: &Codebook,
    shapes: &ShapeMap,
    settings: &str,
) -> Result<LayerPatch> {
    let ctx = layer_context(layer);
    ensure!(
        model.default_opset() >= MIN_OPSET,
        "{ctx}: the compact form needs opset {MIN_OPSET} or later; the model has {}",
        model.default_opset()
    );
    let elem = layer
        .weight_type
        .ok_or_else(|| anyhow::anyhow!("{ctx}: no float weight"))?;
    let [m, n, kh, kw] = codebook.kernel_shape;
    let sizes = codebook_sizes(codebook, &ctx)?;
    let [s, _, k, _, width] = sizes;
    let taken = taken_names(model);
    let mut b = Builder::new(&layer.name, model.default_opset(), elem, &taken);
    let table = if codebook.shared {
        // One palette, `[K, N′]`: the first subspace's copy is the table of all (N′ divides N).
        let palette = &codebook.subspaces[0].atoms;
        ensure!(
            palette.dim == width,
            "{ctx}: a palette of {}-value rows for subspaces of {width}",
            palette.dim
        );
        palette_init(
            &mut b,
            codebook,
            "atoms",
            &[palette.len(), width],
            &palette.data,
        )?
    } else {
        let inputs = codebook_inputs(&mut b, codebook, sizes, &ctx)?;
        representatives(&mut b, &inputs, sizes)?
    };
    // K: the representatives Γ indexes (VQ: the L centroids).
    let gamma_global = assignment_rows(&mut b, codebook, [s, m, kh, kw], k)?;
    let columns = b.node(
        "Gather",
        "columns",
        vec![table, gamma_global],
        vec![attr_int("axis", 0)],
    )?;
    let moved = b.node(
        "Transpose",
        "columns_by_channel",
        vec![columns],
        vec![attr_ints("perm", &[1, 0, 4, 2, 3])],
    )?;
    let mut weight = reshape(
        &mut b,
        "weight_padded",
        &moved,
        &[m as i64, (s * width) as i64, kh as i64, kw as i64],
    )?;
    if s * width != n {
        let channels: Vec<i64> = (0..n as i64).collect();
        weight = b.gather("weight", &weight, &channels)?;
    }
    weight = scaled(&mut b, codebook, weight, &ctx)?;
    if let Some(fc) = &layer.fc {
        let mut patch = finish_fc(model, layer, fc, codebook, b, &weight, settings)?;
        patch
            .value_info
            .extend(crate::lower::wiring::fc::output_info(layer, fc, shapes, m));
        return Ok(patch);
    }
    let mut conv = model.graph().node[layer.node_index].clone();
    conv.input[1] = weight;
    // Named like every node of the layer's patch, so per-layer reports find it.
    conv.name = Some(b.name("conv")?);
    let mut released = vec![layer.weight.clone()];
    if let (Some(values), true) = (
        layer_bias(model, layer, codebook, m)?,
        codebook.bias_shift.is_some(),
    ) {
        let bias = b.float_init("bias", &[m], &values)?;
        conv.input.truncate(2);
        conv.input.push(bias);
        released.extend(layer.bias.iter().cloned());
    }
    let mut nodes = b.nodes;
    nodes.push(conv);
    Ok(LayerPatch {
        // Completes a graph output's missing shape, which onnx.checker's shape inference does
        // not recover through the kernel subgraph.
        value_info: vec![output_type(&layer.output, elem.onnx() as i32, m)],
        ..LayerPatch::standard(layer, nodes, b.inits, released, settings)
    })
}

/// A fully connected layer's compact form (its output type left to the caller): W̃ [M, N, 1, 1]
/// reshaped (and transposed) into the weight's own layout, read by the unchanged Gemm / MatMul;
/// calibration's shift goes into a new C (`FcLayout::c_with_shift`).
fn finish_fc(
    model: &OnnxModel,
    layer: &ConvLayer,
    fc: &FcLayout,
    codebook: &Codebook,
    mut b: Builder,
    kernel: &str,
    settings: &str,
) -> Result<LayerPatch> {
    let [m, n, ..] = codebook.kernel_shape;
    let mut weight = reshape(&mut b, "weight_matrix", kernel, &[m as i64, n as i64])?;
    if fc.weight_in_by_out {
        weight = b.node(
            "Transpose",
            "weight_in_by_out",
            vec![weight],
            vec![attr_ints("perm", &[1, 0])],
        )?;
    }
    let mut node = model.graph().node[layer.node_index].clone();
    node.input[1] = weight;
    node.name = Some(b.name("fc")?);
    let mut released = vec![layer.weight.clone()];
    if let Some(shift) = &codebook.bias_shift {
        let (dims, values) = fc
            .c_with_shift(model, shift)
            .with_context(|| format!("layer `{}`", layer.name))?;
        let c = b.float_init("calibration_bias", &dims, &values)?;
        released.extend(fc.c.iter().cloned());
        fc::attach_c(&mut node, c);
    }
    let mut nodes = b.nodes;
    nodes.push(node);
    Ok(LayerPatch::standard(
        layer, nodes, b.inits, released, settings,
    ))
}

/// The compact form: the Conv kept, its kernel rebuilt from the stored codebook.
pub struct Dense;

impl Form for Dense {
    fn name(&self) -> &'static str {
        "dense"
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

    fn saving(&self) -> Saving {
        Saving::Bytes
    }

    fn stored_bytes(&self, layer: &ConvLayer, params: &ValidParams, opset: i64) -> Option<f64> {
        price::compact_bytes(layer, params, opset)
    }

    fn runtime(&self) -> Runtime {
        Runtime {
            timed_per_layer: false,
            may_outgrow_original: false,
        }
    }

    fn slower_because(&self) -> String {
        "the engine did not fold the kernel's constant subgraph".into()
    }
}
