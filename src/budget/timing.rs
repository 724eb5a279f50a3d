//! Micro-benchmarks for the latency-aware budget (`--target-speedup` with the fused form): on
//! this machine, in the conversion's engine (tract, or ONNX Runtime with `--engine ort`; one
//! thread, batch 1), each candidate layer alone — its original Conv, and its `DlqConv` node at
//! every candidate ratio — and the whole original model. The kernel's
//! time depends only on the sizes the parameter rules give (and the geometry), not on the
//! codebook's values, so each ratio is timed with a seeded random codebook of those sizes.
//!
//! In ONNX Runtime a layer alone misleads: on x86 its layout transformer runs the model's Convs in
//! a blocked layout (NCHWc) and reorders tensors only where the layout changes, so a Conv among
//! Convs runs without reorders, while a `DlqConv` (a custom operator, outside that layout) gets
//! two, and a single-Conv model pays them for the Conv instead. [`InModel`] times what the
//! budget needs there: the whole model with the one layer fused.

use anyhow::{Context, Result};
use ndarray::ArrayD;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::analysis::select::{self, ConvLayer};
use crate::analysis::shapes::{self, ShapeMap};
use crate::budget::LayerCost;
use crate::codebook::{Codebook, Method, Points, SparseCodes, SubspaceCodebook, ValidParams};
use crate::engine::{self, Engine, Run};
use crate::lower::{self, Form, GraphPatch};
use crate::onnx::build;
use crate::onnx::model::OnnxModel;
use crate::proto::{GraphProto, ModelProto};

/// Timed runs per measurement after two warm-up runs; the median is kept.
const RUNS: usize = 9;

/// One run of `runner` on `x`, in milliseconds.
fn run_ms(runner: &dyn Run, x: &ArrayD<f32>) -> Result<f64> {
    let started = std::time::Instant::now();
    runner.run(x)?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// Median time of `runs` runs of `runner` on `x` after `warmup` untimed ones, in milliseconds.
fn median_ms(runner: &dyn Run, x: &ArrayD<f32>, runs: usize, warmup: usize) -> Result<f64> {
    for _ in 0..warmup {
        runner.run(x)?;
    }
    let mut times = (0..runs)
        .map(|_| run_ms(runner, x))
        .collect::<Result<Vec<_>>>()?;
    Ok(median(&mut times))
}

/// `layer` of `model` (its shapes in `shapes`) lowered in `form` with `codebook`.
fn with_layer(
    form: &dyn Form,
    model: &OnnxModel,
    layer: &ConvLayer,
    codebook: &Codebook,
    shapes: &ShapeMap,
) -> Result<OnnxModel> {
    let patch = form.lower(model, layer, codebook, shapes, "{}")?;
    let mut converted = model.clone();
    lower::apply(
        &mut converted,
        GraphPatch {
            layers: vec![patch],
        },
    )?;
    Ok(converted)
}

/// `layer`'s kernel shape [M, N, kh, kw].
fn kernel_of(layer: &ConvLayer) -> Option<[usize; 4]> {
    layer.kernel.as_deref().and_then(|k| k.try_into().ok())
}

/// A seeded uniform input of `shape`.
fn input(shape: &[usize]) -> ArrayD<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    ArrayD::from_shape_fn(shape, |_| rng.random_range(-1.0f32..1.0))
}

