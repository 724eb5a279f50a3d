//! The `DlqConv` custom operator (domain `ai.onnx_dlq`, docs/design/dlqconv-operator-draft.md)
//! in tract: [`builder`] is registered in tract's ONNX op register by `runner::parse`. When the
//! model is typed, the node's constant inputs (atoms, codes, assignment, bias) become one
//! validated `dlq_kernels::DlqConv` (an invalid codebook is an error naming the node, never a
//! panic), and the node becomes a typed op running `DlqConv::run` on its input.

use std::sync::Arc;

use dlq_kernels::{Codes, DlqConv, Geometry, Subspace};
use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// The op_type tract looks the builder up by (tract ignores the node's domain).
pub const OP_TYPE: &str = "DlqConv";

/// The node's attributes and which of its six input slots are present.
#[derive(Debug, Clone)]
struct DlqConvExpansion {
    strides: [usize; 2],
    dilations: [usize; 2],
    /// top, left, bottom, right.
    pads: [usize; 4],
    subspace: usize,
    /// For each input slot (X, atoms, atom_indices, coefficients, assignment, B), its position
    /// among the node's actual inputs.
    slots: [Option<usize>; 6],
}

fn positive<const N: usize>(
    node: &NodeProto,
    name: &str,
    default: usize,
) -> TractResult<[usize; N]> {
    let values: Vec<i64> = node
        .get_attr_opt_vec(name)?
        .unwrap_or_else(|| vec![default as i64; N]);
    let out: Vec<usize> = values.iter().map(|&v| v.max(-1) as usize).collect();
    let min = if name == "pads" { 0 } else { 1 };
    if values.iter().any(|&v| v < min) || out.len() != N {
        bail!(
            "DlqConv node `{}`: attribute {name} is {values:?}",
            node.name
        );
    }
    Ok(out.try_into().expect("length checked"))
}

/// Reads a `DlqConv` node's attributes (the ONNX op-register builder).
pub fn builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let name = &node.name;
    if let Some(mode) = node.get_attr_opt::<&str>("auto_pad")? {
        if mode != "NOTSET" {
            bail!("DlqConv node `{name}`: auto_pad {mode} is not supported (give explicit pads)");
        }
    }
    let subspace: i64 = node.get_attr("subspace")?;
    if subspace < 1 {
        bail!("DlqConv node `{name}`: subspace is {subspace}, must be at least 1");
    }
    let slots: Vec<Option<usize>> = optional_inputs(node).take(6).collect();
    let slots: [Option<usize>; 6] = slots.try_into().expect("six slots");
    if slots[0].is_none() || slots[1].is_none() || slots[4].is_none() {
        bail!("DlqConv node `{name}`: inputs X, atoms and assignment are required");
    }
    if slots[2].is_some() != slots[3].is_some() {
        bail!("DlqConv node `{name}`: atom_indices and coefficients go together");
    }
    let op = DlqConvExpansion {
        strides: positive(node, "strides", 1)?,
        dilations: positive(node, "dilations", 1)?,
        pads: positive(node, "pads", 0)?,
        subspace: subspace as usize,
        slots,
    };
    Ok((expand(op), vec![]))
}

impl DlqConvExpansion {
    fn geometry(&self, in_channels: usize, out_channels: usize, kernel: [usize; 2]) -> Geometry {
        Geometry {
            in_channels,
            out_channels,
            kernel,
            strides: self.strides,
            dilations: self.dilations,
            pads: self.pads,
        }
    }

    /// The constant value of input slot `slot`, with the shape it must have (`None` entries
    /// are free), as the element type `T`.
    fn constant<T: Datum>(
        &self,
        name: &str,
        model: &TypedModel,
        inputs: &[OutletId],
        slot: usize,
        what: &str,
    ) -> TractResult<Option<(Vec<usize>, Vec<T>)>> {
        let Some(position) = self.slots[slot] else {
            return Ok(None);
        };
        let fact = model.outlet_fact(inputs[position])?;
        let Some(konst) = fact.konst.as_ref() else {
            bail!("DlqConv node `{name}`: input {what} must be a constant (an initializer)");
        };
        let cast = konst
            .cast_to::<T>()
            .with_context(|| format!("DlqConv node `{name}`: input {what}"))?;
        let values = cast.to_plain_array_view::<T>()?.iter().cloned().collect();
        Ok(Some((konst.shape().to_vec(), values)))
    }

