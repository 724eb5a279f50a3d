//! Model-wide speed budget: a ratio ρ per layer so that the whole model needs X× fewer
//! multiplications — or, with measured timings (the fused form), runs in X× less time — chosen
//! from each layer's measured sensitivity — its relative output error on
//! the calibration inputs (or its weight error without calibration) at every candidate ρ — by a
//! greedy exchange: repeatedly take the step (one layer to a higher ρ) that saves the most
//! multiplications per unit of added squared error, until the budget is met. Layers never picked
//! stay original.
//!
//! The budget's measures are its own modules: [`size`] (bytes, the compact form's byte model),
//! [`latency`] (times on this machine, by [`timing`]), and [`reach`] (each layer's end-to-end
//! gain, which weighs its error when calibrated).

pub mod latency;
pub mod reach;
pub mod size;
pub mod timing;

use std::time::Instant;

use anyhow::Result;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::analysis::select::ConvLayer;
use crate::calibrate::{self, Calibration, InputStats};
use crate::codebook::{self, ValidParams};
use crate::onnx::model::OnnxModel;
use crate::progress;
use crate::setting::{require, Setting};

/// The ratios a layer with per-subspace codebooks may get.
pub const CANDIDATE_RATIOS: [f64; 7] = [2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0];

/// The ratios a layer may get under `params`, increasing: [`CANDIDATE_RATIOS`], or for a
/// shared codebook (a palette) those that give K = 2^b for b = 8, 7, …, 1 (ρ = S·p²M / K,
/// so Γ packs into b bits), K below the layer's sub-vector count.
pub fn ladder(params: &ValidParams, kernel: [usize; 4]) -> Vec<f64> {
    if !params.shared {
        return CANDIDATE_RATIOS.to_vec();
    }
    let [m, n, kh, kw] = kernel;
    let columns = (n / params.subspace.max(1) * m * kh * kw) as f64;
    [8, 7, 6, 5, 4, 3, 2, 1]
        .into_iter()
        .map(|b| f64::from(1u32 << b))
        .filter(|&k| k < columns)
        .map(|k| columns / k)
        .collect()
}

/// How far the written size may exceed the byte model's prediction (`lower::dense::price`): measured
/// within 0.6% on SqueezeNet, 3% above on the ResNets (BENCHMARKS.md, "Smaller rebuild
/// subgraphs"); SqueezeNet `--target-compression 8` wrote 619,862 bytes for 619,359 predicted.
pub const BYTE_MODEL_MARGIN: f64 = 0.01;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllocatedLayer {
    pub name: String,
    pub ratio: f64,
    /// The sensitivity measure at that ratio (output error with calibration, else weight error).
    pub error: f64,
    pub multiplications_before: u64,
    /// How much of the layer's output error reaches the model's output ([`reach`]; calibrated
    /// budgets), the factor its error was weighed by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gain: Option<f64>,
    /// With a measured budget: the layer's (original, converted at `ratio`) cost in its unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<(f64, f64)>,
}

/// What a measured budget spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Latency measured on this machine (`--target-speedup` with the fused form).
    Milliseconds,
    /// Stored bytes (`--target-compression`).
    Bytes,
}

/// One layer's measured cost: as it is, and converted at each candidate ratio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCost {
    pub before: f64,
    /// (ρ, cost) for every candidate ratio that was measured, increasing ρ.
    pub after: Vec<(f64, f64)>,
}

/// Measured costs that make the budget spend time or bytes instead of multiplications.
#[derive(Debug, Clone)]
pub struct MeasuredBudget {
    pub unit: Unit,
    /// The whole original model.
    pub total: f64,
    /// The cost with no layer converted, when it is not the original's `total` (the int8
    /// output's model stores every weight as int8 and adds its quantization parameters).
    pub start: Option<f64>,
    /// Per candidate layer (same order as the candidates).
    pub layers: Vec<LayerCost>,
    /// What measured it (a latency budget's engine and how), for reports.
    pub source: Option<String>,
}

