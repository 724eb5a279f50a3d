//! The model's own operators on candle tensors: the part of ONNX the CNNs onnx-dlq converts are
//! made of, run forward and, through candle's autodiff, backward. The converted layers' kernels
//! and biases come in as tensors computed from their codebooks ([`Overrides`]), so gradients
//! reach the codebooks; everything else is a constant. An operator outside this set, or an
//! attribute value it does not handle, is refused when the graph is built, naming the node,
//! before any training.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, D};

use crate::onnx::conv::{attribute, ConvAttrs};
use crate::onnx::model::OnnxModel;
use crate::proto::NodeProto;

/// Kernel and bias of a converted Conv, by node index.
pub type Overrides = HashMap<usize, (Tensor, Tensor)>;

/// A model ready to run on candle tensors.
pub struct Graph {
    nodes: Vec<NodeProto>,
    constants: HashMap<String, Tensor>,
    integers: HashMap<String, Vec<i64>>,
    input: String,
    /// The tensor read as the model's output: the graph output, or the logits feeding a
    /// final Softmax (distillation compares logits).
    output: String,
    opset: i64,
}

/// Operators [`Graph`] runs.
pub const SUPPORTED: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "Div",
    "Dropout",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "Identity",
    "MatMul",
    "MaxPool",
    "Mul",
    "Pad",
    "Relu",
    "Reshape",
    "Slice",
    "Softmax",
    "Sub",
    "Sum",
];

fn node_label(node: &NodeProto, index: usize) -> String {
    format!(
        "node {index} {} `{}`",
        node.op_type.as_deref().unwrap_or("?"),
        node.name.as_deref().unwrap_or("")
    )
}

fn int_attr(node: &NodeProto, name: &str, default: i64) -> i64 {
    attribute(node, name).and_then(|a| a.i).unwrap_or(default)
}

fn float_attr(node: &NodeProto, name: &str, default: f32) -> f32 {
    attribute(node, name).and_then(|a| a.f).unwrap_or(default)
}

fn ints_attr(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attribute(node, name).map(|a| a.ints.clone())
}

pub fn to_tensor(a: &ndarray::ArrayD<f32>) -> Result<Tensor> {
    let data: Vec<f32> = a.iter().copied().collect();
    Ok(Tensor::from_vec(data, a.shape(), &Device::Cpu)?)
}

impl Graph {
    /// Reads `model`'s constants and checks every node is one [`Graph`] runs.
    pub fn new(model: &OnnxModel) -> Result<Graph> {
        let g = model.graph();
        let mut constants = HashMap::new();
        let mut integers = HashMap::new();
        for t in &g.initializer {
            let name = t.name.clone().unwrap_or_default();
            match model.tensor_f32(t) {
                Ok(a) => {
                    constants.insert(name, to_tensor(&a)?);
                }
                Err(_) => {
                    let ints = model
                        .tensor_i64(t)
                        .with_context(|| format!("initializer `{name}`"))?;
                    integers.insert(name, ints);
                }
            }
        }
        for (i, node) in g.node.iter().enumerate() {
            let op = node.op_type.as_deref().unwrap_or("");
            ensure!(
                matches!(node.domain.as_deref(), None | Some("") | Some("ai.onnx"))
                    && SUPPORTED.contains(&op),
                "{}: fine-tuning does not run this operator (it runs {})",
                node_label(node, i),
                SUPPORTED.join(", ")
            );
            if op == "Constant" {
                let t = attribute(node, "value")
                    .and_then(|a| a.t.as_ref())
                    .with_context(|| format!("{}: no tensor `value`", node_label(node, i)))?;
                let out = node.output[0].clone();
                match model.tensor_f32(t) {
                    Ok(a) => {
                        constants.insert(out, to_tensor(&a)?);
                    }
                    Err(_) => {
                        integers.insert(out, model.tensor_i64(t)?);
                    }
                }
            }
        }
        let inputs: Vec<&str> = g
            .input
            .iter()
            .filter_map(|v| v.name.as_deref())
            .filter(|n| !constants.contains_key(*n) && !integers.contains_key(*n))
            .collect();
        ensure!(
            inputs.len() == 1,
            "fine-tuning runs models with one input, this one has {inputs:?}"
        );
        let mut output = g
            .output
            .first()
            .and_then(|o| o.name.clone())
            .context("the model has no output")?;
        if let Some(last) = g.node.iter().find(|n| n.output.first() == Some(&output)) {
            if last.op_type.as_deref() == Some("Softmax") {
                output = last.input[0].clone();
            }
        }
        Ok(Graph {
            nodes: g.node.clone(),
            constants,
            integers,
            input: inputs[0].to_string(),
            output,
            opset: model.default_opset(),
        })
    }