/// The whole model's median time on a batch-1 input of `shape`.
pub fn time_model(engine: Engine, model: &OnnxModel, shape: &[usize]) -> Result<f64> {
    let runner = engine::prepare(engine, model, shape)?;
    median_ms(runner.as_ref(), &input(shape), RUNS, 2)
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

/// Times `layer` (batch 1) as its Conv (`before`, ms) and in `form` at each ratio of
/// `ratios` that the rules accept for `params` (`after`).
pub fn time_layer(
    (engine, form): (Engine, &dyn Form),
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
    let dense_ms = median_ms(prepare(&dense)?.as_ref(), &x, RUNS, 2)?;
    let one = select::conv_layers(&dense);
    let one_shapes = shapes::infer(&dense, &[]).with_context(ctx)?;
    let kernel = kernel_of(layer).with_context(ctx)?;
    let mut fused_ms = Vec::new();
    for &ratio in ratios {
        let Ok(cb) = params
            .with_ratio(ratio)
            .map_err(anyhow::Error::from)
            .and_then(|p| random_codebook(kernel, &p))
        else {
            continue;
        };
        let model = with_layer(form, &dense, &one[0], &cb, &one_shapes).with_context(ctx)?;
        fused_ms.push((ratio, median_ms(prepare(&model)?.as_ref(), &x, RUNS, 2)?));
    }
    Ok(LayerCost {
        before: dense_ms,
        after: fused_ms,
    })
}

/// Paired runs per whole-model measurement of [`InModel`]: a layer's gain is a difference of
/// two whole-model times, a few percent of each.
const MODEL_RUNS: usize = 31;

/// Untimed runs before them: a session's first runs are slow.
const MODEL_WARMUP: usize = 3;

/// What `candidate` adds to `original`'s time, in milliseconds (negative: saves), or `None`
/// when that is within the noise ([`Paired::within_noise`]).
fn paired_difference_ms(
    original: &dyn Run,
    candidate: &dyn Run,
    x: &ArrayD<f32>,
) -> Result<Option<f64>> {
    let p = paired(original, candidate, x, MODEL_RUNS, MODEL_WARMUP)?;
    Ok((!p.within_noise()).then_some(p.difference_ms))
}

/// Two models timed in alternating runs after untimed warm-up pairs, so that a drift of the
/// machine moves both alike.
#[derive(Debug, Clone, Copy)]
pub struct Paired {
    /// Median times of the first and the second model.
    pub a_ms: f64,
    pub b_ms: f64,
    /// The median of the pairs' differences, second minus first.
    pub difference_ms: f64,
    /// Its standard error, a robust one: 1.4826 × the median absolute deviation of the
    /// differences, × 1.2533 for a median, over √pairs.
    pub standard_error_ms: f64,
    pub pairs: usize,
}

impl Paired {
    /// The difference is within twice its standard error of zero: the two run at the same
    /// speed as far as these runs can tell.
    pub fn within_noise(&self) -> bool {
        self.difference_ms.abs() <= 2.0 * self.standard_error_ms
    }
}

/// Times `a` and `b` on `x` in `pairs` alternating pairs after `warmup` untimed ones.
pub fn paired(
    a: &dyn Run,
    b: &dyn Run,
    x: &ArrayD<f32>,
    pairs: usize,
    warmup: usize,
) -> Result<Paired> {
    Ok(compare(alternate(a, b, x, pairs, warmup, run_ms)?))
}

/// How many pairs [`paired`] can time within `budget_ms`, judged by one probe pair (which also
/// warms both models up): `pairs.end()` when they fit, fewer for slow models, never below
/// `pairs.start()`. `warmup` pairs come out of the budget too.
pub fn pairs_within(
    a: &dyn Run,
    b: &dyn Run,
    x: &ArrayD<f32>,
    budget_ms: f64,
    pairs: std::ops::RangeInclusive<usize>,
    warmup: usize,
) -> Result<usize> {
    let pair_ms = run_ms(a, x)? + run_ms(b, x)?;
    let fit = (budget_ms / pair_ms.max(1e-3)) as usize;
    Ok(fit
        .saturating_sub(warmup)
        .clamp(*pairs.start(), *pairs.end()))
}

/// `pairs` (at least one) times of `a` then `b` by `time`, after `warmup` untimed pairs: the
/// clock is a parameter so that the tests can give a fake one.
fn alternate(
    a: &dyn Run,
    b: &dyn Run,
    x: &ArrayD<f32>,
    pairs: usize,
    warmup: usize,
    time: impl Fn(&dyn Run, &ArrayD<f32>) -> Result<f64>,
) -> Result<Vec<(f64, f64)>> {
    let mut times = Vec::with_capacity(pairs);
    for i in 0..pairs.max(1) + warmup {
        crate::progress::checkpoint();
        let pair = (time(a, x)?, time(b, x)?);
        if i >= warmup {
            times.push(pair);
        }
    }
    Ok(times)
}

/// The medians, the median difference and its standard error of timed pairs.
fn compare(times: Vec<(f64, f64)>) -> Paired {
    let mut d: Vec<f64> = times.iter().map(|(a, b)| b - a).collect();
    let difference_ms = median(&mut d);
    let mut deviations: Vec<f64> = d.iter().map(|x| (x - difference_ms).abs()).collect();
    let standard_error_ms = 1.2533 * 1.4826 * median(&mut deviations) / (times.len() as f64).sqrt();
    let (mut ta, mut tb): (Vec<f64>, Vec<f64>) = times.into_iter().unzip();
    Paired {
        a_ms: median(&mut ta),
        b_ms: median(&mut tb),
        difference_ms,
        standard_error_ms,
        pairs: d.len(),
    }
}

/// The median of `v` (the upper one for an even length), sorting it.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `a` against `b` on `x` timed as [`InModel`] times the candidates: for the check of a latency
/// budget's result, whose gain is a few percent.
pub fn paired_as_budget(a: &dyn Run, b: &dyn Run, x: &ArrayD<f32>) -> Result<Paired> {
    paired(a, b, x, MODEL_RUNS, MODEL_WARMUP)
}

/// The whole model, timed with one candidate layer at a time fused into it (see the module
/// header): each layer's cost is the original's time plus what the fused layer adds to it.
pub struct InModel<'a> {
    engine: Engine,
    form: &'a dyn Form,
    model: &'a OnnxModel,
    shapes: &'a ShapeMap,
    input: Vec<usize>,
    original: Box<dyn Run>,
    /// The original model's median time (the budget's total).
    pub original_ms: f64,
}

