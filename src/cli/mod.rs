//! Command-line interface: argument definitions (clap derive), settings checked into the
//! library's validated types, and dispatch. Results go to stdout; logs, progress bars and
//! errors to stderr ([`sink`]).

/// Returns a [`UsageError`] from the enclosing function, formatted as `format!` does.
macro_rules! usage {
    ($($message:tt)*) => {
        return Err(UsageError(format!($($message)*)).into())
    };
}

mod run;
pub mod sink;

pub use run::{main, run};
pub use sink::{is_usage_error, render_error, UsageError};

/// A size in bytes: a number with an optional unit, K/M/G/T (powers of 1000, `B` optional) or
/// KiB/MiB/GiB/TiB (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 4G, 512M, 3.5GiB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024f64.powi(2),
        "gib" => 1024f64.powi(3),
        "tib" => 1024f64.powi(4),
        other => {
            return Err(format!(
                "`{other}` is not a unit of size (K, M, G, T, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let bytes = value * scale;
    match bytes >= 1.0 && bytes < u64::MAX as f64 {
        true => Ok(bytes as u64),
        false => Err(format!("`{text}` is not a usable amount of memory")),
    }
}

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::analysis::inventory;
use crate::analysis::shapes::InputShape;
use crate::calibrate::{self, CalibrationOptions};
use crate::codebook::{ClusterParams, Method};
use crate::convert::{self, ClusterRequest, ConvertRequest, OutputForm, Selection};
use crate::engine::Engine;
use crate::eval::seen::ImageSelection;
use crate::finetune::FinetuneOptions;
use crate::onnx::model::ExternalData;
use crate::quantize::{ActivationType, Int8Options};
use crate::{
    eval::verify, experiments::stages, experiments::sweep, onnx::model, report::diff,
    report::inspect,
};

#[derive(Debug, Parser)]
#[command(
    name = "onnx-dlq",
    version,
    about = "Make CNNs cheaper: cluster Conv kernels into dictionary-learned codebooks, ONNX in, ONNX out",
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "The bare form `onnx-dlq IN OUT --layers a,b` is the convert command."
)]
pub struct Cli {
    /// More detail on stderr (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors on stderr, no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Memory this run may use (e.g. 4G, 512M, 3.5GiB; bytes without a unit): a step that would
    /// need more (images loaded for calibration, fine-tuning or evaluation; timing a large
    /// model) stops, or is skipped, before it starts. Default: what the system can give
    /// (MemAvailable, ulimit -v, the cgroup's memory.max).
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub convert: ConvertArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the model's convolutions: geometry, cost, share, convertibility.
    Inspect(InspectArgs),
    /// Replace Conv layers by clustered (DL or VQ) subgraphs (also the bare form).
    Convert(ConvertArgs),
    /// Compare two models: nodes per op type, initializer bytes, multiplications per layer.
    Diff(DiffArgs),
    /// Relative weight error of VQ and DL over ratios for one layer (the paper's Experiment I).
    Sweep(SweepArgs),
    /// Run the original and the converted model (tract or ONNX Runtime): accuracy, agreement, cost, latency.
    Verify(VerifyArgs),
    /// Accuracy after converting stage after stage, per method and ratio (the paper's Experiment II).
    Stages(StagesArgs),
    /// Fine-tune an already converted model by distillation from the original (its graph kept).
    Finetune(FinetuneCmdArgs),
}

/// The clustering method, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    /// k-means centroids (the VQ baseline).
    Vq,
    /// Sparse combinations of a learned dictionary (the paper's method).
    Dl,
}

impl From<MethodArg> for Method {
    fn from(m: MethodArg) -> Method {
        match m {
            MethodArg::Vq => Method::Vq,
            MethodArg::Dl => Method::Dl,
        }
    }
}

/// The output form of converted layers, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormArg {
    /// Standard ONNX operators (the default).
    Ops,
    /// One custom `DlqConv` node per layer.
    Fused,
    /// The original Conv, its kernel rebuilt from the stored codebook (smaller file).
    Dense,
}

