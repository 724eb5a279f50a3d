//! The per-layer sweep (the paper's Experiment I): relative weight error of VQ and DL over
//! acceleration ratios and DL settings, the acceleration gain of DL at equal error, and a plot
//! of error against ρ per method.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use ndarray::ArrayView4;
use serde::Serialize;

use crate::codebook::{self, ClusterParams, Method};
use crate::setting::{require, Setting};
use crate::{analysis::select, onnx::model, progress};

#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    pub method: Method,
    pub ratio: f64,
    pub subspace: usize,
    pub c: Option<f64>,
    pub alpha: Option<usize>,
    pub k: usize,
    pub l: Option<usize>,
    pub relative_error: f64,
    pub seconds: f64,
}

/// DL's gain for one (c, α): at each VQ ratio ρ, the ratio ρ′ at which DL's error (interpolated
/// linearly in log ρ) equals VQ's error at ρ, and ρ′/ρ.
#[derive(Debug, Clone, Serialize)]
pub struct Gain {
    pub c: f64,
    pub alpha: usize,
    pub points: Vec<GainPoint>,
    /// Geometric mean of the points' gains (None when no VQ error falls in DL's range).
    pub mean: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GainPoint {
    pub vq_ratio: f64,
    pub vq_error: f64,
    pub dl_ratio_at_equal_error: f64,
    pub gain: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub model: String,
    pub layer: String,
    pub kernel: [usize; 4],
    pub rows: Vec<SweepRow>,
    pub gains: Vec<Gain>,
    /// The gain of the first DL setting (the paper's c = 3, α = 2 by default).
    pub gain_at_equal_error: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct SweepOptions {
    pub ratios: Vec<f64>,
    pub cs: Vec<f64>,
    pub alphas: Vec<usize>,
    pub subspace: usize,
    pub iters: usize,
    pub seed: u64,
}

fn row(kernel: ArrayView4<f32>, p: ClusterParams) -> Result<SweepRow> {
    let started = Instant::now();
    let p = p.check()?;
    let cb = codebook::learn(kernel, &p)?;
    Ok(SweepRow {
        method: p.method,
        ratio: p.ratio,
        subspace: p.subspace,
        c: (p.method == Method::Dl).then_some(p.c),
        alpha: (p.method == Method::Dl).then_some(p.alpha),
        k: cb.sizes.k,
        l: (p.method == Method::Dl).then_some(cb.sizes.l),
        relative_error: cb.relative_error(kernel),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// ρ at which the piecewise log-linear curve through `curve` (ρ, error), sorted by ρ, reaches
/// `error`; None outside the curve's range.
pub fn ratio_at_error(curve: &[(f64, f64)], error: f64) -> Option<f64> {
    for w in curve.windows(2) {
        let ((r0, e0), (r1, e1)) = (w[0], w[1]);
        let (lo, hi) = if e0 <= e1 { (e0, e1) } else { (e1, e0) };
        if error >= lo && error <= hi {
            if (e1 - e0).abs() < 1e-15 {
                return Some(r0);
            }
            let t = (error - e0) / (e1 - e0);
            return Some((r0.ln() + t * (r1.ln() - r0.ln())).exp());
        }
    }
    None
}

pub fn sweep(model_path: &Path, layer_name: &str, opts: &SweepOptions) -> Result<SweepReport> {
    require(!opts.ratios.is_empty(), Setting::Ratios, || {
        "needs at least one value".into()
    })?;
    let m = model::load(model_path)?;
    let layers = select::conv_layers(&m);
    let (layer, _) = select::resolve(&layers, layer_name)?;
    if let Err(reason) = &layer.eligibility {
        anyhow::bail!("layer `{}` cannot be converted: {reason}", layer.name);
    }
    let w = layer.kernel_f32(&m)?;
    let rows = measure(w.view(), opts)?;
    let gains = gains(&rows, opts);
    let kernel = layer.kernel.clone().expect("eligible");
    Ok(SweepReport {
        model: model_path.display().to_string(),
        layer: layer.name.clone(),
        kernel: [kernel[0], kernel[1], kernel[2], kernel[3]],
        gain_at_equal_error: gains.first().and_then(|g| g.mean),
        rows,
        gains,
    })
}

/// VQ at every ratio and DL at every ratio × c × α (a DL setting the rules refuse is skipped
/// with a warning), by increasing ratio.
fn measure(w: ArrayView4<f32>, opts: &SweepOptions) -> Result<Vec<SweepRow>> {
    let runs = opts.ratios.len() * (1 + opts.cs.len() * opts.alphas.len());
    let task = progress::task("sweep", runs as u64);
    let mut ratios = opts.ratios.clone();
    ratios.sort_by(f64::total_cmp);
    let mut rows = Vec::new();
    for &ratio in &ratios {
        let mut p = ClusterParams::new(Method::Vq, ratio);
        p.subspace = opts.subspace;
        p.seed = opts.seed;
        let r = row(w, p).with_context(|| format!("VQ at ρ = {ratio}"))?;
        task.inc(1);
        log::info!(
            "vq ρ={ratio}: error {:.4} ({:.2}s)",
            r.relative_error,
            r.seconds
        );
        rows.push(r);
        for &c in &opts.cs {
            for &alpha in &opts.alphas {
                let mut p = ClusterParams::new(Method::Dl, ratio);
                p.subspace = opts.subspace;
                p.c = c;
                p.alpha = alpha;
                p.iters = opts.iters;
                p.seed = opts.seed;
                let r = row(w, p);
                task.inc(1);
                match r {
                    Ok(r) => {
                        log::info!(
                            "dl ρ={ratio} c={c} α={alpha}: error {:.4} ({:.2}s)",
                            r.relative_error,
                            r.seconds
                        );
                        rows.push(r);
                    }
                    Err(e) => log::warn!("dl ρ={ratio} c={c} α={alpha}: skipped: {e:#}"),
                }
            }
        }
    }
    Ok(rows)
}

/// DL's acceleration gain at equal error per c × α: at each VQ point, the ratio where DL's
/// curve reaches VQ's error, over VQ's ratio; their geometric mean.
fn gains(rows: &[SweepRow], opts: &SweepOptions) -> Vec<Gain> {
    let vq: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.method == Method::Vq)
        .map(|r| (r.ratio, r.relative_error))
        .collect();
    let mut gains = Vec::new();
    for &c in &opts.cs {
        for &alpha in &opts.alphas {
            let curve: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.method == Method::Dl && r.c == Some(c) && r.alpha == Some(alpha))
                .map(|r| (r.ratio, r.relative_error))
                .collect();
            let points: Vec<GainPoint> = vq
                .iter()
                .filter_map(|&(vr, ve)| {
                    ratio_at_error(&curve, ve).map(|dr| GainPoint {
                        vq_ratio: vr,
                        vq_error: ve,
                        dl_ratio_at_equal_error: dr,
                        gain: dr / vr,
                    })
                })
                .collect();
            let mean = (!points.is_empty()).then(|| {
                (points.iter().map(|p| p.gain.ln()).sum::<f64>() / points.len() as f64).exp()
            });
            gains.push(Gain {
                c,
                alpha,
                points,
                mean,
            });
        }
    }
    gains
}

pub fn to_csv(r: &SweepReport) -> String {
    let mut s = String::from("method,ratio,subspace,c,alpha,k,l,relative_error,seconds\n");
    for row in &r.rows {
        let opt = |v: Option<String>| v.unwrap_or_default();
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{:.6},{:.4}\n",
            row.method.as_str(),
            row.ratio,
            row.subspace,
            opt(row.c.map(|c| c.to_string())),
            opt(row.alpha.map(|a| a.to_string())),
            row.k,
            opt(row.l.map(|l| l.to_string())),
            row.relative_error,
            row.seconds
        ));
    }
    s
}

pub fn render(r: &SweepReport) -> String {
    let mut s = format!(
        "layer {} {:?}\nmethod  ρ      c     α   K     L    rel.error  seconds\n",
        r.layer, r.kernel
    );
    for row in &r.rows {
        s.push_str(&format!(
            "{:<7} {:<6} {:<5} {:<3} {:<5} {:<4} {:<10.4} {:.2}\n",
            row.method.as_str(),
            row.ratio,
            row.c.map_or("-".into(), |c| c.to_string()),
            row.alpha.map_or("-".into(), |a| a.to_string()),
            row.k,
            row.l.map_or("-".into(), |l| l.to_string()),
            row.relative_error,
            row.seconds
        ));
    }
    for g in &r.gains {
        for p in &g.points {
            s.push_str(&format!(
                "c={} α={}: VQ error {:.4} at ρ={} is reached by DL at ρ={:.1} (gain {:.2}x)\n",
                g.c, g.alpha, p.vq_error, p.vq_ratio, p.dl_ratio_at_equal_error, p.gain
            ));
        }
    }
    match r.gain_at_equal_error {
        Some(g) => s.push_str(&format!("acceleration gain at equal error: {g:.2}x\n")),
        None => {
            s.push_str("acceleration gain at equal error: n/a (no VQ error within DL's range)\n")
        }
    }
    s
}

/// Error against ρ per method (one line per DL setting), like the paper's Fig. 2, as SVG.
pub fn plot_svg(r: &SweepReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 520)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        let (rmin, rmax) = r.rows.iter().fold((f64::MAX, f64::MIN), |(a, b), x| {
            (a.min(x.ratio), b.max(x.ratio))
        });
        let (emin, emax) = r.rows.iter().fold((f64::MAX, f64::MIN), |(a, b), x| {
            (a.min(x.relative_error), b.max(x.relative_error))
        });
        let pad = ((emax - emin) * 0.1).max(0.01);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{} {:?}: relative error vs acceleration", r.layer, r.kernel),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(rmin * 0.9..rmax * 1.05, (emin - pad)..(emax + pad))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("acceleration ratio ρ")
            .y_desc("‖W − W̃‖ / ‖W‖")
            .draw()
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        let mut series: Vec<(String, Vec<(f64, f64)>)> = vec![(
            "VQ (k-means)".into(),
            r.rows
                .iter()
                .filter(|x| x.method == Method::Vq)
                .map(|x| (x.ratio, x.relative_error))
                .collect(),
        )];
        for g in &r.gains {
            series.push((
                format!("DL c={} α={}", g.c, g.alpha),
                r.rows
                    .iter()
                    .filter(|x| {
                        x.method == Method::Dl && x.c == Some(g.c) && x.alpha == Some(g.alpha)
                    })
                    .map(|x| (x.ratio, x.relative_error))
                    .collect(),
            ));
        }
        for (i, (label, pts)) in series.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("plot: {e}"))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
                .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    model::write_atomically(path, svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_error_ratio_interpolates_in_log_ratio() {
        let curve = [(10.0, 0.3), (20.0, 0.4), (40.0, 0.5)];
        assert!((ratio_at_error(&curve, 0.4).unwrap() - 20.0).abs() < 1e-9);
        let mid = ratio_at_error(&curve, 0.45).unwrap();
        assert!((mid - (800f64).sqrt()).abs() < 1e-9, "{mid}");
        assert!(ratio_at_error(&curve, 0.6).is_none());
        assert!(ratio_at_error(&curve, 0.2).is_none());
    }
}
