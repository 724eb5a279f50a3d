//! The x86-64 SIMD loops, one file per instruction set.

mod avx2;
mod avx512;
mod ends;

pub(super) use avx2::*;
pub(super) use avx512::*;
