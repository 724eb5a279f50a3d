//! Clustering speed: VQ and DL codebooks for every `expand3x3` layer of a SqueezeNet model (or
//! the layers named), timed over repetitions; prints one JSON line for scripts/bench_cluster.py.
//!
//! cargo bench --bench cluster -- MODEL [--ratio R] [--reps N] [--layers a,b]

use std::time::Instant;

use ndarray::Ix4;
use onnx_dlq::codebook::{self, ClusterParams, Method};
use onnx_dlq::{analysis::select, onnx::model};
use rayon::prelude::*;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let path = args
        .first()
        .cloned()
        .unwrap_or_else(|| "../shared/models/squeezenet1.1.onnx".into());
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let ratio: f64 = flag("--ratio").map_or(Ok(20.0), |v| v.parse())?;
    let reps: usize = flag("--reps").map_or(Ok(3), |v| v.parse())?;
    let m = model::load(std::path::Path::new(&path))?;
    let layers = select::conv_layers(&m);
    let chosen: Vec<_> = match flag("--layers") {
        Some(list) => list
            .split(',')
            .map(|n| select::resolve(&layers, n).map(|(l, _)| l))
            .collect::<anyhow::Result<_>>()?,
        None => layers
            .iter()
            .filter(|l| l.name.contains("expand3x3"))
            .collect(),
    };
    let weights: Vec<_> = chosen
        .iter()
        .map(|l| {
            Ok(m.tensor_f32(m.initializer(&l.weight).unwrap())?
                .into_dimensionality::<Ix4>()?)
        })
        .collect::<anyhow::Result<_>>()?;
    let mut out = serde_json::Map::new();
    for method in [Method::Vq, Method::Dl] {
        let mut times = Vec::new();
        let mut errors = Vec::new();
        for _ in 0..reps {
            let started = Instant::now();
            // As `convert` does: layers in parallel, each layer's subspaces in parallel.
            errors = weights
                .par_iter()
                .map(|w| {
                    let cb =
                        codebook::learn(w.view(), &ClusterParams::new(method, ratio).check()?)?;
                    Ok(cb.relative_error(w.view()))
                })
                .collect::<anyhow::Result<_>>()?;
            times.push(started.elapsed().as_secs_f64());
        }
        eprintln!(
            "{}: {} layers, median {:.3}s over {reps} runs {times:?}",
            method.as_str(),
            weights.len(),
            median(times.clone())
        );
        out.insert(
            method.as_str().into(),
            serde_json::json!({"seconds_median": median(times.clone()), "seconds": times, "relative_errors": errors}),
        );
    }
    out.insert(
        "layers".into(),
        serde_json::json!(chosen.iter().map(|l| l.name.clone()).collect::<Vec<_>>()),
    );
    out.insert("ratio".into(), serde_json::json!(ratio));
    out.insert(
        "threads".into(),
        serde_json::json!(rayon::current_num_threads()),
    );
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
