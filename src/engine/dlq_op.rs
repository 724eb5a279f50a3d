//! The `DlqConv` custom operator (domain `ai.onnx_dlq`, docs/OPERATOR.md)
//! in tract: [`builder`] is registered in tract's ONNX op register by `runner::parse`. When the
//! model is typed, the node's constant inputs (atoms, codes, assignment, bias) become one
//! validated `dlq_kernels::DlqConv` (an invalid codebook is an error naming the node, never a
//! panic), and the node becomes a typed op running `DlqConv::run` on its input.

use std::sync::Arc;

use dlq_kernels::operator::{
    Attributes, Constant, Inputs, Padding, RawAttributes, DOMAIN, VERSION,
};
use dlq_kernels::DlqConv;
use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// The op_type tract looks the builder up by (tract ignores the node's domain).
pub const OP_TYPE: &str = dlq_kernels::operator::OP_TYPE;

/// The node's checked attributes and which of its six input slots are present.
#[derive(Debug, Clone)]
struct DlqConvExpansion {
    attributes: Attributes,
    /// For each input slot (X, atoms, atom_indices, coefficients, assignment, B), its position
    /// among the node's actual inputs.
    slots: [Option<usize>; 6],
}

/// Reads a `DlqConv` node's attributes (the ONNX op-register builder); the checks are the
/// kernel crate's, shared with the ONNX Runtime library.
pub fn builder(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let name = &node.name;
    let declared = ctx.model.opset_import.iter().find(|o| o.domain == DOMAIN);
    if let Some(version) = declared.map(|o| o.version).filter(|&v| v != VERSION) {
        bail!(
            "DlqConv node `{name}`: the model uses {DOMAIN} version {version}; this onnx-dlq implements version {VERSION}"
        );
    }
    let raw = RawAttributes {
        strides: node.get_attr_opt_vec("strides")?,
        pads: node.get_attr_opt_vec("pads")?,
        dilations: node.get_attr_opt_vec("dilations")?,
        auto_pad: node.get_attr_opt::<String>("auto_pad")?,
        subspace: node.get_attr_opt("subspace")?,
        activation: node.get_attr_opt::<String>("activation")?,
    };
    let attributes = raw
        .check()
        .map_err(|e| format_err!("DlqConv node `{name}`: {e}"))?;
    let slots: Vec<Option<usize>> = optional_inputs(node).take(6).collect();
    let slots: [Option<usize>; 6] = slots.try_into().expect("six slots");
    if slots[0].is_none() || slots[1].is_none() || slots[4].is_none() {
        bail!("DlqConv node `{name}`: inputs X, atoms and assignment are required");
    }
    Ok((expand(DlqConvExpansion { attributes, slots }), vec![]))
}

impl DlqConvExpansion {
    /// The constant value of input slot `slot` as the element type `T`.
    fn constant<T: Datum>(
        &self,
        name: &str,
        model: &TypedModel,
        inputs: &[OutletId],
        slot: usize,
        what: &str,
    ) -> TractResult<Option<Constant<T>>> {
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
        Ok(Some(Constant {
            shape: konst.shape().to_vec(),
            values,
        }))
    }

    /// The validated kernel from the node's constant inputs and X's shape.
    fn kernel(&self, name: &str, model: &TypedModel, inputs: &[OutletId]) -> TractResult<DlqConv> {
        let x = model.outlet_fact(inputs[0])?;
        let bad = |what: String| format_err!("DlqConv node `{name}`: {what}");
        if x.rank() != 4 {
            return Err(bad(format!("input X has rank {}, expected 4", x.rank())));
        }
        let known = |axis: usize, what: &str| {
            x.shape[axis]
                .to_usize()
                .map_err(|_| bad(format!("the {what} of X is not known")))
        };
        let c = known(1, "channel count")?;
        let required = "checked by the builder";
        let inputs = Inputs {
            atoms: self
                .constant(name, model, inputs, 1, "atoms")?
                .expect(required),
            atom_indices: self.constant(name, model, inputs, 2, "atom_indices")?,
            coefficients: self.constant(name, model, inputs, 3, "coefficients")?,
            assignment: self
                .constant(name, model, inputs, 4, "assignment")?
                .expect(required),
            bias: self.constant(name, model, inputs, 5, "B")?,
        };
        let kernel = inputs
            .kernel()
            .ok_or_else(|| bad("input assignment must have rank 4".into()))?;
        // SAME padding depends on the input size: fixed here for X's (typed, known) size, which
        // `DlqConvOp::eval` holds the input to.
        let pads = match self.attributes.padding {
            Padding::Explicit(pads) => pads,
            Padding::Same { .. } => {
                let (h, w) = (known(2, "height")?, known(3, "width")?);
                self.attributes
                    .pads_for(h, w, kernel)
                    .ok_or_else(|| bad("the SAME padding overflows".into()))?
            }
        };
        inputs
            .build(&self.attributes, pads, c)
            .map_err(|e| bad(e.to_string()))
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
                if let Some([oh, ow]) = this.attributes.output_size(h, w, [kh, kw]) {
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
        let x = model.outlet_fact(inputs[0])?;
        let same_for = match self.attributes.padding {
            Padding::Same { .. } => Some([x.shape[2].to_usize()?, x.shape[3].to_usize()?]),
            Padding::Explicit(_) => None,
        };
        let op = DlqConvOp {
            name: prefix.to_string(),
            conv: Arc::new(conv),
            same_for,
            attributes: self.attributes.clone(),
        };
        model.wire_node(prefix, op, &[inputs[0]])
    }
}

/// The typed op: the validated kernel applied to X.
#[derive(Debug, Clone)]
struct DlqConvOp {
    name: String,
    conv: Arc<DlqConv>,
    /// With SAME padding, the input size its pads were computed for.
    same_for: Option<[usize; 2]>,
    /// The node's attributes (for its activation).
    attributes: Attributes,
}

impl PartialEq for DlqConvOp {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.conv == other.conv
            && self.same_for == other.same_for
            && self.attributes == other.attributes
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
        if self.same_for.is_some_and(|hw| hw != [h, w]) {
            bail!(
                "DlqConv node `{}`: SAME padding was set for a {:?} input, got {h}×{w}",
                self.name,
                self.same_for
            );
        }
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
        self.attributes.activate(&mut out);
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
