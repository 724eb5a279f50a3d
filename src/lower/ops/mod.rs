//! The standard-operator form: each converted Conv becomes a subgraph of standard ONNX
//! operators, valid at the model's own opset, that computes a Conv with the reconstructed kernel
//! W̃ while performing the paper's reduced number of multiplications. [`lower`] wires it in
//! five steps, each a `wire_*` function over the [`Builder`]:
//!
//! 1. `Z`  = grouped 1×1 Conv of the input with the atoms (DL) or centroids (VQ): S·L planes;
//! 2. `R`  = representative responses, Σ over α slots of Gather(Z, atom) · coefficient: S·K
//!    planes (VQ: `R = Z`);
//! 3. `R` is zero-padded as the Conv pads its input;
//! 4. for each kernel position (u, v): a strided spatial Slice of `R` (the shift), a channel
//!    Gather by Γ (S·M planes), accumulated with Add;
//! 5. the S subspace partial sums (channel slices of M) are summed, then the bias is added.
//!
//! The largest intermediate holds max(S·K, S·M) planes; the p²·M·S looked-up planes are never
//! all alive at once.

pub mod read;

use anyhow::{ensure, Result};

use crate::analysis::select::ConvLayer;
use crate::analysis::shapes::ShapeMap;
use crate::codebook::{self, Codebook, Method};
use crate::onnx::build::{attr_int, attr_ints};
use crate::onnx::conv::AutoPad;
use crate::onnx::model::OnnxModel;
use crate::proto::tensor_proto::DataType;

use crate::lower::form::{Form, Runtime};
use crate::lower::patch::LayerPatch;
use crate::lower::stored::{Decoded, LayerNodes, StoredShape};
use crate::lower::wiring::builder::{taken_names, Builder};
use crate::lower::wiring::layer::{layer_bias, layer_context, refuse_channel_scale, LayerGeometry};
use crate::setting::{self, Setting};

/// The oldest default-domain opset the lowering emits operators for.
pub const MIN_OPSET: i64 = 7;

/// Builds the replacement of `layer` from its codebook. The subgraph runs at any input size the
/// Conv accepts: `shapes` is consulted only to check that the kernel fits the input when its
/// size is known, and for `SAME_*` padding at a stride above 1 before opset 11. `settings` is
/// recorded in the model's metadata.
pub fn lower(
    model: &OnnxModel,
    layer: &ConvLayer,
    codebook: &Codebook,
    shapes: &ShapeMap,
    settings: &str,
) -> Result<LayerPatch> {
    match &layer.fc {
        Some(fc) => crate::lower::wiring::fc::wrap(model, layer, fc, codebook, shapes, |view| {
            lower_conv(model, view, codebook, shapes, settings, Spatial::Pointwise)
        }),
        None => lower_conv(model, layer, codebook, shapes, settings, Spatial::Any),
    }
}

/// What the subgraph may assume of its input's spatial size.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spatial {
    Any,
    /// Always 1×1 (a fully connected layer's view): the S partial sums are one ReduceSum.
    Pointwise,
}

fn lower_conv(
    model: &OnnxModel,
    layer: &ConvLayer,
    codebook: &Codebook,
    shapes: &ShapeMap,
    settings: &str,
    spatial: Spatial,
) -> Result<LayerPatch> {
    let opset = model.default_opset();
    ensure!(
        opset >= MIN_OPSET,
        "{}: the model's opset {opset} is older than {MIN_OPSET}, which onnx-dlq needs",
        layer_context(layer)
    );
    refuse_channel_scale(codebook, &layer_context(layer))?;
    let geo = LayerGeometry::of(layer, codebook, shapes)?;
    let bias = layer_bias(model, layer, codebook, geo.m)?;
    let taken = taken_names(model);
    let elem = layer
        .weight_type
        .expect("eligible layers have float weights");
    let mut b = Builder::new(&layer.name, model.default_opset(), elem, &taken);
    let z = wire_atoms(&mut b, codebook, &layer.input)?;
    let r = wire_representatives(&mut b, codebook, &geo, z)?;
    let padded = wire_padding(&mut b, &geo, r, &layer_context(layer))?;
    let acc = wire_lookups(&mut b, codebook, &geo, &padded)?;
    let summed = wire_subspace_sum(&mut b, &geo, acc, spatial)?;
    let final_name = match bias {
        Some(values) => {
            let bias4 = b.float_init("bias", &[1, geo.m, 1, 1], &values)?;
            b.node("Add", "output", vec![summed, bias4], vec![])?
        }
        None => summed,
    };
    // The last node writes the Conv's own output name, so consumers are untouched.
    let last = b.nodes.last_mut().expect("nodes were emitted");
    ensure!(
        last.output[0] == final_name,
        "internal: last node is not the output"
    );
    last.output[0] = layer.output.clone();
    let mut released = vec![layer.weight.clone()];
    released.extend(layer.bias.iter().cloned());
    Ok(LayerPatch::standard(
        layer, b.nodes, b.inits, released, settings,
    ))
}