    /// Makes the float initializers `names` trainable: each becomes a candle variable the
    /// graph reads (gradients reach it), returned with its name. A name that is not a float
    /// constant is an error.
    pub fn train_constants(&mut self, names: &[String]) -> Result<Vec<(String, candle_core::Var)>> {
        names
            .iter()
            .map(|n| {
                let t = self
                    .constants
                    .get(n)
                    .with_context(|| format!("`{n}` is not a float initializer"))?;
                let v = candle_core::Var::from_tensor(t)?;
                self.constants.insert(n.clone(), v.as_tensor().clone());
                Ok((n.clone(), v))
            })
            .collect()
    }

    /// The float initializers of the Conv, Gemm and MatMul nodes not in `skip` (node indices):
    /// weights and biases of the layers left original, in node order, each once.
    pub fn layer_constants(&self, skip: &[usize]) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let op = node.op_type.as_deref().unwrap_or("");
            if skip.contains(&i) || !matches!(op, "Conv" | "Gemm" | "MatMul") {
                continue;
            }
            // The weight, and the bias (Conv) or C (Gemm); a MatMul has no bias input.
            let count = if op == "MatMul" { 1 } else { 2 };
            for n in node.input.iter().skip(1).take(count) {
                if self.constants.contains_key(n) && !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
        names
    }

    /// Runs one input forward and backward (the gradient with respect to the input), so that an
    /// operator candle cannot differentiate in this configuration is found before any work.
    pub fn check_backward(&self, x: &ndarray::ArrayD<f32>) -> Result<()> {
        let v = candle_core::Var::from_tensor(&to_tensor(x)?)?;
        let out = self.forward(v.as_tensor(), &Overrides::new())?;
        let grads = out
            .sum_all()?
            .backward()
            .context("fine-tuning cannot differentiate this model")?;
        ensure!(
            grads.get(v.as_tensor()).is_some(),
            "the model's output does not depend on its input"
        );
        Ok(())
    }

    /// The tensor [`Graph::forward`] returns (the logits before a final Softmax).
    pub fn output_name(&self) -> &str {
        &self.output
    }

    /// The output (logits, [batch, values]) for input `x`, the converted layers' kernels and biases taken from
    /// `overrides`.
    pub fn forward(&self, x: &Tensor, overrides: &Overrides) -> Result<Tensor> {
        let mut values: HashMap<&str, Tensor> = HashMap::new();
        values.insert(&self.input, x.clone());
        for (i, node) in self.nodes.iter().enumerate() {
            if node.op_type.as_deref() == Some("Constant") {
                continue;
            }
            let out = self
                .run(i, node, &values, overrides)
                .with_context(|| node_label(node, i))?;
            if node.output[0] == self.output {
                // [batch, classes] whatever trailing unit axes the graph keeps (SqueezeNet's
                // logits are [batch, 1000, 1, 1]): the loss is over the last axis.
                return Ok(if out.rank() > 2 {
                    out.flatten_from(1)?
                } else {
                    out
                });
            }
            values.insert(&node.output[0], out);
        }
        bail!("the graph never computes its output `{}`", self.output)
    }

    fn value<'a>(&'a self, values: &'a HashMap<&str, Tensor>, name: &str) -> Result<&'a Tensor> {
        values
            .get(name)
            .or_else(|| self.constants.get(name))
            .with_context(|| format!("input `{name}` is not a float tensor computed before"))
    }

    fn ints(&self, name: &str) -> Result<&[i64]> {
        self.integers
            .get(name)
            .map(Vec::as_slice)
            .with_context(|| format!("input `{name}` must be a constant integer tensor"))
    }

