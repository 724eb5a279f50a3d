//! The wiring every output form shares, and nothing form-specific: the node and initializer
//! toolkit ([`builder`]), what a form reads of a layer ([`layer`]), the codebook as stored
//! tables ([`tables`], the fused and compact forms), and the fully connected wrapping of a
//! form's 1×1 Conv ([`fc`], the standard-operator and fused forms).

pub mod builder;
pub mod fc;
pub mod layer;
pub mod tables;
