//! `dlq-kernels`: one job — compute a convolution whose kernel was clustered by onnx-dlq
//! (dictionary-learning quantization, DL, or its special case vector quantization, VQ)
//! without ever expanding the kernel, and prove it equals the dense convolution.
//!
//! Input channels `0..N` are split into S subspaces of consecutive channels. Subspace `s` has
//! L atoms (vectors over its channels), K representatives (each a sparse combination of α atoms;
//! VQ is α = 1, coefficient 1, representative i = atom i) and an assignment
//! `Γ_s[k][u][v] ∈ 0..K` for every output channel k and kernel position (u, v). The kernel it stands
//! for is
//!
//! ```text
//! W̃[k, c ∈ s, u, v] = Σ_{t < α} coef[Γ_s[k][u][v]][t] · atom[idx[Γ_s[k][u][v]][t]][c]
//! U = Conv(X, W̃) + bias
//! ```
//!
//! and [`DlqConv::run`] computes U by linearity, per image and subspace:
//! `Z_s = atoms · X_s` (an L × (H·W) product), `R_s[i] = Σ_t coef · Z_s[idx]` (α multiply-adds per
//! element), then for each output channel k and position (u, v) it adds the shifted, strided plane
//! `R_s[Γ_s[k][u][v]]` into output channel k. Multiplications per output pixel drop from
//! `kh·kw·M·N` to about `N·L + α·S·K`; the look-ups cost `kh·kw·M·S` additions.
//!
//! [`DlqConv::new`] validates everything once, so the compute paths never index out of bounds and
//! never panic on user data; [`dense_conv`] is the straightforward reference and
//! [`DlqConv::reconstruct`] the dense W̃ it is checked with.
//!
//! The hot loops (Z product, R combination, look-up adds) have portable versions and explicit
//! AVX2 + FMA versions (look-up adds: AVX-512F) chosen at run time (`is_x86_feature_detected!`);
//! the two agree to float rounding. On AVX-512 and AVX2, stride-1 layers skip R: the α terms of
//! each tap are fused-multiply-added straight from Z in a row layout (rows padded to 16 floats).
//!
//! [`DlqConv::run_parallel`] splits the work into tasks for the caller's thread pool
//! (`par(n, f)` calls `f(i)` for every `i < n`, possibly concurrently); its output is bit-identical
//! to [`DlqConv::run`]'s whatever the thread count, since every output element is summed by one
//! task in an order fixed by the sizes alone.

mod conv;
mod dense;
mod error;
mod fast;
mod geometry;
pub mod operator;
mod simd;

pub use conv::{Codes, DlqConv, Subspace};
pub use dense::dense_conv;
pub use error::KernelError;
#[doc(hidden)]
pub use fast::KernelPath;
pub use fast::ParallelFor;
#[doc(hidden)]
pub use fast::PhaseTimes;
pub use geometry::Geometry;
