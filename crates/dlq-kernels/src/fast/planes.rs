//! Plane operations around the look-up adds: whether R is fused into them, the padded copy of
//! a subspace's input, the crop of the padded-width accumulator, and strided adds.

use crate::conv::Subspace;
use crate::simd::{Isa, Phases};

/// The per-call sizes phase 1 and 2 tasks share.
pub(super) struct Layout<'a> {
    pub(super) padded: [usize; 2],
    pub(super) pitch: usize,
    pub(super) stride: usize,
    pub(super) acc_stride: usize,
    pub(super) origins: &'a [usize],
    pub(super) band_rows: usize,
    pub(super) phases: Option<Phases>,
}

/// Whether a DL subspace's look-up adds read Z directly (α fused multiply-adds per tap) instead
/// of a materialised R. Only with SIMD and stride 1. Fusing saves the R phase (K planes of α
/// multiply-adds, written out to L2) and costs α − 1 extra multiply-adds per tap run (M·kh·kw
/// runs, read from the far smaller Z). The factor 1.0 (cost of an R term relative to an extra
/// tap term) was refitted on the benchmark machine after the AVX-512 R and aligned look-up adds:
/// fusing wins on ResNet-20 layer3 at ρ = 4 (extra terms / R terms = 0.67: 0.062 vs 0.071 ms)
/// and loses at ρ = 8 (1.33: 0.058 vs 0.046 ms) and on fire8 at ρ = 10 (1.67: 0.41 vs 0.37 ms).
/// Both choices give the same result to float rounding.
pub(super) fn fuse_representatives(isa: Isa, sub: &Subspace, taps: usize) -> bool {
    let Some(codes) = &sub.codes else {
        return false;
    };
    let extra_terms = (codes.alpha - 1) as f64 * taps as f64;
    isa != Isa::Portable && extra_terms < 1.0 * (codes.alpha * sub.num_representatives()) as f64
}

/// Copies the subspace's input channels into the interior of the zero-padded planes `xs`
/// (rows of `layout.pitch` floats; the borders and the stride's tail are never written, so they
/// stay zero).
pub(super) fn pad_channels(
    sub: &Subspace,
    image: &[f32],
    [h, w]: [usize; 2],
    pads: [usize; 4],
    layout: &Layout,
    xs: &mut [f32],
) {
    let pitch = layout.pitch;
    let [top, left, ..] = pads;
    let channels = &image[sub.channels.start * h * w..sub.channels.end * h * w];
    let planes = xs.chunks_exact_mut(layout.stride);
    for (plane, channel) in planes.zip(channels.chunks_exact(h * w)) {
        for (y, row) in channel.chunks_exact(w).enumerate() {
            match layout.phases {
                None => plane[(top + y) * pitch + left..][..w].copy_from_slice(row),
                // Each column phase takes every sw-th value, written contiguously.
                Some(p) => {
                    let sw = p.strides[1];
                    for phase in 0..sw {
                        // The first column x with (left + x) mod sw = phase.
                        let x0 = (phase + sw - left % sw) % sw;
                        if x0 >= w {
                            continue;
                        }
                        let count = (w - x0).div_ceil(sw);
                        let start = p.at(pitch, top + y, left + x0);
                        let values = row[x0..].iter().step_by(sw);
                        for (d, &value) in plane[start..][..count].iter_mut().zip(values) {
                            *d = value;
                        }
                    }
                }
            }
        }
    }
}

/// Copies the valid `ow` columns of each padded-width accumulator row into the output.
pub(super) fn crop(
    acc: &[f32],
    acc_stride: usize,
    wp: usize,
    dst: &mut [f32],
    [oh, ow]: [usize; 2],
) {
    let planes = dst
        .chunks_exact_mut(oh * ow)
        .zip(acc.chunks_exact(acc_stride));
    for (out_plane, acc_plane) in planes {
        for (oy, out_row) in out_plane.chunks_exact_mut(ow).enumerate() {
            out_row.copy_from_slice(&acc_plane[oy * wp..][..ow]);
        }
    }
}

/// `out[oy][ox] += r[oy·sh·wp + ox·sw]` for the `ow`-wide output rows: one contiguous add per
/// row when `sw = 1` (vectorises), a strided add otherwise. The output-size formula guarantees
/// every read lies inside the padded plane.
pub(super) fn add_shifted(
    out_plane: &mut [f32],
    r: &[f32],
    ow: usize,
    wp: usize,
    [sh, sw]: [usize; 2],
) {
    let span = (ow - 1) * sw + 1;
    for (oy, out_row) in out_plane.chunks_exact_mut(ow).enumerate() {
        let src = &r[oy * sh * wp..][..span];
        if sw == 1 {
            for (o, &s) in out_row.iter_mut().zip(src) {
                *o += s;
            }
        } else {
            for (o, &s) in out_row.iter_mut().zip(src.iter().step_by(sw)) {
                *o += s;
            }
        }
    }
}
