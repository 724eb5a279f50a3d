//! Refit without training: with the assignment Γ fixed, a converted layer's output is linear in
//! its continuous codebook (VQ's centroids; DL's atoms for fixed Λ, and Λ's coefficients for
//! fixed atoms) and its bias. This re-fits them to the *original* model's layer output on the
//! calibration patches, taking every correlation between channels and kernel positions into
//! account (the full patch covariance, [`PatchStats`]) and the error the earlier converted layers
//! left in this layer's input.
//!
//! With W the original kernel rows [M, D], W̃ the approximation, p / p̃ the original / converted
//! patches and the bias left free, the mean squared output error is
//! `tr(W Cov(p) Wᵀ) − 2 tr(W Cov(p, p̃) W̃ᵀ) + tr(W̃ Cov(p̃) W̃ᵀ)`, and the bias that attains it
//! is `b + W E[p] − W̃ E[p̃]`. For each linear block of parameters θ (W̃ = A θ) the quadratic is
//! minimised by conjugate gradients with `Cov(p̃) + λ·mean(diag)·I` as an operator (no D × D
//! solve, no normal matrix); DL alternates its two blocks. Subspaces are fitted jointly, so the
//! error one subspace cannot remove is taken up by the others wherever the inputs correlate.
//!
//! Between refits Γ may move as well ([`RefitOptions::reassign`]): each column in turn takes the
//! representative that lowers the same objective most, its change fed forward into the
//! gradient the next columns see (GPTQ's error feedback, on a fixed set of representatives).
//! Every step lowers the objective, and a layer whose error does not fall keeps its codebook.

use std::ops::Range;

use anyhow::{ensure, Result};
use ndarray::{Array2, ArrayView1, ArrayView4};
use serde::{Deserialize, Serialize};

use crate::codebook::{subspace, Codebook, SparseCodes};

use super::patches::PatchStats;

/// Ridge on the converted patches' covariance, relative to its mean diagonal. The full patch
/// covariance describes the output error exactly, so it needs far less damping than the
/// per-channel whitening's `DEFAULT_DAMPING` (see docs/RESULTS.md for the measurement).
pub const DEFAULT_REFIT_DAMPING: f64 = 0.01;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RefitOptions {
    pub damping: f64,
    /// Conjugate-gradient iterations per block and round.
    pub iterations: usize,
    /// Rounds of (continuous refit, then re-assignment when `reassign`); DL refits its atoms,
    /// then its coefficients, in each.
    pub rounds: usize,
    /// Let Γ move too: after each continuous refit, every column in turn takes the
    /// representative that lowers the objective most given all other columns (coordinate
    /// descent on the full patch covariance, the error of each column fed forward to the next as
    /// in GPTQ). The representative count, and so the multiplications, do not change.
    pub reassign: bool,
}

impl Default for RefitOptions {
    fn default() -> Self {
        RefitOptions {
            damping: DEFAULT_REFIT_DAMPING,
            iterations: 60,
            rounds: 4,
            reassign: true,
        }
    }
}

/// Relative output error (RMS error over RMS original output, both centred) before and after.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RefitOutcome {
    pub before: f64,
    pub after: f64,
    /// False when the refit did not lower the error and the codebook was kept.
    pub applied: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// VQ's centroids.
    Centroids,
    Atoms,
    Coefficients,
}

/// One subspace's parameters in f64.
#[derive(Debug, Clone)]
struct SubspaceParams {
    channels: Range<usize>,
    atoms: Vec<f64>,
    codes: Option<(usize, Vec<u32>, Vec<f64>)>,
    /// Slots whose coefficient was 0 (unused) stay 0.
    used: Vec<bool>,
    assignment: Vec<u32>,
}

impl SubspaceParams {
    fn dim(&self) -> usize {
        self.channels.len()
    }

    /// K: the representatives (DL) or centroids (VQ).
    fn count(&self) -> usize {
        match &self.codes {
            Some((alpha, _, coefs)) => coefs.len() / alpha,
            None => self.atoms.len() / self.dim().max(1),
        }
    }

    fn representatives(&self) -> Vec<f64> {
        let Some((alpha, atoms, coefs)) = &self.codes else {
            return self.atoms.clone();
        };
        let d = self.dim();
        let mut reps = vec![0f64; coefs.len() / alpha * d];
        for (slot, (&a, &z)) in atoms.iter().zip(coefs).enumerate() {
            let (r, a) = (slot / alpha, a as usize);
            for i in 0..d {
                reps[r * d + i] += z * self.atoms[a * d + i];
            }
        }
        reps
    }
}

