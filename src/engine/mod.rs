//! Engines that run ONNX models: tract today ([`runner`]), so that shapes can be inferred,
//! calibration statistics collected and accuracy measured.

pub mod dlq_op;
pub mod runner;
