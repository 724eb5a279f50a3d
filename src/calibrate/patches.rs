//! A layer's input *patches* on the calibration images: everything one output value depends on
//! (N channels × kh × kw positions), as the refit needs it. `InputStats` keeps only channel ×
//! channel moments; the refit also sees how neighbouring positions correlate, and how the
//! converted model's patches relate to the original model's (the error earlier layers left).
//!
//! For every output position of every image, p is the original model's patch and p̃ the patch of
//! the model whose earlier layers are already converted; the sums Σp, Σp̃, Σppᵀ, Σpp̃ᵀ, Σp̃p̃ᵀ
//! are accumulated in f64 (per image in f32 by one GEMM, then in input order, so the result does
//! not depend on the thread count).

use anyhow::{ensure, Context, Result};
use ndarray::{Array2, ArrayD, ArrayView3, Ix3};

use crate::analysis::select::ConvLayer;
use crate::engine::{self, Engine};
use crate::onnx::model::OnnxModel;

use super::stats::fold_in_order;
use super::InputStats;

/// Patch dimensions above this are not collected (the three D × D f64 matrices would pass
/// 3 × 170 MB at D = 4608, a 512-channel 3 × 3 layer): such layers keep their un-refitted
/// codebook, and the conversion says so.
pub const MAX_PATCH_DIM: usize = 2304;

/// Patch values (positions × D) im2col lays out at once: a high-resolution image's patches are
/// taken a block of output rows at a time (a 720×720 input to a 32-channel 3 × 3 layer has 155 M
/// of them, 600 MB as one matrix per model and per image in flight).
const PATCH_BLOCK: usize = 1 << 24;

/// Where a Conv's patches come from: its kernel size, strides, dilations and resolved pads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchGeometry {
    pub channels: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// (begin, end) per spatial axis.
    pub pads: [(usize, usize); 2],
}

impl PatchGeometry {
    /// The geometry of `layer` (2-D, eligible) on inputs of spatial size `in_hw`.
    pub fn of(layer: &ConvLayer, in_hw: [usize; 2]) -> Result<PatchGeometry> {
        let attrs = layer
            .attrs
            .as_ref()
            .with_context(|| format!("layer `{}` has no readable attributes", layer.name))?;
        let kernel = layer
            .kernel
            .as_ref()
            .with_context(|| format!("layer `{}` has no constant kernel", layer.name))?;
        ensure!(
            kernel.len() == 4 && attrs.strides.len() == 2 && attrs.group == 1,
            "layer `{}`: patches are collected for 2-D convolutions with group 1",
            layer.name
        );
        let pads = attrs.resolved_pads(&in_hw, &kernel[2..]);
        Ok(PatchGeometry {
            channels: kernel[1],
            kernel: [kernel[2], kernel[3]],
            strides: [attrs.strides[0], attrs.strides[1]],
            dilations: [attrs.dilations[0], attrs.dilations[1]],
            pads: [pads[0], pads[1]],
        })
    }

    /// D = N·kh·kw, the patch index of (c, u, v) being (c·kh + u)·kw + v, as in a flattened
    /// [M, N, kh, kw] kernel row.
    pub fn dim(&self) -> usize {
        self.channels * self.kernel[0] * self.kernel[1]
    }

    fn output_size(&self, in_hw: [usize; 2]) -> [usize; 2] {
        let axis = |i: usize| {
            let span = self.dilations[i] * (self.kernel[i] - 1) + 1;
            let padded = in_hw[i] + self.pads[i].0 + self.pads[i].1;
            if padded < span {
                0
            } else {
                (padded - span) / self.strides[i] + 1
            }
        };
        [axis(0), axis(1)]
    }

    /// Every patch of one image [N, H, W] as the rows of a [positions, D] matrix (zeros where
    /// a patch reaches into the padding).
    pub fn im2col(&self, x: ArrayView3<f32>) -> Array2<f32> {
        let (_, h, w) = x.dim();
        self.im2col_rows(x, 0..self.output_size([h, w])[0])
    }

