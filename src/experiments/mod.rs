//! The paper's experiments: one layer's error over ratios and settings ([`sweep`], Experiment
//! I) and whole-model accuracy converted stage after stage ([`stages`], Experiment II).

pub mod stages;
pub mod sweep;
