//! Engines that run ONNX models: tract ([`runner`]), which also infers shapes and collects
//! calibration statistics, and ONNX Runtime ([`ort`]), loaded at run time, where users deploy.

pub mod dlq_op;
pub mod ort;
pub mod runner;

use anyhow::Result;
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
            Engine::Tract => "tract 0.23.9".into(),
            Engine::Ort => format!("ONNX Runtime {}", ort::runtime()?.1),
        })
    }
}

/// A model prepared for one input shape in either engine.
pub trait Run: Sync {
    /// The first output for input `x`, as f32.
    fn run(&self, x: &ArrayD<f32>) -> Result<ArrayD<f32>>;
}

impl Run for runner::Runner {
    fn run(&self, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        runner::Runner::run(self, x)
    }
}

impl Run for ort::OrtRunner {
    fn run(&self, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        ort::OrtRunner::run(self, x)
    }
}

/// `model` prepared in `engine` for inputs of `input_shape`.
pub fn prepare(engine: Engine, model: &OnnxModel, input_shape: &[usize]) -> Result<Box<dyn Run>> {
    Ok(match engine {
        Engine::Tract => Box::new(runner::Runner::new(model, input_shape)?),
        Engine::Ort => Box::new(ort::OrtRunner::new(model, input_shape)?),
    })
}
