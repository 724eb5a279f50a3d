//! Lowering: a learnt codebook becomes graph edits. Each output form is one folder implementing
//! [`form::Form`] (lower a layer, read it back, price its bytes, say what runtime to expect),
//! all producing a [`LayerPatch`] that [`patch::apply`] puts into the model in one place:
//!
//! - [`ops`]: the standard-operator form (plain ONNX at the model's opset; the paper's count);
//! - [`fused`]: one custom-domain `DlqConv` node per layer, computed by the native kernel
//!   (`fused::kernel`: the layer as that kernel);
//! - [`dense`]: the compact form, the original Conv with its kernel rebuilt from the codebook
//!   by a constant subgraph engines fold at load (smaller file, the original's speed);
//! - [`reconstructed`]: the Conv with the dense reconstructed kernel W̃, the reference the
//!   other forms must equal (calibration runs it; the exactness tests compare against it).
//!
//! [`wiring`] is what the forms share when they write (the node toolkit, a layer's geometry
//! and bias, the codebook's tables, fully connected layers); [`stored`] what they share when a
//! written layer is read back.

pub mod dense;
pub mod form;
pub mod fused;
pub mod ops;
pub mod patch;
pub mod reconstructed;
pub mod stored;
pub mod wiring;

pub use form::{Form, Runtime, Saving};
pub use ops::{lower, MIN_OPSET};
pub use patch::{apply, GraphPatch, LayerPatch};

/// How a converted layer is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputForm {
    /// A subgraph of standard ONNX operators at the model's opset (`lower::ops`).
    #[default]
    Ops,
    /// One custom-domain `DlqConv` node, run by the native kernel (`lower::fused`).
    Fused,
    /// The original Conv with its kernel rebuilt from the stored codebook by a constant
    /// subgraph (`lower::dense`): a smaller file at the original's speed.
    Dense,
}

impl OutputForm {
    /// Every form, in the order a written layer is tried against their readers.
    pub const ALL: [OutputForm; 3] = [OutputForm::Ops, OutputForm::Fused, OutputForm::Dense];

    /// The form's implementation.
    pub fn spec(self) -> &'static dyn Form {
        match self {
            OutputForm::Ops => &ops::Ops,
            OutputForm::Fused => &fused::Fused,
            OutputForm::Dense => &dense::Dense,
        }
    }

    /// The form's name, as the form setting takes it.
    pub fn name(self) -> &'static str {
        self.spec().name()
    }
}

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
