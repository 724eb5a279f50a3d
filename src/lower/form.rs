//! What an output form is: the one trait each form's folder implements (lower a layer, read
//! its codebook back from a written file, price its bytes, say what runtime and speed to
//! expect). The user's choice among them is `lower::OutputForm`. The int8 output is not a form
//! of its own: it rewrites a model written in the compact form (`quantize`).

use anyhow::Result;

use crate::analysis::select::ConvLayer;
use crate::analysis::shapes::ShapeMap;
use crate::codebook::{Codebook, ValidParams};
use crate::onnx::model::OnnxModel;

use super::patch::LayerPatch;
use super::stored::{Decoded, LayerNodes, StoredShape};

/// What converting a layer in a form saves: what `--all` checks a layer against and what a
/// budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saving {
    /// Multiplications (the paper's count): the standard-operator and fused forms.
    Multiplications,
    /// Stored bytes: the compact form.
    Bytes,
}

/// What to expect when a model written in a form runs.
#[derive(Debug, Clone, Copy)]
pub struct Runtime {
    /// Its speed depends on the layer and the ratio, so a latency budget times each candidate
    /// layer in this form (the native kernel); the other forms' speed is the count's or the
    /// original's.
    pub timed_per_layer: bool,
    /// Its tensors can outgrow the original's many times over (the standard operators
    /// materialise the look-ups), so a model whose shapes are unknown is not run to time it.
    pub may_outgrow_original: bool,
}

/// One output form: everything the pipeline asks of it, in its own folder.
pub trait Form: Sync {
    /// The form's name, as the form setting and the reports give it.
    fn name(&self) -> &'static str;

    /// The graph edits that put `codebook` in place of `layer`. `shapes` gives input sizes
    /// where the form needs them; `settings` is recorded in the model's metadata.
    fn lower(
        &self,
        model: &OnnxModel,
        layer: &ConvLayer,
        codebook: &Codebook,
        shapes: &ShapeMap,
        settings: &str,
    ) -> Result<LayerPatch>;

    /// A written layer's codebook and where its values live, when `nodes` are this form's
    /// (`None`: another form wrote them).
    fn read(&self, nodes: &LayerNodes, shape: StoredShape) -> Option<Result<Decoded>>;

    /// What converting a layer saves in this form: multiplications unless it says otherwise.
    fn saving(&self) -> Saving {
        Saving::Multiplications
    }

    /// The bytes `layer` takes in a file written in this form under `params` (its codebook and
    /// the nodes rebuilding its kernel), for a form that saves bytes; `None` otherwise, or when
    /// the rules reject the sizes.
    fn stored_bytes(&self, _layer: &ConvLayer, _params: &ValidParams, _opset: i64) -> Option<f64> {
        None
    }

    /// What runtime and speed to expect.
    fn runtime(&self) -> Runtime;

    /// Why a model converted in this form may run slower than the original (the latency
    /// check's warning).
    fn slower_because(&self) -> String;
}
