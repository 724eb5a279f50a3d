//! Running a model on CPU through tract: the verifier's engine. Inputs and outputs are `f32`
//! arrays; models with float16 (or other float) inputs are fed casts of them.
//!
//! Float16 models run in f32 inside tract: every f16 tensor and operation is translated to f32
//! (the weights' values are unchanged; only arithmetic is wider). tract's f16 kernels take
//! ~3 s per SqueezeNet image on a CPU without native f16, the f32 path ~20 ms; ONNX Runtime's
//! CPU provider likewise computes most f16 operators in f32.

use anyhow::{anyhow, ensure, Context, Result};
use ndarray::ArrayD;
use prost::Message;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::floats::FloatPrecisionTranslator;
use tract_onnx::tract_hir::infer::Factoid;

use crate::onnx::model::OnnxModel;

pub struct Runner {
    plan: std::sync::Arc<TypedSimplePlan>,
    /// The model's input type: inputs are rounded to it first, as a client would.
    input_type: DatumType,
    /// What the prepared plan takes (f32 for a float16 model, see the module header).
    plan_input_type: DatumType,
    pub input_name: String,
    pub input_shape: Vec<usize>,
}

/// Parses `model` with tract (external data resolved next to the model file), after the
/// structural checks tract relies on. `DlqConv` nodes (the fused form) run onnx-dlq's
/// native kernel ([`super::dlq_op`]).
pub fn parse(model: &OnnxModel) -> Result<tract_onnx::model::ParseResult> {
    crate::onnx::validate::check_structure(model)
        .with_context(|| format!("{}", model.path.display()))?;
    let bytes = model.proto.encode_to_vec();
    let pb = tract_onnx::pb::ModelProto::decode(bytes.as_slice())
        .map_err(|e| anyhow!("tract could not read {}: {e}", model.path.display()))?;
    let dir = model.base_dir.to_string_lossy().into_owned();
    guarded(&model.path, || {
        let mut framework = tract_onnx::onnx();
        framework
            .op_register
            .insert(super::dlq_op::OP_TYPE, super::dlq_op::builder);
        framework
            .parse(&pb, Some(&dir))
            .map_err(|e| anyhow!("tract could not parse {}: {e:#}", model.path.display()))
    })
}

/// Evaluates, once, every node of the compact form's kernel subgraphs (`lower::dense`: nodes
/// named `{layer}/dlq/…` whose inputs are all constants) and puts the resulting constant in its
/// place. tract's own constant propagation skips folds whose output outgrows their inputs
/// (4 MiB budget), which is exactly what rebuilding a dense kernel from a codebook does; left
/// alone, a large layer would rebuild its kernel on every run.
fn fold_compact_kernels(model: &mut TypedModel) -> TractResult<()> {
    // One pass in evaluation order: a fold appends its constant and rewires the successors
    // (existing node ids stay valid), so each successor sees constant inputs by its turn.
    for id in model.eval_order()? {
        if let Some(patch) = fold_patch(model, id)? {
            patch.apply(model)?;
        }
    }
    Ok(())
}

/// The patch replacing node `id` by its value, when it is a foldable compact-kernel node.
fn fold_patch(model: &TypedModel, id: usize) -> TractResult<Option<TypedModelPatch>> {
    use tract_onnx::tract_core::ops::konst::Const;
    let node = model.node(id);
    let facts = model.node_input_facts(id)?;
    let foldable = node.name.contains("/dlq/")
        && !node.op_is::<Const>()
        && !node.inputs.is_empty()
        && node.outputs.len() == 1
        && facts.iter().all(|f| f.konst.is_some());
    if !foldable {
        return Ok(None);
    }
    let inputs = facts
        .iter()
        .map(|f| f.konst.clone().expect("checked").into_tvalue())
        .collect();
    let Some(mut values) = node.op.eval_out_of_plan(inputs)? else {
        return Ok(None);
    };
    let value = values.remove(0).into_arc_tensor();
    let mut patch = TypedModelPatch::default();
    let wire = patch.add_const(&node.name, value)?;
    patch.shunt_outside(model, OutletId::new(id, 0), wire)?;
    Ok(Some(patch))
}