    /// Integer inputs from `input_index` (opset ≥ `since`) or attribute `name`.
    fn ints_from(&self, node: &NodeProto, input_index: usize, name: &str) -> Option<Vec<i64>> {
        match node.input.get(input_index).filter(|n| !n.is_empty()) {
            Some(n) => self.integers.get(n).cloned(),
            None => ints_attr(node, name),
        }
    }

    fn run(
        &self,
        index: usize,
        node: &NodeProto,
        values: &HashMap<&str, Tensor>,
        overrides: &Overrides,
    ) -> Result<Tensor> {
        let arg = |i: usize| self.value(values, &node.input[i]);
        let op = node.op_type.as_deref().unwrap_or("");
        Ok(match op {
            "Conv" => self.conv(index, node, arg(0)?, values, overrides)?,
            "Relu" => arg(0)?.relu()?,
            "Clip" => self.clip(node, arg(0)?)?,
            "Add" => arg(0)?.broadcast_add(arg(1)?)?,
            "Sub" => arg(0)?.broadcast_sub(arg(1)?)?,
            "Mul" => arg(0)?.broadcast_mul(arg(1)?)?,
            "Div" => arg(0)?.broadcast_div(arg(1)?)?,
            "Sum" => {
                let mut acc = arg(0)?.clone();
                for i in 1..node.input.len() {
                    acc = acc.broadcast_add(arg(i)?)?;
                }
                acc
            }
            "Identity" | "Dropout" => arg(0)?.clone(),
            "GlobalAveragePool" => arg(0)?.mean_keepdim(3)?.mean_keepdim(2)?,
            "MaxPool" | "AveragePool" => pool(node, arg(0)?)?,
            "Concat" => {
                let parts: Vec<&Tensor> = (0..node.input.len()).map(arg).collect::<Result<_>>()?;
                let axis = axis(int_attr(node, "axis", 0), parts[0].rank())?;
                Tensor::cat(&parts, axis)?
            }
            "Flatten" => {
                let x = arg(0)?;
                let a = axis(int_attr(node, "axis", 1), x.rank() + 1)?;
                let outer: usize = x.dims()[..a].iter().product();
                x.reshape((outer, x.elem_count() / outer.max(1)))?
            }
            "Reshape" => reshape(arg(0)?, self.ints(&node.input[1])?)?,
            "Gemm" => gemm(
                node,
                arg(0)?,
                arg(1)?,
                node.input.get(2).map(|_| arg(2)).transpose()?,
            )?,
            "MatMul" => arg(0)?.broadcast_matmul(arg(1)?)?,
            "BatchNormalization" => {
                batch_norm(node, arg(0)?, [arg(1)?, arg(2)?, arg(3)?, arg(4)?])?
            }
            "Softmax" => {
                let x = arg(0)?;
                ensure!(
                    axis(
                        int_attr(node, "axis", if self.opset >= 13 { -1 } else { 1 }),
                        x.rank()
                    )? == x.rank() - 1,
                    "Softmax is run over the last axis only"
                );
                candle_nn::ops::softmax_last_dim(x)?
            }
            "Slice" => self.slice(node, arg(0)?)?,
            "Pad" => self.pad(node, arg(0)?)?,
            _ => bail!("unsupported operator {op}"),
        })
    }

    fn conv(
        &self,
        index: usize,
        node: &NodeProto,
        x: &Tensor,
        values: &HashMap<&str, Tensor>,
        overrides: &Overrides,
    ) -> Result<Tensor> {
        let (w, b) = match overrides.get(&index) {
            Some((w, b)) => (w.clone(), Some(b.clone())),
            None => {
                let w = self.value(values, &node.input[1])?.clone();
                let b = match node.input.get(2).filter(|n| !n.is_empty()) {
                    Some(n) => Some(self.value(values, n)?.clone()),
                    None => None,
                };
                (w, b)
            }
        };
        ensure!(w.rank() == 4 && x.rank() == 4, "2-D convolutions only");
        let attrs = ConvAttrs::from_node(node, 2)?;
        let (kh, kw) = (w.dims()[2], w.dims()[3]);
        let in_hw = [x.dims()[2], x.dims()[3]];
        let pads = attrs.resolved_pads(&in_hw, &[kh, kw]);
        ensure!(
            attrs.strides[0] == attrs.strides[1] && attrs.dilations[0] == attrs.dilations[1],
            "strides {:?} / dilations {:?} differ between the axes",
            attrs.strides,
            attrs.dilations
        );
        let x = x
            .pad_with_zeros(2, pads[0].0, pads[0].1)?
            .pad_with_zeros(3, pads[1].0, pads[1].1)?;
        let y = x.conv2d(&w, 0, attrs.strides[0], attrs.dilations[0], attrs.group)?;
        Ok(match b {
            Some(b) => y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?,
            None => y,
        })
    }

