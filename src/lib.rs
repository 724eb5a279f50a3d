//! onnx-dlq: accelerate convolutional networks by clustering their convolution kernels.
//!
//! The pipeline, one module per step: [`model`] (load/save) → [`select`] (which Conv layers)
//! → cluster → rewrite → verify → report. [`shapes`] and [`cost`] serve every step with
//! inferred tensor shapes and multiplication counts.

// Numeric kernels index several arrays with one loop variable; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]

pub mod budget;
pub mod calibrate;
pub mod cli;
pub mod codebook;
pub mod conv;
pub mod convert;
pub mod cost;
pub mod data;
pub mod diff;
pub mod harness;
pub mod inspect;
pub mod model;
pub mod rewrite;
pub mod runner;
pub mod select;
pub mod shapes;
pub mod stages;
pub mod sweep;
pub mod tensor;
pub mod validate;
pub mod verify;

/// ONNX protobuf messages, generated from `proto/onnx.proto` at build time.
#[allow(clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
