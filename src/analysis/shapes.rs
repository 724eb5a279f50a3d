//! Shapes of every tensor of a model, inferred through tract, so that counts and output sizes
//! work with dynamic batch dimensions and without `value_info`.

use std::collections::HashMap;

use anyhow::{anyhow, Context, Result};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

use crate::onnx::model::OnnxModel;
use crate::setting::{InvalidSetting, Setting};

/// A user-given concrete shape for a model input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputShape {
    /// Input name; `None` when the model has one input.
    pub name: Option<String>,
    pub dims: Vec<usize>,
}

impl std::str::FromStr for InputShape {
    type Err = anyhow::Error;

    /// `NAME=1,3,224,224` or `1,3,224,224`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, dims) = match s.rsplit_once('=') {
            Some((n, d)) => (Some(n.to_string()), d),
            None => (None, s),
        };
        let dims = dims
            .split(',')
            .map(|d| {
                d.trim()
                    .parse::<usize>()
                    .map_err(|_| anyhow!("`{d}` is not a dimension"))
            })
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("input shape `{s}`: expected NAME=D1,D2,... or D1,D2,..."))?;
        Ok(InputShape { name, dims })
    }
}

/// Concrete shapes by tensor name, and what was assumed to get them.
#[derive(Debug, Clone, Default)]
pub struct ShapeMap {
    pub shapes: HashMap<String, Vec<usize>>,
    /// The concrete shape used for each model input.
    pub inputs: Vec<(String, Vec<usize>)>,
    /// Notes such as "batch dimension of `input` taken as 1".
    pub assumptions: Vec<String>,
    /// Inputs kept with dynamic dimensions beyond the batch (no `--input-shape` for them), each
    /// with the dimension that is dynamic: tensors after them have no concrete shape, and what
    /// needs one (counts, latency, random inputs) says so.
    pub dynamic_inputs: Vec<DynamicInput>,
}

/// An input whose shape stays symbolic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicInput {
    pub name: String,
    /// Why it has no concrete shape, e.g. "dynamic dimension `H` on axis 2".
    pub why: String,
}

impl DynamicInput {
    /// "input `x` has a dynamic dimension `H` on axis 2".
    pub fn describe(&self) -> String {
        format!("input `{}` has a {}", self.name, self.why)
    }

    /// The value of `--input-shape` that gives it a size: "x=D1,D2,...".
    pub fn shape_hint(&self) -> String {
        format!("{}=D1,D2,...", self.name)
    }
}

impl ShapeMap {
    pub fn get(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }

    /// The model's one input and its concrete shape, for whatever must run the model on made-up
    /// data; an error asking for `--input-shape` when it is dynamic, or when there are several.
    pub fn sole_concrete_input(&self) -> Result<(&str, &[usize])> {
        if let Some(d) = self.dynamic_inputs.first() {
            let why = format!("is needed: {}; give {}", d.describe(), d.shape_hint());
            return Err(InvalidSetting::new(Setting::InputShape, why).into());
        }
        match self.inputs.as_slice() {
            [(name, dims)] => Ok((name, dims)),
            other => Err(anyhow!(
                "this needs a model with one input, this one has {}",
                other.len()
            )),
        }
    }
}

/// Parses the model with tract, fixes input shapes (user-given, or a symbolic batch dimension
/// taken as 1) and propagates shapes to every tensor tract can reach; the others from ONNX
/// Runtime's shape inference, else from runs on zeros.
pub fn infer(model: &OnnxModel, overrides: &[InputShape]) -> Result<ShapeMap> {
    infer_with(model, overrides, true)
}

/// [`infer`] without running the model: what a check made before running it may use (a
/// converted model in the standard-operator form can need gigabytes for one run).
pub fn infer_without_runs(model: &OnnxModel, overrides: &[InputShape]) -> Result<ShapeMap> {
    infer_with(model, overrides, false)
}