    /// The output rows of one image, `block` values or fewer at a time (one block for
    /// every image up to about 16 M patch values, so that those sum exactly as one matrix).
    fn row_blocks(&self, in_hw: [usize; 2], block: usize) -> Vec<std::ops::Range<usize>> {
        let [oh, ow] = self.output_size(in_hw);
        let per_row = (ow * self.dim()).max(1);
        let rows = (block / per_row).clamp(1, oh.max(1));
        (0..oh)
            .step_by(rows)
            .map(|r| r..(r + rows).min(oh))
            .collect()
    }

    /// The patches of output rows `rows` of one image, as [`PatchGeometry::im2col`] lays them.
    fn im2col_rows(&self, x: ArrayView3<f32>, rows: std::ops::Range<usize>) -> Array2<f32> {
        let (n, h, w) = x.dim();
        debug_assert_eq!(n, self.channels);
        let [_, ow] = self.output_size([h, w]);
        let [kh, kw] = self.kernel;
        let first = rows.start;
        let mut cols = Array2::<f32>::zeros((rows.len() * ow, self.dim()));
        for oy in rows {
            for ox in 0..ow {
                let mut row = cols.row_mut((oy - first) * ow + ox);
                for u in 0..kh {
                    let y = (oy * self.strides[0] + u * self.dilations[0]) as isize
                        - self.pads[0].0 as isize;
                    if y < 0 || y >= h as isize {
                        continue;
                    }
                    for v in 0..kw {
                        let xx = (ox * self.strides[1] + v * self.dilations[1]) as isize
                            - self.pads[1].0 as isize;
                        if xx < 0 || xx >= w as isize {
                            continue;
                        }
                        for c in 0..n {
                            row[(c * kh + u) * kw + v] = x[[c, y as usize, xx as usize]];
                        }
                    }
                }
            }
        }
        cols
    }
}

/// Patch moments of one layer: original (p) and converted-model (p̃) patches.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchStats {
    pub dim: usize,
    pub positions: u64,
    sum_original: Vec<f64>,
    sum_converted: Vec<f64>,
    /// Σ p pᵀ, Σ p p̃ᵀ, Σ p̃ p̃ᵀ.
    original: Array2<f64>,
    cross: Array2<f64>,
    converted: Array2<f64>,
}

fn image(x: &ArrayD<f32>, i: usize) -> Result<ArrayView3<'_, f32>> {
    Ok(x.index_axis(ndarray::Axis(0), i)
        .into_dimensionality::<Ix3>()?)
}

fn gram(a: &Array2<f32>, b: &Array2<f32>) -> Array2<f64> {
    a.t().dot(b).mapv(|v| v as f64)
}

fn column_sums(a: &Array2<f32>) -> Vec<f64> {
    let mut s = vec![0f64; a.ncols()];
    for row in a.rows() {
        for (acc, &v) in s.iter_mut().zip(row) {
            *acc += v as f64;
        }
    }
    s
}

impl PatchStats {
    /// The moments of one batch of activations [B, N, H, W] (original and converted model).
    pub fn of(original: &ArrayD<f32>, converted: &ArrayD<f32>, g: &PatchGeometry) -> Result<Self> {
        ensure!(
            original.shape() == converted.shape() && original.ndim() == 4,
            "layer inputs of shapes {:?} and {:?}: expected two equal [batch, channels, H, W]",
            original.shape(),
            converted.shape()
        );
        let same = original == converted;
        let mut s = PatchStats::zeros(g.dim());
        let blocks = g.row_blocks([original.shape()[2], original.shape()[3]], PATCH_BLOCK);
        for i in 0..original.shape()[0] {
            let (xc, xo) = (image(converted, i)?, image(original, i)?);
            for rows in &blocks {
                let pc = g.im2col_rows(xc, rows.clone());
                let po = (!same).then(|| g.im2col_rows(xo, rows.clone()));
                s.add_patches(po.as_ref(), &pc);
            }
        }
        Ok(s)
    }

