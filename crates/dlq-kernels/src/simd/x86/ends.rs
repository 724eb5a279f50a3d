//! What the x86 row loops of every instruction set share.

/// A row call's ends as raw pointers: the initial values, if the call starts the
/// accumulators (`Some(None)`: zeros), and the output with its width, if it crops.
#[allow(clippy::type_complexity)]
pub(super) fn end_pointers(
    ends: crate::simd::RowEnds,
) -> (Option<Option<*const f32>>, Option<*mut f32>, usize) {
    let init = ends.init.map(|values| values.map(<[f32]>::as_ptr));
    match ends.crop {
        Some((dst, ow)) => (init, Some(dst.as_mut_ptr()), ow),
        None => (init, None, 0),
    }
}