fn infer_with(model: &OnnxModel, overrides: &[InputShape], runs: bool) -> Result<ShapeMap> {
    let parsed = crate::engine::runner::parse(model)?;
    let mut tm = parsed.model;
    let mut map = ShapeMap::default();

    let input_names: Vec<String> = tm
        .input_outlets()?
        .iter()
        .map(|o| tm.node(o.node).name.clone())
        .collect();
    check_overrides(overrides, &input_names)?;
    for (ix, name) in input_names.iter().enumerate() {
        let fact = tm.input_fact(ix)?.clone();
        let given = overrides
            .iter()
            .find(|o| o.name.as_deref().is_none_or(|n| n == name));
        let mut new_fact = match input_dims(name, &fact, given, &mut map.assumptions)? {
            InputDims::Concrete(dims) => {
                map.inputs.push((name.clone(), dims.clone()));
                fact.clone().with_shape(dims)
            }
            InputDims::Symbolic(dims, why) => {
                let d = DynamicInput {
                    name: name.clone(),
                    why,
                };
                map.assumptions.push(format!(
                    "{}: the conversion works at any size; figures that need the size are unknown ({} {} gives them)",
                    d.describe(),
                    crate::setting::name(crate::setting::Setting::InputShape),
                    d.shape_hint()
                ));
                map.dynamic_inputs.push(d);
                fact.clone().with_shape(dims)
            }
        };
        if new_fact.datum_type.concretize().is_none() {
            new_fact = new_fact.with_datum_type(DatumType::F32);
        }
        tm.set_input_fact(ix, new_fact)?;
    }
    // Obstinate: keep what can be inferred even if an exotic node somewhere cannot be.
    crate::engine::runner::guarded(&model.path, || {
        let _ = tm.analyse(true);
        Ok(())
    })?;
    for (name, outlet) in &parsed.outlets_by_name {
        if let Ok(fact) = tm.outlet_fact(*outlet) {
            if let Ok(Some(dims)) = fact.shape.as_concrete_finite() {
                map.shapes.insert(name.clone(), dims.to_vec());
            }
        }
    }
    fill_from_onnx_runtime(model, &mut map, runs);
    Ok(map)
}

/// The shapes tract could not infer (operators it does not know, say), from one run of the
/// model in ONNX Runtime on zeros, when every input is concrete and ONNX Runtime is there; a
/// note says where they came from, or that they stay unknown and why.
fn fill_from_onnx_runtime(model: &OnnxModel, map: &mut ShapeMap, runs: bool) {
    let missing: Vec<String> = model
        .graph()
        .node
        .iter()
        .flat_map(|n| &n.output)
        .filter(|o| !o.is_empty() && !map.shapes.contains_key(o.as_str()))
        .cloned()
        .collect();
    let ([(_, dims)], []) = (map.inputs.as_slice(), map.dynamic_inputs.as_slice()) else {
        return;
    };
    if missing.is_empty() {
        return;
    }
    let shown = format!(
        "tract could not infer the shapes of {} tensors (`{}`, …)",
        missing.len(),
        missing[0]
    );
    let found = crate::engine::ort::runtime().and_then(|(_, version)| {
        let shapes = crate::engine::ort::tensor_shapes(model, dims, &missing, runs)?;
        Ok((version, shapes))
    });
    match found {
        Ok((version, shapes)) => {
            map.assumptions.push(format!(
                "{shown}: {} of them come from ONNX Runtime {version} ({})",
                shapes.len(),
                match runs {
                    true => "its shape inference, else runs on zeros",
                    false => "its shape inference",
                }
            ));
            map.shapes.extend(shapes);
        }
        Err(e) => map
            .assumptions
            .push(format!("{shown}; they stay unknown: {e:#}")),
    }
}

/// The float32 bytes of a model's tensors at one input shape, as a memory check counts them:
/// activations (one set per run) apart from weights (held once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorBytes {
    pub activations: u64,
    pub weights: u64,
}