    fn clip(&self, node: &NodeProto, x: &Tensor) -> Result<Tensor> {
        let bound = |i: usize, attr: &str, default: f32| -> Result<f32> {
            match node.input.get(i).filter(|n| !n.is_empty()) {
                Some(n) => Ok(self
                    .constants
                    .get(n)
                    .context("Clip bounds must be constants")?
                    .flatten_all()?
                    .to_vec1::<f32>()?[0]),
                None => Ok(float_attr(node, attr, default)),
            }
        };
        let (lo, hi) = (bound(1, "min", f32::MIN)?, bound(2, "max", f32::MAX)?);
        Ok(x.clamp(lo, hi)?)
    }

    fn slice(&self, node: &NodeProto, x: &Tensor) -> Result<Tensor> {
        let starts = self.ints_from(node, 1, "starts").context("no starts")?;
        let ends = self.ints_from(node, 2, "ends").context("no ends")?;
        let rank = x.rank();
        let axes = self
            .ints_from(node, 3, "axes")
            .unwrap_or_else(|| (0..starts.len() as i64).collect());
        let steps = self
            .ints_from(node, 4, "")
            .unwrap_or_else(|| vec![1; starts.len()]);
        let mut y = x.clone();
        for (((&s, &e), &a), &step) in starts.iter().zip(&ends).zip(&axes).zip(&steps) {
            ensure!(
                step > 0,
                "Slice with step {step}: only positive steps are run"
            );
            let a = axis(a, rank)?;
            let n = y.dims()[a] as i64;
            let clamp = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
            let (s, e) = (clamp(s), clamp(e));
            let picked: Vec<u32> = (s..e).step_by(step as usize).map(|v| v as u32).collect();
            let idx = Tensor::from_vec(picked.clone(), picked.len(), &Device::Cpu)?;
            y = y.index_select(&idx, a)?;
        }
        Ok(y)
    }

    fn pad(&self, node: &NodeProto, x: &Tensor) -> Result<Tensor> {
        let mode = attribute(node, "mode")
            .and_then(|a| a.s.clone())
            .unwrap_or_else(|| b"constant".to_vec());
        ensure!(mode == b"constant", "Pad mode other than constant");
        let pads = self.ints_from(node, 1, "pads").context("no pads")?;
        let value = match node.input.get(2).filter(|n| !n.is_empty()) {
            Some(n) => self
                .constants
                .get(n)
                .context("Pad value must be a constant")?
                .flatten_all()?
                .to_vec1::<f32>()?
                .first()
                .copied()
                .unwrap_or(0.0),
            None => float_attr(node, "value", 0.0),
        };
        ensure!(
            value == 0.0,
            "Pad with value {value}: only zero padding is run"
        );
        let rank = x.rank();
        ensure!(
            pads.len() == 2 * rank,
            "pads has {} values for rank {rank}",
            pads.len()
        );
        let mut y = x.clone();
        for a in 0..rank {
            let (b, e) = (pads[a], pads[a + rank]);
            ensure!(b >= 0 && e >= 0, "negative pads are not run");
            if b > 0 || e > 0 {
                y = y.pad_with_zeros(a, b as usize, e as usize)?;
            }
        }
        Ok(y)
    }
}

fn axis(a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    ensure!(
        (-r..r).contains(&a),
        "axis {a} out of range for rank {rank}"
    );
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

fn reshape(x: &Tensor, shape: &[i64]) -> Result<Tensor> {
    let mut dims: Vec<usize> = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        match s {
            0 => dims.push(x.dims()[i]),
            -1 => {
                infer = Some(i);
                dims.push(1);
            }
            s if s > 0 => dims.push(s as usize),
            s => bail!("Reshape dimension {s}"),
        }
    }
    if let Some(i) = infer {
        let known: usize = dims.iter().product();
        dims[i] = x.elem_count() / known.max(1);
    }
    Ok(x.reshape(dims)?)
}