/// Step 1: the atom (or centroid) responses Z, `[B, S·L, H, W]`, as one grouped 1×1 Conv; when
/// N′ does not divide N, the full subspaces as one grouped Conv and the last on its own.
fn wire_atoms(b: &mut Builder, codebook: &Codebook, x: &str) -> Result<String> {
    let subspaces = &codebook.subspaces;
    let (first, s_count) = (&subspaces[0], subspaces.len());
    let atoms_per = first.atoms.len();
    let atom_data = |list: &[codebook::SubspaceCodebook]| -> Vec<f32> {
        list.iter()
            .flat_map(|s| s.atoms.data.iter().copied())
            .collect()
    };
    if subspaces
        .iter()
        .all(|s| s.channels.len() == first.channels.len())
    {
        let shape = [s_count * atoms_per, first.channels.len(), 1, 1];
        return b.conv1x1("atoms", x, &atom_data(subspaces), shape, s_count);
    }
    let (full, last) = (&subspaces[..s_count - 1], &subspaces[s_count - 1]);
    let split = last.channels.start as i64;
    let head = b.slice("input_head", x, &[1], &[0], &[split], &[1])?;
    let tail = b.slice("input_tail", x, &[1], &[split], &[i64::MAX], &[1])?;
    let head_shape = [full.len() * atoms_per, first.channels.len(), 1, 1];
    let z_head = b.conv1x1(
        "atoms_head",
        &head,
        &atom_data(full),
        head_shape,
        full.len(),
    )?;
    let tail_shape = [atoms_per, last.channels.len(), 1, 1];
    let z_tail = b.conv1x1("atoms_tail", &tail, &last.atoms.data, tail_shape, 1)?;
    let axis = attr_int("axis", 1);
    b.node("Concat", "atoms", vec![z_head, z_tail], vec![axis])
}

/// Step 2: the representative responses R, `[B, S·K, H, W]`: for each of the α slots, a
/// Gather of the slot's atom per representative times its coefficient, the slots summed. VQ's
/// representatives are the centroids themselves (R = Z).
fn wire_representatives(
    b: &mut Builder,
    codebook: &Codebook,
    geo: &LayerGeometry,
    z: String,
) -> Result<String> {
    if codebook.method == Method::Vq {
        return Ok(z);
    }
    let alpha = codebook.subspaces[0]
        .codes
        .as_ref()
        .expect("DL codes")
        .alpha;
    let mut terms = Vec::with_capacity(alpha);
    for slot in 0..alpha {
        let mut idx = Vec::with_capacity(geo.subspaces * geo.reps_per);
        let mut coef = Vec::with_capacity(geo.subspaces * geo.reps_per);
        for (s, sc) in codebook.subspaces.iter().enumerate() {
            let codes = sc.codes.as_ref().expect("DL codes");
            for rep in 0..geo.reps_per {
                let (a, c) = codes.slots(rep).nth(slot).expect("alpha slots");
                idx.push((s * geo.atoms_per + a) as i64);
                coef.push(c);
            }
        }
        let g = b.gather(&format!("term{slot}_atoms"), &z, &idx)?;
        let shape = [1, geo.subspaces * geo.reps_per, 1, 1];
        let c = b.float_init(&format!("term{slot}_coefficients"), &shape, &coef)?;
        terms.push(b.node("Mul", &format!("term{slot}"), vec![g, c], vec![])?);
    }
    if terms.len() == 1 {
        return Ok(terms.pop().expect("one term"));
    }
    b.node("Sum", "representatives", terms, vec![])
}

