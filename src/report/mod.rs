//! Reports on models for people and machines: the `inspect` table ([`inspect`]) and the
//! comparison of two models ([`diff`]).

pub mod diff;
pub mod inspect;