impl From<FormArg> for OutputForm {
    fn from(form: FormArg) -> OutputForm {
        match form {
            FormArg::Ops => OutputForm::Ops,
            FormArg::Fused => OutputForm::Fused,
            FormArg::Dense => OutputForm::Dense,
        }
    }
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Concrete shape for a model input, NAME=D1,D2,... (needed for dynamic spatial sizes).
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    pub input_shape: Vec<InputShape>,
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The ONNX model to convert.
    #[arg(required = true)]
    pub input: Option<PathBuf>,
    /// Where to write the converted model (never the input).
    #[arg(required = true)]
    pub output: Option<PathBuf>,
    /// Layers to convert, by node, output or weight name (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "all",
        required_unless_present_any = ["all", "target_speedup", "target_compression"]
    )]
    pub layers: Vec<String>,
    /// Convert every eligible layer: Conv, and fully connected (Gemm, MatMul with a constant
    /// weight) unless --exclude-fc (the others are listed with the reason).
    #[arg(long)]
    pub all: bool,
    /// With --all, --target-speedup or --target-compression: leave fully connected layers
    /// (Gemm, MatMul) original.
    #[arg(long, conflicts_with = "layers")]
    pub exclude_fc: bool,
    /// dl: the paper's dictionary learning; vq: plain k-means (the baseline). Default dl, or
    /// vq with --shared-codebook.
    #[arg(long, value_enum)]
    pub method: Option<MethodArg>,
    /// Target acceleration ρ of each converted layer.
    #[arg(long, default_value_t = 10.0)]
    pub ratio: f64,
    /// Instead of one --ratio: a whole-model multiplication reduction to reach, with a ρ per
    /// layer chosen from measured sensitivities (among --layers, or every eligible layer);
    /// layers that do not pay off stay original. Best with --calibrate.
    #[arg(long, value_name = "X", conflicts_with_all = ["ratio", "k", "l"])]
    pub target_speedup: Option<f64>,
    /// Instead of one --ratio: stored tensor bytes X× fewer with the compact form (implies
    /// --form dense), a ρ per layer chosen from measured sensitivities (among --layers, or every
    /// eligible layer) by bytes saved per unit of error. Without --method it implies
    /// --shared-codebook (palettes: the best accuracy per byte measured); with --method, per-
    /// subspace codebooks. Best with --calibrate.
    #[arg(
        long,
        value_name = "X",
        conflicts_with_all = ["ratio", "k", "l", "target_speedup"]
    )]
    pub target_compression: Option<f64>,
    #[command(flatten)]
    pub settings: ClusterSettings,
    /// Explicit K (DL) or K_vq (VQ) instead of the rules.
    #[arg(long)]
    pub k: Option<usize>,
    /// Explicit L (DL) instead of the rules.
    #[arg(long)]
    pub l: Option<usize>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "F.json")]
    pub report: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write every tensor of at least 1 KiB to `<OUT>.data` (external data).
    #[arg(long)]
    pub external_data: bool,
    /// Concrete shape for a model input, NAME=D1,D2,... (needed for dynamic spatial sizes).
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    pub input_shape: Vec<InputShape>,
    /// Run `verify` on the result right after converting.
    #[arg(long)]
    pub verify: bool,
    /// Skip the latency check (the original and the converted model timed in tract, one
    /// thread, after writing: the standard-operator form is usually slower than the original).
    #[arg(long)]
    pub no_latency: bool,
    /// Output form: `ops`, standard ONNX operators any runtime runs; `fused`, one `DlqConv` node
    /// per layer (custom domain `ai.onnx_dlq`), run by the native kernel (onnx-dlq's tract engine;
    /// ONNX Runtime with libonnx_dlq_ort); `dense`, the compact form: the original Conv with its
    /// kernel rebuilt from the stored codebook by a constant subgraph engines fold at load (a
    /// smaller file at the original's speed).
    /// (Default `ops`; `dense` with --target-compression.)
    #[arg(long, value_enum)]
    pub form: Option<FormArg>,
    /// One codebook per layer shared by all its subspaces (a palette; with --subspace 1, scalar
    /// palettization as in Core ML or DKM): the compact form stores K·N′ values per layer
    /// instead of S·K·N′, and Γ in ⌈log2 K⌉ bits. K from --k (or the ratio rule over all the
    /// layer's sub-vectors), or per layer from --target-compression (K = 2…256). k-means (vq)
    /// only; --form dense only.
    #[arg(long)]
    pub shared_codebook: bool,
    /// Scale a palette per output channel (one float each): every channel is clustered relative
    /// to its largest weight, so one palette serves channels of different ranges (Core ML's
    /// per-channel scale). Kept per layer only where it lowers the error. Shared codebooks only.
    #[arg(long)]
    pub channel_scale: bool,
    /// Store palettes (and their scales) as float16, in half the bytes, cast back at load; the
    /// entries are rounded where they are learnt. Shared codebooks only.
    #[arg(long)]
    pub f16_palette: bool,
    /// Write the whole model as an int8 QDQ model that ONNX Runtime runs on its integer kernels:
    /// int8 weights per output channel (converted layers keep their codebook in the file and
    /// are quantized where the engine folds the kernel), int32 biases, activations quantized
    /// with ranges measured on the --calibrate images; each codebook is fitted to the inputs
    /// the int8 model gives its layer (every rounding before it simulated); palettes are
    /// stored as float16 (8-bit weights lose nothing to it). Compact form (--form dense) only.
    #[arg(long)]
    pub int8: bool,
    /// The activations' type in the int8 output: uint8 (ONNX Runtime's fastest on x86) or int8.
    #[arg(long, value_enum, default_value_t = ActivationType::Uint8, requires = "int8")]
    pub activation_type: ActivationType,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    #[command(flatten)]
    pub finetune: FinetuneArgs,
    #[command(flatten)]
    pub verify_data: VerifyData,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The original model.
    pub a: PathBuf,
    /// The converted model.
    pub b: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Concrete shape for a model input, NAME=D1,D2,...
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    pub input_shape: Vec<InputShape>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The original model.
    pub original: PathBuf,
    /// The converted model.
    pub converted: PathBuf,
    #[command(flatten)]
    pub data: VerifyData,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Concrete shape for a model input, NAME=D1,D2,... (random inputs only).
    #[arg(long = "input-shape", value_name = "NAME=DIMS")]
    pub input_shape: Vec<InputShape>,
}

