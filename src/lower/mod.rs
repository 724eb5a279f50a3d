//! Lowering: a learnt codebook becomes graph edits. One module per output form, all producing
//! a [`LayerPatch`] that [`patch::apply`] puts into the model in one place:
//!
//! - [`ops`]: the standard-operator form (plain ONNX at the model's opset; the paper's count);
//! - [`reconstructed`]: the Conv with the dense reconstructed kernel W̃, the reference the
//!   other forms must equal (calibration runs it; the exactness tests compare against it);
//! - [`dense`]: the compact form, the original Conv with its kernel rebuilt from the codebook
//!   by a constant subgraph engines fold at load (smaller file, the original's speed);
//! - [`fused`]: one custom-domain `DlqConv` node per layer, computed by the native kernel;
//! - [`kernel`]: the layer as the native `dlq-kernels` kernel the fused operator runs;
//! - [`fc`]: fully connected layers (Gemm, MatMul) through their 1×1 Conv view.
//!
//! [`builder`] is the shared wiring toolkit; [`packing`] stores the compact form's indices below
//! 8 bits.

pub mod builder;
pub mod dense;
pub mod fc;
pub mod fused;
pub mod kernel;
pub mod layer;
pub mod ops;
pub mod packing;
pub mod patch;
pub mod reconstructed;

pub use ops::{lower, MIN_OPSET};
pub use patch::{apply, GraphPatch, LayerPatch};

/// The settings a converted layer records in the model's metadata (`onnx-dlq/<layer>`).
/// Fields in alphabetical order: the JSON is part of the output's bytes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LayerSettings {
    pub alpha: usize,
    pub c: f64,
    pub calibrated: bool,
    pub iters: usize,
    pub k: usize,
    pub k_vq: usize,
    pub l: usize,
    pub method: crate::codebook::Method,
    pub ratio: f64,
    pub relative_error: f64,
    /// The user's seed (each layer's own is derived from it and the layer's name).
    pub seed: u64,
    pub subspace: usize,
}
