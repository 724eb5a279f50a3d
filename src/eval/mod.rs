//! Measuring models: labelled image sets and preprocessing ([`data`]), and the comparison of an
//! original with its conversion — accuracy, agreement, output error, latency ([`verify`]).

pub mod approx;
pub mod data;
pub mod seen;
pub mod verify;
