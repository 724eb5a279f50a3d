//! What a conversion reports: per layer (K, L, achieved ρ, weight and output error,
//! multiplications), the layers left original, the allocation, model totals and file sizes;
//! rendered as a table or serialized as JSON. Also the settings each converted layer records in
//! the model's metadata.

use serde::{Deserialize, Serialize};

use crate::analysis::cost::millions;
use crate::budget::{Allocation, Unit};
use crate::codebook::{ClusterParams, Method};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerReport {
    pub name: String,
    pub kernel: [usize; 4],
    pub method: Method,
    pub subspaces: usize,
    pub k_vq: usize,
    pub k: usize,
    pub l: usize,
    pub alpha: Option<usize>,
    pub relative_error: f64,
    pub multiplications_before: u64,
    pub multiplications_after: u64,
    pub additions_after: u64,
    /// multiplications_before / multiplications_after, as counted on the graphs.
    pub achieved_ratio: f64,
    /// False when shape inference did not reach the layer (a dynamic input, say): the three
    /// counts above are then not figures, and the table shows `?`.
    #[serde(default = "known_by_default")]
    pub multiplications_known: bool,
    pub seconds: f64,
    /// With calibration: the relative output error on the calibration inputs of the
    /// calibrated codebook, and of the plain (weight-error) one for comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_error: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_error_uncalibrated: Option<f64>,
    /// With calibration's refit: the relative output error on the full input patches
    /// (against the original model's layer output) before and after it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refit: Option<crate::calibrate::RefitOutcome>,
    /// The palette kept per-channel scales (`--channel-scale`; only where they lowered the
    /// error).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub channel_scale: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkippedLayer {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvertReport {
    pub input: String,
    pub output: String,
    pub params: ClusterParams,
    pub layers: Vec<LayerReport>,
    pub skipped: Vec<SkippedLayer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
    pub multiplications_before: u64,
    pub multiplications_after: u64,
    pub speedup: f64,
    /// Why the model's counts are incomplete, when they are (then `speedup` is not a figure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts_unknown: Option<String>,
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
    pub external_data: Option<String>,
    /// Measured after converting (unless asked not to): the counted saving is not a wall-clock
    /// saving in the standard-operator form, and the user should know before shipping it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyCheck>,
    /// The process's peak resident memory over the conversion, when the system says.
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
    /// With `--finetune`: loss and held-out agreement per epoch, and the epoch kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<crate::finetune::FinetuneReport>,
    /// With `--int8`: which layers run in int8, which stayed float and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<crate::quantize::Int8Report>,
}

/// Single-threaded latency of the original and the converted model in tract, batch 1, on one
/// seeded random input (median of `runs` timed runs after a warm-up).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencyCheck {
    pub engine: String,
    /// Alternating pairs of runs timed (after untimed warm-up pairs).
    pub runs: usize,
    pub original_ms: f64,
    pub converted_ms: f64,
    /// The standard error of the pairs' median difference: differences within twice it are
    /// noise.
    #[serde(default)]
    pub standard_error_ms: f64,
    /// The two run at the same speed as far as these runs can tell.
    #[serde(default)]
    pub within_noise: bool,
}

impl LatencyCheck {
    /// How the converted model compares, in words: "75.2x slower", "1.30x faster" or "the same
    /// speed within noise".
    pub fn verdict(&self) -> String {
        let ratio = self.converted_ms / self.original_ms.max(1e-9);
        match (self.within_noise, ratio >= 1.0) {
            (true, _) => format!(
                "the same speed within noise, ±{:.3} ms",
                2.0 * self.standard_error_ms
            ),
            (false, true) => format!("{ratio:.2}x slower"),
            (false, false) => format!("{:.2}x faster", 1.0 / ratio),
        }
    }
}

pub use crate::lower::LayerSettings;

fn known_by_default() -> bool {
    true
}

