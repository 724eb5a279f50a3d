//! onnx-dlq: accelerate convolutional networks by clustering their convolution kernels.
//!
//! The folders are the pipeline's layers, each using only the ones before it:
//! [`onnx`] (the file format) → [`codebook`] (clustering, pure arithmetic) → [`engine`]
//! (running models in tract) → [`analysis`] (shapes, cost, which layers) → [`lower`] (codebooks
//! into graph edits, one folder per output form) → [`eval`] (data sets, verification) →
//! [`calibrate`] (output-aware codebooks) → [`quantize`] (the int8 QDQ output) → [`budget`]
//! (the model-wide speed and size budgets) → [`finetune`] (distillation fine-tuning on candle)
//! → [`convert`] (the driver: plan → learn → lower → recount) → [`report`] (inspect, diff) →
//! [`experiments`] (sweep, stages) → [`cli`]. [`progress`] and [`setting`] (progress
//! reporting, typed invalid-setting errors) are the services every layer may use;
//! `tests/layering.rs`
//! checks the rule. See docs/ARCHITECTURE.md.

// Numeric kernels index several arrays with one loop variable; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]

pub mod analysis;
pub mod budget;
pub mod calibrate;
pub mod cli;
pub mod codebook;
pub mod convert;
pub mod engine;
pub mod eval;
pub mod experiments;
pub mod finetune;
pub mod harness;
pub mod lower;
pub mod onnx;
pub mod progress;
pub mod quantize;
pub mod report;
pub mod setting;

/// ONNX protobuf messages, generated from `proto/onnx.proto` at build time.
#[allow(clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
