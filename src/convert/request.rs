//! A conversion as a user asks for it, with the defaults that depend on other settings left
//! open, and [`ConvertRequest::check`]: the one place that applies those defaults and refuses
//! settings that cannot work together, into the [`ConvertOptions`] the driver runs. Every front
//! end (the command line, the Python package through it, other library users) gets the same
//! rules.

use crate::analysis::shapes::InputShape;
use crate::calibrate::CalibrationOptions;
use crate::codebook::{ClusterParams, Method};
use crate::engine::Engine;
use crate::finetune::FinetuneOptions;
use crate::onnx::model::ExternalData;
use crate::quantize::Int8Options;
use crate::setting::{self, InvalidSetting, Setting};

use super::options::{ConvertOptions, Selection};
use crate::lower::OutputForm;

/// N′ of a shared codebook unless given: at 4 bits per weight, SqueezeNet keeps 55.00% top-1
/// with N′ = 2 (K = 256) against 45.33% with scalar palettes (N′ = 1, K = 16), and ResNet-56
/// 81.90% with both (BENCHMARKS.md, "Shared codebooks").
pub const SHARED_SUBSPACE: usize = 2;

/// DL's c under a budget unless given: the paper's c = 3 rules out ρ = 2 and 3 on layers with
/// few sub-vectors (K = c·K_vq > p²M), and c = 2 gave higher accuracy at the same budget
/// (SqueezeNet 1.5×: 54.5% against 48.0% top-1; ResNet-20 2×: 78.3% against 69.6%).
pub const BUDGET_C: f64 = 2.0;

/// The clustering settings as given; `None` takes the default that depends on the others.
#[derive(Debug, Clone)]
pub struct ClusterRequest {
    /// DL, VQ, or `None`: VQ palettes for a size budget without a method, DL otherwise.
    pub method: Option<Method>,
    pub ratio: f64,
    /// N′, or `None`: [`SHARED_SUBSPACE`] for a shared codebook, the paper's 8 otherwise.
    pub subspace: Option<usize>,
    /// c = K/K_vq, or `None`: [`BUDGET_C`] under a budget, the paper's 3 otherwise.
    pub c: Option<f64>,
    pub alpha: usize,
    pub iters: usize,
    pub seed: u64,
    pub k: Option<usize>,
    pub l: Option<usize>,
    pub shared_codebook: bool,
    pub channel_scale: bool,
    pub f16_palette: bool,
}

/// A conversion as asked for: [`ConvertOptions`] before its rules are applied.
#[derive(Debug, Clone)]
pub struct ConvertRequest {
    pub selection: Selection,
    pub clustering: ClusterRequest,
    pub input_shapes: Vec<InputShape>,
    pub external: ExternalData,
    pub calibration: Option<CalibrationOptions>,
    pub target_speedup: Option<f64>,
    pub target_compression: Option<f64>,
    pub measure_latency: bool,
    /// The output form, or `None`: the compact form for a size budget, `ops` otherwise.
    pub form: Option<OutputForm>,
    pub finetune: Option<FinetuneOptions>,
    pub engine: Option<Engine>,
    pub int8: Option<Int8Options>,
}

impl ConvertRequest {
    /// The options the request means, or the first setting that cannot work as asked.
    pub fn check(self) -> Result<ConvertOptions, InvalidSetting> {
        let params = self.cluster_params().check()?;
        let form = self.output_form()?;
        let compact = || format!("the compact form ({} dense)", setting::name(Setting::Form));
        if self.int8.is_some() && form != OutputForm::Dense {
            return Err(InvalidSetting::new(
                Setting::Int8,
                format!(
                    "writes the compact form's kernels as int8 ({} dense); the ops and fused forms compute in float",
                    setting::name(Setting::Form)
                ),
            ));
        }
        if self.int8.is_some() && self.calibration.is_none() {
            return Err(InvalidSetting::new(
                Setting::Int8,
                format!(
                    "measures the activations' ranges on calibration images: add {}",
                    setting::name(Setting::Calibrate)
                ),
            ));
        }
        if self.clustering.shared_codebook && form != OutputForm::Dense {
            return Err(InvalidSetting::new(
                Setting::SharedCodebook,
                format!("shrinks {}; the ops and fused forms compute every subspace's own representatives", compact()),
            ));
        }
        Ok(ConvertOptions {
            selection: self.selection,
            params,
            input_shapes: self.input_shapes,
            external: self.external,
            calibration: self.calibration,
            target_speedup: self.target_speedup,
            target_compression: self.target_compression,
            measure_latency: self.measure_latency,
            form,
            finetune: self.finetune,
            engine: self.engine,
            int8: self.int8,
        })
    }

    /// The clustering parameters, with the defaults that depend on the other settings.
    fn cluster_params(&self) -> ClusterParams {
        let c = &self.clustering;
        // A size budget without a method asks for the smallest files: palettes, the best accuracy
        // per byte measured (BENCHMARKS.md, "Shared codebooks"; docs/RESULTS.md, "end-to-end
        // weighting").
        let shared = c.shared_codebook || (self.target_compression.is_some() && c.method.is_none());
        let method = match (c.method, shared) {
            (Some(m), _) => m,
            (None, true) => Method::Vq,
            (None, false) => Method::Dl,
        };
        let mut params = ClusterParams::new(method, c.ratio);
        let budget = self.target_speedup.is_some() || self.target_compression.is_some();
        params.subspace = match (c.subspace, shared) {
            (Some(n), _) => n,
            (None, true) => SHARED_SUBSPACE,
            (None, false) => params.subspace,
        };
        params.c = match (c.c, budget) {
            (Some(c), _) => c,
            (None, true) => BUDGET_C,
            (None, false) => params.c,
        };
        params.alpha = c.alpha;
        params.iters = c.iters;
        params.seed = c.seed;
        params.k = c.k;
        params.l = c.l;
        params.shared = shared;
        params.channel_scale = c.channel_scale;
        // The int8 output rounds every rebuilt kernel to 8 bits: float16 palette entries lose
        // nothing there and halve the palettes' bytes, which the size budget spends on larger K.
        params.f16_palette = c.f16_palette || (self.int8.is_some() && shared);
        params
    }

    /// The form asked for, or the compact form for a size budget (the only form it suits).
    fn output_form(&self) -> Result<OutputForm, InvalidSetting> {
        match (self.form, self.target_compression.is_some()) {
            (None | Some(OutputForm::Dense), true) => Ok(OutputForm::Dense),
            (Some(other), true) => Err(InvalidSetting::new(
                Setting::TargetCompression,
                format!(
                    "shrinks the compact form ({} dense), not {} {}",
                    setting::name(Setting::Form),
                    setting::name(Setting::Form),
                    other.name()
                ),
            )),
            (None, false) => Ok(OutputForm::Ops),
            (Some(form), false) => Ok(form),
        }
    }
}
