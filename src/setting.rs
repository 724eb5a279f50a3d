//! The user's settings by name, and the typed error a library function returns when one of them
//! is invalid. The library says what is wrong in the domain's words ("the acceleration ratio ρ
//! must be above 1"); the CLI maps a [`Setting`] to its flag (`--ratio`).

use std::fmt;
use std::sync::OnceLock;

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
    SharedCodebook,
    Form,
    ExcludeFc,
    Engine,
    CalibSelect,
    Epochs,
    Batch,
    LearningRate,
    SoftTemperature,
    SoftAssignments,
    FinetuneLabels,
    KeepOnDivergence,
    Finetune,
    Int8,
    Calibrate,
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
            Setting::SharedCodebook => "a shared codebook",
            Setting::Form => "the output form",
            Setting::ExcludeFc => "leaving fully connected layers out",
            Setting::Engine => "the engine",
            Setting::CalibSelect => "the choice of calibration images",
            Setting::Epochs => "the number of epochs",
            Setting::Batch => "the batch size",
            Setting::LearningRate => "the learning rate",
            Setting::SoftTemperature => "the soft-assignment temperature",
            Setting::SoftAssignments => "soft assignments",
            Setting::FinetuneLabels => "training on the labels",
            Setting::KeepOnDivergence => "keeping the best parameters when training diverges",
            Setting::Finetune => "fine-tuning",
            Setting::Int8 => "the int8 output",
            Setting::Calibrate => "calibration images",
        }
    }
}

/// How the front end names a setting in messages (the command line: its flag).
static NAMER: OnceLock<fn(Setting) -> &'static str> = OnceLock::new();

/// Installs how settings are named in the library's messages for the rest of the process;
/// `false` if a namer was installed already. Without one, [`Setting::describe`] names them.
pub fn install_namer(namer: fn(Setting) -> &'static str) -> bool {
    NAMER.set(namer).is_ok()
}

/// `setting` as the front end names it: `--input-shape` on the command line, "the input
/// shape" for a library user that installed no namer. Messages that point at another setting
/// than the one they are about name it through this.
pub fn name(setting: Setting) -> &'static str {
    match NAMER.get() {
        Some(namer) => namer(setting),
        None => setting.describe(),
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
