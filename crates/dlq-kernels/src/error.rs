//! `KernelError`: every way `DlqConv::new`, `DlqConv::run` and `dense_conv` refuse their input,
//! each naming the offending field and the values involved (std only, no `thiserror`, so the crate
//! keeps zero dependencies).

use std::fmt;

/// Why a convolution could not be built or run. Returned instead of panicking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// A forced implementation (`path`) this CPU cannot run.
    UnsupportedPath { path: &'static str },
    /// A geometry field that must be at least 1 is 0 (e.g. `strides[1]`).
    ZeroGeometry { field: &'static str },
    /// `subspaces` is empty, so the input channels are not covered.
    NoSubspaces,
    /// A subspace's channel range is empty (or reversed).
    EmptySubspace { subspace: usize },
    /// A subspace does not start where the previous one ended (gap or overlap).
    SubspaceNotContiguous {
        subspace: usize,
        expected_start: usize,
        start: usize,
    },
    /// The subspaces end at `end`, not at the number of input channels.
    SubspacesDoNotCover { end: usize, in_channels: usize },
    /// A subspace has `num_atoms == 0`.
    NoAtoms { subspace: usize },
    /// A subspace's codes have `alpha == 0`.
    ZeroAlpha { subspace: usize },
    /// The code's atom list is empty or not a multiple of α, so K is undefined.
    CodeCount {
        subspace: usize,
        alpha: usize,
        len: usize,
    },
    /// A buffer (`what`) has the wrong length; `subspace` is `None` for layer-wide buffers.
    Length {
        subspace: Option<usize>,
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// An index stored at `position` of `what` is `value`, not below `limit`.
    IndexOutOfRange {
        subspace: usize,
        what: &'static str,
        position: usize,
        value: u32,
        limit: usize,
    },
    /// A parameter value (`what`, at `position`) is NaN or infinite.
    NonFinite {
        subspace: Option<usize>,
        what: &'static str,
        position: usize,
    },
    /// `dense_conv` was given `found` input channels but the geometry says `expected`.
    ChannelMismatch { expected: usize, found: usize },
    /// The (dilated) kernel does not fit the padded `h × w` input, or `h` or `w` is 0.
    NoOutput { h: usize, w: usize },
    /// A size computed from the inputs overflows `usize`.
    TooLarge { what: &'static str },
    /// A scratch buffer of `floats` floats that cannot (or may not) be allocated.
    ScratchTooLarge { floats: usize },
    /// The operator's node form (attributes, input shapes) is invalid (`operator` module).
    Node { message: String },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use KernelError::*;
        match self {
            ZeroGeometry { field } => write!(f, "geometry: {field} is 0, must be at least 1"),
            UnsupportedPath { path } => write!(f, "this CPU cannot run the {path} kernel"),
            NoSubspaces => write!(f, "no subspaces: the input channels are not covered"),
            EmptySubspace { subspace } => write!(f, "subspace {subspace}: empty channel range"),
            NoAtoms { subspace } => write!(f, "subspace {subspace}: num_atoms is 0"),
            ZeroAlpha { subspace } => write!(f, "subspace {subspace}: codes have alpha 0"),
            ChannelMismatch { expected, found } => write!(
                f,
                "input has {found} channels, the geometry expects {expected}"
            ),
            NoOutput { h, w } => write!(
                f,
                "no output: the dilated kernel does not fit the padded {h}×{w} input"
            ),
            TooLarge { what } => write!(f, "{what}: size overflows usize"),
            ScratchTooLarge { floats } => write!(
                f,
                "the layer needs a scratch buffer of {floats} floats, more than can be allocated (pads, strides or input size too large)"
            ),
            Node { message } => f.write_str(message),
            SubspaceNotContiguous { .. }
            | SubspacesDoNotCover { .. }
            | CodeCount { .. }
            | Length { .. }
            | IndexOutOfRange { .. }
            | NonFinite { .. } => self.fmt_detailed(f),
        }
    }
}

impl KernelError {
    /// The variants with three or more fields (split off only to keep `fmt` short).
    fn fmt_detailed(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use KernelError::*;
        match self {
            SubspaceNotContiguous {
                subspace: s,
                expected_start,
                start,
            } => write!(
                f,
                "subspace {s}: starts at channel {start}, expected {expected_start} \
                 (subspaces must be contiguous and in order)"
            ),
            SubspacesDoNotCover { end, in_channels } => write!(
                f,
                "subspaces cover channels 0..{end}, but the layer has {in_channels} input channels"
            ),
            CodeCount {
                subspace: s,
                alpha,
                len,
            } => write!(
                f,
                "subspace {s}: {len} code atoms is not a positive multiple of alpha {alpha}"
            ),
            Length {
                subspace: s,
                what,
                expected,
                found,
            } => {
                write_subspace(f, *s)?;
                write!(f, "{what} has length {found}, expected {expected}")
            }
            IndexOutOfRange {
                subspace: s,
                what,
                position: i,
                value,
                limit,
            } => {
                write!(
                    f,
                    "subspace {s}: {what}[{i}] = {value}, must be below {limit}"
                )
            }
            NonFinite {
                subspace: s,
                what,
                position: i,
            } => {
                write_subspace(f, *s)?;
                write!(f, "{what}[{i}] is not finite")
            }
            // Not reached: `fmt` routes only the variants above here. Debug keeps it total.
            other => write!(f, "{other:?}"),
        }
    }
}

fn write_subspace(f: &mut fmt::Formatter<'_>, subspace: Option<usize>) -> fmt::Result {
    match subspace {
        Some(s) => write!(f, "subspace {s}: "),
        None => Ok(()),
    }
}

impl std::error::Error for KernelError {}

/// `Length` error unless `found == expected`.
pub(crate) fn check_len(
    subspace: Option<usize>,
    what: &'static str,
    expected: usize,
    found: usize,
) -> Result<(), KernelError> {
    if expected == found {
        Ok(())
    } else {
        Err(KernelError::Length {
            subspace,
            what,
            expected,
            found,
        })
    }
}

/// Product of `factors`, or `TooLarge` naming `what` on overflow (sizes come from user input).
pub(crate) fn checked_product(factors: &[usize], what: &'static str) -> Result<usize, KernelError> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .ok_or(KernelError::TooLarge { what })
}