/// The layer's parameters and where their columns go.
#[derive(Debug, Clone)]
struct Params {
    shape: [usize; 4],
    /// One palette for every subspace ([`Codebook::shared`]): its centroids are one block of
    /// K·N′ values, held by every subspace alike, and a gradient sums over the subspaces.
    shared: bool,
    subspaces: Vec<SubspaceParams>,
    /// A palette's per-output-channel scale ([`Codebook::channel_scale`]): row k of W̃ is
    /// `scale[k]` times its entries. Refitted in closed form (each row's is a 1-D least squares).
    scale: Option<Vec<f64>>,
}

impl Params {
    fn of(cb: &Codebook) -> Params {
        let subspaces = cb
            .subspaces
            .iter()
            .map(|s| SubspaceParams {
                channels: s.channels.clone(),
                atoms: s.atoms.data.iter().map(|&v| v as f64).collect(),
                codes: s.codes.as_ref().map(|c| {
                    let coefs = c.coefs.iter().map(|&v| v as f64).collect();
                    (c.alpha, c.atoms.clone(), coefs)
                }),
                used: s
                    .codes
                    .as_ref()
                    .map_or_else(Vec::new, |c| c.coefs.iter().map(|&z| z != 0.0).collect()),
                assignment: s.assignment.clone(),
            })
            .collect();
        Params {
            shape: cb.kernel_shape,
            shared: cb.shared,
            subspaces,
            scale: cb
                .channel_scale
                .as_ref()
                .map(|s| s.iter().map(|&v| v as f64).collect()),
        }
    }

    fn row_scale(&self, k: usize) -> f64 {
        self.scale.as_ref().map_or(1.0, |s| s[k])
    }

    /// W̃ as [M, D] rows.
    fn kernel(&self) -> Array2<f64> {
        let mut w = self.unscaled_kernel();
        for (k, mut row) in w.rows_mut().into_iter().enumerate() {
            row *= self.row_scale(k);
        }
        w
    }

    /// W̃ before the channel scales: the entries Γ picks.
    fn unscaled_kernel(&self) -> Array2<f64> {
        let [m, n, kh, kw] = self.shape;
        let mut w = Array2::<f64>::zeros((m, n * kh * kw));
        for s in &self.subspaces {
            let (reps, d) = (s.representatives(), s.dim());
            for k in 0..m {
                for u in 0..kh {
                    for v in 0..kw {
                        let r = s.assignment[subspace::column(k, u, v, kh, kw)] as usize;
                        for (i, c) in s.channels.clone().enumerate() {
                            w[[k, (c * kh + u) * kw + v]] = reps[r * d + i];
                        }
                    }
                }
            }
        }
        w
    }

    /// Aᵀ for the representatives: each representative's gradient is the sum of its columns'.
    fn representative_gradients(&self, s: &SubspaceParams, g: &Array2<f64>) -> Vec<f64> {
        let [m, _, kh, kw] = self.shape;
        let d = s.dim();
        let mut out = vec![0f64; s.count() * d];
        for k in 0..m {
            let scale = self.row_scale(k);
            for u in 0..kh {
                for v in 0..kw {
                    let r = s.assignment[subspace::column(k, u, v, kh, kw)] as usize;
                    for (i, c) in s.channels.clone().enumerate() {
                        out[r * d + i] += scale * g[[k, (c * kh + u) * kw + v]];
                    }
                }
            }
        }
        out
    }

    fn get(&self, block: Block) -> Vec<f64> {
        if let (true, Some(first)) = (self.shared, self.subspaces.first()) {
            return first.atoms.clone();
        }
        let mut out = Vec::new();
        for s in &self.subspaces {
            match (block, &s.codes) {
                (Block::Centroids | Block::Atoms, _) => out.extend(&s.atoms),
                (Block::Coefficients, Some((_, _, coefs))) => out.extend(coefs),
                (Block::Coefficients, None) => {}
            }
        }
        out
    }

