//! Where the library's logs, progress and errors reach the user: a `log` sink on stderr whose
//! level `-v`/`-q` set, progress bars (indicatif) on stderr when it is a terminal, and errors
//! rendered with the flags that set the offending values.

use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressDrawTarget, ProgressStyle};
use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::budget::BudgetError;
use crate::codebook::SizeError;
use crate::engine::memory::MemoryError;
use crate::progress::{self, ProgressBar, ProgressSink};
use crate::setting::{InvalidSetting, Setting};

/// Bars and log lines share stderr: log lines are printed above the bars, not through them.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Our own records at the chosen level; the dependencies' (tract's opset notes and the like)
/// only at `-vv`, where everything is shown.
struct StderrLog {
    others: LevelFilter,
}

impl Log for StderrLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        let ours = metadata.target().starts_with("onnx_dlq");
        let max = if ours { log::max_level() } else { self.others };
        metadata.level() <= max
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = match record.level() {
            Level::Error => format!("error: {}", record.args()),
            Level::Warn => format!("warning: {}", record.args()),
            _ => record.args().to_string(),
        };
        bars().suspend(|| eprintln!("{line}"));
    }

    fn flush(&self) {}
}

struct Bars;

struct Bar {
    bar: indicatif::ProgressBar,
    label: String,
}

impl ProgressSink for Bars {
    fn start(&self, label: &str, total: u64) -> Box<dyn ProgressBar> {
        let style = ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        let bar = bars().add(indicatif::ProgressBar::new(total).with_style(style));
        bar.set_message(label.to_string());
        Box::new(Bar {
            bar,
            label: label.to_string(),
        })
    }
}

impl ProgressBar for Bar {
    fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn note(&self, text: &str) {
        self.bar.set_message(format!("{} {text}", self.label));
    }
}

/// Installs the log sink at the level `-v` (count) and `-q` ask for, and the progress bars
/// (drawn only when stderr is a terminal; `-q` hides them).
pub fn install(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => LevelFilter::Warn,
        (false, 0) => LevelFilter::Info,
        (false, 1) => LevelFilter::Debug,
        (false, _) => LevelFilter::Trace,
    };
    let others = match level {
        LevelFilter::Trace => LevelFilter::Trace,
        _ => LevelFilter::Off,
    };
    // A front end that runs several commands in one process (the Python package) installs the
    // sinks once and sets each command's level and bars anew.
    let _ = log::set_boxed_logger(Box::new(StderrLog { others }));
    log::set_max_level(level);
    bars().set_draw_target(match quiet {
        true => ProgressDrawTarget::hidden(),
        false => ProgressDrawTarget::stderr(),
    });
    progress::install(Box::new(Bars));
    crate::setting::install_namer(flag);
}

/// The flag that sets `setting`.
pub fn flag(setting: Setting) -> &'static str {
    match setting {
        Setting::Ratio => "--ratio",
        Setting::Method => "--method",
        Setting::Subspace => "--subspace",
        Setting::C => "--c",
        Setting::Alpha => "--alpha",
        Setting::K => "--k",
        Setting::L => "--l",
        Setting::Iters => "--iters",
        Setting::KmeansIters => "(the k-means iteration count)",
        Setting::TargetSpeedup => "--target-speedup",
        Setting::TargetCompression => "--target-compression",
        Setting::CalibSamples => "--calib-samples",
        Setting::Ratios => "--ratios",
        Setting::Stages => "--stages",
        Setting::Methods => "--methods",
        Setting::Samples => "--samples",
        Setting::Skip => "--skip",
        Setting::InputShape => "--input-shape",
        Setting::ChannelScale => "--channel-scale",
        Setting::F16Palette => "--f16-palette",
        Setting::MaxMemory => "--max-memory",
        Setting::FinetuneSamples => "--finetune-samples",
        Setting::SharedCodebook => "--shared-codebook",
        Setting::Form => "--form",
        Setting::ExcludeFc => "--exclude-fc",
        Setting::Engine => "--engine",
        Setting::CalibSelect => "--calib-select",
        Setting::Epochs => "--epochs",
        Setting::Batch => "--batch",
        Setting::LearningRate => "--lr",
        Setting::SoftTemperature => "--soft-temperature",
        Setting::SoftAssignments => "--soft-assignments",
        Setting::FinetuneLabels => "--finetune-labels",
        Setting::KeepOnDivergence => "--finetune-keep-on-divergence",
        Setting::Finetune => "--finetune",
        Setting::Int8 => "--int8",
        Setting::Calibrate => "--calibrate DIR --preprocess SPEC.json",
    }
}