thread_local! {
    static IN_TRACT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether the last panic inside a guarded call was raised in onnx-dlq's own code.
    static OURS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a panic raised at `file` comes from onnx-dlq's own code (this crate or a workspace
/// member such as dlq-kernels): paths relative to the workspace when it is built there, or
/// under this crate's directory when another workspace (the fuzz targets) builds it. Registry
/// crates such as tract live elsewhere.
pub fn raised_in_onnx_dlq(file: &str) -> bool {
    let root = env!("CARGO_MANIFEST_DIR");
    file.starts_with("src/")
        || file.starts_with("crates/")
        || file
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with("/src/") || rest.starts_with("/crates/"))
}

/// Runs a tract call with tract's panics turned into errors naming `path`: tract assumes
/// well-formed graphs, and [`crate::onnx::validate`] cannot foresee every way a file breaks that.
/// tract's panic message goes into the error instead of onto stderr. A panic raised in
/// onnx-dlq's own code during the call (a DlqConv node's decoding, the native kernel) is a bug,
/// not a malformed file: it is printed and re-raised.
pub fn guarded<T>(path: &std::path::Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let ours = info
                .location()
                .is_some_and(|l| raised_in_onnx_dlq(l.file()));
            OURS.with(|o| o.set(ours));
            if ours || !IN_TRACT.with(|t| t.get()) {
                previous(info);
            }
        }));
    });
    let was = IN_TRACT.with(|t| t.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_TRACT.with(|t| t.set(was));
    result.unwrap_or_else(|payload| {
        if OURS.with(|o| o.get()) {
            std::panic::resume_unwind(payload);
        }
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(anyhow!(
            "tract failed on {} (internal error: {msg}); the model is malformed in a way onnx-dlq does not check",
            path.display()
        ))
    })
}

impl Runner {
    /// Optimises `model` for one input of `input_shape` (the model must have exactly one input).
    pub fn new(model: &OnnxModel, input_shape: &[usize]) -> Result<Runner> {
        Runner::with_outputs(model, input_shape, &[])
    }

    /// Like [`Runner::new`], but the plan's outputs are the named tensors (any tensor of the
    /// graph, e.g. a Conv's input) instead of the model's outputs, when `outputs` is not empty.
    pub fn with_outputs(
        model: &OnnxModel,
        input_shape: &[usize],
        outputs: &[String],
    ) -> Result<Runner> {
        let parsed = parse(model)?;
        let mut m = parsed.model;
        if !outputs.is_empty() {
            let outlets = outputs
                .iter()
                .map(|name| {
                    m.find_outlet_label(name)
                        .or_else(|| m.node_by_name(name).ok().map(|n| OutletId::new(n.id, 0)))
                        .with_context(|| format!("tensor `{name}` is not in the model"))
                })
                .collect::<Result<Vec<_>>>()?;
            m.select_output_outlets(&outlets)?;
        }
        let inputs = m.input_outlets()?.to_vec();
        ensure!(
            inputs.len() == 1,
            "the model has {} inputs; onnx-dlq runs models with one input",
            inputs.len()
        );
        let input_name = m.node(inputs[0].node).name.clone();
        let fact = m.input_fact(0)?.clone();
        let input_type = fact.datum_type.concretize().unwrap_or(DatumType::F32);
        m.set_input_fact(0, InferenceFact::dt_shape(input_type, input_shape))?;
        let plan = guarded(&model.path, || {
            m.into_typed()
                .and_then(|mut t| {
                    fold_compact_kernels(&mut t)?;
                    if t.nodes().iter().any(|n| {
                        n.outputs
                            .iter()
                            .any(|o| o.fact.datum_type == DatumType::F16)
                    }) {
                        t.transform(&FloatPrecisionTranslator::new(
                            DatumType::F16,
                            DatumType::F32,
                        ))?;
                    }
                    t.into_optimized()
                })
                .and_then(|t| t.into_runnable())
                .map_err(|e| {
                    anyhow!("tract could not prepare the model for input {input_shape:?}: {e:#}")
                })
        })?;
        let plan_input_type = plan.model().input_fact(0)?.datum_type;
        Ok(Runner {
            plan,
            input_type,
            plan_input_type,
            input_name,
            input_shape: input_shape.to_vec(),
        })
    }