/// What `verify` runs the models on (also used by `convert --verify`).
#[derive(Debug, Args)]
pub struct VerifyData {
    /// A labelled image set (labels.csv + classes.txt); needs --preprocess.
    #[arg(long, requires = "preprocess")]
    pub data: Option<PathBuf>,
    /// The preprocessing spec (JSON) for --data (and for --calibrate).
    #[arg(long, value_name = "SPEC.json")]
    pub preprocess: Option<PathBuf>,
    /// At most this many samples (default: the whole set, or 8 random inputs).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Leave out the first this many images of --data (e.g. the calibration images).
    #[arg(long, default_value_t = 0, requires = "data")]
    pub skip: usize,
    /// Timed runs per model for the latency figures.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// The engine that runs the models: tract (built in) or ONNX Runtime (loaded at run time
    /// from ORT_DYLIB_PATH, or the onnxruntime Python package's bundled library). Default:
    /// tract, or ONNX Runtime when tract cannot run the model. For convert, it also collects the
    /// calibration statistics and times the latency budget and check.
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
}

impl VerifyData {
    /// --preprocess is for --data (or --calibrate): alone it would be silently ignored.
    fn check(&self, calibrating: bool) -> Result<()> {
        if self.preprocess.is_some() && self.data.is_none() && !calibrating {
            usage!("--preprocess is given without --data (or --calibrate): nothing to preprocess");
        }
        Ok(())
    }

