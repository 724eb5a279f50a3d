//! Index tensors below 8 bits for the compact form: indices that stay below 2^b (b ≤ 6) are
//! stored b bits each — every group of g indices as one little-endian integer of B ≤ 3 bytes
//! (g·b ≤ 8B: b = 1, 2, 3, 4, 6 fill their bytes exactly, b = 5 puts 3 in 2 bytes), a `[G, B]`
//! UINT8 tensor — and unpacked by a constant subgraph of standard integer operators (opset 7
//! on) that engines fold at load:
//!
//! ```text
//! v[G,1] = ReduceSum(Cast(packed, INT64) · [1, 2⁸, 2¹⁶][..B], axis 1)    (B > 1)
//! x[G,g] = v / [1, 2^b, …, 2^(g−1)b];  x mod 2^b;  Reshape [g·G]; Slice [0, count)
//! ```
//!
//! Seven bits fit no group of at most 3 bytes without waste, so they are split into two planes
//! ([`SPLIT_BITS`]): the low 6 bits and the high bit, each packed as above, x = low + 64·high
//! (7 bits per index exactly; K = 128 palettes then cost 7/8 of K = 256's Γ instead of as much).
//!
//! Every intermediate stays below 2^24: tract 0.23 wraps int64 arithmetic at 32 bits here.

use anyhow::Result;

use crate::onnx::build::attr_int;
use crate::proto::tensor_proto::DataType;

use crate::lower::wiring::builder::Builder;

/// (bytes B, indices g) of a group of `bits`-bit indices: the B ≤ 3 that wastes the fewest
/// bits (ties to the smaller), g = ⌊8B / bits⌋.
fn layout(bits: u32) -> (usize, usize) {
    let bits = bits as usize;
    (1..=3)
        .map(|b| (b, 8 * b / bits))
        .min_by_key(|&(b, g)| ((8 * b - g * bits) * 24 / (8 * b), b))
        .expect("three candidates")
}

/// (bytes B, indices g) of one packed group of indices below `bound` (a bound [`packs`]).
pub fn group(bound: usize) -> (usize, usize) {
    layout(bits_for(bound))
}

/// The bits an index below `bound` needs (at least 1).
pub fn bits_for(bound: usize) -> u32 {
    (usize::BITS - bound.saturating_sub(1).leading_zeros()).max(1)
}

/// Indices of this many bits are stored as two planes, the low 6 bits and the high bit.
pub const SPLIT_BITS: u32 = 7;

/// The bits of the low plane of a split index ([`SPLIT_BITS`]).
const LOW_PLANE_BITS: u32 = 6;

/// Whether indices below `bound` are stored packed (below 8 bits).
pub fn packs(bound: usize) -> bool {
    bits_for(bound) <= SPLIT_BITS
}

/// Bytes of `count` indices below `bound` as the compact form stores them (packed below 8
/// bits; else UINT8, UINT16 or UINT32).
pub fn index_bytes(count: usize, bound: usize) -> usize {
    if !packs(bound) {
        return count * plain_index_width(bound);
    }
    if bits_for(bound) == SPLIT_BITS {
        return index_bytes(count, 1 << LOW_PLANE_BITS) + index_bytes(count, 2);
    }
    let (bytes, group) = layout(bits_for(bound));
    count.div_ceil(group) * bytes
}

/// A split index's two planes: (low 6 bits, high bit) of each value.
fn planes(values: &[u32]) -> (Vec<u32>, Vec<u32>) {
    let low = values
        .iter()
        .map(|&v| v & ((1 << LOW_PLANE_BITS) - 1))
        .collect();
    let high = values.iter().map(|&v| v >> LOW_PLANE_BITS).collect();
    (low, high)
}

/// The packed tensors' names for indices of `bits` bits stored as `what` (one, or the two
/// planes of a split index), as [`unpacked`] names them.
pub fn packed_names(what: &str, bits: u32) -> Vec<String> {
    if bits == SPLIT_BITS {
        return vec![format!("{what}_low_packed"), format!("{what}_high_packed")];
    }
    vec![format!("{what}_packed")]
}

/// [`unpack`] of the two planes of split indices (low 6 bits, high bit).
pub fn unpack_split(low: &[u8], high: &[u8], count: usize) -> Option<Vec<u32>> {
    let low = unpack(low, LOW_PLANE_BITS, count)?;
    let high = unpack(high, 1, count)?;
    Some(
        low.iter()
            .zip(high)
            .map(|(l, h)| l | (h << LOW_PLANE_BITS))
            .collect(),
    )
}

