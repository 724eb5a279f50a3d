//! A model's convolutions with every tensor's shape and every node's cost: what `inspect`,
//! `convert`, `diff` and `verify` all start from.

use anyhow::Result;

use crate::analysis::cost::{self, GraphCost};
use crate::analysis::select::{self, ConvLayer};
use crate::analysis::shapes::{self, InputShape, ShapeMap};
use crate::onnx::model::OnnxModel;

/// Everything `inspect` and later stages need to know about a model's convolutions.
pub struct Inventory {
    pub layers: Vec<ConvLayer>,
    pub shapes: ShapeMap,
    pub cost: GraphCost,
}

pub fn inventory(model: &OnnxModel, input_shapes: &[InputShape]) -> Result<Inventory> {
    let shapes = shapes::infer(model, input_shapes)?;
    let cost = cost::graph_cost(model, &shapes);
    Ok(Inventory {
        layers: select::conv_layers(model),
        shapes,
        cost,
    })
}
