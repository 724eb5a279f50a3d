//! One pass of the whole pipeline over arbitrary bytes — decode → inspect → convert → save →
//! reload — shared by the cargo-fuzz target (`fuzz/`) and the mutation smoke test. Whatever the
//! bytes, each step must end in a value or an error; what must hold after a success is asserted,
//! so a broken output is a panic the fuzzer reports, like a crash.

use std::path::Path;

use crate::analysis::inventory;
use crate::codebook::{ClusterParams, Method};
use crate::convert::{self, ConvertOptions, OutputForm, Selection};
use crate::engine::runner::Runner;
use crate::onnx::model::{self, ExternalData, OnnxModel};
use crate::report::inspect;

/// Kernels larger than this (elements over all convertible layers) are not clustered: a fuzzer
/// wants many small inputs per second, not one big conversion.
pub const MAX_KERNEL_ELEMENTS: usize = 1 << 16;

/// How far an input got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not a model, or a model tract cannot read: an error, as it should be.
    Rejected(String),
    /// Inspected, but nothing to convert (or too large for a fuzzing pass).
    Inspected { layers: usize },
    /// A fused model with nothing to convert whose `dlq_nodes` DlqConv nodes tract ran.
    RanFused { dlq_nodes: usize },
    /// Converted (`layers` of them), saved, and the output read back and inspected.
    Converted { layers: usize },
    /// Inspected, but the conversion failed with an error and left no file.
    NotConverted(String),
}

/// Runs the pipeline on `bytes` with scratch files in `scratch` (an empty folder the caller
/// owns: external data is looked up there, the output is written there).
pub fn exercise(bytes: &[u8], scratch: &Path) -> Outcome {
    let proto = match model::decode(bytes) {
        Ok(p) => p,
        Err(e) => return Outcome::Rejected(format!("{e:#}")),
    };
    let original = OnnxModel {
        proto,
        path: scratch.join("input.onnx"),
        base_dir: scratch.to_path_buf(),
    };
    let inv = match inventory::inventory(&original, &[]) {
        Ok(inv) => inv,
        Err(e) => return Outcome::Rejected(format!("{e:#}")),
    };
    let _ = inspect::render_table(&inspect::report(&original, &inv));
    let ran_fused = run_custom_ops(&original, &inv);
    let convertible: Vec<_> = inv.layers.iter().filter(|l| l.convertible()).collect();
    let elements: usize = convertible
        .iter()
        .filter_map(|l| l.kernel.as_ref())
        .map(|k| k.iter().product::<usize>())
        .sum();
    if let (true, Some(dlq_nodes)) = (convertible.is_empty(), ran_fused) {
        return Outcome::RanFused { dlq_nodes };
    }
    if convertible.is_empty() || elements > MAX_KERNEL_ELEMENTS {
        return Outcome::Inspected {
            layers: inv.layers.len(),
        };
    }
    // Both methods, chosen by the input so that a corpus covers both.
    let method = if bytes.len().is_multiple_of(2) {
        Method::Dl
    } else {
        Method::Vq
    };
    // Both output forms too, so fused outputs (DlqConv nodes) are read back and, mutated, fed in.
    let form = if (bytes.len() / 2).is_multiple_of(2) {
        OutputForm::Ops
    } else {
        OutputForm::Fused
    };
    let mut params = ClusterParams::new(method, 4.0);
    params.c = 2.0;
    params.iters = 2;
    let opts = ConvertOptions {
        selection: Selection::All {
            fully_connected: true,
        },
        params: params.check().expect("the harness's parameters are valid"),
        input_shapes: vec![],
        external: ExternalData::Auto,
        calibration: None,
        target_speedup: None,
        target_compression: None,
        measure_latency: false,
        form,
        finetune: None,
        engine: None,
        int8: None,
    };
    let out = scratch.join("output.onnx");
    let converted = convert::convert_model(&original, &opts)
        .and_then(|c| model::save(&c.model, &out, ExternalData::Auto).map(|_| c));
    match converted {
        Ok(c) => {
            for l in &c.layers {
                assert!(
                    l.relative_error.is_finite() && l.achieved_ratio.is_finite(),
                    "layer {}: error {}, ratio {}",
                    l.name,
                    l.relative_error,
                    l.achieved_ratio
                );
            }
            check_output(&out);
            let _ = std::fs::remove_file(&out);
            Outcome::Converted {
                layers: c.layers.len(),
            }
        }
        Err(e) => {
            assert!(!out.exists(), "a failed conversion left {}", out.display());
            Outcome::NotConverted(format!("{e:#}"))
        }
    }
}

/// Inputs with `DlqConv` nodes (fused outputs, mutated) are also run once on zeros when small,
/// so the operator's decoding and kernel see corrupt codebooks, shapes and attributes: any
/// outcome but a panic is fine. Returns the number of DlqConv nodes when the model ran.
fn run_custom_ops(model: &OnnxModel, inv: &crate::analysis::inventory::Inventory) -> Option<usize> {
    let dlq_nodes = model
        .graph()
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some(crate::lower::fused::OP_TYPE))
        .count();
    let (_, shape) = inv.shapes.inputs.first()?;
    if dlq_nodes == 0 || shape.iter().product::<usize>() > MAX_KERNEL_ELEMENTS {
        return None;
    }
    let runner = Runner::new(model, shape).ok()?;
    runner.run(&ndarray::ArrayD::zeros(shape.as_slice())).ok()?;
    Some(dlq_nodes)
}

/// What a successful conversion promises (besides finite figures in its report): the file
/// reads back, and tract parses it and infers the shapes of every tensor.
fn check_output(out: &Path) {
    let back = model::load(out).unwrap_or_else(|e| panic!("the output does not load: {e:#}"));
    if let Err(e) = inventory::inventory(&back, &[]) {
        panic!("tract cannot read the output: {e:#}");
    }
}
