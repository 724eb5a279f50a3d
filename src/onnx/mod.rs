//! The ONNX layer: the file format and the graph's own vocabulary, with no knowledge of
//! clustering or engines. Loading and saving ([`model`]), tensor payloads ([`tensor`]), Conv
//! attributes ([`conv`]), structural checks before an engine sees a model ([`validate`]) and
//! the builders of attributes and nodes ([`build`]).

pub mod build;
pub mod conv;
pub mod model;
pub mod tensor;
pub mod validate;
