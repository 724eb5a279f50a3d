//! Command-line interface: argument definitions (clap derive) and dispatch to the library.
//! Results go to stdout, logs and progress to stderr.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::shapes::InputShape;
use crate::{inspect, model};

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
    #[arg(long, value_delimiter = ',', conflicts_with = "all")]
    pub layers: Vec<String>,
    /// Convert every eligible Conv layer.
    #[arg(long)]
    pub all: bool,
}

/// Parses arguments and runs the command. Usage errors exit with 2 (clap), failures with 1.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Inspect(args)) => run_inspect(args),
        Some(Command::Convert(args)) => run_convert(args),
        None => run_convert(cli.convert),
    }
}

fn run_inspect(args: InspectArgs) -> Result<()> {
    let model = model::load(&args.model)?;
    let inv = inspect::inventory(&model, &args.input_shape)?;
    let report = inspect::report(&model, &inv);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", inspect::render_table(&report));
    }
    Ok(())
}

fn run_convert(args: ConvertArgs) -> Result<()> {
    let input = args.input.expect("required by clap");
    let _model = model::load(&input)?;
    anyhow::bail!("convert is not implemented yet")
}