/// Bytes per index below `bound` unpacked (UINT8, UINT16 or UINT32: `new_index_tensor`).
pub fn plain_index_width(bound: usize) -> usize {
    match bits_for(bound) {
        0..=8 => 1,
        9..=16 => 2,
        _ => 4,
    }
}

/// `values` (each below 2^bits, bits ≤ 6) packed: a group's index i at bit b·i of its B-byte
/// little-endian integer ([`layout`]); the last group is padded with zeros.
pub fn pack(values: &[u32], bits: u32) -> Vec<u8> {
    debug_assert!((1..7).contains(&bits));
    let (bytes, group) = layout(bits);
    let mut out = Vec::with_capacity(values.len().div_ceil(group) * bytes);
    for chunk in values.chunks(group) {
        let v = chunk
            .iter()
            .enumerate()
            .fold(0u32, |v, (i, &x)| v | (x << (bits as usize * i)));
        out.extend_from_slice(&v.to_le_bytes()[..bytes]);
    }
    out
}

/// The first `count` indices of `bytes` packed at `bits` by [`pack`]; `None` when `bytes` is
/// not `count` indices' worth of groups.
pub fn unpack(bytes: &[u8], bits: u32, count: usize) -> Option<Vec<u32>> {
    if !(1..7).contains(&bits) {
        return None;
    }
    let (width, group) = layout(bits);
    if bytes.len() != count.div_ceil(group) * width {
        return None;
    }
    let mask = (1u32 << bits) - 1;
    let values = bytes.chunks_exact(width).flat_map(|chunk| {
        let v = chunk
            .iter()
            .enumerate()
            .fold(0u32, |v, (i, &b)| v | (u32::from(b) << (8 * i)));
        (0..group).map(move |i| (v >> (bits as usize * i)) & mask)
    });
    Some(values.take(count).collect())
}

/// Adds `values` packed at `bits` as a `[G, B]` UINT8 initializer and the subgraph that
/// unpacks it; returns the INT64 tensor of the indices in `shape` (count elements).
pub fn unpacked(
    b: &mut Builder,
    what: &str,
    values: &[u32],
    bits: u32,
    shape: &[i64],
) -> Result<String> {
    if bits == SPLIT_BITS {
        let (low, high) = planes(values);
        let low = unpacked(b, &format!("{what}_low"), &low, LOW_PLANE_BITS, shape)?;
        let high = unpacked(b, &format!("{what}_high"), &high, 1, shape)?;
        let place = b.i64_init(&format!("{what}_high_place"), &[1 << LOW_PLANE_BITS])?;
        let high = b.node(
            "Mul",
            &format!("{what}_high_placed"),
            vec![high, place],
            vec![],
        )?;
        return b.node("Add", &format!("{what}_joined"), vec![low, high], vec![]);
    }
    let (width, group) = layout(bits);
    let groups = values.len().div_ceil(group);
    let packed = b.name(&format!("{what}_packed"))?;
    let bytes: Vec<u32> = pack(values, bits).into_iter().map(u32::from).collect();
    b.inits.push(crate::onnx::tensor::new_index_tensor(
        &packed,
        &[groups, width],
        &bytes,
        256,
    ));
    let mut v = b.node(
        "Cast",
        &format!("{what}_bytes"),
        vec![packed],
        vec![attr_int("to", DataType::Int64 as i64)],
    )?;
    if width > 1 {
        let place: Vec<i64> = (0..width).map(|i| 1i64 << (8 * i)).collect();
        let place = b.i64_init(&format!("{what}_byte_places"), &place)?;
        let scaled = b.node("Mul", &format!("{what}_placed"), vec![v, place], vec![])?;
        v = b.reduce_sum_kept(&format!("{what}_groups"), &scaled, 1)?;
    }
    let shifts: Vec<i64> = (0..group).map(|i| 1i64 << (bits as usize * i)).collect();
    let shifts = b.i64_init(&format!("{what}_shifts"), &shifts)?;
    let shifted = b.node("Div", &format!("{what}_shifted"), vec![v, shifts], vec![])?;
    let base = b.i64_init(&format!("{what}_base"), &[1i64 << bits])?;
    let low = low_bits(b, what, shifted, base)?;
    let shaped = |b: &mut Builder, x: String| {
        let s = b.i64_init(&format!("{what}_shape"), shape)?;
        b.node("Reshape", &format!("{what}_shaped"), vec![x, s], vec![])
    };
    if groups * group == values.len() {
        return shaped(b, low);
    }
    let flat_shape = b.i64_init(&format!("{what}_flat_shape"), &[(groups * group) as i64])?;
    let flat = b.node(
        "Reshape",
        &format!("{what}_flat"),
        vec![low, flat_shape],
        vec![],
    )?;
    let values = b.slice(
        &format!("{what}_unpacked"),
        &flat,
        &[0],
        &[0],
        &[values.len() as i64],
        &[1],
    )?;
    shaped(b, values)
}

