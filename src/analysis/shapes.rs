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
}

impl ShapeMap {
    pub fn get(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }
}

/// Parses the model with tract, fixes input shapes (user-given, or a symbolic batch dimension
/// taken as 1) and propagates shapes to every tensor tract can reach.
pub fn infer(model: &OnnxModel, overrides: &[InputShape]) -> Result<ShapeMap> {
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
        let dims = input_dims(name, &fact, given, &mut map.assumptions)?;
        let mut new_fact = fact.clone().with_shape(dims.clone());
        if new_fact.datum_type.concretize().is_none() {
            new_fact = new_fact.with_datum_type(DatumType::F32);
        }
        tm.set_input_fact(ix, new_fact)?;
        map.inputs.push((name.clone(), dims));
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
    Ok(map)
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

/// The concrete dimensions of input `name`: the user's, or the model's with a symbolic batch
/// dimension taken as 1 (recorded in `assumptions`).
fn input_dims(
    name: &str,
    fact: &InferenceFact,
    given: Option<&InputShape>,
    assumptions: &mut Vec<String>,
) -> Result<Vec<usize>> {
    let needed = |why: String| -> anyhow::Error {
        InvalidSetting::new(
            Setting::InputShape,
            format!("is needed: {why}; give {name}=D1,D2,..."),
        )
        .into()
    };
    if let Some(given) = given {
        if let Some(rank) = fact.shape.concretize().map(|s| s.len()) {
            let rank_given = given.dims.len();
            if rank != rank_given {
                let why =
                    format!("for `{name}` has rank {rank_given}, the model expects rank {rank}");
                return Err(InvalidSetting::new(Setting::InputShape, why).into());
            }
        }
        return Ok(given.dims.clone());
    }
    let Some(dims) = fact.shape.concretize() else {
        return Err(needed(format!("input `{name}` has no known rank")));
    };
    let mut out = Vec::new();
    for (axis, d) in dims.iter().enumerate() {
        match d.to_usize() {
            Ok(v) => out.push(v),
            Err(_) if axis == 0 => {
                assumptions.push(format!(
                    "batch dimension `{d}` of input `{name}` taken as 1"
                ));
                out.push(1);
            }
            Err(_) => {
                let why = format!("input `{name}` has a dynamic dimension `{d}` on axis {axis}");
                return Err(needed(why));
            }
        }
    }
    Ok(out)
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