    /// Adds the moments of one block of patches: the original model's `po` (`None` when they
    /// are the converted model's `pc`).
    fn add_patches(&mut self, po: Option<&Array2<f32>>, pc: &Array2<f32>) {
        let converted_gram = gram(pc, pc);
        let (cross, original_gram) = match po {
            None => (converted_gram.clone(), converted_gram.clone()),
            Some(po) => (gram(po, pc), gram(po, po)),
        };
        self.positions += pc.nrows() as u64;
        let sum_c = column_sums(pc);
        let sum_o = po.map_or_else(|| sum_c.clone(), column_sums);
        self.add(&sum_o, &sum_c, &original_gram, &cross, &converted_gram);
    }

    fn zeros(d: usize) -> PatchStats {
        PatchStats {
            dim: d,
            positions: 0,
            sum_original: vec![0.0; d],
            sum_converted: vec![0.0; d],
            original: Array2::zeros((d, d)),
            cross: Array2::zeros((d, d)),
            converted: Array2::zeros((d, d)),
        }
    }

    fn add(&mut self, so: &[f64], sc: &[f64], o: &Array2<f64>, x: &Array2<f64>, c: &Array2<f64>) {
        self.sum_original
            .iter_mut()
            .zip(so)
            .for_each(|(a, b)| *a += b);
        self.sum_converted
            .iter_mut()
            .zip(sc)
            .for_each(|(a, b)| *a += b);
        self.original += o;
        self.cross += x;
        self.converted += c;
    }

    pub fn merge(&mut self, other: &PatchStats) {
        assert_eq!(self.dim, other.dim);
        self.positions += other.positions;
        let (so, sc) = (&other.sum_original, &other.sum_converted);
        self.add(so, sc, &other.original, &other.cross, &other.converted);
    }

    fn mean(sum: &[f64], n: u64) -> Vec<f64> {
        sum.iter().map(|s| s / n.max(1) as f64).collect()
    }

    /// E[p], E[p̃].
    pub fn means(&self) -> (Vec<f64>, Vec<f64>) {
        (
            Self::mean(&self.sum_original, self.positions),
            Self::mean(&self.sum_converted, self.positions),
        )
    }

    /// E[(a − E a)(b − E b)ᵀ] from Σabᵀ.
    fn centred(&self, products: &Array2<f64>, ma: &[f64], mb: &[f64]) -> Array2<f64> {
        let n = self.positions.max(1) as f64;
        Array2::from_shape_fn(products.dim(), |(i, j)| {
            products[[i, j]] / n - ma[i] * mb[j]
        })
    }

    /// The covariances Cov(p, p), Cov(p, p̃), Cov(p̃, p̃).
    pub fn covariances(&self) -> [Array2<f64>; 3] {
        let (mo, mc) = self.means();
        [
            self.centred(&self.original, &mo, &mo),
            self.centred(&self.cross, &mo, &mc),
            self.centred(&self.converted, &mc, &mc),
        ]
    }
}