/// A measured budget's prediction: the original's cost and the converted model's (original
/// minus each converted layer's saving).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeasuredEstimate {
    pub unit: Unit,
    pub original: f64,
    pub predicted: f64,
    /// A latency budget's engine and timing method.
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Allocation {
    pub target_speedup: f64,
    /// From each converted layer's multiplications × position factor / ρ (the rewrite counts the
    /// same within rounding of K and L); with a latency budget, predicted time speed-up.
    pub estimated_speedup: f64,
    /// Present when the budget was spent on measured latency or bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<MeasuredEstimate>,
    pub sensitivity: Sensitivity,
    pub layers: Vec<AllocatedLayer>,
    /// Layers considered and left original.
    pub unchanged: Vec<String>,
    pub seconds: f64,
}

/// What a layer's error at a ratio is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    /// The relative output error on the calibration inputs.
    Output,
    /// The relative weight error (no calibration).
    Weight,
}

/// Why no allocation can be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "a {target}x {goal}: the {layers} candidate layers cannot save that much even at {highest}"
    )]
    Unreachable {
        /// The setting the target came from.
        setting: Setting,
        goal: &'static str,
        target: f64,
        layers: usize,
        /// Their highest setting, in words ("ρ = 16", "K = 2").
        highest: String,
    },
}

/// A layer the budget may convert.
pub struct Candidate<'a> {
    pub layer: &'a ConvLayer,
    pub multiplications: u64,
    /// Input positions / output positions: the lowered layer works at the input's resolution
    /// (`rewrite`), so a stride-2 layer at ratio ρ saves only as if at ρ/4.
    pub position_factor: f64,
    /// Its clustering parameters (its own seed); the budget varies the ratio.
    pub params: ValidParams,
    /// The ratios it may get, increasing ([`ladder`]).
    pub ratios: Vec<f64>,
}

/// One layer's error at each valid candidate ratio.
struct LayerSensitivity {
    before: u64,
    position_factor: f64,
    /// (ρ, error), increasing ρ.
    points: Vec<(f64, f64)>,
    /// The end-to-end weight of the layer's error ([`reach`]), when measured.
    gain: Option<f64>,
    /// With a measured budget, the layer's measured costs.
    measured: Option<LayerCost>,
}