/// Step 3: R zero-padded as the Conv pads its input (nothing when it does not pad). Padding that
/// follows the input's size (`SAME_*` at a stride above 1) is computed in-graph from opset 11,
/// where Pad takes its pads as an input; before, it is resolved at the size shape inference found.
fn wire_padding(b: &mut Builder, geo: &LayerGeometry, r: String, ctx: &str) -> Result<String> {
    let p = match (&geo.size_free_pads, b.opset >= 11) {
        (Some(p), _) => p.clone(),
        (None, true) => return wire_same_padding(b, geo, &r),
        (None, false) => geo.pads_at_known_size(ctx)?,
    };
    if p.iter().all(|&(begin, end)| begin == 0 && end == 0) {
        return Ok(r);
    }
    let pads = [p[0].0, p[1].0, p[0].1, p[1].1].map(|x| x as i64);
    b.pad("padded", &r, pads)
}

/// `SAME_*` padding at a stride above 1, from R's spatial size (the input's) as the ONNX spec
/// computes it: total = max(⌈H/s⌉·s + extent − s − H, 0), the odd pixel at the end for
/// SAME_UPPER and at the beginning for SAME_LOWER. The arithmetic runs in float32 (exact for
/// any size below 2²⁴), since integer Max needs opset 12.
fn wire_same_padding(b: &mut Builder, geo: &LayerGeometry, r: &str) -> Result<String> {
    let (st, dil) = (&geo.attrs.strides, &geo.attrs.dilations);
    let stride = [st[0] as f32, st[1] as f32];
    let extent = [
        (dil[0] * (geo.kh - 1) + 1) as f32,
        (dil[1] * (geo.kw - 1) + 1) as f32,
    ];
    let cast = |to: DataType| vec![attr_int("to", to as i64)];
    let shape = b.node("Shape", "same_shape", vec![r.to_string()], vec![])?;
    let hw = b.slice("same_hw_int", &shape, &[0], &[2], &[4], &[1])?;
    let hw = b.node("Cast", "same_hw", vec![hw], cast(DataType::Float))?;
    let s = b.f32_init("same_strides", &stride)?;
    let quotient = b.node("Div", "same_quotient", vec![hw.clone(), s.clone()], vec![])?;
    let out = b.node("Ceil", "same_out", vec![quotient], vec![])?;
    let covered = b.node("Mul", "same_covered", vec![out, s], vec![])?;
    let rest = [extent[0] - stride[0], extent[1] - stride[1]];
    let rest = b.f32_init("same_extent_minus_stride", &rest)?;
    let needed = b.node("Add", "same_needed", vec![covered, rest], vec![])?;
    let over = b.node("Sub", "same_over", vec![needed, hw], vec![])?;
    let zero = b.f32_init("same_zero", &[0.0, 0.0])?;
    let total = b.node("Max", "same_total", vec![over, zero.clone()], vec![])?;
    let half = b.f32_init("same_half", &[0.5, 0.5])?;
    let halved = b.node("Mul", "same_halved", vec![total.clone(), half], vec![])?;
    let small = b.node("Floor", "same_small", vec![halved], vec![])?;
    let big = b.node("Sub", "same_big", vec![total, small.clone()], vec![])?;
    let (begin, end) = match geo.attrs.auto_pad {
        AutoPad::SameLower => (big, small),
        _ => (small, big),
    };
    let parts = vec![zero.clone(), begin, zero, end];
    let pads = b.node(
        "Concat",
        "same_pads_float",
        parts,
        vec![attr_int("axis", 0)],
    )?;
    let pads = b.node("Cast", "same_pads", vec![pads], cast(DataType::Int64))?;
    b.node("Pad", "padded", vec![r.to_string(), pads], vec![])
}