/// Runs the original and the partly converted model (`None`: nothing converted yet, the
/// original) in `engine` on every input with `layer`'s input exposed, and returns the converted
/// model's channel statistics and both models' patch statistics (`None` when the patches are
/// longer than [`MAX_PATCH_DIM`]).
pub fn collect(
    engine: Engine,
    original: &OnnxModel,
    converted: Option<&OnnxModel>,
    inputs: &[ArrayD<f32>],
    layer: &ConvLayer,
) -> Result<(InputStats, Option<PatchStats>)> {
    ensure!(!inputs.is_empty(), "no calibration inputs");
    let tensor = [layer.input.clone()];
    let shape = inputs[0].shape();
    let run_original = engine::prepare_with_outputs(engine, original, shape, &tensor)?;
    let run_converted = converted
        .map(|m| engine::prepare_with_outputs(engine, m, shape, &tensor))
        .transpose()?;
    let one_input = |x: &ArrayD<f32>| -> Result<(InputStats, Option<PatchStats>)> {
        let c = match &run_converted {
            Some(r) => layer.input_view(r.run(x)?)?,
            None => layer.input_view(run_original.run(x)?)?,
        };
        let channels = InputStats::of(&c)?;
        ensure!(c.ndim() == 4, "layer input of shape {:?}", c.shape());
        let g = PatchGeometry::of(layer, [c.shape()[2], c.shape()[3]])?;
        if g.dim() > MAX_PATCH_DIM {
            return Ok((channels, None));
        }
        let o = match &run_converted {
            Some(_) => layer.input_view(run_original.run(x)?)?,
            None => c.clone(),
        };
        Ok((channels, Some(PatchStats::of(&o, &c, &g)?)))
    };
    let merge = |(tc, tp): &mut (InputStats, Option<PatchStats>), (c, p): (_, Option<_>)| {
        tc.merge(&c);
        if let (Some(tp), Some(p)) = (tp.as_mut(), p.as_ref()) {
            tp.merge(p);
        }
    };
    fold_in_order(
        inputs,
        2 * rayon::current_num_threads().max(1),
        one_input,
        merge,
    )
    .with_context(|| format!("collecting the patches of layer `{}`", layer.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    /// Blocks of output rows cover every row once, and their patches stacked are the image's.
    #[test]
    fn row_blocks_tile_the_image_patches() {
        let x = Array3::from_shape_fn((2, 7, 6), |(c, y, x)| (c * 100 + y * 10 + x) as f32);
        let g = PatchGeometry {
            channels: 2,
            kernel: [3, 2],
            strides: [2, 1],
            dilations: [1, 2],
            pads: [(1, 1), (0, 2)],
        };
        let whole = g.im2col(x.view());
        // One output row holds 6 positions × 12 values: blocks of 2, 1 and all rows.
        for (block, count) in [(150, 2), (10, 4), (1 << 24, 1)] {
            let blocks = g.row_blocks([7, 6], block);
            assert_eq!(blocks.len(), count, "{block}: {blocks:?}");
            let parts: Vec<Array2<f32>> = blocks
                .into_iter()
                .map(|r| g.im2col_rows(x.view(), r))
                .collect();
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            assert_eq!(
                ndarray::concatenate(ndarray::Axis(0), &views).unwrap(),
                whole
            );
        }
    }

    /// im2col against the direct formula: every row is the patch a Conv output value reads.
    #[test]
    fn im2col_rows_are_the_patches_of_a_strided_dilated_padded_conv() {
        let x = Array3::from_shape_fn((2, 5, 6), |(c, y, x)| (c * 100 + y * 10 + x) as f32);
        let g = PatchGeometry {
            channels: 2,
            kernel: [3, 2],
            strides: [2, 1],
            dilations: [1, 2],
            pads: [(1, 0), (0, 2)],
        };
        let cols = g.im2col(x.view());
        let [oh, ow] = g.output_size([5, 6]);
        assert_eq!([oh, ow], [2, 6]);
        assert_eq!(cols.dim(), (12, 12));
        for oy in 0..oh {
            for ox in 0..ow {
                for c in 0..2 {
                    for u in 0..3 {
                        for v in 0..2 {
                            let y = (oy * 2 + u) as isize - 1;
                            let xx = (ox + v * 2) as isize;
                            let want = if (0..5).contains(&y) && (0..6).contains(&xx) {
                                x[[c, y as usize, xx as usize]]
                            } else {
                                0.0
                            };
                            assert_eq!(cols[[oy * ow + ox, (c * 3 + u) * 2 + v]], want);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn covariances_of_identical_models_agree() {
        let x = ArrayD::from_shape_fn(ndarray::IxDyn(&[2, 2, 4, 4]), |i| {
            ((i[0] * 7 + i[1] * 5 + i[2] * 3 + i[3]) % 11) as f32
        });
        let g = PatchGeometry {
            channels: 2,
            kernel: [3, 3],
            strides: [1, 1],
            dilations: [1, 1],
            pads: [(1, 1), (1, 1)],
        };
        let s = PatchStats::of(&x, &x, &g).unwrap();
        assert_eq!(s.positions, 32);
        let [o, c, t] = s.covariances();
        assert_eq!(o, c);
        assert_eq!(c, t);
        // The centre position's channel block is the plain channel covariance.
        let centre = |ch: usize| ch * 9 + 4;
        let stats = InputStats::of(&x).unwrap();
        let h = stats.covariance(0..2);
        for a in 0..2 {
            for b in 0..2 {
                assert!((o[[centre(a), centre(b)]] - h[[a, b]]).abs() < 1e-9);
            }
        }
    }
}
