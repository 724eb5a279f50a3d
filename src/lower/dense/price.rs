//! What the compact form stores for a layer, in bytes: its tables at their element and index
//! widths plus the nodes that rebuild the kernel, measured once on written models. The size
//! budget and `--all`'s skipping of layers that would not shrink price layers with it.

use crate::analysis::select::ConvLayer;
use crate::codebook::{Method, ValidParams};

use super::packing;

/// Bytes a converted layer adds besides its tensors' data, apart from its name: the nodes that
/// rebuild the kernel and their small shape constants. Measured on ResNet-20 `--all --form
/// dense` (layer names of 14 characters; names' share taken out at [`NAME_REFERENCES`]):
/// palette with Γ unpacked 890 bytes per layer, with Γ packed 1,540; VQ with per-subspace
/// codebooks 1,330; DL 2,570 — and each converted layer's metadata entry (its settings, ≈ 180
/// bytes).
const LAYER_OVERHEAD_BYTES: f64 = 790.0;

/// How often the subgraph's tensor and node names repeat the layer's name (`{layer}/dlq/…`).
const NAME_REFERENCES: f64 = 20.0;

/// What unpacking Γ below 8 bits adds: about five nodes and their small constants (measured as
/// above, one-byte groups, opset 10 or later).
const PACKING_OVERHEAD_BYTES: f64 = 700.0;

/// Further unpacking bytes (measured on SqueezeNet, opset 9 or below, scalar palettes): before
/// opset 10 there is no `Mod` (two more nodes); groups of 2–3 bytes are first summed
/// (`Mul`, `ReduceSum`); a last, partly filled group is sliced off.
const PACKING_BEFORE_MOD_BYTES: f64 = 350.0;
const PACKING_MULTI_BYTE_BYTES: f64 = 400.0;
const PACKING_SLICE_BYTES: f64 = 550.0;

/// Joining the two planes of 7-bit indices: a `Mul` by 64 and an `Add` (estimated from the
/// nodes' size: two nodes and a one-value constant, their names in the layer's prefix).
const PACKING_JOIN_BYTES: f64 = 150.0;

/// What per-subspace codebooks add (their table flattened, the offsets of each subspace's
/// rows), besides the offsets' data.
const OFFSETS_OVERHEAD_BYTES: f64 = 440.0;

/// What per-channel scales add besides their M values: a `Mul` and the scale's name and shape
/// (estimated from the nodes' size, as `PACKING_JOIN_BYTES`).
const CHANNEL_SCALE_OVERHEAD_BYTES: f64 = 120.0;

/// What casting a float16 table to the layer's type adds: a `Cast` node (estimated from the
/// nodes' size, as `PACKING_JOIN_BYTES`).
const CAST_OVERHEAD_BYTES: f64 = 60.0;

/// What DL's sparse codes add: the look-up of each code's atoms and the weighted sum.
const CODES_OVERHEAD_BYTES: f64 = 1250.0;

/// What the compact form stores for `layer` under `p`: atoms, sparse codes and Γ at their
/// index widths (Γ packed below 8 bits; one table for a shared codebook), plus a fixed
/// allowance per layer; `None` when the sizes are not valid.
pub fn compact_bytes(layer: &ConvLayer, p: &ValidParams, opset: i64) -> Option<f64> {
    let [m, n, kh, kw] = layer.kernel.as_deref()? else {
        return None;
    };
    let (m, n, kh, kw) = (*m, *n, *kh, *kw);
    let e = layer.weight_type.map_or(4, |t| t.size()) as f64;
    let z = p.sizes(m, n, kh * kw).ok()?;
    let (s, l, k, a, w) = (z.subspaces, z.l, z.k, p.alpha, p.subspace);
    let tables = if p.shared { 1 } else { s };
    // A float16 palette (and its scales) in a wider model, cast back at load.
    let narrow = p.f16_palette && e > 2.0;
    let (palette_e, cast) = match narrow {
        true => (2.0, CAST_OVERHEAD_BYTES),
        false => (e, 0.0),
    };
    let atoms = (tables * l * w) as f64 * palette_e + cast;
    let (codes, reps) = match p.method {
        Method::Dl => {
            let width = packing::plain_index_width(l) as f64;
            let data = (tables * k * a) as f64 * (width + e);
            (data + CODES_OVERHEAD_BYTES, k)
        }
        Method::Vq => (0.0, l),
    };
    let count = s * m * kh * kw;
    let gamma = packing::index_bytes(count, reps) as f64;
    let offsets = if p.shared {
        0.0
    } else {
        16.0 * s as f64 + OFFSETS_OVERHEAD_BYTES
    };
    let unpacking = match packing::packs(reps) {
        true => unpacking_bytes(count, reps, opset),
        false => 0.0,
    };
    let names = NAME_REFERENCES * layer.name.len() as f64;
    // An upper bound: the scales are dropped where they do not lower the error.
    let scales = match p.channel_scale {
        true => m as f64 * palette_e + cast + CHANNEL_SCALE_OVERHEAD_BYTES,
        false => 0.0,
    };
    Some(atoms + codes + gamma + offsets + unpacking + scales + names + LAYER_OVERHEAD_BYTES)
}

/// The unpacking subgraph's bytes for `count` indices below `bound`, packed: 7-bit indices
/// are two planes (6 bits and 1 bit), each unpacked alone, then joined (`Mul`, `Add`).
fn unpacking_bytes(count: usize, bound: usize, opset: i64) -> f64 {
    if packing::bits_for(bound) == packing::SPLIT_BITS {
        return unpacking_bytes(count, 64, opset)
            + unpacking_bytes(count, 2, opset)
            + PACKING_JOIN_BYTES;
    }
    let (bytes, group) = packing::group(bound);
    let extra = |yes: bool, b: f64| if yes { b } else { 0.0 };
    PACKING_OVERHEAD_BYTES
        + extra(opset < 10, PACKING_BEFORE_MOD_BYTES)
        + extra(bytes > 1, PACKING_MULTI_BYTE_BYTES)
        + extra(!count.is_multiple_of(group), PACKING_SLICE_BYTES)
}