    fn options(&self, input_shapes: Vec<InputShape>) -> verify::VerifyOptions {
        verify::VerifyOptions {
            data: self.data.clone().zip(self.preprocess.clone()),
            samples: self.samples,
            skip: self.skip,
            runs: self.runs,
            input_shapes,
            seed: 0,
            engine: self.engine,
        }
    }
}

/// Calibration-aware codebooks (`convert` and `stages`).
#[derive(Debug, Args)]
pub struct CalibrationArgs {
    /// Learn codebooks that keep each layer's outputs close on these images (labels not
    /// needed: labels.csv's files when present, else the folder's images); needs --preprocess.
    #[arg(long, value_name = "DIR")]
    pub calibrate: Option<PathBuf>,
    /// Calibrate on this many images.
    #[arg(long, default_value_t = 256, requires = "calibrate")]
    pub calib_samples: usize,
    /// Which images: the first ones (the rest stay for `verify --skip N`), spread evenly over
    /// the folder (every class of a folder ordered by class, as CIFAR-10's is), or the last
    /// ones (the first stay for `verify --samples N`: with a `first` conversion, a two-fold
    /// evaluation over the whole folder). The output records them; `verify` and `stages`
    /// refuse to evaluate on them.
    #[arg(long, value_enum, default_value_t = ImageSelection::First, requires = "calibrate")]
    pub calib_select: ImageSelection,
    /// Also calibrate on each image mirrored left to right (twice the images, twice the
    /// calibration time): for models of photos trained with flips, as ImageNet and CIFAR
    /// classifiers are; not for text, digits or anything a mirror changes the meaning of.
    #[arg(long, requires = "calibrate")]
    pub calib_mirror: bool,
    /// Ridge added to each input covariance, relative to its mean diagonal (see
    /// `calibrate::DEFAULT_DAMPING` for how the default was measured).
    #[arg(long, default_value_t = calibrate::DEFAULT_DAMPING, requires = "calibrate")]
    pub calib_damping: f64,
    /// Keep the clustered codebooks: skip the least-squares refit of atoms, coefficients or
    /// centroids (Γ fixed) on each layer's full input patches (docs/RESULTS.md).
    #[arg(long, requires = "calibrate")]
    pub no_refit: bool,
    /// Ridge on the patch covariance in the refit, relative to its mean diagonal.
    #[arg(long, default_value_t = calibrate::refit::DEFAULT_REFIT_DAMPING, requires = "calibrate")]
    pub refit_damping: f64,
    /// Refit only the continuous values: keep the clustered assignment Γ instead of
    /// re-assigning it between refits.
    #[arg(long, requires = "calibrate")]
    pub refit_keep_assignment: bool,
    /// With --target-speedup or --target-compression: weigh every layer's own relative output
    /// error alike, instead of by how much of it reaches the model's output (measured by
    /// running the model with each layer alone approximated on 32 calibration images).
    #[arg(long, requires = "calibrate")]
    pub layer_sensitivity: bool,
}

impl CalibrationArgs {
    fn options(&self, preprocess: Option<&Path>) -> Result<Option<CalibrationOptions>> {
        let Some(dir) = &self.calibrate else {
            return Ok(None);
        };
        let Some(spec) = preprocess else {
            usage!("--calibrate needs --preprocess SPEC.json (how to turn its images into inputs)");
        };
        Ok(Some(CalibrationOptions {
            data: dir.clone(),
            preprocess: spec.to_path_buf(),
            samples: self.calib_samples,
            select: self.calib_select,
            mirror: self.calib_mirror,
            damping: self.calib_damping,
            refit: (!self.no_refit).then(|| calibrate::RefitOptions {
                damping: self.refit_damping,
                reassign: !self.refit_keep_assignment,
                ..Default::default()
            }),
            end_to_end: !self.layer_sensitivity,
        }))
    }
}

/// Distillation fine-tuning of the converted layers (`convert`).
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// Fine-tune the converted layers' atoms, coefficients, centroids and biases (Γ fixed) so
    /// that the model matches the original's outputs on these images (no labels needed; read
    /// like --calibrate's; needs --preprocess). A share is held out to keep the best epoch.
    #[arg(long, value_name = "DIR")]
    pub finetune: Option<PathBuf>,
    #[command(flatten)]
    pub training: TrainingArgs,
}