    /// The validated kernel from the node's constant inputs and X's channel count.
    fn kernel(&self, name: &str, model: &TypedModel, inputs: &[OutletId]) -> TractResult<DlqConv> {
        let x = model.outlet_fact(inputs[0])?;
        let bad = |what: String| format_err!("DlqConv node `{name}`: {what}");
        if x.rank() != 4 {
            return Err(bad(format!("input X has rank {}, expected 4", x.rank())));
        }
        let c = x.shape[1]
            .to_usize()
            .map_err(|_| bad("the channel count of X is not known".into()))?;
        let (ad, atoms) = self
            .constant::<f32>(name, model, inputs, 1, "atoms")?
            .expect("required");
        let (gd, gamma) = self
            .constant::<u32>(name, model, inputs, 4, "assignment")?
            .expect("required");
        let width = self.subspace;
        let s_count = c.div_ceil(width);
        if ad.len() != 3 || ad[0] != s_count || ad[2] != width || ad[1] == 0 {
            return Err(bad(format!(
                "atoms have shape {ad:?}, expected [{s_count}, L, {width}] for {c} channels"
            )));
        }
        if gd.len() != 4 || gd[0] != s_count {
            return Err(bad(format!(
                "assignment has shape {gd:?}, expected [{s_count}, M, kh, kw]"
            )));
        }
        let l = ad[1];
        let codes = self.codes(name, model, inputs, s_count)?;
        let per_sub = gd[1] * gd[2] * gd[3];
        let mut subspaces = Vec::with_capacity(s_count);
        for s in 0..s_count {
            let channels = s * width..c.min((s + 1) * width);
            let w = channels.len();
            let rows = &atoms[s * l * width..][..l * width];
            if rows
                .chunks_exact(width)
                .any(|r| r[w..].iter().any(|&v| v != 0.0))
            {
                return Err(bad(format!(
                    "subspace {s}: atom entries beyond its {w} channels are not 0"
                )));
            }
            subspaces.push(Subspace {
                channels,
                atoms: rows
                    .chunks_exact(width)
                    .flat_map(|r| r[..w].iter().copied())
                    .collect(),
                num_atoms: l,
                codes: codes.as_ref().map(|c| c[s].clone()),
                assignment: gamma[s * per_sub..][..per_sub].to_vec(),
            });
        }
        let bias = self
            .constant::<f32>(name, model, inputs, 5, "B")?
            .map(|(_, b)| b);
        let geometry = self.geometry(c, gd[1], [gd[2], gd[3]]);
        DlqConv::new(geometry, subspaces, bias).map_err(|e| bad(e.to_string()))
    }

    /// The sparse codes per subspace (`None` for VQ).
    fn codes(
        &self,
        name: &str,
        model: &TypedModel,
        inputs: &[OutletId],
        s_count: usize,
    ) -> TractResult<Option<Vec<Codes>>> {
        let Some((id, idx)) = self.constant::<u32>(name, model, inputs, 2, "atom_indices")? else {
            return Ok(None);
        };
        let (cd, coef) = self
            .constant::<f32>(name, model, inputs, 3, "coefficients")?
            .expect("checked by the builder");
        if id.len() != 3 || id[0] != s_count || cd != id || id[2] == 0 {
            bail!(
                "DlqConv node `{name}`: atom_indices {id:?} and coefficients {cd:?} must both be [{s_count}, K, alpha]"
            );
        }
        let per_sub = id[1] * id[2];
        Ok(Some(
            (0..s_count)
                .map(|s| Codes {
                    alpha: id[2],
                    atoms: idx[s * per_sub..][..per_sub].to_vec(),
                    coefficients: coef[s * per_sub..][..per_sub].to_vec(),
                })
                .collect(),
        ))
    }
}