    fn set(&mut self, block: Block, theta: &[f64]) {
        if self.shared {
            self.subspaces
                .iter_mut()
                .for_each(|s| s.atoms.copy_from_slice(theta));
            return;
        }
        let mut at = 0;
        for s in &mut self.subspaces {
            let target = match (block, &mut s.codes) {
                (Block::Centroids | Block::Atoms, _) => &mut s.atoms,
                (Block::Coefficients, Some((_, _, coefs))) => coefs,
                (Block::Coefficients, None) => continue,
            };
            let len = target.len();
            target.copy_from_slice(&theta[at..at + len]);
            at += len;
        }
    }

    /// A v: the kernel with `block` set to `v` (linear in `v`, the other block fixed).
    fn apply(&self, block: Block, v: &[f64]) -> Array2<f64> {
        let mut p = self.clone();
        p.set(block, v);
        p.kernel()
    }

    /// Aᵀ g: the gradient of ⟨g, W̃⟩ with respect to `block`.
    fn adjoint(&self, block: Block, g: &Array2<f64>) -> Vec<f64> {
        if self.shared {
            let mut sum = vec![0f64; self.subspaces.first().map_or(0, |s| s.atoms.len())];
            for s in &self.subspaces {
                let reps = self.representative_gradients(s, g);
                sum.iter_mut().zip(reps).for_each(|(a, r)| *a += r);
            }
            return sum;
        }
        let mut out = Vec::new();
        for s in &self.subspaces {
            let reps = self.representative_gradients(s, g);
            let d = s.dim();
            match (block, &s.codes) {
                (Block::Centroids, _) => out.extend(reps),
                (Block::Atoms, Some((alpha, atoms, coefs))) => {
                    let mut ga = vec![0f64; s.atoms.len()];
                    for (slot, (&a, &z)) in atoms.iter().zip(coefs).enumerate() {
                        let (r, a) = (slot / alpha, a as usize);
                        for i in 0..d {
                            ga[a * d + i] += z * reps[r * d + i];
                        }
                    }
                    out.extend(ga);
                }
                (Block::Coefficients, Some((alpha, atoms, _))) => {
                    out.extend(atoms.iter().enumerate().map(|(slot, &a)| {
                        if !s.used[slot] {
                            return 0.0;
                        }
                        let (r, a) = (slot / alpha, a as usize);
                        (0..d).map(|i| s.atoms[a * d + i] * reps[r * d + i]).sum()
                    }));
                }
                (Block::Atoms, None) | (Block::Coefficients, None) => {}
            }
        }
        out
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The refit's quadratic: ½ tr(W̃ H W̃ᵀ) − tr(B W̃ᵀ), H the damped Cov(p̃), B = W Cov(p, p̃).
struct Objective {
    h: Array2<f64>,
    b: Array2<f64>,
}

impl Objective {
    /// Minimises over `block` by conjugate gradients from the current value.
    fn minimise(&self, params: &mut Params, block: Block, iterations: usize) {
        let mut theta = params.get(block);
        let residual = &self.b - &params.kernel().dot(&self.h);
        let mut r = params.adjoint(block, &residual);
        let mut p = r.clone();
        let rr0 = dot(&r, &r);
        let mut rr = rr0;
        for _ in 0..iterations {
            if rr <= 1e-16 * rr0 || rr == 0.0 {
                break;
            }
            let q = params.adjoint(block, &params.apply(block, &p).dot(&self.h));
            let pq = dot(&p, &q);
            if pq.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                break;
            }
            let step = rr / pq;
            theta.iter_mut().zip(&p).for_each(|(t, p)| *t += step * p);
            r.iter_mut().zip(&q).for_each(|(r, q)| *r -= step * q);
            let rr_next = dot(&r, &r);
            let beta = rr_next / rr;
            p.iter_mut().zip(&r).for_each(|(p, r)| *p = r + beta * *p);
            rr = rr_next;
        }
        params.set(block, &theta);
    }
}

impl Objective {
    /// Each channel's scale at its optimum for the current entries: row k's objective
    /// ½ s² uₖ H uₖᵀ − s Bₖ·uₖ (uₖ the unscaled row) is least at s = Bₖ·uₖ / uₖ H uₖᵀ. A
    /// non-positive or non-finite optimum (a row the entries cannot fit) keeps its scale.
    fn fit_scales(&self, params: &mut Params) {
        let Some(mut scale) = params.scale.take() else {
            return;
        };
        let u = params.unscaled_kernel();
        let uh = u.dot(&self.h);
        for (k, s) in scale.iter_mut().enumerate() {
            let num = self.b.row(k).dot(&u.row(k));
            let den = uh.row(k).dot(&u.row(k));
            let best = num / den;
            if den > 0.0 && best.is_finite() && best > 0.0 {
                *s = best;
            }
        }
        params.scale = Some(scale);
    }