/// The training settings `convert --finetune` and `finetune` share (each command names its
/// images' folder with the argument id `finetune`, which these require).
#[derive(Debug, Args)]
pub struct TrainingArgs {
    #[arg(long, default_value_t = 3, requires = "finetune")]
    pub epochs: usize,
    /// Peak learning rate (AdamW, cosine decay to 0).
    #[arg(long, default_value_t = 1e-4, requires = "finetune")]
    pub lr: f64,
    #[arg(long, default_value_t = 32, requires = "finetune")]
    pub batch: usize,
    /// Fine-tune on the first this many images (all by default).
    #[arg(long, requires = "finetune")]
    pub finetune_samples: Option<usize>,
    /// Share of the images held out to pick the best epoch (never trained on).
    #[arg(long, default_value_t = crate::finetune::DEFAULT_HOLDOUT, requires = "finetune")]
    pub holdout: f64,
    /// If training diverges, write the model with the best parameters before it instead of
    /// failing.
    #[arg(long, requires = "finetune")]
    pub finetune_keep_on_divergence: bool,
    /// Also train the weights and biases of the Conv, Gemm and MatMul layers left original (the
    /// paper re-trains the whole network between stages); the graph does not change.
    #[arg(long, requires = "finetune")]
    pub train_original_layers: bool,
    /// Add the cross-entropy with the images' labels (the folder's labels.csv) to the
    /// distillation loss. The epoch kept is still the one closest to the teacher.
    #[arg(long, requires = "finetune")]
    pub finetune_labels: bool,
    /// k-means (VQ) layers: train the sub-vectors as free weights whose kernel values are
    /// softmax(−‖w − c‖²/τ)-weighted means of the centroids (DKM), re-assigned to the nearest
    /// centroid when evaluated and written; τ is the mean squared distance from a centroid to
    /// its nearest neighbour times --soft-temperature, annealed with the learning rate's cosine
    /// towards 0 (training ends on the hardened kernel). DL layers keep Γ fixed. `convert` only.
    #[arg(long, requires = "finetune")]
    pub soft_assignments: bool,
    /// The factor on τ (0.3: 1.0 blurs the kernel so far from the clustered one that training
    /// starts at 5× the loss; 0.1 and below train as Γ fixed does, on the digits model).
    #[arg(long, default_value_t = 0.3, requires = "soft_assignments")]
    pub soft_temperature: f64,
}

impl TrainingArgs {
    fn options(&self, data: &Path, preprocess: &Path, seed: u64) -> FinetuneOptions {
        FinetuneOptions {
            data: data.to_path_buf(),
            preprocess: preprocess.to_path_buf(),
            samples: self.finetune_samples,
            epochs: self.epochs,
            lr: self.lr,
            batch: self.batch,
            holdout: self.holdout,
            seed,
            keep_on_divergence: self.finetune_keep_on_divergence,
            train_original_layers: self.train_original_layers,
            labels: self.finetune_labels,
            soft_assignments: self.soft_assignments.then_some(self.soft_temperature),
        }
    }
}

impl FinetuneArgs {
    fn options(&self, preprocess: Option<&Path>, seed: u64) -> Result<Option<FinetuneOptions>> {
        let Some(dir) = &self.finetune else {
            return Ok(None);
        };
        let Some(spec) = preprocess else {
            usage!("--finetune needs --preprocess SPEC.json (how to turn its images into inputs)");
        };
        Ok(Some(self.training.options(dir, spec, seed)))
    }
}

