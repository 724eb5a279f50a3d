//! Fully connected layers (`Gemm`, and `MatMul` with a constant 2-D weight) seen as the 1×1
//! convolutions they are: a weight W of M outputs over N inputs is a kernel [M, N, 1, 1], its
//! sub-vectors run along the input dimension (product quantisation), and every later stage
//! (clustering, calibration, lowering) works on that view. [`FcLayout`] says how the node's own
//! weight, transposes, `alpha`, `beta` and `C` map onto it.

use anyhow::{Context, Result};
use ndarray::{Array2, Array4, ArrayD, Ix2, IxDyn};
use serde::Serialize;

use crate::onnx::conv::attribute;
use crate::onnx::model::OnnxModel;
use crate::proto::NodeProto;

/// Which operator a fully connected layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FcOp {
    Gemm,
    MatMul,
}

/// How a fully connected node maps onto its 1×1 Conv view.
#[derive(Debug, Clone, PartialEq)]
pub struct FcLayout {
    pub op: FcOp,
    /// The weight is stored [N, M] (MatMul, Gemm with transB = 0), not [M, N] (transB = 1).
    pub weight_in_by_out: bool,
    /// Gemm's transA: the input is [N, B].
    pub trans_a: bool,
    pub alpha: f32,
    pub beta: f32,
    /// Gemm's C (added as β·C after α·A·B).
    pub c: Option<String>,
}

fn float_attr(node: &NodeProto, name: &str, default: f32) -> f32 {
    attribute(node, name).and_then(|a| a.f).unwrap_or(default)
}

fn flag(node: &NodeProto, name: &str) -> bool {
    attribute(node, name).and_then(|a| a.i).unwrap_or(0) != 0
}

impl FcLayout {
    pub fn of(node: &NodeProto) -> Option<FcLayout> {
        let op = match node.op_type.as_deref() {
            Some("Gemm") => FcOp::Gemm,
            Some("MatMul") => FcOp::MatMul,
            _ => return None,
        };
        let gemm = op == FcOp::Gemm;
        Some(FcLayout {
            op,
            weight_in_by_out: !(gemm && flag(node, "transB")),
            trans_a: gemm && flag(node, "transA"),
            alpha: if gemm {
                float_attr(node, "alpha", 1.0)
            } else {
                1.0
            },
            beta: if gemm {
                float_attr(node, "beta", 1.0)
            } else {
                1.0
            },
            c: node.input.get(2).filter(|c| gemm && !c.is_empty()).cloned(),
        })
    }

    /// The layer's input `x` ([B, N], [N, B] with transA, or MatMul's [..., N]) as the 1×1
    /// Conv view's [B′, N, 1, 1].
    pub fn input_view(&self, x: ArrayD<f32>) -> Result<ArrayD<f32>> {
        let x = match self.trans_a {
            true => x.reversed_axes(),
            false => x,
        };
        let n = *x
            .shape()
            .last()
            .context("a fully connected layer's input has no axes")?;
        let rows = x.len() / n.max(1);
        let x = x.as_standard_layout().into_owned();
        Ok(x.into_shape_with_order(IxDyn(&[rows, n, 1, 1]))?)
    }

    /// The kernel view [M, N, 1, 1] of a stored weight of dimensions `dims`.
    pub fn kernel_dims(&self, dims: &[usize]) -> Option<Vec<usize>> {
        let &[a, b] = dims else { return None };
        let (m, n) = if self.weight_in_by_out {
            (b, a)
        } else {
            (a, b)
        };
        Some(vec![m, n, 1, 1])
    }

    /// The stored weight (`dims`, [N, M] or [M, N]) as the kernel [M, N, 1, 1].
    pub fn weight_as_kernel(&self, weight: ArrayD<f32>) -> Result<Array4<f32>> {
        let w = weight.into_dimensionality::<Ix2>()?;
        let w: Array2<f32> = match self.weight_in_by_out {
            true => w.t().as_standard_layout().into_owned(),
            false => w,
        };
        let (m, n) = w.dim();
        Ok(w.into_shape_with_order((m, n, 1, 1))?)
    }

    /// The kernel [M, N, 1, 1] (row-major values) in the stored weight's layout and dimensions.
    pub fn kernel_as_weight(&self, kernel: &[f32], [m, n]: [usize; 2]) -> (Vec<usize>, Vec<f32>) {
        let w = Array2::from_shape_vec((m, n), kernel.to_vec()).expect("M·N values");
        match self.weight_in_by_out {
            true => (vec![n, m], w.t().iter().copied().collect()),
            false => (vec![m, n], w.into_raw_vec_and_offset().0),
        }
    }

    /// Whether calibration's bias correction (a shift s per output, added before `alpha`) has a
    /// place in the node itself: Gemm folds α·s/β into a constant C (or a new one); MatMul has
    /// no bias, and a C computed at run time or with β = 0 cannot take it.
    pub fn takes_bias_shift(&self, model: &OnnxModel) -> bool {
        match (&self.op, &self.c) {
            (FcOp::MatMul, _) => false,
            (FcOp::Gemm, None) => true,
            (FcOp::Gemm, Some(c)) => self.beta != 0.0 && model.initializer(c).is_some(),
        }
    }

    /// An error unless the layer has a place for calibration's bias shift
    /// ([`FcLayout::takes_bias_shift`]): every form must add it, or none may have it.
    pub fn check_bias_shift(&self, model: &OnnxModel) -> Result<()> {
        anyhow::ensure!(
            self.takes_bias_shift(model),
            "the codebook carries a bias shift, which a {:?} whose bias is absent, computed at run time or scaled by β = 0 has no place for",
            self.op
        );
        Ok(())
    }

    /// Gemm's C with α·s/β added along the output axis (a new C of α·s when it has none, with
    /// β then read as 1): the constant that makes the node add calibration's shift s; an error
    /// when the layer has no place for it ([`FcLayout::check_bias_shift`]).
    pub fn c_with_shift(&self, model: &OnnxModel, shift: &[f32]) -> Result<(Vec<usize>, Vec<f32>)> {
        self.check_bias_shift(model)?;
        let m = shift.len();
        let Some(name) = &self.c else {
            let values = shift.iter().map(|s| self.alpha * s).collect();
            return Ok((vec![m], values));
        };
        let c = model
            .initializer(name)
            .and_then(|t| model.tensor_f32(t).ok())
            .with_context(|| format!("Gemm input C `{name}` is not a readable constant"))?;
        // Broadcast C to the output's trailing shape [rows, M] (rows = 1 unless C has more).
        let rows = if c.ndim() == 2 { c.shape()[0] } else { 1 };
        let wide = c
            .broadcast(if c.ndim() == 2 {
                vec![rows, m]
            } else {
                vec![m]
            })
            .with_context(|| {
                format!(
                    "Gemm input C `{name}` of shape {:?} does not broadcast to [{rows}, {m}]",
                    c.shape()
                )
            })?;
        let dims = wide.shape().to_vec();
        let scale = self.alpha / self.beta;
        let values = wide
            .iter()
            .enumerate()
            .map(|(i, v)| v + scale * shift[i % m])
            .collect();
        Ok((dims, values))
    }
}

/// Points Gemm `node`'s C at `c` (from [`FcLayout::c_with_shift`]); a node that had no C
/// loses its `beta` too, since that C holds α·s for β = 1.
pub fn attach_c(node: &mut NodeProto, c: String) {
    if node.input.get(2).is_none_or(|x| x.is_empty()) {
        node.attribute.retain(|a| a.name.as_deref() != Some("beta"));
    }
    node.input.resize(2, String::new());
    node.input.push(c);
}