impl Expansion for DlqConvExpansion {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.slots.iter().flatten().count())?;
        check_output_arity(outputs, 1)?;
        let assignment = &inputs[self.slots[4].expect("required")];
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].rank, 4)?;
        s.equals(&assignment.rank, 4)?;
        s.equals(&outputs[0].rank, 4)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], &assignment.shape[1])?;
        let this = self.clone();
        s.given_2(&inputs[0].shape, &assignment.shape, move |s, x, a| {
            let dims = [&x[2], &x[3], &a[2], &a[3]].map(|d| d.to_usize().ok());
            if let [Some(h), Some(w), Some(kh), Some(kw)] = dims {
                let geometry = this.geometry(1, 1, [kh, kw]);
                if let Some([oh, ow]) = geometry.output_size(h, w) {
                    s.equals(&outputs[0].shape[2], oh.to_dim())?;
                    s.equals(&outputs[0].shape[3], ow.to_dim())?;
                }
            }
            Ok(())
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let conv = self.kernel(prefix, model, inputs)?;
        let op = DlqConvOp {
            name: prefix.to_string(),
            conv: Arc::new(conv),
        };
        model.wire_node(prefix, op, &[inputs[0]])
    }
}

/// The typed op: the validated kernel applied to X.
#[derive(Debug, Clone)]
struct DlqConvOp {
    name: String,
    conv: Arc<DlqConv>,
}

impl PartialEq for DlqConvOp {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.conv == other.conv
    }
}

// Every float in a validated `DlqConv` is finite, so equality is reflexive.
impl Eq for DlqConvOp {}

impl DlqConvOp {
    fn output_hw(&self, h: usize, w: usize) -> TractResult<[usize; 2]> {
        self.conv.geometry().output_size(h, w).ok_or_else(|| {
            format_err!(
                "DlqConv node `{}`: no output for a {h}×{w} input (the dilated kernel does not fit)",
                self.name
            )
        })
    }
}

impl Op for DlqConvOp {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    op_as_typed_op!();
}

impl EvalOp for DlqConvOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let dt = x.datum_type();
        let shape = x.shape();
        if shape.len() != 4 {
            bail!("DlqConv node `{}`: input has shape {shape:?}", self.name);
        }
        let (b, h, w) = (shape[0], shape[2], shape[3]);
        let [oh, ow] = self.output_hw(h, w)?;
        let m = self.conv.geometry().out_channels;
        let x32 = x.cast_to::<f32>()?;
        let view = x32.to_plain_array_view::<f32>()?;
        let flat: Vec<f32>;
        let slice = match view.as_slice() {
            Some(s) => s,
            None => {
                flat = view.iter().copied().collect();
                &flat
            }
        };
        let mut out = vec![0.0f32; b * m * oh * ow];
        self.conv
            .run(slice, b, h, w, &mut out)
            .map_err(|e| format_err!("DlqConv node `{}`: {e}", self.name))?;
        let y = Tensor::from_shape(&[b, m, oh, ow], &out)?;
        Ok(tvec!(y.cast_to_dt(dt)?.into_owned().into_tvalue()))
    }
}

impl TypedOp for DlqConvOp {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        if x.rank() != 4 {
            bail!("DlqConv node `{}`: input has rank {}", self.name, x.rank());
        }
        let known = |i: usize| {
            x.shape[i].to_usize().map_err(|_| {
                format_err!(
                    "DlqConv node `{}`: the input's spatial size must be known",
                    self.name
                )
            })
        };
        let [oh, ow] = self.output_hw(known(2)?, known(3)?)?;
        let m = self.conv.geometry().out_channels;
        let dims = [x.shape[0].clone(), m.to_dim(), oh.to_dim(), ow.to_dim()];
        Ok(tvec!(x.datum_type.fact(&dims)))
    }
}