/// `onnx-dlq finetune`: distillation fine-tuning of an already converted model.
#[derive(Debug, Args)]
pub struct FinetuneCmdArgs {
    /// The original model (the teacher).
    pub original: PathBuf,
    /// The model `onnx-dlq convert` made from it (any form; its graph is kept).
    pub converted: PathBuf,
    /// Where to write the fine-tuned model (never the input).
    pub output: PathBuf,
    /// The training images (no labels needed; read like --calibrate's).
    #[arg(long = "data", id = "finetune", value_name = "DIR")]
    pub data: PathBuf,
    /// How to turn the images into model inputs.
    #[arg(long, value_name = "SPEC.json")]
    pub preprocess: PathBuf,
    #[command(flatten)]
    pub training: TrainingArgs,
    /// Random seed (same seed, same output bytes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The clustering settings `convert` and `stages` share (defaults: the paper's).
#[derive(Debug, Args)]
pub struct ClusterSettings {
    /// N′, input channels per subspace. Default 8 (the paper's), or 2 with --shared-codebook,
    /// where it measured the best accuracy per byte (BENCHMARKS.md, "Shared codebooks").
    #[arg(long)]
    pub subspace: Option<usize>,
    /// c = K / K_vq (DL). Default 3 (the paper's), or 2 with --target-speedup, where it makes
    /// ρ = 2 and 3 valid on small layers and measured better (docs/RESULTS.md).
    #[arg(long)]
    pub c: Option<f64>,
    /// α, atoms per representative (DL).
    #[arg(long, default_value_t = 2)]
    pub alpha: usize,
    /// Dictionary-learning iterations.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Random seed (same seed, same output bytes). A negative number is named as an invalid
    /// value of --seed rather than taken for an unknown flag.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
}

impl ClusterSettings {
    fn params(&self, method: Method, ratio: f64) -> ClusterParams {
        let mut params = ClusterParams::new(method, ratio);
        params.subspace = self.subspace.unwrap_or(params.subspace);
        params.c = self.c.unwrap_or(params.c);
        params.alpha = self.alpha;
        params.iters = self.iters;
        params.seed = self.seed;
        params
    }
}

#[derive(Debug, Args)]
pub struct StagesArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Stages in order (comma-separated layer-name prefixes; a stage is every convertible Conv
    /// whose name starts with its prefix). Stages are converted cumulatively.
    #[arg(long, value_delimiter = ',', required = true)]
    pub stages: Vec<String>,
    /// Acceleration ratios ρ (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub ratios: Vec<f64>,
    /// Methods (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "dl,vq")]
    pub methods: Vec<MethodArg>,
    /// A labelled image set (labels.csv + classes.txt).
    #[arg(long)]
    pub data: PathBuf,
    /// The preprocessing spec (JSON) for --data.
    #[arg(long, value_name = "SPEC.json")]
    pub preprocess: PathBuf,
    /// At most this many samples (default: the whole set).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Leave out the first this many images of --data (e.g. the calibration images).
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
    /// The engine that runs every model and collects calibration statistics (default: tract,
    /// or ONNX Runtime when tract cannot run the model).
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// Timed runs per model for the latency table.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    #[command(flatten)]
    pub settings: ClusterSettings,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    #[command(flatten)]
    pub finetune: FinetuneArgs,
    /// Print JSON instead of Markdown tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// The layer, by node, output or weight name.
    #[arg(long)]
    pub layer: String,
    /// Acceleration ratios ρ (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,20,30,40")]
    pub ratios: Vec<f64>,
    /// DL c values (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "3")]
    pub c: Vec<f64>,
    /// DL α values (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "2")]
    pub alpha: Vec<usize>,
    /// N′, input channels per subspace.
    #[arg(long, default_value_t = 8)]
    pub subspace: usize,
    /// Dictionary-learning iterations.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Write the rows as CSV to this file.
    #[arg(long, value_name = "F.csv")]
    pub csv: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Plot error vs ρ per method to this SVG file.
    #[arg(long, value_name = "F.svg")]
    pub plot: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(parse_size("4G"), Ok(4_000_000_000));
        assert_eq!(parse_size("3.5GiB"), Ok(3_758_096_384));
        assert_eq!(parse_size("512m"), Ok(512_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("four").unwrap_err().contains("not a size"));
        assert!(parse_size("4X").unwrap_err().contains("not a unit"));
        assert!(parse_size("0").is_err());
    }
}
