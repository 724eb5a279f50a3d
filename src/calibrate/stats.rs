//! A layer's input statistics on the calibration images: per-channel sums and channel ×
//! channel sums of products over every spatial position, collected in input order by either engine.

use std::ops::Range;

use anyhow::{ensure, Context, Result};
use ndarray::{Array2, ArrayD, Axis, Ix3};

use crate::analysis::select::ConvLayer;
use rayon::prelude::*;

use crate::engine::{self, Engine};
use crate::onnx::model::OnnxModel;

/// Per-channel sums and channel × channel sums of products of a layer's input over every
/// spatial position of every calibration image.
#[derive(Debug, Clone, PartialEq)]
pub struct InputStats {
    pub channels: usize,
    pub positions: u64,
    sum: Vec<f64>,
    /// Row-major channels × channels.
    pub(crate) products: Vec<f64>,
}

impl InputStats {
    pub fn new(channels: usize) -> InputStats {
        InputStats {
            channels,
            positions: 0,
            sum: vec![0.0; channels],
            products: vec![0.0; channels * channels],
        }
    }

    /// Statistics of one activation [B, N, spatial…].
    pub fn of(x: &ArrayD<f32>) -> Result<InputStats> {
        ensure!(
            x.ndim() >= 3,
            "layer input of shape {:?}: expected [batch, channels, spatial…]",
            x.shape()
        );
        let (b, n) = (x.shape()[0], x.shape()[1]);
        let spatial: usize = x.shape()[2..].iter().product();
        let x3 = x
            .view()
            .into_shape_with_order((b, n, spatial))
            .context("layer input is not contiguous")?
            .into_dimensionality::<Ix3>()?;
        let mut s = InputStats::new(n);
        for img in x3.axis_iter(Axis(0)) {
            let gram = img.dot(&img.t());
            for (acc, &g) in s.products.iter_mut().zip(gram.iter()) {
                *acc += g as f64;
            }
            for (c, row) in img.axis_iter(Axis(0)).enumerate() {
                s.sum[c] += row.iter().map(|&v| v as f64).sum::<f64>();
            }
            s.positions += spatial as u64;
        }
        Ok(s)
    }

    pub fn merge(&mut self, other: &InputStats) {
        assert_eq!(self.channels, other.channels);
        self.positions += other.positions;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.products.iter_mut().zip(&other.products) {
            *a += b;
        }
    }

    /// E[x] per channel.
    pub fn mean(&self) -> Vec<f64> {
        let n = self.positions.max(1) as f64;
        self.sum.iter().map(|s| s / n).collect()
    }

    /// E[x xᵀ] over `channels`.
    pub fn second_moment(&self, channels: Range<usize>) -> Array2<f64> {
        let n = self.positions.max(1) as f64;
        let d = channels.len();
        Array2::from_shape_fn((d, d), |(i, j)| {
            self.products[(channels.start + i) * self.channels + channels.start + j] / n
        })
    }

    /// E[(x − μ)(x − μ)ᵀ] over `channels`.
    pub fn covariance(&self, channels: Range<usize>) -> Array2<f64> {
        let mean = self.mean();
        let mut h = self.second_moment(channels.clone());
        for i in 0..channels.len() {
            for j in 0..channels.len() {
                h[[i, j]] -= mean[channels.start + i] * mean[channels.start + j];
            }
        }
        h
    }
}

/// Runs `model` in `engine` with `layer`'s input exposed on every input and sums its
/// statistics as the layer's Conv view sees it (in input order, so the result does not depend
/// on the thread count).
pub fn collect(
    engine: Engine,
    model: &OnnxModel,
    inputs: &[ArrayD<f32>],
    layer: &ConvLayer,
) -> Result<InputStats> {
    Ok(collect_many(engine, model, inputs, &[layer])?.swap_remove(0))
}

/// [`collect`] for several layers in one pass over the inputs (layers reading one tensor share
/// its statistics).
pub fn collect_many(
    engine: Engine,
    model: &OnnxModel,
    inputs: &[ArrayD<f32>],
    layers: &[&ConvLayer],
) -> Result<Vec<InputStats>> {
    ensure!(!inputs.is_empty(), "no calibration inputs");
    let mut unique: Vec<&ConvLayer> = Vec::new();
    for l in layers {
        if !unique.iter().any(|u| u.input == l.input) {
            unique.push(l);
        }
    }
    unique.sort_by(|a, b| a.input.cmp(&b.input));
    let tensors: Vec<String> = unique.iter().map(|l| l.input.clone()).collect();
    let runner = engine::prepare_with_outputs(engine, model, inputs[0].shape(), &tensors)?;
    let total = fold_in_order(
        inputs,
        4 * rayon::current_num_threads().max(1),
        |x| {
            let outputs = runner.run_all(x)?;
            let views = outputs.into_iter().zip(&unique);
            views
                .map(|(a, l)| InputStats::of(&l.input_view(a)?))
                .collect()
        },
        |t: &mut Vec<InputStats>, s| t.iter_mut().zip(&s).for_each(|(t, s)| t.merge(s)),
    )
    .with_context(|| format!("collecting the statistics of {tensors:?}"))?;
    Ok(layers
        .iter()
        .map(|l| total[tensors.binary_search(&l.input).expect("deduplicated")].clone())
        .collect())
}

/// `map` over every input, in parallel by chunks of `chunk`, the results folded by `merge` in
/// input order: bounded memory (a chunk's results, not every input's), and sums that do not
/// depend on the thread count. `inputs` must not be empty.
pub(crate) fn fold_in_order<T: Send>(
    inputs: &[ArrayD<f32>],
    chunk: usize,
    map: impl Fn(&ArrayD<f32>) -> Result<T> + Sync,
    mut merge: impl FnMut(&mut T, T),
) -> Result<T> {
    ensure!(!inputs.is_empty(), "no calibration inputs");
    let mut total: Option<T> = None;
    for part in inputs.chunks(chunk.max(1)) {
        let results: Vec<T> = part.par_iter().map(&map).collect::<Result<_>>()?;
        for r in results {
            match &mut total {
                None => total = Some(r),
                Some(t) => merge(t, r),
            }
        }
    }
    Ok(total.expect("inputs is not empty"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_means_and_second_moments_over_positions() {
        let x = ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 2, 1, 2]), vec![1.0, 3.0, 2.0, -2.0])
            .unwrap();
        let s = InputStats::of(&x).unwrap();
        assert_eq!(s.positions, 2);
        assert_eq!(s.mean(), vec![2.0, 0.0]);
        let h = s.second_moment(0..2);
        assert_eq!(h[[0, 0]], 5.0);
        assert_eq!(h[[0, 1]], -2.0);
        assert_eq!(h[[1, 1]], 4.0);
        let cov = s.covariance(0..2);
        assert_eq!((cov[[0, 0]], cov[[0, 1]], cov[[1, 1]]), (1.0, -2.0, 4.0));
    }
}