    /// One sweep of coordinate descent over Γ (see [`RefitOptions::reassign`]), columns in a
    /// fixed order; returns how many moved.
    fn reassign(&self, params: &mut Params) -> usize {
        let [m, _, kh, kw] = params.shape;
        let mut gradient = params.kernel().dot(&self.h) - &self.b;
        let mut moved = 0;
        let scales: Vec<f64> = (0..m).map(|k| params.row_scale(k)).collect();
        for s in &mut params.subspaces {
            let (reps, d, count) = (s.representatives(), s.dim(), s.count());
            let mut delta = vec![0f64; d];
            for u in 0..kh {
                for v in 0..kw {
                    let index: Vec<usize> =
                        s.channels.clone().map(|c| (c * kh + u) * kw + v).collect();
                    let block: Vec<f64> = index
                        .iter()
                        .flat_map(|&i| index.iter().map(move |&j| (i, j)))
                        .map(|(i, j)| self.h[[i, j]])
                        .collect();
                    for k in 0..m {
                        let column = subspace::column(k, u, v, kh, kw);
                        let current = s.assignment[column] as usize;
                        let g: Vec<f64> = index.iter().map(|&j| gradient[[k, j]]).collect();
                        let (mut best, mut best_change) = (current, 0f64);
                        for r in 0..count {
                            for i in 0..d {
                                delta[i] = scales[k] * (reps[r * d + i] - reps[current * d + i]);
                            }
                            let change = quadratic_change(&block, &delta, &g);
                            if change < best_change - 1e-12 * best_change.abs() {
                                (best, best_change) = (r, change);
                            }
                        }
                        if best == current {
                            continue;
                        }
                        s.assignment[column] = best as u32;
                        moved += 1;
                        let mut row = gradient.row_mut(k);
                        for (i, &ji) in index.iter().enumerate() {
                            let step = scales[k] * (reps[best * d + i] - reps[current * d + i]);
                            row.scaled_add(step, &self.h.row(ji));
                        }
                    }
                }
            }
        }
        moved
    }
}

/// ½ δᵀ B δ + δᵀ g, B a d × d row-major block.
fn quadratic_change(block: &[f64], delta: &[f64], g: &[f64]) -> f64 {
    let d = delta.len();
    let mut change = 0f64;
    for i in 0..d {
        let bi: f64 = (0..d).map(|j| block[i * d + j] * delta[j]).sum();
        change += delta[i] * (0.5 * bi + g[i]);
    }
    change
}

/// Mean squared centred output error of `approx` [M, D] against `w` under the covariances.
fn output_error(w: &Array2<f64>, approx: &Array2<f64>, cov: &[Array2<f64>; 3]) -> f64 {
    let [oo, oc, cc] = cov;
    let trace = |a: &Array2<f64>, h: &Array2<f64>, b: &Array2<f64>| (a.dot(h) * b).sum();
    trace(w, oo, w) - 2.0 * trace(w, oc, approx) + trace(approx, cc, approx)
}

/// `cb` refitted to the patches of `stats` (see the module header), with its bias shift.
pub fn refit(
    kernel: ArrayView4<f32>,
    cb: &Codebook,
    stats: &PatchStats,
    opts: &RefitOptions,
) -> Result<(Codebook, RefitOutcome)> {
    let [m, n, kh, kw] = cb.kernel_shape;
    ensure!(
        kernel.dim() == (m, n, kh, kw) && stats.dim == n * kh * kw,
        "refit: kernel {:?}, codebook {:?}, patches of {} values",
        kernel.dim(),
        cb.kernel_shape,
        stats.dim
    );
    let w = Array2::from_shape_fn((m, n * kh * kw), |(k, j)| {
        kernel[[k, j / (kh * kw), j / kw % kh, j % kw]] as f64
    });
    let cov = stats.covariances();
    let mut h = cov[2].clone();
    let d = h.nrows();
    let ridge = opts.damping * (0..d).map(|i| h[[i, i]]).sum::<f64>() / d as f64;
    (0..d).for_each(|i| h[[i, i]] += ridge);
    let objective = Objective {
        b: w.dot(&cov[1]),
        h,
    };
    let mut params = Params::of(cb);
    let reference = output_error(&w, &Array2::zeros(w.dim()), &cov).max(f64::MIN_POSITIVE);
    let before = output_error(&w, &params.kernel(), &cov);
    let blocks: &[Block] = match cb.method {
        crate::codebook::Method::Vq => &[Block::Centroids],
        crate::codebook::Method::Dl => &[Block::Atoms, Block::Coefficients],
    };
    let rounds = if blocks.len() == 1 && !opts.reassign {
        1
    } else {
        opts.rounds
    };
    for round in 0..rounds {
        for &block in blocks {
            objective.minimise(&mut params, block, opts.iterations);
        }
        objective.fit_scales(&mut params);
        if opts.reassign && round + 1 < rounds {
            let moved = objective.reassign(&mut params);
            log::debug!("refit round {round}: {moved} columns re-assigned");
            if moved == 0 {
                break;
            }
        }
    }
    let approx = params.kernel();
    let after = output_error(&w, &approx, &cov);
    let relative = |e: f64| (e.max(0.0) / reference).sqrt();
    let applied = after.is_finite() && after < before;
    let mut out = if applied {
        to_codebook(cb, &params)
    } else {
        cb.clone()
    };
    let approx = if applied {
        approx
    } else {
        Params::of(cb).kernel()
    };
    out.bias_shift = Some(bias_shift(&w, &approx, stats));
    let outcome = RefitOutcome {
        before: relative(before),
        after: relative(if applied { after } else { before }),
        applied,
    };
    Ok((out, outcome))
}

/// W E[p] − W̃ E[p̃] per output channel: the bias change that makes the mean output exact.
fn bias_shift(w: &Array2<f64>, approx: &Array2<f64>, stats: &PatchStats) -> Vec<f32> {
    let (mo, mc) = stats.means();
    w.rows()
        .into_iter()
        .zip(approx.rows())
        .map(|(w, a)| (w.dot(&ArrayView1::from(&mo)) - a.dot(&ArrayView1::from(&mc))) as f32)
        .collect()
}

/// The f32 codebook of `params`; DL atoms rescaled to unit norm (their coefficients scaled back).
fn to_codebook(cb: &Codebook, params: &Params) -> Codebook {
    let mut out = cb.clone();
    out.channel_scale = params
        .scale
        .as_ref()
        .map(|s| s.iter().map(|&v| v as f32).collect());
    for (sc, p) in out.subspaces.iter_mut().zip(&params.subspaces) {
        let d = p.dim();
        sc.assignment = p.assignment.clone();
        let mut atoms = p.atoms.clone();
        let mut coefs = p.codes.as_ref().map(|(_, _, c)| c.clone());
        if let (Some(coefs), Some(codes)) = (coefs.as_mut(), sc.codes.as_ref()) {
            for (a, atom) in atoms.chunks_exact_mut(d).enumerate() {
                let norm = atom.iter().map(|v| v * v).sum::<f64>().sqrt();
                if norm > 0.0 && norm.is_finite() {
                    atom.iter_mut().for_each(|v| *v /= norm);
                    for (slot, &b) in codes.atoms.iter().enumerate() {
                        if b as usize == a {
                            coefs[slot] *= norm;
                        }
                    }
                }
            }
        }
        sc.atoms.data = atoms.iter().map(|&v| v as f32).collect();
        if let (Some(codes), Some(coefs)) = (sc.codes.as_mut(), coefs) {
            *codes = SparseCodes {
                alpha: codes.alpha,
                atoms: codes.atoms.clone(),
                coefs: coefs.iter().map(|&v| v as f32).collect(),
            };
        }
    }
    out.round_palette();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calibrate::patches::PatchGeometry;
    use crate::codebook::{self, ClusterParams, Method};
    use ndarray::{Array4, ArrayD, IxDyn};
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{RngExt, SeedableRng};

    /// Relative RMS error of the conv outputs, measured directly on the patches.
    fn measured_error(
        x: &ArrayD<f32>,
        x_converted: &ArrayD<f32>,
        g: &PatchGeometry,
        kernel: &Array4<f32>,
        cb: &Codebook,
    ) -> f64 {
        let (m, d) = (kernel.dim().0, g.dim());
        let w = kernel
            .view()
            .into_shape_with_order((m, d))
            .unwrap()
            .mapv(|v| v as f64);
        let approx = cb
            .reconstruct()
            .into_shape_with_order((m, d))
            .unwrap()
            .mapv(|v| v as f64);
        let shift = cb.bias_shift.clone().unwrap();
        let (mut num, mut sum, mut sq, mut count) = (0f64, vec![0f64; m], vec![0f64; m], 0f64);
        for i in 0..x.shape()[0] {
            let p = g.im2col(
                x.index_axis(ndarray::Axis(0), i)
                    .into_dimensionality()
                    .unwrap(),
            );
            let pc = g.im2col(
                x_converted
                    .index_axis(ndarray::Axis(0), i)
                    .into_dimensionality()
                    .unwrap(),
            );
            let y = p.mapv(|v| v as f64).dot(&w.t());
            let yc = pc.mapv(|v| v as f64).dot(&approx.t());
            for (row, row_c) in y.rows().into_iter().zip(yc.rows()) {
                for k in 0..m {
                    num += (row[k] - row_c[k] - shift[k] as f64).powi(2);
                    sum[k] += row[k];
                    sq[k] += row[k] * row[k];
                }
                count += 1.0;
            }
        }
        let var: f64 = (0..m).map(|k| sq[k] - sum[k] * sum[k] / count).sum();
        (num / var).sqrt()
    }

    /// Correlated inputs (a smoothed random image, so neighbouring positions correlate) and a
    /// converted model whose inputs differ a little from the original's.
    fn inputs(rng: &mut Xoshiro256PlusPlus) -> (ArrayD<f32>, ArrayD<f32>) {
        let raw = ArrayD::from_shape_fn(IxDyn(&[3, 6, 9, 9]), |_| rng.random_range(-1.0f32..1.0));
        let x = ArrayD::from_shape_fn(IxDyn(&[3, 6, 9, 9]), |i| {
            let next = raw[[i[0], i[1], i[2], (i[3] + 1) % 9]];
            raw[[i[0], i[1], i[2], i[3]]] + next + 0.3 * raw[[i[0], (i[1] + 1) % 6, i[2], i[3]]]
        });
        let noisy = x.mapv(|v| v + rng.random_range(-0.1f32..0.1));
        (x, noisy)
    }

    #[test]
    fn refit_lowers_the_measured_output_error_to_what_it_reports() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        let (x, xc) = inputs(&mut rng);
        let g = PatchGeometry {
            channels: 6,
            kernel: [3, 3],
            strides: [2, 1],
            dilations: [1, 2],
            pads: [(1, 1), (2, 1)],
        };
        let stats = PatchStats::of(&x, &xc, &g).unwrap();
        let kernel = Array4::from_shape_fn((8, 6, 3, 3), |_| rng.random_range(-1.0f32..1.0));
        for method in [Method::Vq, Method::Dl] {
            let mut p = ClusterParams::new(method, 3.0);
            (p.subspace, p.c) = (if method == Method::Vq { 3 } else { 6 }, 2.0);
            let cb = codebook::learn(kernel.view(), &p.check().unwrap()).unwrap();
            let fixed = RefitOptions {
                reassign: false,
                ..RefitOptions::default()
            };
            let (kept, fixed_outcome) = refit(kernel.view(), &cb, &stats, &fixed).unwrap();
            assert_eq!(kept.subspaces[0].assignment, cb.subspaces[0].assignment);
            let (refitted, outcome) =
                refit(kernel.view(), &cb, &stats, &RefitOptions::default()).unwrap();
            assert!(outcome.applied, "{method:?}");
            // Moving Γ as well can only help the objective it descends.
            assert!(
                outcome.after < fixed_outcome.after,
                "{outcome:?} {fixed_outcome:?}"
            );
            assert!(
                outcome.after < 0.95 * outcome.before,
                "{method:?} {outcome:?}"
            );
            let measured = measured_error(&x, &xc, &g, &kernel, &refitted);
            // The report and a direct evaluation of the two convolutions agree (f32 rounding).
            assert!(
                (measured - outcome.after).abs() < 1e-4,
                "{measured} {outcome:?}"
            );
            if let Some(codes) = &refitted.subspaces[0].codes {
                let d = refitted.subspaces[0].atoms.dim;
                for atom in refitted.subspaces[0].atoms.data.chunks(d) {
                    let norm: f32 = atom.iter().map(|v| v * v).sum::<f32>().sqrt();
                    assert!((norm - 1.0).abs() < 1e-5 || norm == 0.0);
                }
                let unused = cb.subspaces[0].codes.as_ref().unwrap().coefs.iter();
                for (z, &was) in codes.coefs.iter().zip(unused) {
                    assert!(was != 0.0 || *z == 0.0, "an unused slot was filled");
                }
            }
        }
    }

