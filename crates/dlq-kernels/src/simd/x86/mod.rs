//! The x86-64 SIMD loops, one file per instruction set.

mod avx2;
mod avx512;

pub(super) use avx2::*;
pub(super) use avx512::*;

/// A row call's ends as raw pointers: the initial values, if the call starts the
/// accumulators (`Some(None)`: zeros), and the output with its width, if it crops.
#[allow(clippy::type_complexity)]
fn end_pointers(
    ends: crate::simd::RowEnds,
) -> (Option<Option<*const f32>>, Option<*mut f32>, usize) {
    let init = ends.init.map(|values| values.map(<[f32]>::as_ptr));
    match ends.crop {
        Some((dst, ow)) => (init, Some(dst.as_mut_ptr()), ow),
        None => (init, None, 0),
    }
}
