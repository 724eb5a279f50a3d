//! Each command run from its checked arguments: the library called, the report written to
//! stdout (a table, or JSON with `--json`).

use std::io::Write;

use super::*;

/// The command line's `error:` line and exit code for `args` (the program name first), with the
/// report on stdout: what the `onnx-dlq` executable does, for every front end that runs it
/// (the binary, the Python package's command). Usage errors exit with 2 as clap prints them,
/// failures with 1.
pub fn main<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" that print to stdout and exit with 0.
            let _ = e.print();
            return e.exit_code();
        }
    };
    let mut stdout = std::io::stdout().lock();
    let result = run_parsed(cli, &mut stdout).and_then(|()| Ok(stdout.flush()?));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", sink::render_error(&e));
            1
        }
    }
}

/// Runs the command `args` asks for (the program name first), its report written to `out`;
/// a usage error is a [`clap::Error`] in the chain.
pub fn run<I, T>(args: I, out: &mut dyn Write) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run_parsed(Cli::try_parse_from(args)?, out)
}

fn run_parsed(cli: Cli, out: &mut dyn Write) -> Result<()> {
    sink::install(cli.verbose, cli.quiet);
    crate::engine::memory::set_cap(cli.max_memory);
    match cli.command {
        Some(Command::Inspect(args)) => run_inspect(args, out),
        Some(Command::Convert(args)) => run_convert(args, out),
        Some(Command::Diff(args)) => run_diff(args, out),
        Some(Command::Sweep(args)) => run_sweep(args, out),
        Some(Command::Verify(args)) => run_verify(args, out),
        Some(Command::Stages(args)) => run_stages(args, out),
        Some(Command::Finetune(args)) => run_finetune(args, out),
        None => run_convert(cli.convert, out),
    }
}

fn run_inspect(args: InspectArgs, out: &mut dyn Write) -> Result<()> {
    let model = model::load(&args.model)?;
    let inv = inventory::inventory(&model, &args.input_shape)?;
    let report = inspect::report(&model, &inv);
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", inspect::render_table(&report))?;
    }
    Ok(())
}

/// The conversion `convert`'s flags ask for, before its rules are applied.
fn convert_request(args: &ConvertArgs) -> Result<ConvertRequest> {
    let preprocess = args.verify_data.preprocess.as_deref();
    Ok(ConvertRequest {
        selection: if args.all || args.layers.is_empty() {
            Selection::All {
                fully_connected: !args.exclude_fc,
            }
        } else {
            Selection::Named(args.layers.clone())
        },
        clustering: ClusterRequest {
            method: args.method.map(Method::from),
            ratio: args.ratio,
            subspace: args.settings.subspace,
            c: args.settings.c,
            alpha: args.settings.alpha,
            iters: args.settings.iters,
            seed: args.settings.seed,
            k: args.k,
            l: args.l,
            shared_codebook: args.shared_codebook,
            channel_scale: args.channel_scale,
            f16_palette: args.f16_palette,
        },
        input_shapes: args.input_shape.clone(),
        external: match args.external_data {
            true => ExternalData::Always {
                threshold: crate::onnx::model::EXTERNAL_THRESHOLD,
            },
            false => ExternalData::Auto,
        },
        calibration: args.calibration.options(preprocess)?,
        target_speedup: args.target_speedup,
        target_compression: args.target_compression,
        measure_latency: !args.no_latency,
        form: args.form.map(OutputForm::from),
        finetune: args.finetune.options(preprocess, args.settings.seed)?,
        engine: args.verify_data.engine,
        int8: args.int8.then_some(Int8Options {
            activation: args.activation_type,
        }),
    })
}

