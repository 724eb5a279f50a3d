//! Quantization parameters: an activation's scale and zero point from its calibrated range, a
//! weight's symmetric per-channel scales, and the int8 / int32 values themselves, as ONNX
//! Runtime's own quantizer computes them (`onnxruntime.quantization.quant_utils`).

use serde::{Deserialize, Serialize};

use crate::proto::tensor_proto::DataType;

/// The element type of quantized activations. ONNX Runtime's x86 int8 kernels are fastest with
/// unsigned activations and signed weights (u8s8), its quantizer's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ActivationType {
    #[default]
    Uint8,
    Int8,
}

impl ActivationType {
    /// A zero point of this type as stored: its tensor's element type and its byte.
    pub fn stored_zero_point(self, zero_point: i32) -> (DataType, u8) {
        match self {
            ActivationType::Uint8 => (DataType::Uint8, zero_point as u8),
            ActivationType::Int8 => (DataType::Int8, zero_point as i8 as u8),
        }
    }

    /// The representable range `[qmin, qmax]`.
    pub fn range(self) -> (i32, i32) {
        match self {
            ActivationType::Uint8 => (0, 255),
            ActivationType::Int8 => (-128, 127),
        }
    }
}

/// An affine quantization `x ≈ scale · (q − zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    pub scale: f32,
    pub zero_point: i32,
}

/// The asymmetric parameters of a tensor observed in `[min, max]`: the range widened to hold 0
/// (so zero padding and ReLU's zeros are exact), spread over the type's whole range.
pub fn activation(min: f32, max: f32, ty: ActivationType) -> Affine {
    let (qmin, qmax) = ty.range();
    let (lo, hi) = (min.min(0.0), max.max(0.0));
    let scale = (hi - lo) / (qmax - qmin) as f32;
    if !(scale.is_finite() && scale > 0.0) {
        // A constant-zero tensor: any scale represents it; 1 keeps the bias scale sane.
        return Affine {
            scale: 1.0,
            zero_point: qmin.max(0).min(qmax),
        };
    }
    let zero_point = (qmin as f32 - lo / scale).round() as i32;
    Affine {
        scale,
        zero_point: zero_point.clamp(qmin, qmax),
    }
}

/// Largest int8 magnitude of a symmetric weight: ±127 keeps the grid symmetric about 0.
pub const WEIGHT_QMAX: f32 = 127.0;

/// Symmetric scales of `values` laid out as `[outer, channels, inner]` along the middle axis:
/// each channel's largest magnitude maps to ±127 (an all-zero channel gets scale 1).
pub fn channel_scales(values: &[f32], outer: usize, channels: usize, inner: usize) -> Vec<f32> {
    let mut peak = vec![0f32; channels];
    for o in 0..outer {
        for c in 0..channels {
            let base = (o * channels + c) * inner;
            for &v in &values[base..base + inner] {
                peak[c] = peak[c].max(v.abs());
            }
        }
    }
    peak.into_iter()
        .map(|p| match p > 0.0 && p.is_finite() {
            true => p / WEIGHT_QMAX,
            false => 1.0,
        })
        .collect()
}

/// `values` (laid out as for [`channel_scales`]) rounded to int8 with each channel's scale.
pub fn quantize_weight(values: &[f32], scales: &[f32], outer: usize, inner: usize) -> Vec<i8> {
    let channels = scales.len();
    let mut q = Vec::with_capacity(values.len());
    for o in 0..outer {
        for (c, &s) in scales.iter().enumerate() {
            let base = (o * channels + c) * inner;
            q.extend(
                values[base..base + inner]
                    .iter()
                    .map(|&v| (v / s).round().clamp(-WEIGHT_QMAX, WEIGHT_QMAX) as i8),
            );
        }
    }
    q
}

/// A bias as int32 in the accumulator's scale (input scale × each channel's weight scale), as
/// ONNX Runtime's integer convolution adds it; returns the values and how many were clamped.
pub fn quantize_bias(bias: &[f32], input_scale: f32, weight_scales: &[f32]) -> (Vec<i32>, usize) {
    let mut clamped = 0;
    let q = bias
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let s = input_scale * weight_scales[i % weight_scales.len()];
            let v = (b / s).round();
            if v.abs() > i32::MAX as f32 {
                clamped += 1;
            }
            v.clamp(i32::MIN as f32, i32::MAX as f32) as i32
        })
        .collect();
    (q, clamped)
}

/// The scales of a quantized bias: input scale × each channel's weight scale.
pub fn bias_scales(input_scale: f32, weight_scales: &[f32], len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| input_scale * weight_scales[i % weight_scales.len()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_range_holds_zero_exactly() {
        let a = activation(-1.0, 3.0, ActivationType::Uint8);
        assert!((a.scale - 4.0 / 255.0).abs() < 1e-7);
        // 0 maps to an integer: dequantized, it is 0 exactly.
        assert_eq!(a.zero_point, 64);
        let relu = activation(0.5, 6.0, ActivationType::Uint8);
        assert_eq!(relu.zero_point, 0, "a non-negative range starts at qmin");
        let signed = activation(0.0, 6.0, ActivationType::Int8);
        assert_eq!(signed.zero_point, -128);
        let zero = activation(0.0, 0.0, ActivationType::Uint8);
        assert_eq!(zero.scale, 1.0);
    }

    #[test]
    fn weights_round_per_channel_and_bias_in_accumulator_scale() {
        // [outer = 1, channels = 2, inner = 3]
        let w = [0.5, -1.0, 0.25, 2.0, 0.0, -0.02];
        let s = channel_scales(&w, 1, 2, 3);
        assert_eq!(s, vec![1.0 / 127.0, 2.0 / 127.0]);
        let q = quantize_weight(&w, &s, 1, 3);
        assert_eq!(q, vec![64, -127, 32, 127, 0, -1]);
        let (b, clamped) = quantize_bias(&[0.1, -0.3], 0.5, &s);
        assert_eq!(clamped, 0);
        assert_eq!(b, vec![25, -38]);
        // Channels along the last axis (a Gemm weight [K, N]).
        let s = channel_scales(&[1.0, -4.0, -2.0, 2.0], 2, 2, 1);
        assert_eq!(s, vec![2.0 / 127.0, 4.0 / 127.0]);
    }
}
