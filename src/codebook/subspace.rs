//! `SubspacePlan`: how a kernel M×N×kh×kw is cut into subspaces of N′ input channels, and the
//! sub-vectors (points) of one subspace, one per (output channel, kernel position).

use std::ops::Range;

use ndarray::ArrayView4;

/// Points of one subspace: `n` rows of `dim` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Points {
    pub data: Vec<f32>,
    pub dim: usize,
}

impl Points {
    pub fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// The split of N input channels into consecutive groups of `width` (the last may be smaller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubspacePlan {
    pub channels: usize,
    pub width: usize,
}

impl SubspacePlan {
    pub fn new(channels: usize, width: usize) -> SubspacePlan {
        assert!(width > 0 && channels > 0);
        SubspacePlan { channels, width }
    }

    /// S, the number of subspaces.
    pub fn count(&self) -> usize {
        self.channels.div_ceil(self.width)
    }

    pub fn range(&self, s: usize) -> Range<usize> {
        let start = s * self.width;
        start..(start + self.width).min(self.channels)
    }

    pub fn ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        (0..self.count()).map(|s| self.range(s))
    }
}

/// Column index of (output channel k, kernel position (u, v)) in a subspace: k·kh·kw + u·kw + v.
pub fn column(k: usize, u: usize, v: usize, kh: usize, kw: usize) -> usize {
    (k * kh + u) * kw + v
}

/// The sub-vectors `W[k, channels, u, v]` of one subspace, in column order.
pub fn points(kernel: ArrayView4<f32>, channels: Range<usize>) -> Points {
    let (m, _, kh, kw) = kernel.dim();
    let dim = channels.len();
    let mut data = Vec::with_capacity(m * kh * kw * dim);
    for k in 0..m {
        for u in 0..kh {
            for v in 0..kw {
                data.extend(channels.clone().map(|c| kernel[[k, c, u, v]]));
            }
        }
    }
    Points { data, dim }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn plans_cover_the_channels_with_a_smaller_last_subspace() {
        let p = SubspacePlan::new(20, 8);
        assert_eq!(p.count(), 3);
        assert_eq!(p.ranges().collect::<Vec<_>>(), vec![0..8, 8..16, 16..20]);
        assert_eq!(SubspacePlan::new(16, 8).count(), 2);
        assert_eq!(
            SubspacePlan::new(3, 8).ranges().collect::<Vec<_>>(),
            vec![0..3]
        );
    }

    #[test]
    fn points_are_columns_in_output_channel_then_position_order() {
        let w = Array4::from_shape_fn((2, 3, 2, 2), |(k, c, u, v)| {
            (k * 1000 + c * 100 + u * 10 + v) as f32
        });
        let p = points(w.view(), 1..3);
        assert_eq!(p.dim, 2);
        assert_eq!(p.len(), 8);
        assert_eq!(p.row(column(1, 0, 1, 2, 2)), &[1101.0, 1201.0]);
    }
}