fn run_convert(args: ConvertArgs, out: &mut dyn Write) -> Result<()> {
    let input = args.input.clone().expect("required by clap");
    let output = args.output.clone().expect("required by clap");
    let opts = convert_request(&args)?.check()?;
    args.verify_data
        .check(args.calibration.calibrate.is_some() || args.finetune.finetune.is_some())?;
    let report = convert::convert(&input, &output, &opts)?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.report {
        model::write_atomically(path, format!("{json}\n").as_bytes())?;
    }
    if !args.json {
        write!(out, "{}", convert::render(&report))?;
    }
    let verified = match args.verify {
        true => Some(verify::verify(
            &input,
            &output,
            &args.verify_data.options(args.input_shape),
        )?),
        false => None,
    };
    match (args.json, &verified) {
        (true, Some(v)) => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"convert": report, "verify": v}))?
        ),
        (true, None) => writeln!(out, "{json}"),
        (false, Some(v)) => write!(out, "{}", verify::render(v)),
        (false, None) => Ok(()),
    }?;
    Ok(())
}

fn run_verify(args: VerifyArgs, out: &mut dyn Write) -> Result<()> {
    args.data.check(false)?;
    let v = verify::verify(
        &args.original,
        &args.converted,
        &args.data.options(args.input_shape),
    )?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        write!(out, "{}", verify::render(&v))?;
    }
    Ok(())
}

fn run_finetune(args: FinetuneCmdArgs, out: &mut dyn Write) -> Result<()> {
    for input in [&args.original, &args.converted] {
        if model::same_file(input, &args.output) {
            usage!(
                "refusing to write {}: it is an input model; choose another output path",
                args.output.display()
            );
        }
    }
    let original = model::load(&args.original)?;
    let converted = model::load(&args.converted)?;
    model::check_writable(&args.output)?;
    let opts = args
        .training
        .options(&args.data, &args.preprocess, args.seed);
    crate::finetune::preflight(&original, &opts)?;
    let (tuned, report) = crate::finetune::finetune_converted(&original, &converted, &opts)?;
    let policy = match converted.has_external_data() {
        true => ExternalData::Always {
            threshold: crate::onnx::model::EXTERNAL_THRESHOLD,
        },
        false => ExternalData::Auto,
    };
    model::save(&tuned, &args.output, policy)?;
    match args.json {
        true => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "output": args.output.display().to_string(),
                "finetune": report,
            }))?
        ),
        false => {
            write!(out, "{}", crate::finetune::render(&report))?;
            writeln!(out, "wrote {}", args.output.display())
        }
    }?;
    Ok(())
}

fn run_stages(args: StagesArgs, out: &mut dyn Write) -> Result<()> {
    // Method and ratio are set per run by `stages`.
    let params = args.settings.params(Method::Dl, 2.0);
    let finetune = args
        .finetune
        .options(Some(&args.preprocess), args.settings.seed)?;
    let opts = stages::StagesOptions {
        stages: args.stages,
        ratios: args.ratios,
        methods: args.methods.into_iter().map(Method::from).collect(),
        params,
        data: args.data,
        calibration: args.calibration.options(Some(&args.preprocess))?,
        preprocess: args.preprocess,
        samples: args.samples,
        skip: args.skip,
        engine: args.engine,
        runs: args.runs,
        finetune,
    };
    let report = stages::run(&args.model, &opts)?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", stages::render(&report))?;
    }
    Ok(())
}

fn run_diff(args: DiffArgs, out: &mut dyn Write) -> Result<()> {
    let d = diff::diff(&args.a, &args.b, &args.input_shape)?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&d)?)?;
    } else {
        write!(out, "{}", diff::render(&d))?;
    }
    Ok(())
}

fn run_sweep(args: SweepArgs, out: &mut dyn Write) -> Result<()> {
    let opts = sweep::SweepOptions {
        ratios: args.ratios,
        cs: args.c,
        alphas: args.alpha,
        subspace: args.subspace,
        iters: args.iters,
        seed: args.seed,
    };
    let report = sweep::sweep(&args.model, &args.layer, &opts)?;
    if let Some(path) = &args.csv {
        model::write_atomically(path, sweep::to_csv(&report).as_bytes())?;
    }
    if let Some(path) = &args.plot {
        sweep::plot_svg(&report, path)?;
    }
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", sweep::render(&report))?;
    }
    Ok(())
}