    /// How many operators of each kind the optimised plan runs (tract's op names), e.g. to
    /// check that a constant subgraph was folded away.
    pub fn op_counts(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for node in self.plan.model().nodes() {
            *counts.entry(node.op.name().to_string()).or_insert(0) += 1;
        }
        counts
    }

    /// Runs on `input` and returns the first output as `f32`.
    pub fn run(&self, input: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        let mut outputs = self.run_all(input)?;
        anyhow::ensure!(!outputs.is_empty(), "the model has no outputs");
        Ok(outputs.swap_remove(0))
    }

    /// Runs on `input` and returns every output as `f32`, in order.
    pub fn run_all(&self, input: &ArrayD<f32>) -> Result<Vec<ArrayD<f32>>> {
        ensure!(
            input.shape() == self.input_shape.as_slice(),
            "input shape {:?}, expected {:?}",
            input.shape(),
            self.input_shape
        );
        let t: Tensor = input.clone().into();
        let t = t
            .cast_to_dt(self.input_type)
            .and_then(|t| t.cast_to_dt(self.plan_input_type).map(|t| t.into_owned()))
            .context("casting the input")?;
        let out = self
            .plan
            .run(tvec!(t.into_tvalue()))
            .map_err(|e| anyhow!("tract failed to run the model: {e:#}"))?;
        out.iter()
            .map(|o| {
                let o = o.cast_to::<f32>().context("casting the output")?;
                Ok(o.to_plain_array_view::<f32>()?.to_owned())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic raised inside a dependency (here ndarray's slicing, standing for tract) during a
    /// guarded call is an error naming the file; returning calls are untouched.
    #[test]
    fn a_dependencys_panic_inside_a_guarded_call_is_an_error_naming_the_file() {
        let path = std::path::Path::new("broken.onnx");
        let r: Result<()> = guarded(path, || {
            let a = ndarray::Array1::<f32>::zeros(3);
            let _ = a.slice(ndarray::s![0..10]);
            Ok(())
        });
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("broken.onnx") && e.contains("internal error"),
            "{e}"
        );
        assert_eq!(guarded(path, || Ok(3)).unwrap(), 3);
        assert!(guarded::<()>(path, || Err(anyhow!("plain error"))).is_err());
    }

    /// A panic raised in onnx-dlq's own code during a guarded call is a bug: it is re-raised,
    /// not turned into an error that would pass for a malformed file.
    #[test]
    fn our_own_panic_inside_a_guarded_call_is_re_raised() {
        let path = std::path::Path::new("fine.onnx");
        let caught = std::panic::catch_unwind(|| {
            let _ = guarded::<()>(path, || panic!("a decoding bug"));
        });
        let payload = caught.expect_err("the panic must propagate");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"a decoding bug"));
    }

    #[test]
    fn panics_are_attributed_by_their_source_file() {
        let root = env!("CARGO_MANIFEST_DIR");
        assert!(raised_in_onnx_dlq("src/engine/dlq_op.rs"));
        assert!(raised_in_onnx_dlq("crates/dlq-kernels/src/operator.rs"));
        assert!(raised_in_onnx_dlq(&format!("{root}/src/engine/dlq_op.rs")));
        assert!(!raised_in_onnx_dlq(
            "/root/.cargo/registry/src/index.crates.io-0/tract-core-0.23.9/src/ops/cnn/conv.rs"
        ));
        assert!(!raised_in_onnx_dlq("library/core/src/slice/index.rs"));
    }
}
