//! `dense_conv`: the reference — a direct, obviously-correct 2-D convolution (group = 1, NCHW)
//! that the fast path is tested against. Speed is not a goal here; clarity is.

use crate::error::{check_len, checked_product, KernelError};
use crate::geometry::Geometry;

/// The read-only operands of one direct convolution, bundled so the per-pixel helper stays small.
struct Direct<'a> {
    image: &'a [f32],
    weight: &'a [f32],
    g: &'a Geometry,
    h: usize,
    w: usize,
}

/// Direct convolution: `out[b, k, oy, ox] = bias[k] + Σ_{c,u,v} x[b, c, iy, ix] · weight[k, c, u, v]`
/// with `iy = oy·sh + u·dh − top`, `ix = ox·sw + v·dw − left`, taps outside the input reading 0.
/// `x` is `[batch, c, h, w]`, `weight` `[M, N, kh, kw]`, `out` `[batch, M, oh, ow]`; returns
/// `[oh, ow]`. Accumulates in f64 so the reference itself contributes almost no rounding error.
// The parameters mirror ONNX Conv's operands one by one; bundling them would hide the reference's
// plainness.
#[allow(clippy::too_many_arguments)]
pub fn dense_conv(
    x: &[f32],
    batch: usize,
    c: usize,
    h: usize,
    w: usize,
    weight: &[f32],
    geometry: &Geometry,
    bias: Option<&[f32]>,
    out: &mut [f32],
) -> Result<[usize; 2], KernelError> {
    let g = geometry;
    g.validate()?;
    if c != g.in_channels {
        return Err(KernelError::ChannelMismatch {
            expected: g.in_channels,
            found: c,
        });
    }
    let [oh, ow] = g.output_size(h, w).ok_or(KernelError::NoOutput { h, w })?;
    let [kh, kw] = g.kernel;
    let weight_len = checked_product(&[g.out_channels, c, kh, kw], "weight")?;
    let image_len = checked_product(&[c, h, w], "input")?;
    let out_image_len = checked_product(&[g.out_channels, oh, ow], "output")?;
    check_len(None, "weight", weight_len, weight.len())?;
    check_len(
        None,
        "input",
        checked_product(&[batch, image_len], "input")?,
        x.len(),
    )?;
    let output_len = checked_product(&[batch, out_image_len], "output")?;
    check_len(None, "output", output_len, out.len())?;
    if let Some(bias) = bias {
        check_len(None, "bias", g.out_channels, bias.len())?;
    }
    for (image, dst) in x
        .chunks_exact(image_len)
        .zip(out.chunks_exact_mut(out_image_len))
    {
        let direct = Direct {
            image,
            weight,
            g,
            h,
            w,
        };
        for (i, value) in dst.iter_mut().enumerate() {
            let (k, oy, ox) = (i / (oh * ow), i / ow % oh, i % ow);
            let start = bias.map_or(0.0, |b| f64::from(b[k]));
            *value = (start + direct.pixel(k, oy, ox)) as f32;
        }
    }
    Ok([oh, ow])
}

impl Direct<'_> {
    /// `Σ_{c,u,v} x[c, iy, ix] · weight[k, c, u, v]` for output pixel (oy, ox) of channel k.
    fn pixel(&self, k: usize, oy: usize, ox: usize) -> f64 {
        let g = self.g;
        let [kh, kw] = g.kernel;
        let [top, left, ..] = g.pads;
        let mut acc = 0.0f64;
        for c in 0..g.in_channels {
            for u in 0..kh {
                // Padded coordinate minus the pad; negative or ≥ h means a zero tap.
                let Some(iy) = (oy * g.strides[0] + u * g.dilations[0]).checked_sub(top) else {
                    continue;
                };
                if iy >= self.h {
                    continue;
                }
                for v in 0..kw {
                    let Some(ix) = (ox * g.strides[1] + v * g.dilations[1]).checked_sub(left)
                    else {
                        continue;
                    };
                    if ix >= self.w {
                        continue;
                    }
                    let xv = self.image[(c * self.h + iy) * self.w + ix];
                    let wv = self.weight[((k * g.in_channels + c) * kh + u) * kw + v];
                    acc += f64::from(xv) * f64::from(wv);
                }
            }
        }
        acc
    }
}