impl<'a> InModel<'a> {
    /// Prepares the original `model` for a batch-1 input of shape `input` and times it as the
    /// candidates will be: [`MODEL_RUNS`] runs after the session's first (slow) ones.
    pub fn new(
        (engine, form): (Engine, &'a dyn Form),
        model: &'a OnnxModel,
        shapes: &'a ShapeMap,
        input: &[usize],
    ) -> Result<InModel<'a>> {
        let original = engine::prepare(engine, model, input)?;
        let original_ms = median_ms(
            original.as_ref(),
            &self::input(input),
            MODEL_RUNS,
            MODEL_WARMUP,
        )?;
        Ok(InModel {
            engine,
            form,
            model,
            shapes,
            input: input.to_vec(),
            original,
            original_ms,
        })
    }

    /// `layer`'s cost in the model: before, the original model's time; after, at each ratio
    /// where the layer timed `alone` gained (in the model it gains less or nothing: the reorders
    /// come on top), that time plus what fusing the layer at that ratio adds, measured in pairs
    /// (ratios whose difference is within the noise are left out).
    pub fn time_layer(
        &self,
        layer: &ConvLayer,
        params: &ValidParams,
        alone: &LayerCost,
    ) -> Result<LayerCost> {
        let ctx = || format!("timing layer `{}` in the model", layer.name);
        let kernel = kernel_of(layer).with_context(ctx)?;
        let x = input(&self.input);
        let mut after = Vec::new();
        for &(ratio, ms) in &alone.after {
            if ms >= alone.before {
                continue;
            }
            let cb = random_codebook(kernel, &params.with_ratio(ratio)?)?;
            let model =
                with_layer(self.form, self.model, layer, &cb, self.shapes).with_context(ctx)?;
            let runner = engine::prepare(self.engine, &model, &self.input).with_context(ctx)?;
            // A gain within the noise is no gain: the ratio is left out (never chosen).
            if let Some(added) = paired_difference_ms(self.original.as_ref(), runner.as_ref(), &x)?
            {
                after.push((ratio, self.original_ms + added));
            }
        }
        Ok(LayerCost {
            before: self.original_ms,
            after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    /// A stand-in engine whose runs "take" a nominal time plus a seeded jitter, reported as its
    /// output and read by [`fake_clock`] instead of a wall clock; it logs each run's name.
    struct Fake {
        name: &'static str,
        ms: f64,
        jitter: f64,
        seed: AtomicU64,
        log: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Fake {
        fn new(
            name: &'static str,
            ms: f64,
            jitter: f64,
            log: &Arc<Mutex<Vec<&'static str>>>,
        ) -> Fake {
            Fake {
                name,
                ms,
                jitter,
                seed: AtomicU64::new(0x9e37_79b9_7f4a_7c15 ^ ms.to_bits()),
                log: log.clone(),
            }
        }
    }

    impl Run for Fake {
        fn run(&self, _: &ArrayD<f32>) -> Result<ArrayD<f32>> {
            self.log.lock().unwrap().push(self.name);
            let mut s = self.seed.load(Ordering::Relaxed);
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            self.seed.store(s, Ordering::Relaxed);
            let unit = (s % 2001) as f64 / 1000.0 - 1.0;
            Ok(ArrayD::from_elem(
                vec![1],
                (self.ms + self.jitter * unit) as f32,
            ))
        }
        fn run_all(&self, x: &ArrayD<f32>) -> Result<Vec<ArrayD<f32>>> {
            Ok(vec![self.run(x)?])
        }
    }

    /// The time a [`Fake`] run "took".
    fn fake_clock(r: &dyn Run, x: &ArrayD<f32>) -> Result<f64> {
        Ok(r.run(x)?.iter().next().copied().unwrap_or_default() as f64)
    }

    fn timed(a: &Fake, b: &Fake, pairs: usize, warmup: usize) -> Paired {
        let x = ArrayD::zeros(vec![1]);
        compare(alternate(a, b, &x, pairs, warmup, fake_clock).unwrap())
    }

    /// A difference far above the runs' jitter is measured (to within the jitter), in either
    /// direction; two models of the same time differ only by jitter: within the noise.
    #[test]
    fn paired_differences_are_measured_and_noise_is_no_gain() {
        let log = Arc::new(Mutex::new(vec![]));
        let fake = |ms| Fake::new("m", ms, 0.05, &log);
        let slower = timed(&fake(0.5), &fake(1.5), MODEL_RUNS, MODEL_WARMUP);
        assert!(!slower.within_noise(), "{slower:?}");
        assert!((slower.difference_ms - 1.0).abs() < 0.1, "{slower:?}");
        let faster = timed(&fake(1.5), &fake(0.5), MODEL_RUNS, MODEL_WARMUP);
        assert!((faster.difference_ms + 1.0).abs() < 0.1, "{faster:?}");
        let a = Fake::new("a", 0.3, 0.05, &log);
        let mut b = Fake::new("b", 0.3, 0.05, &log);
        b.seed = AtomicU64::new(12345);
        let equal = timed(&a, &b, MODEL_RUNS, MODEL_WARMUP);
        assert!(equal.within_noise(), "{equal:?}");
    }

    /// The two models run alternately, warm-up pairs first and untimed, and each median stays
    /// in its own slot (a swap would hide a model slower than its original).
    #[test]
    fn pairs_alternate_and_keep_each_model_apart() {
        let log = Arc::new(Mutex::new(vec![]));
        let (a, b) = (
            Fake::new("a", 0.4, 0.01, &log),
            Fake::new("b", 1.2, 0.01, &log),
        );
        let p = timed(&a, &b, 5, 2);
        assert_eq!(p.pairs, 5);
        assert_eq!(*log.lock().unwrap(), ["a", "b"].repeat(7));
        assert!(
            (p.a_ms - 0.4).abs() < 0.02 && (p.b_ms - 1.2).abs() < 0.02,
            "{p:?}"
        );
        assert!(!p.within_noise(), "{p:?}");
    }
}
