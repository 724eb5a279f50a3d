//! Engines that run ONNX models: tract ([`runner`]), built in, which also infers shapes, and
//! ONNX Runtime ([`ort`]), loaded at run time, where users deploy and which runs what tract
//! cannot. Either runs the comparisons, calibration statistics and timings ([`Run`]).

pub mod dlq_op;
pub mod memory;
pub mod ort;
pub mod runner;

use anyhow::{Context, Result};
use ndarray::ArrayD;
use serde::Serialize;

use crate::onnx::model::OnnxModel;

/// The engine that runs the models of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// tract, built in.
    #[default]
    Tract,
    /// ONNX Runtime, loaded at run time (ORT_DYLIB_PATH, or the onnxruntime Python package).
    Ort,
}

impl Engine {
    /// The engine's name and version, for reports.
    pub fn describe(self) -> Result<String> {
        Ok(match self {
            Engine::Tract => format!("tract {}", env!("ONNX_DLQ_TRACT_VERSION")),
            Engine::Ort => format!("ONNX Runtime {}", ort::runtime()?.1),
        })
    }
}

/// A model prepared for one input shape in either engine.
pub trait Run: Sync {
    /// The first output for input `x`, as f32.
    fn run(&self, x: &ArrayD<f32>) -> Result<ArrayD<f32>>;
    /// Every output (or every exposed tensor) for input `x`, as f32, in order.
    fn run_all(&self, x: &ArrayD<f32>) -> Result<Vec<ArrayD<f32>>>;
}

impl Run for runner::Runner {
    fn run(&self, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        runner::Runner::run(self, x)
    }
    fn run_all(&self, x: &ArrayD<f32>) -> Result<Vec<ArrayD<f32>>> {
        runner::Runner::run_all(self, x)
    }
}

impl Run for ort::OrtRunner {
    fn run(&self, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        ort::OrtRunner::run(self, x)
    }
    fn run_all(&self, x: &ArrayD<f32>) -> Result<Vec<ArrayD<f32>>> {
        ort::OrtRunner::run_all(self, x)
    }
}

/// `model` prepared in `engine` for inputs of `input_shape`.
pub fn prepare(engine: Engine, model: &OnnxModel, input_shape: &[usize]) -> Result<Box<dyn Run>> {
    prepare_with_outputs(engine, model, input_shape, &[])
}

/// Like [`prepare`], but the named tensors are the outputs, when `outputs` is not empty.
pub fn prepare_with_outputs(
    engine: Engine,
    model: &OnnxModel,
    input_shape: &[usize],
    outputs: &[String],
) -> Result<Box<dyn Run>> {
    Ok(match engine {
        Engine::Tract => Box::new(runner::Runner::with_outputs(model, input_shape, outputs)?),
        Engine::Ort => Box::new(ort::OrtRunner::with_outputs(model, input_shape, outputs)?),
    })
}

/// `model` prepared in the engine asked for; otherwise in tract, or in ONNX Runtime when tract
/// cannot run the model and ONNX Runtime is there (logged); otherwise tract's error, saying
/// what would help.
pub fn prepare_in_either(
    requested: Option<Engine>,
    model: &OnnxModel,
    input_shape: &[usize],
) -> Result<(Engine, Box<dyn Run>)> {
    if let Some(engine) = requested {
        return Ok((engine, prepare(engine, model, input_shape)?));
    }
    let tract_error = match runner::Runner::new(model, input_shape) {
        Ok(r) => return Ok((Engine::Tract, Box::new(r))),
        Err(e) => e,
    };
    let shown = model.path.display();
    let version = match ort::runtime() {
        Ok((_, version)) => version,
        Err(ort_error) => {
            let why = format!(
                "tract cannot run {shown}, and ONNX Runtime, which may, is not available ({ort_error:#})"
            );
            return Err(tract_error.context(why));
        }
    };
    log::warn!("tract cannot run {shown} ({tract_error:#}); using ONNX Runtime {version} instead");
    let runner = ort::OrtRunner::new(model, input_shape).with_context(|| {
        format!("ONNX Runtime cannot run {shown} either (tract: {tract_error:#})")
    })?;
    Ok((Engine::Ort, Box::new(runner)))
}
