//! `Geometry`: the shape parameters of one 2-D Conv (group = 1) and the output size they imply,
//! with ONNX's conventions (pads as top, left, bottom, right; dilation spreads the kernel taps).

use crate::error::{checked_product, KernelError};

/// Shape of a 2-D convolution with `group = 1`, in ONNX's conventions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// N, input channels.
    pub in_channels: usize,
    /// M, output channels.
    pub out_channels: usize,
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[vertical, horizontal]`, at least 1.
    pub strides: [usize; 2],
    /// `[vertical, horizontal]`, at least 1.
    pub dilations: [usize; 2],
    /// `[top, left, bottom, right]` zero padding.
    pub pads: [usize; 4],
}

impl Geometry {
    /// Output `[height, width]` for an `h × w` input, or `None` when `h` or `w` is 0, a stride,
    /// dilation or kernel side is 0, the dilated kernel is larger than the padded input, or a size
    /// overflows.
    pub fn output_size(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        let [top, left, bottom, right] = self.pads;
        Some([
            axis(
                h,
                self.kernel[0],
                self.strides[0],
                self.dilations[0],
                top,
                bottom,
            )?,
            axis(
                w,
                self.kernel[1],
                self.strides[1],
                self.dilations[1],
                left,
                right,
            )?,
        ])
    }

    /// `[h + top + bottom, w + left + right]`: the zero-padded plane every kernel tap reads from.
    pub(crate) fn padded_size(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        let [top, left, bottom, right] = self.pads;
        Some([
            h.checked_add(top)?.checked_add(bottom)?,
            w.checked_add(left)?.checked_add(right)?,
        ])
    }

    /// Checks every field that must be at least 1, and that `M · kh · kw` (the assignment length)
    /// fits in `usize`; returns that length.
    pub(crate) fn validate(&self) -> Result<usize, KernelError> {
        let fields = [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("kernel[0]", self.kernel[0]),
            ("kernel[1]", self.kernel[1]),
            ("strides[0]", self.strides[0]),
            ("strides[1]", self.strides[1]),
            ("dilations[0]", self.dilations[0]),
            ("dilations[1]", self.dilations[1]),
        ];
        if let Some((field, _)) = fields.iter().find(|(_, value)| *value == 0) {
            return Err(KernelError::ZeroGeometry { field });
        }
        checked_product(
            &[self.out_channels, self.kernel[0], self.kernel[1]],
            "assignment",
        )
    }
}

/// Output length along one axis: `(n + before + after − (d·(k − 1) + 1)) / s + 1`.
fn axis(n: usize, k: usize, s: usize, d: usize, before: usize, after: usize) -> Option<usize> {
    if n == 0 || k == 0 || s == 0 || d == 0 {
        return None;
    }
    let padded = n.checked_add(before)?.checked_add(after)?;
    let span = d.checked_mul(k - 1)?.checked_add(1)?;
    let room = padded.checked_sub(span)?;
    Some(room / s + 1)
}
