//! The builder the lowering wires its subgraphs with: nodes and initializers named
//! `{layer}/dlq/...` (refusing names the model already uses), operator forms chosen by the
//! model's opset, small INT64 constants shared within a layer.

use std::collections::{HashMap, HashSet};

use anyhow::{ensure, Result};

use crate::onnx::build::{attr_int, attr_ints, attr_str};
use crate::onnx::model::OnnxModel;
use crate::onnx::tensor::{self, FloatType};
use crate::proto::{AttributeProto, NodeProto, TensorProto};

/// Emits nodes and initializers named `{layer}/dlq/...`, choosing operator forms by opset.
pub struct Builder<'a> {
    prefix: String,
    pub opset: i64,
    elem: FloatType,
    taken: &'a HashSet<String>,
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
    /// Small INT64 constants (slice bounds, axes, pads) are shared within a layer.
    i64_consts: HashMap<Vec<i64>, String>,
}

impl<'a> Builder<'a> {
    /// A builder for the layer called `prefix`, whose new names must avoid `taken`.
    pub fn new(prefix: &str, opset: i64, elem: FloatType, taken: &'a HashSet<String>) -> Self {
        Builder {
            prefix: prefix.to_string(),
            opset,
            elem,
            taken,
            nodes: vec![],
            inits: vec![],
            i64_consts: HashMap::new(),
        }
    }
}

