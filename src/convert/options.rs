//! What a conversion runs with: the options [`crate::convert::ConvertRequest::check`] gives,
//! and which layers are selected.

use crate::analysis::shapes::InputShape;
use crate::calibrate::CalibrationOptions;
use crate::codebook::ValidParams;
use crate::engine::Engine;
use crate::finetune::FinetuneOptions;
use crate::lower::OutputForm;
use crate::onnx::model::ExternalData;
use crate::quantize::Int8Options;

/// The layers to convert: by name, or every eligible one.
#[derive(Debug, Clone)]
pub enum Selection {
    Named(Vec<String>),
    /// Every eligible layer; fully connected ones (Gemm, MatMul) only with `fully_connected`.
    All {
        fully_connected: bool,
    },
}

#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub selection: Selection,
    /// Checked once; with `target_speedup`, its ratio is replaced per layer.
    pub params: ValidParams,
    pub input_shapes: Vec<InputShape>,
    pub external: ExternalData,
    /// Learn output-aware codebooks from calibration images (see `calibrate`).
    pub calibration: Option<CalibrationOptions>,
    /// Whole-model multiplication reduction to reach: a ρ per layer is allocated (see
    /// `budget`) among the selected layers.
    pub target_speedup: Option<f64>,
    /// Instead of one ratio: a whole-model reduction of stored tensor bytes (the compact form),
    /// with a ρ per layer from measured sensitivities.
    pub target_compression: Option<f64>,
    /// After writing, time the original and the converted model (`convert` only).
    pub measure_latency: bool,
    /// The output form of each converted layer.
    pub form: OutputForm,
    /// Distillation fine-tuning of the learnt codebooks before lowering (see `finetune`).
    pub finetune: Option<FinetuneOptions>,
    /// The engine for the conversion's own runs (calibration statistics, the latency budget's
    /// timings, the latency check); `None`: tract, or ONNX Runtime when tract cannot run the
    /// model (see [`engine::prepare_in_either`]).
    pub engine: Option<Engine>,
    /// Write the whole model as an int8 QDQ model (the compact form only; needs calibration
    /// images for the activation ranges).
    pub int8: Option<Int8Options>,
}