/// Chooses the ratios; `calibration` gives the calibration inputs, damping and engine when
/// calibrating.
pub fn allocate(
    original: &OnnxModel,
    layers: &[Candidate],
    total_multiplications: u64,
    target: f64,
    calibration: Option<&Calibration>,
    measured: Option<MeasuredBudget>,
) -> Result<Allocation> {
    let started = Instant::now();
    let (setting, goal) = match measured.as_ref().map(|m| m.unit) {
        Some(Unit::Bytes) => (Setting::TargetCompression, "compression"),
        _ => (Setting::TargetSpeedup, "speed-up"),
    };
    require(target.is_finite() && target > 1.0, setting, || {
        format!("must be above 1, got {target}")
    })?;
    let mut sens = measure(original, layers, calibration)?;
    let total = match &measured {
        Some(m) => {
            for (s, t) in sens.iter_mut().zip(&m.layers) {
                s.measured = Some(t.clone());
            }
            m.total
        }
        None => total_multiplications as f64,
    };
    // Bytes are predicted, not measured on the written file: aim below the target by the byte
    // model's error, so that the file meets it.
    let aim = match measured.as_ref().map(|m| m.unit) {
        Some(Unit::Bytes) => target * (1.0 + BYTE_MODEL_MARGIN),
        _ => target,
    };
    let start = measured.as_ref().and_then(|m| m.start).unwrap_or(total);
    let need = start - total / aim;
    let chosen = greedy_for(&sens, need).ok_or_else(|| BudgetError::Unreachable {
        setting,
        goal,
        target,
        layers: layers.len(),
        highest: match layers.first() {
            Some(c) if c.params.shared => "K = 2 (1-bit palettes)".into(),
            _ => format!("ρ = {}", CANDIDATE_RATIOS[CANDIDATE_RATIOS.len() - 1]),
        },
    })?;
    let after = start
        - sens
            .iter()
            .zip(&chosen)
            .map(|(s, c)| s.saving(*c))
            .sum::<f64>();
    let mut allocated = Vec::new();
    let mut unchanged = Vec::new();
    for (cand, (s, c)) in layers.iter().zip(sens.iter().zip(&chosen)) {
        match c {
            Some(j) => allocated.push(AllocatedLayer {
                name: cand.layer.name.clone(),
                ratio: s.points[*j].0,
                error: s.points[*j].1,
                multiplications_before: cand.multiplications,
                gain: s.gain,
                measured: s
                    .measured
                    .as_ref()
                    .and_then(|t| Some((t.before, s.measured_after(s.points[*j].0)?))),
            }),
            None => unchanged.push(cand.layer.name.clone()),
        }
    }
    Ok(Allocation {
        target_speedup: target,
        estimated_speedup: total / after,
        measured: measured.map(|m| MeasuredEstimate {
            unit: m.unit,
            original: m.total,
            predicted: after,
            source: m.source.clone(),
        }),
        sensitivity: match calibration {
            Some(_) => Sensitivity::Output,
            None => Sensitivity::Weight,
        },
        layers: allocated,
        unchanged,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Every candidate layer's error at every candidate ratio its sizes allow (in parallel; the
/// order of the results does not depend on the schedule).
fn measure(
    original: &OnnxModel,
    layers: &[Candidate],
    calibration: Option<&Calibration>,
) -> Result<Vec<LayerSensitivity>> {
    let stats: Option<Vec<InputStats>> = match calibration {
        Some(cal) => {
            let of: Vec<&ConvLayer> = layers.iter().map(|c| c.layer).collect();
            Some(calibrate::collect_many(
                cal.engine, original, cal.inputs, &of,
            )?)
        }
        None => None,
    };
    // Each kernel is read once, not once per candidate ratio.
    let kernels: Vec<ndarray::Array4<f32>> = layers
        .iter()
        .map(|c| c.layer.kernel_f32(original))
        .collect::<Result<_>>()?;
    let jobs: Vec<(usize, f64)> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.ratios.iter().map(move |&r| (i, r)))
        .collect();
    let task = progress::task("sensitivity", jobs.len() as u64);
    let errors: Vec<Option<f64>> = jobs
        .par_iter()
        .map(|&(i, ratio)| {
            let p = layers[i].params.with_ratio(ratio)?;
            let w = &kernels[i];
            let k = w.dim();
            if p.sizes(k.0, k.1, k.2 * k.3).is_err() {
                return Ok(None);
            }
            let e = match (&stats, calibration) {
                (Some(s), Some(cal)) => {
                    let cb = calibrate::learn(w.view(), &p, &s[i], cal.options.damping)?;
                    calibrate::output_error(w.view(), cb.reconstruct().view(), &s[i])
                }
                _ => codebook::learn(w.view(), &p)?.relative_error(w.view()),
            };
            task.inc(1);
            Ok(Some(e))
        })
        .collect::<Result<_>>()?;
    let mut sens: Vec<LayerSensitivity> = layers
        .iter()
        .enumerate()
        .map(|(i, c)| LayerSensitivity {
            before: c.multiplications,
            position_factor: c.position_factor,
            points: jobs
                .iter()
                .zip(&errors)
                .filter(|((j, _), e)| *j == i && e.is_some())
                .map(|((_, r), e)| (*r, e.expect("filtered")))
                .collect(),
            gain: None,
            measured: None,
        })
        .collect();
    if let (Some(stats), Some(cal)) = (&stats, calibration) {
        if cal.options.end_to_end {
            weigh_end_to_end(original, layers, &kernels, stats, cal, &mut sens)?;
        }
    }
    Ok(sens)
}

/// Sets every layer's end-to-end gain ([`reach`]), probed at the middle of its measured ratios.
fn weigh_end_to_end(
    original: &OnnxModel,
    layers: &[Candidate],
    kernels: &[ndarray::Array4<f32>],
    stats: &[InputStats],
    cal: &Calibration,
    sens: &mut [LayerSensitivity],
) -> Result<()> {
    let started = Instant::now();
    let probes: Vec<Option<reach::Probe>> = layers
        .par_iter()
        .zip(sens.par_iter())
        .enumerate()
        .map(|(i, (c, s))| {
            let Some(&(ratio, error)) = s.points.get(s.points.len() / 2) else {
                return Ok(None);
            };
            let p = c.params.with_ratio(ratio)?;
            let mut codebook =
                calibrate::learn(kernels[i].view(), &p, &stats[i], cal.options.damping)?;
            // As the conversion does: a layer with no place for the shift is probed without it.
            calibrate::place_bias_shift(&mut codebook, c.layer, original);
            Ok(Some(reach::Probe {
                layer: c.layer,
                codebook,
                error,
            }))
        })
        .collect::<Result<_>>()?;
    let (at, probes): (Vec<usize>, Vec<reach::Probe>) = probes
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| Some((i, p?)))
        .unzip();
    let gains = reach::gains(cal.engine, original, cal.inputs, &probes)?;
    for (&i, &g) in at.iter().zip(&gains) {
        sens[i].gain = Some(g);
        log::info!("end-to-end gain of `{}`: {g:.3}", layers[i].layer.name);
    }
    log::info!(
        "end-to-end sensitivity: {} layers probed in {:.1}s",
        probes.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

impl LayerSensitivity {
    /// Multiplications — or, measured, milliseconds or bytes — saved at point `c` (negative
    /// when the converted layer costs more; a ratio that was not measured is never worth it).
    fn saving(&self, c: Option<usize>) -> f64 {
        let Some(j) = c else { return 0.0 };
        let ratio = self.points[j].0;
        match &self.measured {
            Some(t) => self
                .measured_after(ratio)
                .map_or(f64::NEG_INFINITY, |f| t.before - f),
            None => self.before as f64 * (1.0 - self.position_factor / ratio),
        }
    }

    /// The measured converted cost at `ratio`, if it was measured.
    fn measured_after(&self, ratio: f64) -> Option<f64> {
        let t = self.measured.as_ref()?;
        t.after.iter().find(|(r, _)| *r == ratio).map(|(_, c)| *c)
    }
}

impl LayerSensitivity {
    /// (saving, cost) at point `c`: the cost is the squared error, weighed by the layer's
    /// end-to-end gain when measured.
    fn state(&self, c: Option<usize>) -> (f64, f64) {
        let weight = self.gain.unwrap_or(1.0);
        (
            self.saving(c),
            c.map_or(0.0, |j| (weight * self.points[j].1).powi(2)),
        )
    }
}

/// Per layer: the index of its chosen point, or `None` (original). Greedy on cost = error²,
/// then [`exchange`]. `None` when the candidates cannot save enough even at their highest
/// ratios.
#[cfg(test)]
fn greedy(sens: &[LayerSensitivity], total: f64, target: f64) -> Option<Vec<Option<usize>>> {
    greedy_for(sens, total * (1.0 - 1.0 / target))
}

/// [`greedy`] for a saving of `need`.
fn greedy_for(sens: &[LayerSensitivity], need: f64) -> Option<Vec<Option<usize>>> {
    let mut chosen: Vec<Option<usize>> = vec![None; sens.len()];
    let mut saved = 0.0;
    while saved < need {
        // The best step: most multiplications saved per added squared error; ties to the
        // earlier layer and the smaller ρ, so the choice is deterministic.
        let mut best: Option<(f64, usize, usize)> = None;
        for (i, s) in sens.iter().enumerate() {
            let (save0, cost0) = s.state(chosen[i]);
            let from = chosen[i].map_or(0, |j| j + 1);
            for j in from..s.points.len() {
                let (save1, cost1) = s.state(Some(j));
                let gain = save1 - save0;
                if gain <= 0.0 {
                    continue;
                }
                // A step that lowers the error is taken first (it costs nothing).
                let per = (cost1 - cost0).max(0.0) / gain;
                if best.is_none_or(|b| per < b.0) {
                    best = Some((per, i, j));
                }
            }
        }
        let (_, i, j) = best?;
        saved += sens[i].state(Some(j)).0 - sens[i].state(chosen[i]).0;
        chosen[i] = Some(j);
    }
    exchange(sens, &mut chosen, need);
    Some(chosen)
}

/// Improves a greedy allocation that meets `need`: the greedy's last step can overshoot the
/// budget by a whole layer's step (SqueezeNet's classifier, 20% of its bytes), so every change
/// of one layer's point, or of two layers' together, that keeps the saving at `need` or more
/// and lowers the total cost is tried; the best is taken until none is left (first found on
/// ties, so the result is deterministic).
fn exchange(sens: &[LayerSensitivity], chosen: &mut [Option<usize>], need: f64) {
    // Every layer's alternatives: (layer, point, Δsaving, Δcost) against its current point.
    let moves = |chosen: &[Option<usize>]| -> Vec<(usize, Option<usize>, f64, f64)> {
        let mut out = Vec::new();
        for (i, s) in sens.iter().enumerate() {
            let (save0, cost0) = s.state(chosen[i]);
            for c in std::iter::once(None).chain((0..s.points.len()).map(Some)) {
                if c != chosen[i] {
                    let (save1, cost1) = s.state(c);
                    out.push((i, c, save1 - save0, cost1 - cost0));
                }
            }
        }
        out
    };
    // Relative to the total cost, so rounding never loops.
    let eps = |total: f64| 1e-12 * total.max(f64::MIN_POSITIVE);
    loop {
        let saved: f64 = sens
            .iter()
            .zip(chosen.iter())
            .map(|(s, c)| s.saving(*c))
            .sum();
        let cost: f64 = sens
            .iter()
            .zip(chosen.iter())
            .map(|(s, c)| s.state(*c).1)
            .sum();
        let all = moves(chosen);
        let mut best: Option<(f64, usize, Option<usize>)> = None;
        let mut consider = |delta: f64, a: usize, b: Option<usize>| {
            if delta < -eps(cost) && best.is_none_or(|x| delta < x.0) {
                best = Some((delta, a, b));
            }
        };
        for (a, &(i, _, save_a, cost_a)) in all.iter().enumerate() {
            if saved + save_a >= need {
                consider(cost_a, a, None);
            }
            for (b, &(k, _, save_b, cost_b)) in all.iter().enumerate().skip(a + 1) {
                if k != i && saved + save_a + save_b >= need {
                    consider(cost_a + cost_b, a, Some(b));
                }
            }
        }
        let Some((_, a, b)) = best else { return };
        for m in std::iter::once(a).chain(b) {
            chosen[all[m].0] = all[m].1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(before: u64, points: &[(f64, f64)]) -> LayerSensitivity {
        LayerSensitivity {
            before,
            position_factor: 1.0,
            points: points.to_vec(),
            gain: None,
            measured: None,
        }
    }

    #[test]
    fn greedy_spends_error_where_it_buys_most_multiplications() {
        // Layer 0 is robust, layer 1 sensitive, same size: a 1.5× target is met from layer 0
        // alone; layer 1 stays original.
        let sens = vec![
            s(100, &[(2.0, 0.05), (4.0, 0.1), (8.0, 0.2)]),
            s(100, &[(2.0, 0.5), (4.0, 0.8), (8.0, 0.9)]),
        ];
        let c = greedy(&sens, 200.0, 1.5).unwrap();
        assert_eq!(c[1], None);
        assert!(sens[0].saving(c[0]) >= 200.0 * (1.0 - 1.0 / 1.5));
        // A larger target needs both.
        let c = greedy(&sens, 200.0, 3.0).unwrap();
        assert!(c[0].is_some() && c[1].is_some());
    }

    /// The greedy's ratio rule takes the big layer's step (most saved per error), far past the
    /// budget; the exchange trades it for the small layer's next step, which meets the budget
    /// at a sixth of the cost.
    #[test]
    fn an_overshooting_last_step_is_exchanged_for_a_cheaper_one() {
        let sens = vec![s(100, &[(2.0, 0.01), (4.0, 0.02)]), s(1000, &[(2.0, 0.05)])];
        let (total, need) = (1100.0, 60.0);
        let c = greedy(&sens, total, total / (total - need)).unwrap();
        assert_eq!(c, vec![Some(1), None]);
        let mut rng = 7u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        // Random instances: no single or paired change keeps the budget at a lower cost.
        for _ in 0..50 {
            let sens: Vec<LayerSensitivity> = (0..5)
                .map(|_| {
                    let mut e = 0.0;
                    let pts: Vec<(f64, f64)> = [2.0, 4.0, 8.0]
                        .iter()
                        .map(|&r| {
                            e += next() * 0.2;
                            (r, e)
                        })
                        .collect();
                    let mut l = s((next() * 1000.0) as u64 + 1, &pts);
                    l.gain = Some(0.5 + next());
                    l
                })
                .collect();
            let total: f64 = sens.iter().map(|l| l.before as f64).sum();
            let Some(c) = greedy(&sens, total, 1.6) else {
                continue;
            };
            let need = total * (1.0 - 1.0 / 1.6);
            let saved = |c: &[Option<usize>]| -> f64 {
                sens.iter().zip(c).map(|(l, c)| l.saving(*c)).sum()
            };
            let cost = |c: &[Option<usize>]| -> f64 {
                sens.iter().zip(c).map(|(l, c)| l.state(*c).1).sum()
            };
            assert!(saved(&c) >= need);
            let options = [None, Some(0), Some(1), Some(2)];
            for a in 0..5 {
                for b in a..5 {
                    for &x in &options {
                        for &y in &options {
                            let mut d = c.clone();
                            (d[a], d[b]) = (x, if a == b { x } else { y });
                            if saved(&d) >= need {
                                assert!(cost(&d) >= cost(&c) - 1e-9, "{c:?} -> {d:?}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// A stride-2 layer (4× the positions at its input) saves nothing below ρ = 4.
    #[test]
    fn strided_layers_save_only_above_their_position_factor() {
        let mut strided = s(100, &[(2.0, 0.01), (4.0, 0.02), (8.0, 0.03)]);
        strided.position_factor = 4.0;
        assert!(strided.saving(Some(0)) < 0.0);
        assert_eq!(strided.saving(Some(1)), 0.0);
        let sens = vec![strided, s(100, &[(2.0, 0.5), (4.0, 0.6)])];
        let c = greedy(&sens, 200.0, 1.2).unwrap();
        assert_eq!(c[0], Some(2), "only ρ = 8 saves on the strided layer");
    }

    #[test]
    fn a_latency_budget_never_converts_a_layer_the_kernel_does_not_speed_up() {
        let timed = |before, points: &[(f64, f64)], dense_ms, fused_ms: &[(f64, f64)]| {
            let mut l = s(before, points);
            l.measured = Some(LayerCost {
                before: dense_ms,
                after: fused_ms.to_vec(),
            });
            l
        };
        // Many multiplications saved, but the kernel is slower than the dense Conv: never
        // taken, however robust the layer; the small layer the kernel speeds up is.
        let slow = timed(
            1000,
            &[(2.0, 0.01), (4.0, 0.02)],
            1.0,
            &[(2.0, 1.5), (4.0, 1.2)],
        );
        let fast = timed(
            10,
            &[(2.0, 0.3), (4.0, 0.5)],
            1.0,
            &[(2.0, 0.6), (4.0, 0.4)],
        );
        let sens = vec![slow, fast];
        // A 2 ms model, 1.2× faster: 0.33 ms to save, which only the fast layer offers.
        let c = greedy(&sens, 2.0, 1.2).unwrap();
        assert_eq!(c[0], None);
        assert_eq!(sens[1].saving(c[1]), 1.0 - 0.6);
        // 2× needs 1 ms: the fast layer saves 0.6 at most, so no allocation.
        assert!(greedy(&sens, 2.0, 2.0).is_none());
    }

    #[test]
    fn an_impossible_budget_has_no_allocation() {
        let sens = vec![s(100, &[(2.0, 0.1)])];
        // Only half of 300 multiplications can be saved at most: 2× is reachable only with
        // everything at ρ = 2 and the rest nothing.
        assert!(greedy(&sens, 300.0, 2.0).is_none());
        assert!(greedy(&sens, 100.0, 2.0).is_some());
    }
}