/// `x mod base` for non-negative INT64 `x`: one `Mod` from opset 10 on, before it
/// `x − (x / base)·base`.
fn low_bits(b: &mut Builder, what: &str, x: String, base: String) -> Result<String> {
    if b.opset >= 10 {
        return b.node("Mod", &format!("{what}_low"), vec![x, base], vec![]);
    }
    let high = b.node(
        "Div",
        &format!("{what}_high"),
        vec![x.clone(), base.clone()],
        vec![],
    )?;
    let high = b.node(
        "Mul",
        &format!("{what}_high_scaled"),
        vec![high, base],
        vec![],
    )?;
    b.node("Sub", &format!("{what}_low"), vec![x, high], vec![])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_cover_the_bound() {
        assert_eq!(
            [1, 2, 3, 4, 5, 16, 17, 128, 129, 256, 257].map(bits_for),
            [1, 1, 2, 2, 3, 4, 5, 7, 8, 8, 9]
        );
        assert_eq!(
            (1..=6).map(layout).collect::<Vec<_>>(),
            [(1, 8), (1, 4), (3, 8), (1, 2), (2, 3), (3, 4)]
        );
        assert_eq!(index_bytes(17, 16), 9);
        assert_eq!(index_bytes(17, 32), 12);
        // 7 bits: 6-bit plane (5 groups of 3 bytes) and 1-bit plane (3 bytes).
        assert_eq!(index_bytes(17, 128), 18);
        assert_eq!(index_bytes(800, 128), 700);
        assert_eq!(index_bytes(17, 300), 34);
    }

    /// The packing is the layout the subgraph reads: group value / 2^(b·i) mod 2^b.
    #[test]
    fn packed_groups_unpack_by_division() {
        for bits in 1..7u32 {
            let (width, group) = layout(bits);
            let values: Vec<u32> = (0..21).map(|i| (i * 7 + 3) % (1 << bits)).collect();
            let bytes = pack(&values, bits);
            assert_eq!(bytes.len(), index_bytes(21, 1 << bits));
            assert_eq!(unpack(&bytes, bits, 21).as_deref(), Some(&values[..]));
            assert_eq!(unpack(&bytes[1..], bits, 21), None);
            for (g, chunk) in bytes.chunks(width).enumerate() {
                let mut v = 0i64;
                for (j, &x) in chunk.iter().enumerate() {
                    v += (x as i64) << (8 * j);
                }
                assert!(v < 1 << 24);
                for i in 0..group {
                    let x = (v / (1i64 << (bits as usize * i))) % (1i64 << bits);
                    let want = values.get(g * group + i).copied().unwrap_or(0);
                    assert_eq!(x, want as i64, "bits {bits} group {g} index {i}");
                }
            }
        }
    }

    #[test]
    fn seven_bit_indices_split_into_planes_and_join_again() {
        let values: Vec<u32> = (0..37).map(|i| (i * 53 + 11) % 128).collect();
        let (low, high) = planes(&values);
        assert!(low.iter().all(|&v| v < 64) && high.iter().all(|&v| v < 2));
        let (low, high) = (pack(&low, 6), pack(&high, 1));
        assert_eq!(low.len() + high.len(), index_bytes(37, 128));
        assert_eq!(unpack_split(&low, &high, 37).as_deref(), Some(&values[..]));
        assert_eq!(unpack_split(&low, &high[1..], 37), None);
        assert_eq!(
            packed_names("assignment", 7),
            ["assignment_low_packed", "assignment_high_packed"]
        );
    }
}