/// [`TensorBytes`] of `model` (one input) at `input`, from shapes found without running it;
/// `None` when they cannot be inferred. Tensors left unsized are not counted.
pub fn tensor_bytes_at(model: &OnnxModel, input: &[usize]) -> Option<TensorBytes> {
    let fixed = [InputShape {
        name: None,
        dims: input.to_vec(),
    }];
    let shapes = infer_without_runs(model, &fixed).ok()?.shapes;
    let (weights, activations): (HashMap<_, _>, HashMap<_, _>) = shapes
        .into_iter()
        .partition(|(name, _)| model.initializer(name).is_some());
    Some(TensorBytes {
        activations: crate::engine::memory::tensors_bytes(&activations),
        weights: crate::engine::memory::tensors_bytes(&weights),
    })
}

/// Every `--input-shape` names an input of the model (or the model has one input).
fn check_overrides(overrides: &[InputShape], input_names: &[String]) -> Result<()> {
    for o in overrides {
        let why = match &o.name {
            Some(n) if !input_names.contains(n) => format!(
                "names `{n}`, but the model's inputs are {}",
                quoted(input_names)
            ),
            None if input_names.len() != 1 => format!(
                "without a name needs a model with one input; this one has {}",
                quoted(input_names)
            ),
            _ => continue,
        };
        return Err(InvalidSetting::new(Setting::InputShape, why).into());
    }
    Ok(())
}

/// An input's dimensions for inference: all concrete, or some symbolic (with why).
enum InputDims {
    Concrete(Vec<usize>),
    Symbolic(Vec<TDim>, String),
}

/// The dimensions of input `name`: the user's, or the model's with a symbolic batch dimension
/// taken as 1 (recorded in `assumptions`); other dynamic dimensions stay symbolic.
fn input_dims(
    name: &str,
    fact: &InferenceFact,
    given: Option<&InputShape>,
    assumptions: &mut Vec<String>,
) -> Result<InputDims> {
    if let Some(given) = given {
        if let Some(rank) = fact.shape.concretize().map(|s| s.len()) {
            let rank_given = given.dims.len();
            if rank != rank_given {
                let why =
                    format!("for `{name}` has rank {rank_given}, the model expects rank {rank}");
                return Err(InvalidSetting::new(Setting::InputShape, why).into());
            }
        }
        return Ok(InputDims::Concrete(given.dims.clone()));
    }
    let Some(dims) = fact.shape.concretize() else {
        let why = format!("is needed: input `{name}` has no known rank; give {name}=D1,D2,...");
        return Err(InvalidSetting::new(Setting::InputShape, why).into());
    };
    let mut out = Vec::new();
    let mut dynamic = None;
    for (axis, d) in dims.iter().enumerate() {
        match d.to_usize() {
            Ok(v) => out.push(TDim::from(v)),
            Err(_) if axis == 0 => {
                assumptions.push(format!(
                    "batch dimension `{d}` of input `{name}` taken as 1"
                ));
                out.push(TDim::from(1usize));
            }
            Err(_) => {
                dynamic.get_or_insert_with(|| format!("dynamic dimension `{d}` on axis {axis}"));
                out.push(d.clone());
            }
        }
    }
    Ok(match dynamic {
        Some(why) => InputDims::Symbolic(out, why),
        None => InputDims::Concrete(
            out.iter()
                .map(|d| d.to_usize().expect("concrete"))
                .collect(),
        ),
    })
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_shapes_parse_with_and_without_name() {
        let s: InputShape = "data_0=1,3,224,224".parse().unwrap();
        assert_eq!(
            s,
            InputShape {
                name: Some("data_0".into()),
                dims: vec![1, 3, 224, 224]
            }
        );
        let s: InputShape = "2, 3, 8, 8".parse().unwrap();
        assert_eq!(
            s,
            InputShape {
                name: None,
                dims: vec![2, 3, 8, 8]
            }
        );
        assert!("x=1,a".parse::<InputShape>().is_err());
    }
}