/// `figure` when it was counted, `?` otherwise.
fn known(counted: bool, figure: String) -> String {
    match counted {
        true => figure,
        false => "?".into(),
    }
}

pub fn render(r: &ConvertReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "layer\tkernel\tmethod\tS\tK_vq\tK\tL\trel.error\tmults before\tmults after\tachieved ρ"
    );
    for l in &r.layers {
        let _ = writeln!(
            s,
            "{}\t{}x{}x{}x{}\t{}\t{}\t{}\t{}\t{}\t{:.4}\t{}\t{}\t{}",
            l.name,
            l.kernel[0],
            l.kernel[1],
            l.kernel[2],
            l.kernel[3],
            match l.channel_scale {
                true => format!("{}+scale", l.method.as_str()),
                false => l.method.as_str().to_string(),
            },
            l.subspaces,
            l.k_vq,
            l.k,
            l.l,
            l.relative_error,
            known(l.multiplications_known, millions(l.multiplications_before)),
            known(l.multiplications_known, millions(l.multiplications_after)),
            known(l.multiplications_known, format!("{:.2}", l.achieved_ratio))
        );
    }
    for sk in &r.skipped {
        let _ = writeln!(s, "skipped {}: {}", sk.name, sk.reason);
    }
    let counts = match &r.counts_unknown {
        None => format!(
            "{} -> {} multiplications ({:.3}x fewer)",
            millions(r.multiplications_before),
            millions(r.multiplications_after),
            r.speedup
        ),
        Some(why) => format!("multiplications not counted: {why}"),
    };
    let _ = writeln!(
        s,
        "model: {counts}; file {} -> {} bytes{}",
        r.file_bytes_before,
        r.file_bytes_after,
        r.external_data
            .as_ref()
            .map(|e| format!(" (tensors in {e})"))
            .unwrap_or_default()
    );
    if let Some(p) = r.allocation.as_ref().and_then(|a| a.measured.as_ref()) {
        let _ = match p.unit {
            Unit::Milliseconds => writeln!(
                s,
                "latency budget ({}): original {:.3} ms, predicted {:.3} ms ({:.2}x)",
                p.source.as_deref().unwrap_or("per-layer timings"),
                p.original,
                p.predicted,
                p.original / p.predicted
            ),
            Unit::Bytes => writeln!(
                s,
                "size budget (stored bytes): original {:.0}, predicted {:.0} ({:.2}x smaller)",
                p.original,
                p.predicted,
                p.original / p.predicted
            ),
        };
    }
    if let Some(q) = &r.int8 {
        render_int8(&mut s, q);
    }
    if let Some(l) = &r.latency {
        let _ = writeln!(
            s,
            "latency in {} (1 thread, batch 1, medians of {} alternating runs): original {:.3} ms, converted {:.3} ms ({})",
            l.engine,
            l.runs,
            l.original_ms,
            l.converted_ms,
            l.verdict()
        );
    }
    if let Some(bytes) = r.peak_memory_bytes {
        let _ = writeln!(s, "peak memory {:.0} MB", bytes as f64 / 1e6);
    }
    let _ = writeln!(s, "wrote {}", r.output);
    s
}

/// The int8 rewrite's summary: layers in int8, the ones left float and why.
fn render_int8(s: &mut String, q: &crate::quantize::Int8Report) {
    use std::fmt::Write as _;
    let upgraded = q
        .upgraded_from_opset
        .map(|o| {
            let to = crate::quantize::upgrade::QDQ_OPSET;
            format!("; upgraded from opset {o} to {to}")
        })
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "int8: {} layers with int8 weights, {} activations quantized ({:?}, {} ranges on {} images){upgraded}",
        q.int8_layers.len(),
        q.quantized_tensors,
        q.activation,
        q.calibration_method,
        q.calibration_images
    );
    for f in &q.float_layers {
        let _ = writeln!(s, "int8: {} stays float: {}", f.name, f.reason);
    }
}