impl Builder<'_> {
    pub fn name(&self, what: &str) -> Result<String> {
        let n = format!("{}/dlq/{what}", self.prefix);
        ensure!(
            !self.taken.contains(&n),
            "the model already has a tensor or node called `{n}`"
        );
        Ok(n)
    }

    pub fn node(
        &mut self,
        op: &str,
        what: &str,
        inputs: Vec<String>,
        attrs: Vec<AttributeProto>,
    ) -> Result<String> {
        let out = self.name(what)?;
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![out.clone()],
            name: Some(out.clone()),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
        Ok(out)
    }

    pub fn float_init(&mut self, what: &str, shape: &[usize], values: &[f32]) -> Result<String> {
        let n = self.name(what)?;
        self.inits
            .push(tensor::new_tensor(&n, shape, values, self.elem));
        Ok(n)
    }

    /// A float constant stored as float16 when every value is one exactly and the layer's
    /// type is wider (f32, f64), then cast to the layer's type (engines fold the Cast at load);
    /// else as [`Builder::float_init`]. Returns the name of the layer-typed value.
    pub fn narrow_float_init(
        &mut self,
        what: &str,
        shape: &[usize],
        values: &[f32],
    ) -> Result<String> {
        let wider = matches!(self.elem, FloatType::F32 | FloatType::F64);
        if !wider || !crate::codebook::f16_exact(values) {
            return self.float_init(what, shape, values);
        }
        let n = self.name(what)?;
        self.inits
            .push(tensor::new_tensor(&n, shape, values, FloatType::F16));
        let to = self.elem.onnx() as i64;
        self.node(
            "Cast",
            &format!("{what}_float"),
            vec![n],
            vec![crate::onnx::build::attr_int("to", to)],
        )
    }

    /// A float32 constant whatever the layer's element type (in-graph size arithmetic).
    pub fn f32_init(&mut self, what: &str, values: &[f32]) -> Result<String> {
        let n = self.name(what)?;
        self.inits.push(tensor::new_tensor(
            &n,
            &[values.len()],
            values,
            FloatType::F32,
        ));
        Ok(n)
    }

    pub fn i64_init(&mut self, what: &str, values: &[i64]) -> Result<String> {
        if let Some(n) = self.i64_consts.get(values) {
            return Ok(n.clone());
        }
        let n = self.name(what)?;
        self.inits
            .push(tensor::new_i64_tensor(&n, &[values.len()], values));
        self.i64_consts.insert(values.to_vec(), n.clone());
        Ok(n)
    }

    /// Slice on `axes`; `steps` other than 1 need opset 10 (callers subsample otherwise).
    pub fn slice(
        &mut self,
        what: &str,
        x: &str,
        axes: &[i64],
        starts: &[i64],
        ends: &[i64],
        steps: &[i64],
    ) -> Result<String> {
        if self.opset >= 10 {
            let mut inputs = vec![
                x.to_string(),
                self.i64_init(&format!("{what}_starts"), starts)?,
                self.i64_init(&format!("{what}_ends"), ends)?,
                self.i64_init(&format!("{what}_axes"), axes)?,
            ];
            if steps.iter().any(|&s| s != 1) {
                inputs.push(self.i64_init(&format!("{what}_steps"), steps)?);
            }
            self.node("Slice", what, inputs, vec![])
        } else {
            ensure!(
                steps.iter().all(|&s| s == 1),
                "internal: Slice steps need opset 10"
            );
            self.node(
                "Slice",
                what,
                vec![x.to_string()],
                vec![
                    attr_ints("axes", axes),
                    attr_ints("starts", starts),
                    attr_ints("ends", ends),
                ],
            )
        }
    }

    /// ReduceSum over one axis, kept (axes an attribute before opset 13, an input from 13).
    pub fn reduce_sum_kept(&mut self, what: &str, x: &str, axis: i64) -> Result<String> {
        let keep = attr_int("keepdims", 1);
        if self.opset >= 13 {
            let axes = self.i64_init(&format!("{what}_axes"), &[axis])?;
            self.node("ReduceSum", what, vec![x.to_string(), axes], vec![keep])
        } else {
            let axes = attr_ints("axes", &[axis]);
            self.node("ReduceSum", what, vec![x.to_string()], vec![axes, keep])
        }
    }

    /// Zero padding of the two spatial axes: `pads` = [top, left, bottom, right].
    pub fn pad(&mut self, what: &str, x: &str, pads: [i64; 4]) -> Result<String> {
        let full = [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]];
        if self.opset >= 11 {
            let p = self.i64_init(&format!("{what}_pads"), &full)?;
            self.node("Pad", what, vec![x.to_string(), p], vec![])
        } else {
            self.node(
                "Pad",
                what,
                vec![x.to_string()],
                vec![attr_ints("pads", &full), attr_str("mode", "constant")],
            )
        }
    }

    /// Gather along channels; indices are INT32 (every opset allows it) to keep files small.
    pub fn gather(&mut self, what: &str, x: &str, indices: &[i64]) -> Result<String> {
        let idx = self.name(&format!("{what}_indices"))?;
        let narrow: Vec<i32> = indices
            .iter()
            .map(|&i| i32::try_from(i).expect("channel index fits in i32"))
            .collect();
        self.inits
            .push(tensor::new_i32_tensor(&idx, &[narrow.len()], &narrow));
        self.node(
            "Gather",
            what,
            vec![x.to_string(), idx],
            vec![attr_int("axis", 1)],
        )
    }

    pub fn conv1x1(
        &mut self,
        what: &str,
        x: &str,
        weights: &[f32],
        shape: [usize; 4],
        group: usize,
    ) -> Result<String> {
        let w = self.float_init(&format!("{what}_weight"), &shape, weights)?;
        let mut attrs = vec![
            attr_ints("kernel_shape", &[1, 1]),
            attr_ints("strides", &[1, 1]),
            attr_ints("pads", &[0, 0, 0, 0]),
        ];
        if group > 1 {
            attrs.push(attr_int("group", group as i64));
        }
        self.node("Conv", what, vec![x.to_string(), w], attrs)
    }
}

/// Names of every node, tensor and initializer already in the graph.
pub fn taken_names(model: &OnnxModel) -> HashSet<String> {
    let g = model.graph();
    let mut names = HashSet::new();
    for n in &g.node {
        names.extend(n.name.iter().cloned());
        names.extend(n.input.iter().cloned());
        names.extend(n.output.iter().cloned());
    }
    names.extend(g.initializer.iter().filter_map(|t| t.name.clone()));
    names.extend(
        g.input
            .iter()
            .chain(&g.output)
            .chain(&g.value_info)
            .filter_map(|v| v.name.clone()),
    );
    names
}