/// Step 4: for each kernel position, the shifted (and strided) window of the padded responses,
/// looked up by Γ into S·M planes, accumulated with Add.
fn wire_lookups(
    b: &mut Builder,
    codebook: &Codebook,
    geo: &LayerGeometry,
    padded: &str,
) -> Result<String> {
    let mut acc: Option<String> = None;
    for u in 0..geo.kh {
        for v in 0..geo.kw {
            let tag = format!("k{u}_{v}");
            let shifted = wire_shift(b, geo, padded, &tag, [u, v])?;
            let mut idx = Vec::with_capacity(geo.subspaces * geo.m);
            for (s, sc) in codebook.subspaces.iter().enumerate() {
                for k in 0..geo.m {
                    let column = codebook::subspace::column(k, u, v, geo.kh, geo.kw);
                    idx.push((s * geo.reps_per + sc.assignment[column] as usize) as i64);
                }
            }
            let looked = b.gather(&format!("{tag}_lookup"), &shifted, &idx)?;
            acc = Some(match acc {
                None => looked,
                Some(prev) => b.node("Add", &format!("{tag}_sum"), vec![prev, looked], vec![])?,
            });
        }
    }
    Ok(acc.expect("at least one kernel position"))
}

/// The window of the padded responses that kernel position `pos` reads: a spatial Slice from the
/// dilated offset to the end less the rest of the kernel's extent (ends counted from the end, so
/// the window fits any input size), with the Conv's stride as step (before opset 10, where Slice
/// has no steps, a 1×1 MaxPool with the stride subsamples exactly: ⌊(L − 1)/s⌋ + 1 positions).
fn wire_shift(
    b: &mut Builder,
    geo: &LayerGeometry,
    padded: &str,
    tag: &str,
    pos: [usize; 2],
) -> Result<String> {
    let (st, dil) = (&geo.attrs.strides, &geo.attrs.dilations);
    let kernel = [geo.kh, geo.kw];
    let starts = [0, 1].map(|a| (pos[a] * dil[a]) as i64);
    let ends = [0, 1].map(|a| match ((kernel[a] - 1 - pos[a]) * dil[a]) as i64 {
        0 => i64::MAX,
        rest => -rest,
    });
    let strided = st.iter().any(|&s| s != 1);
    let steps_in_slice = b.opset >= 10;
    let steps = match strided && steps_in_slice {
        true => [st[0] as i64, st[1] as i64],
        false => [1, 1],
    };
    let shifted = b.slice(
        &format!("{tag}_shift"),
        padded,
        &[2, 3],
        &starts,
        &ends,
        &steps,
    )?;
    if !strided || steps_in_slice {
        return Ok(shifted);
    }
    let attrs = vec![
        attr_ints("kernel_shape", &[1, 1]),
        attr_ints("strides", &[st[0] as i64, st[1] as i64]),
    ];
    b.node("MaxPool", &format!("{tag}_stride"), vec![shifted], attrs)
}

/// Step 5: the S subspace partial sums (channel slices of M) summed: S Slices into one Sum, or
/// on a 1×1 input one ReduceSum over [B, S, M] (a fully connected layer has hundreds of
/// subspaces).
fn wire_subspace_sum(
    b: &mut Builder,
    geo: &LayerGeometry,
    acc: String,
    spatial: Spatial,
) -> Result<String> {
    if geo.subspaces == 1 {
        return Ok(acc);
    }
    let m = geo.m as i64;
    if spatial == Spatial::Pointwise {
        let by_subspace = b.i64_init("subspaces_shape", &[0, geo.subspaces as i64, m])?;
        let parts = b.node("Reshape", "subspaces", vec![acc, by_subspace], vec![])?;
        let sum = b.reduce_sum_kept("subspace_sum_kept", &parts, 1)?;
        let planes = b.i64_init("subspace_sum_shape", &[0, m, 1, 1])?;
        return b.node("Reshape", "subspace_sum", vec![sum, planes], vec![]);
    }
    let parts: Vec<String> = (0..geo.subspaces as i64)
        .map(|s| {
            b.slice(
                &format!("subspace{s}"),
                &acc,
                &[1],
                &[s * m],
                &[(s + 1) * m],
                &[1],
            )
        })
        .collect::<Result<_>>()?;
    b.node("Sum", "subspace_sum", parts, vec![])
}

/// The standard-operator form (the default).
pub struct Ops;

impl Form for Ops {
    fn name(&self) -> &'static str {
        "ops"
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
            timed_per_layer: false,
            may_outgrow_original: true,
        }
    }

    fn slower_because(&self) -> String {
        format!("the standard-operator form counts fewer multiplications but materialises the look-ups, so it is not faster on CPU engines (BENCHMARKS.md); {} fused runs the native kernel (in tract, and in ONNX Runtime through libonnx_dlq_ort)", setting::name(Setting::Form))
    }
}