/// One level of an error chain in the CLI's words: invalid settings named by their flag, the
/// flags that would lift a size rule's failure, the budget's flag.
fn render_level(e: &(dyn std::error::Error + 'static)) -> String {
    if let Some(s) = e.downcast_ref::<InvalidSetting>() {
        return format!("{} {}", flag(s.setting), s.requirement);
    }
    if let Some(s) = e.downcast_ref::<SizeError>() {
        let flags: Vec<&str> = s.remedies().iter().map(|&r| flag(r)).collect();
        return format!("{s} [{}]", flags.join(", "));
    }
    if let Some(m) = e.downcast_ref::<MemoryError>() {
        let flags: Vec<&str> = m.remedies.iter().map(|&r| flag(r)).collect();
        return match flags.is_empty() {
            true => m.to_string(),
            false => format!("{m} [{}]", flags.join(", ")),
        };
    }
    if let Some(BudgetError::Unreachable { setting, .. }) = e.downcast_ref::<BudgetError>() {
        return format!("{}: {e}", flag(*setting));
    }
    e.to_string()
}

/// Whether `e` is about the user's settings (a flag clap or the command refused, a value out of
/// range, a budget no setting reaches) rather than the model, the data or the machine.
pub fn is_usage_error(e: &anyhow::Error) -> bool {
    e.chain().any(|level| {
        level.is::<clap::Error>()
            || level.is::<UsageError>()
            || level.is::<InvalidSetting>()
            || level.is::<SizeError>()
            || matches!(
                level.downcast_ref::<BudgetError>(),
                Some(BudgetError::Unreachable { .. })
            )
    })
}

/// The whole error chain on one line, as `{:#}` prints it, each level in the CLI's words.
pub fn render_error(e: &anyhow::Error) -> String {
    e.chain().map(render_level).collect::<Vec<_>>().join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codebook::{ClusterParams, Method};

    /// The library says what is wrong in the domain's words; the CLI names the flag.
    #[test]
    fn invalid_settings_are_printed_with_their_flag() {
        let e = ClusterParams::new(Method::Dl, 1.0).check().unwrap_err();
        assert!(!e.to_string().contains("--"), "{e}");
        assert!(e
            .to_string()
            .starts_with("the acceleration ratio ρ must be above 1"));
        let chained = anyhow::Error::new(e).context("converting `m.onnx`");
        assert_eq!(
            render_error(&chained),
            "converting `m.onnx`: --ratio must be above 1 (an acceleration), got 1"
        );
    }

    #[test]
    fn size_rule_failures_list_the_flags_that_lift_them() {
        let params = ClusterParams::new(Method::Dl, 10.0).check().unwrap();
        let e = params.sizes(32, 3, 9).unwrap_err();
        let chained = anyhow::Error::new(e).context("layer `conv1`");
        let text = render_error(&chained);
        assert!(
            text.starts_with("layer `conv1`: N′ = 8 is larger"),
            "{text}"
        );
        assert!(text.ends_with("[--subspace]"), "{text}");
    }
}

/// Flags that parse but cannot work together (`--int8` without `--calibrate`, say): clap's own
/// usage errors' sibling, found once the arguments are read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
