//! Measuring models: labelled image sets and preprocessing ([`data`]), image folders as inputs
//! ([`images`]), and the comparison of an original with its conversion — accuracy, agreement,
//! output error, latency ([`verify`]).

pub mod approx;
pub mod data;
pub mod images;
pub mod seen;
pub mod verify;
