//! The user's settings by name, and the typed error a library function returns when one of them
//! is invalid. The library says what is wrong in the domain's words ("the acceleration ratio ρ
//! must be above 1"); the CLI maps a [`Setting`] to its flag (`--ratio`).

use std::fmt;

/// A setting a user chooses, whatever front end sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    Ratio,
    Method,
    Subspace,
    C,
    Alpha,
    K,
    L,
    Iters,
    KmeansIters,
    TargetSpeedup,
    TargetCompression,
    CalibSamples,
    Ratios,
    Stages,
    Methods,
    Samples,
    Skip,
    InputShape,
    ChannelScale,
    F16Palette,
    MaxMemory,
    FinetuneSamples,
}

impl Setting {
    /// The setting in the domain's words.
    pub fn describe(self) -> &'static str {
        match self {
            Setting::Ratio => "the acceleration ratio ρ",
            Setting::Method => "the method",
            Setting::Subspace => "the subspace dimension N′",
            Setting::C => "c = K/K_vq",
            Setting::Alpha => "the sparsity α",
            Setting::K => "K",
            Setting::L => "L",
            Setting::Iters => "the dictionary-learning iteration count",
            Setting::KmeansIters => "the k-means iteration count",
            Setting::TargetSpeedup => "the target speed-up",
            Setting::TargetCompression => "the target compression",
            Setting::CalibSamples => "the number of calibration images",
            Setting::Ratios => "the list of ratios",
            Setting::Stages => "the list of stages",
            Setting::Methods => "the list of methods",
            Setting::Samples => "the number of samples",
            Setting::Skip => "the number of images skipped",
            Setting::InputShape => "the input shape",
            Setting::ChannelScale => "the per-channel scale",
            Setting::F16Palette => "the float16 palette",
            Setting::MaxMemory => "the memory cap",
            Setting::FinetuneSamples => "the number of fine-tuning images",
        }
    }
}

/// A setting whose value cannot be used: `requirement` says what it must be (and what it was).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct InvalidSetting {
    pub setting: Setting,
    pub requirement: String,
}

impl InvalidSetting {
    pub fn new(setting: Setting, requirement: impl Into<String>) -> Self {
        InvalidSetting {
            setting,
            requirement: requirement.into(),
        }
    }
}

impl fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.setting.describe(), self.requirement)
    }
}

/// `Err(InvalidSetting)` unless `ok`.
pub fn require(
    ok: bool,
    setting: Setting,
    requirement: impl FnOnce() -> String,
) -> Result<(), InvalidSetting> {
    match ok {
        true => Ok(()),
        false => Err(InvalidSetting::new(setting, requirement())),
    }
}
