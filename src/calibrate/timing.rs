//! Micro-benchmarks for the latency-aware budget (`--target-speedup` with the fused form): on
//! this machine, in the conversion's engine (tract, or ONNX Runtime with `--engine ort`; one
//! thread, batch 1), each candidate layer alone — its original Conv, and its `DlqConv` node at
//! every candidate ratio — and the whole original model. The kernel's
//! time depends only on the sizes the parameter rules give (and the geometry), not on the
//! codebook's values, so each ratio is timed with a seeded random codebook of those sizes.

use anyhow::{Context, Result};
use ndarray::ArrayD;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::analysis::select::{self, ConvLayer};
use crate::analysis::shapes::{self, ShapeMap};
use crate::calibrate::budget::LayerCost;
use crate::codebook::{Codebook, Method, Points, SparseCodes, SubspaceCodebook, ValidParams};
use crate::engine::{self, Engine, Run};
use crate::lower::{self, fused, GraphPatch};
use crate::onnx::build;
use crate::onnx::model::OnnxModel;
use crate::proto::{GraphProto, ModelProto};

/// Timed runs per measurement after two warm-up runs; the median is kept.
const RUNS: usize = 9;

/// Median time of `runner` on `x`, in milliseconds.
fn median_ms(runner: &dyn Run, x: &ArrayD<f32>) -> Result<f64> {
    let mut times = Vec::with_capacity(RUNS);
    for i in 0..RUNS + 2 {
        let started = std::time::Instant::now();
        runner.run(x)?;
        if i >= 2 {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[RUNS / 2])
}

/// A seeded uniform input of `shape`.
fn input(shape: &[usize]) -> ArrayD<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    ArrayD::from_shape_fn(shape, |_| rng.random_range(-1.0f32..1.0))
}

/// The whole model's median time on a batch-1 input of `shape`.
pub fn time_model(engine: Engine, model: &OnnxModel, shape: &[usize]) -> Result<f64> {
    let runner = engine::prepare(engine, model, shape)?;
    median_ms(runner.as_ref(), &input(shape))
}

/// `layer` alone: its Conv node, weight and bias, input `X` of the layer's element type.
fn single_conv(original: &OnnxModel, layer: &ConvLayer, x_shape: &[usize]) -> Result<OnnxModel> {
    let g = original.graph();
    let node = g.node[layer.node_index].clone();
    let wanted: Vec<&str> = node.input.iter().skip(1).map(String::as_str).collect();
    let initializer = g
        .initializer
        .iter()
        .filter(|t| wanted.contains(&t.name.as_deref().unwrap_or_default()))
        .cloned()
        .collect();
    let elem = layer
        .weight_type
        .context("eligible layers have float weights")?
        .onnx() as i32;
    let dims: Vec<i64> = x_shape.iter().map(|&d| d as i64).collect();
    let graph = GraphProto {
        input: vec![build::value_info(&layer.input, elem, Some(&dims))],
        output: vec![build::value_info(&layer.output, elem, None)],
        node: vec![node],
        initializer,
        name: Some("layer".into()),
        ..Default::default()
    };
    let proto = ModelProto {
        graph: Some(graph),
        ir_version: original.proto.ir_version,
        opset_import: original.proto.opset_import.clone(),
        ..Default::default()
    };
    Ok(OnnxModel {
        proto,
        path: original.path.clone(),
        base_dir: original.base_dir.clone(),
    })
}

/// A codebook of `params`' sizes for a `[M, N, kh, kw]` kernel, with seeded random values.
fn random_codebook(kernel: [usize; 4], params: &ValidParams) -> Result<Codebook> {
    let [m, n, kh, kw] = kernel;
    let sizes = params.sizes(m, n, kh * kw)?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(params.seed);
    let width = params.subspace;
    let columns = m * kh * kw;
    let subspaces = (0..sizes.subspaces)
        .map(|s| {
            let channels = s * width..n.min((s + 1) * width);
            let dim = channels.len();
            let atoms = Points {
                data: (0..sizes.l * dim)
                    .map(|_| rng.random_range(-1.0f32..1.0))
                    .collect(),
                dim,
            };
            let (codes, reps) = match params.method {
                Method::Vq => (None, sizes.l),
                Method::Dl => {
                    let slots = sizes.k * params.alpha;
                    let codes = SparseCodes {
                        alpha: params.alpha,
                        atoms: (0..slots)
                            .map(|_| rng.random_range(0..sizes.l as u32))
                            .collect(),
                        coefs: (0..slots).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
                    };
                    (Some(codes), sizes.k)
                }
            };
            let assignment = (0..columns)
                .map(|_| rng.random_range(0..reps as u32))
                .collect();
            SubspaceCodebook {
                channels,
                atoms,
                codes,
                assignment,
            }
        })
        .collect();
    Ok(Codebook {
        method: params.method,
        kernel_shape: kernel,
        sizes,
        shared: false,
        subspaces,
        channel_scale: None,
        f16_palette: false,
        bias_shift: None,
    })
}

/// Times `layer` (batch 1) as its Conv (`before`, ms) and as a DlqConv at each ratio of
/// `ratios` that the rules accept for `params` (`after`).
pub fn time_layer(
    engine: Engine,
    original: &OnnxModel,
    layer: &ConvLayer,
    shapes: &ShapeMap,
    params: &ValidParams,
    ratios: &[f64],
) -> Result<LayerCost> {
    let ctx = || format!("timing layer `{}`", layer.name);
    let mut x_shape = shapes.get(&layer.input).with_context(ctx)?.to_vec();
    // Batch 1: the first axis, the last of a Gemm input read transposed.
    let batch_axis = match &layer.fc {
        Some(fc) if fc.trans_a => x_shape.len() - 1,
        _ => 0,
    };
    x_shape[batch_axis] = 1;
    let dense = single_conv(original, layer, &x_shape).with_context(ctx)?;
    let x = input(&x_shape);
    let prepare = |m: &OnnxModel| engine::prepare(engine, m, &x_shape).with_context(ctx);
    let dense_ms = median_ms(prepare(&dense)?.as_ref(), &x)?;
    let one = select::conv_layers(&dense);
    let one_shapes = shapes::infer(&dense, &[]).with_context(ctx)?;
    let kernel: [usize; 4] = layer
        .kernel
        .as_deref()
        .and_then(|k| k.try_into().ok())
        .with_context(ctx)?;
    let mut fused_ms = Vec::new();
    for &ratio in ratios {
        let Ok(cb) = params
            .with_ratio(ratio)
            .map_err(anyhow::Error::from)
            .and_then(|p| random_codebook(kernel, &p))
        else {
            continue;
        };
        let patch = fused::lower(&dense, &one[0], &cb, &one_shapes, "{}").with_context(ctx)?;
        let mut model = dense.clone();
        lower::apply(
            &mut model,
            GraphPatch {
                layers: vec![patch],
            },
        )?;
        fused_ms.push((ratio, median_ms(prepare(&model)?.as_ref(), &x)?));
    }
    Ok(LayerCost {
        before: dense_ms,
        after: fused_ms,
    })
}