    /// A palette is refitted as one table (with its per-channel scales, when it has them):
    /// every subspace keeps the same centroids, the output error falls, and what the refit
    /// reports is what the two convolutions measure.
    #[test]
    fn a_shared_palette_stays_shared_and_lowers_the_measured_error() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let (x, xc) = inputs(&mut rng);
        let g = PatchGeometry {
            channels: 6,
            kernel: [3, 3],
            strides: [1, 2],
            dilations: [2, 1],
            pads: [(2, 1), (1, 0)],
        };
        let stats = PatchStats::of(&x, &xc, &g).unwrap();
        let kernel = Array4::from_shape_fn((8, 6, 3, 3), |_| rng.random_range(-1.0f32..1.0));
        for (width, scaled) in [(1, false), (2, false), (1, true), (2, true)] {
            let mut p = ClusterParams::new(Method::Vq, 6.0);
            (p.subspace, p.shared) = (width, true);
            let mut cb = codebook::learn(kernel.view(), &p.check().unwrap()).unwrap();
            if scaled {
                cb.channel_scale = Some((0..8).map(|k| 0.5 + 0.25 * k as f32).collect());
            }
            let (refitted, outcome) =
                refit(kernel.view(), &cb, &stats, &RefitOptions::default()).unwrap();
            assert!(refitted.shared);
            // The scales are refitted with the palette, not dropped.
            assert_eq!(refitted.channel_scale.is_some(), scaled);
            if scaled {
                assert_ne!(refitted.channel_scale, cb.channel_scale, "the scales moved");
            }
            assert!(
                outcome.applied && outcome.after < 0.95 * outcome.before,
                "{outcome:?}"
            );
            let palette = &refitted.subspaces[0].atoms.data;
            assert_ne!(palette, &cb.subspaces[0].atoms.data, "the palette moved");
            for s in &refitted.subspaces {
                assert_eq!(&s.atoms.data, palette, "N′ = {width}: one palette");
            }
            let measured = measured_error(&x, &xc, &g, &kernel, &refitted);
            assert!(
                (measured - outcome.after).abs() < 1e-4,
                "{measured} {outcome:?}"
            );
        }
    }

    /// VQ's problem is one quadratic: at the refit's solution its gradient vanishes.
    #[test]
    fn vq_refit_reaches_the_least_squares_optimum() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let (x, xc) = inputs(&mut rng);
        let g = PatchGeometry {
            channels: 6,
            kernel: [3, 3],
            strides: [1, 1],
            dilations: [1, 1],
            pads: [(1, 1), (1, 1)],
        };
        let stats = PatchStats::of(&x, &xc, &g).unwrap();
        let kernel = Array4::from_shape_fn((8, 6, 3, 3), |_| rng.random_range(-1.0f32..1.0));
        let mut p = ClusterParams::new(Method::Vq, 4.0);
        p.subspace = 2;
        let cb = codebook::learn(kernel.view(), &p.check().unwrap()).unwrap();
        let opts = RefitOptions {
            iterations: 500,
            reassign: false,
            ..RefitOptions::default()
        };
        let (refitted, _) = refit(kernel.view(), &cb, &stats, &opts).unwrap();
        let w = kernel
            .view()
            .into_shape_with_order((8, 54))
            .unwrap()
            .mapv(|v| v as f64);
        let cov = stats.covariances();
        let mut h = cov[2].clone();
        let ridge = opts.damping * (0..54).map(|i| h[[i, i]]).sum::<f64>() / 54.0;
        (0..54).for_each(|i| h[[i, i]] += ridge);
        let params = Params::of(&refitted);
        let residual = w.dot(&cov[1]) - params.kernel().dot(&h);
        let gradient = params.adjoint(Block::Centroids, &residual);
        let start = Params::of(&cb);
        let initial = start.adjoint(Block::Centroids, &(w.dot(&cov[1]) - start.kernel().dot(&h)));
        let norm = |v: &[f64]| dot(v, v).sqrt();
        assert!(
            norm(&gradient) < 1e-3 * norm(&initial),
            "{} {}",
            norm(&gradient),
            norm(&initial)
        );
    }
}