fn gemm(node: &NodeProto, a: &Tensor, b: &Tensor, c: Option<&Tensor>) -> Result<Tensor> {
    let a = if int_attr(node, "transA", 0) != 0 {
        a.t()?
    } else {
        a.clone()
    };
    let b = if int_attr(node, "transB", 0) != 0 {
        b.t()?
    } else {
        b.clone()
    };
    let (alpha, beta) = (
        float_attr(node, "alpha", 1.0),
        float_attr(node, "beta", 1.0),
    );
    let mut y = a.matmul(&b.contiguous()?)?;
    if alpha != 1.0 {
        y = (y * alpha as f64)?;
    }
    if let Some(c) = c {
        y = y.broadcast_add(&(c * beta as f64)?)?;
    }
    Ok(y)
}

fn batch_norm(node: &NodeProto, x: &Tensor, p: [&Tensor; 4]) -> Result<Tensor> {
    let eps = float_attr(node, "epsilon", 1e-5) as f64;
    let [scale, bias, mean, var] = p;
    let shape = |t: &Tensor| t.reshape((1, t.elem_count(), 1, 1));
    let inv = (var + eps)?.sqrt()?.recip()?;
    let y = x
        .broadcast_sub(&shape(mean)?)?
        .broadcast_mul(&shape(&(inv * scale)?)?)?
        .broadcast_add(&shape(bias)?)?;
    Ok(y)
}

fn pool(node: &NodeProto, x: &Tensor) -> Result<Tensor> {
    let kernel = ints_attr(node, "kernel_shape").context("no kernel_shape")?;
    let strides = ints_attr(node, "strides").unwrap_or_else(|| vec![1, 1]);
    let pads = ints_attr(node, "pads").unwrap_or_default();
    ensure!(
        kernel.len() == 2 && pads.iter().all(|&p| p == 0) && int_attr(node, "ceil_mode", 0) == 0,
        "2-D pooling without padding or ceil_mode is run (kernel {kernel:?}, pads {pads:?})"
    );
    ensure!(
        attribute(node, "auto_pad")
            .and_then(|a| a.s.as_deref())
            .is_none_or(|s| s == b"NOTSET" || s == b"VALID"),
        "pooling with auto_pad SAME is not run"
    );
    let k = (kernel[0] as usize, kernel[1] as usize);
    let s = (strides[0] as usize, strides[1] as usize);
    Ok(match node.op_type.as_deref() {
        // candle differentiates its max_pool2d only when the window equals the stride; the
        // maximum of the k·k strided views differentiates everywhere.
        Some("MaxPool") if k != s => strided_max(x, k, s)?,
        Some("MaxPool") => x.max_pool2d_with_stride(k, s)?,
        _ => x.avg_pool2d_with_stride(k, s)?,
    })
}

/// Max pooling without padding as the maximum of the k·k views x[:, :, u + s·i, v + s·j].
fn strided_max(x: &Tensor, k: (usize, usize), s: (usize, usize)) -> Result<Tensor> {
    let (h, w) = (x.dims()[2], x.dims()[3]);
    ensure!(
        h >= k.0 && w >= k.1,
        "pooling window {k:?} larger than the input {h}×{w}"
    );
    let (oh, ow) = ((h - k.0) / s.0 + 1, (w - k.1) / s.1 + 1);
    let rows = |start: usize, n: usize, step: usize| -> Result<Tensor> {
        let idx: Vec<u32> = (0..n).map(|i| (start + i * step) as u32).collect();
        Ok(Tensor::from_vec(idx, n, &Device::Cpu)?)
    };
    let mut out: Option<Tensor> = None;
    for u in 0..k.0 {
        let xu = x.index_select(&rows(u, oh, s.0)?, 2)?;
        for v in 0..k.1 {
            let view = xu.index_select(&rows(v, ow, s.1)?, 3)?;
            out = Some(match out {
                None => view,
                Some(m) => m.maximum(&view)?,
            });
        }
    }
    Ok(out.expect("a non-empty window"))
}

/// Top-1 of each row of [batch, classes] logits.
pub fn argmax(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1()?)
}
