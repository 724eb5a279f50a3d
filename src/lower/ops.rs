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

use anyhow::{ensure, Context, Result};

use crate::analysis::select::ConvLayer;
use crate::analysis::shapes::ShapeMap;
use crate::codebook::{self, Codebook, Method};
use crate::onnx::build::attr_ints;
use crate::onnx::conv::ConvAttrs;
use crate::onnx::model::OnnxModel;

use super::builder::{taken_names, Builder};
use super::patch::LayerPatch;

/// The oldest default-domain opset the lowering emits operators for.
pub const MIN_OPSET: i64 = 7;

/// What a lowering needs to know of one layer, checked once by [`Geometry::of`] (the
/// standard-operator and the fused form share it).
pub(super) struct Geometry<'a> {
    pub(super) attrs: &'a ConvAttrs,
    /// Output channels M and kernel size kh × kw.
    pub(super) m: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    out_hw: Vec<usize>,
    /// (begin, end) zero padding per spatial axis, `auto_pad` resolved.
    pub(super) pads: Vec<(usize, usize)>,
    subspaces: usize,
    atoms_per: usize,
    reps_per: usize,
}

impl<'a> Geometry<'a> {
    /// The layer checked against its codebook and its input's shape.
    pub(super) fn of(layer: &'a ConvLayer, codebook: &Codebook, shapes: &ShapeMap) -> Result<Self> {
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
        let in_shape = shapes.get(&layer.input).with_context(|| {
            format!("{}: the shape of input `{}` is unknown", ctx(), layer.input)
        })?;
        ensure!(
            in_shape.len() == 4,
            "{}: input `{}` has shape {in_shape:?}, expected 4-D",
            ctx(),
            layer.input
        );
        let hw = [in_shape[2], in_shape[3]];
        let out_hw = attrs.output_size(&hw, &[kh, kw]).with_context(ctx)?;
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
        Ok(Geometry {
            attrs,
            m,
            kh,
            kw,
            out_hw,
            pads: attrs.resolved_pads(&hw, &[kh, kw]),
            subspaces: codebook.subspaces.len(),
            atoms_per,
            reps_per,
        })
    }
}

/// How errors name a layer.
pub(super) fn layer_context(layer: &ConvLayer) -> String {
    format!("layer `{}` (node {} Conv)", layer.name, layer.node_index)
}

/// Builds the replacement of `layer` from its codebook. `shapes` gives the input and output
/// spatial sizes (the lowering is specialised to them, like `auto_pad` resolution is);
/// `settings` is recorded in the model's metadata.
pub fn lower(
    model: &OnnxModel,
    layer: &ConvLayer,
    codebook: &Codebook,
    shapes: &ShapeMap,
    settings: &str,
) -> Result<LayerPatch> {
    let opset = model.default_opset();
    ensure!(
        opset >= MIN_OPSET,
        "{}: the model's opset {opset} is older than {MIN_OPSET}, which onnx-dlq needs",
        layer_context(layer)
    );
    let geo = Geometry::of(layer, codebook, shapes)?;
    let bias = layer_bias(model, layer, codebook, geo.m)?;
    let taken = taken_names(model);
    let elem = layer
        .weight_type
        .expect("eligible layers have float weights");
    let mut b = Builder::new(&layer.name, model.default_opset(), elem, &taken);
    let z = wire_atoms(&mut b, codebook, &layer.input)?;
    let r = wire_representatives(&mut b, codebook, &geo, z)?;
    let padded = wire_padding(&mut b, &geo, r)?;
    let acc = wire_lookups(&mut b, codebook, &geo, &padded)?;
    let summed = wire_subspace_sum(&mut b, &geo, acc)?;
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
    Ok(LayerPatch {
        node_index: layer.node_index,
        layer: layer.name.clone(),
        nodes: b.nodes,
        initializers: b.inits,
        released,
        metadata: (format!("onnx-dlq/{}", layer.name), settings.to_string()),
        domains: vec![],
        value_info: vec![],
        absorbed: vec![],
    })
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
    let axis = crate::onnx::build::attr_int("axis", 1);
    b.node("Concat", "atoms", vec![z_head, z_tail], vec![axis])
}

/// Step 2: the representative responses R, `[B, S·K, H, W]`: for each of the α slots, a
/// Gather of the slot's atom per representative times its coefficient, the slots summed. VQ's
/// representatives are the centroids themselves (R = Z).
fn wire_representatives(
    b: &mut Builder,
    codebook: &Codebook,
    geo: &Geometry,
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

/// Step 3: R zero-padded as the Conv pads its input (nothing when it does not pad).
fn wire_padding(b: &mut Builder, geo: &Geometry, r: String) -> Result<String> {
    let p = &geo.pads;
    if p.iter().all(|&(begin, end)| begin == 0 && end == 0) {
        return Ok(r);
    }
    let pads = [p[0].0, p[1].0, p[0].1, p[1].1].map(|x| x as i64);
    b.pad("padded", &r, pads)
}

/// Step 4: for each kernel position, the shifted (and strided) window of the padded responses,
/// looked up by Γ into S·M planes, accumulated with Add.
fn wire_lookups(
    b: &mut Builder,
    codebook: &Codebook,
    geo: &Geometry,
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

/// The window of the padded responses that kernel position `pos` reads: a spatial Slice at the
/// dilated offset with the Conv's stride as step (before opset 10, where Slice has no steps, a
/// 1×1 MaxPool with the stride subsamples exactly).
fn wire_shift(
    b: &mut Builder,
    geo: &Geometry,
    padded: &str,
    tag: &str,
    pos: [usize; 2],
) -> Result<String> {
    let (st, dil) = (&geo.attrs.strides, &geo.attrs.dilations);
    let starts = [(pos[0] * dil[0]) as i64, (pos[1] * dil[1]) as i64];
    let ends = [
        starts[0] + ((geo.out_hw[0] - 1) * st[0]) as i64 + 1,
        starts[1] + ((geo.out_hw[1] - 1) * st[1]) as i64 + 1,
    ];
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

/// Step 5: the S subspace partial sums (channel slices of M) summed.
fn wire_subspace_sum(b: &mut Builder, geo: &Geometry, acc: String) -> Result<String> {
    if geo.subspaces == 1 {
        return Ok(acc);
    }
    let m = geo.m as i64;
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

/// The original bias (if any) plus calibration's shift (if any): what the subgraph adds last.
pub(super) fn layer_bias(
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
