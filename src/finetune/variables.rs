//! A converted layer's continuous parameters as candle variables, and its kernel computed from
//! them the way the lowering computes it: representatives = Λ-weighted atoms (or the
//! centroids), the kernel = the representatives looked up by Γ. Γ, Λ's support and K stay
//! fixed, so the graph and its multiplication count do not change; gradients reach the atoms,
//! the used coefficients, the centroids and the bias. A palette is one variable. With soft
//! assignments (DKM, k-means layers) Γ is re-chosen: the kernel trained is the softmax-weighted
//! centroids of free sub-vectors, the one evaluated and written their nearest centroids (Γ's
//! values change, its shape and the graph do not).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{ensure, Result};
use candle_core::{Device, Tensor, Var};

use crate::codebook::{Codebook, SparseCodes};

struct SubspaceVars {
    channels: Range<usize>,
    /// DL atoms or VQ centroids, [count, d].
    atoms: Var,
    /// DL: coefficients [K, α], their atom indices (flattened) and the mask of used slots.
    codes: Option<(Var, Tensor, Tensor)>,
    /// Γ, one per column (k, u, v).
    assignment: Tensor,
    /// DKM's soft assignment (VQ only).
    soft: Option<Soft>,
}

/// DKM's soft assignment of one k-means subspace: its sub-vectors trained as free weights, each
/// column's kernel values the attention-weighted mean of the centroids,
/// softmax(−‖w − c‖²/τ)·C; hardened, each column takes its nearest centroid.
struct Soft {
    /// [P, d], one row per column (k, u, v); they start as their representatives, so the
    /// hardened start is the clustered layer.
    weights: Var,
    /// τ at the start of training; annealed by [`LayerVars::anneal`].
    tau: f64,
}

/// The smallest share of τ annealing reaches (the softmax stays finite).
const MIN_TAU_SHARE: f64 = 1e-3;

/// Squared distances [P, K] between the rows of `w` [P, d] and of `c` [K, d].
fn sq_distances(w: &Tensor, c: &Tensor) -> Result<Tensor> {
    let ww = w.sqr()?.sum_keepdim(1)?;
    let cc = c.sqr()?.sum_keepdim(1)?.t()?;
    let wc = w.matmul(&c.t()?)?;
    Ok(ww.broadcast_add(&cc)?.broadcast_sub(&(wc * 2.0)?)?)
}

impl Soft {
    /// Starts at the representatives `reps` [K, d] picked by `gamma`, with τ = `temperature` ×
    /// the mean (over the columns) squared distance from their centroid to its nearest other.
    fn new(reps: &[f32], d: usize, gamma: &[u32], temperature: f64) -> Result<Soft> {
        let k = reps.len() / d.max(1);
        let row = |i: usize| &reps[i * d..(i + 1) * d];
        let nearest_other: Vec<f64> = (0..k)
            .map(|i| {
                (0..k)
                    .filter(|&j| j != i)
                    .map(|j| {
                        row(i)
                            .iter()
                            .zip(row(j))
                            .map(|(a, b)| ((a - b) as f64).powi(2))
                            .sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let gaps: Vec<f64> = gamma
            .iter()
            .map(|&g| nearest_other[g as usize])
            .filter(|g| g.is_finite())
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
        let start: Vec<f32> = gamma
            .iter()
            .flat_map(|&g| row(g as usize).iter().copied())
            .collect();
        Ok(Soft {
            weights: var(&start, &[gamma.len(), d])?,
            tau: (temperature * mean).max(1e-12),
        })
    }

    /// The columns' kernel values [P, d] from the centroids `c` [K, d], at τ·`share`.
    fn columns(&self, c: &Tensor, share: f64) -> Result<Tensor> {
        let d = sq_distances(self.weights.as_tensor(), c)?;
        let tau = self.tau * share.max(MIN_TAU_SHARE);
        // `softmax` (not the fused `softmax_last_dim`, which has no backward pass).
        let a = candle_nn::ops::softmax(&(d * (-1.0 / tau))?, candle_core::D::Minus1)?;
        Ok(a.matmul(c)?)
    }

    /// Each column's nearest centroid of `c` (the hardened Γ).
    fn nearest(&self, c: &Tensor) -> Result<Tensor> {
        let d = sq_distances(&self.weights.as_tensor().detach(), &c.detach())?;
        Ok(d.argmin(1)?)
    }
}

/// The trainable form of one converted layer.
pub struct LayerVars {
    pub node_index: usize,
    shape: [usize; 4],
    subspaces: Vec<SubspaceVars>,
    /// Every subspace's `atoms` is one variable (a shared codebook).
    shared: bool,
    /// A palette's per-output-channel scale [M] ([`Codebook::channel_scale`]), trained too.
    scale: Option<Var>,
    bias: Var,
    /// The layer's bias before calibration (zeros when it had none): the codebook's
    /// `bias_shift` is the trained bias minus this.
    base_bias: Vec<f32>,
    /// Whether the bias is trained (not when the stored form has no place for one).
    train_bias: bool,
    /// The share of each soft subspace's τ in use (f64 bits): 1 at the start, annealed towards
    /// 0 so that the soft kernel ends where the hardened one is.
    tau_share: AtomicU64,
}

fn var(data: &[f32], shape: &[usize]) -> Result<Var> {
    Ok(Var::from_tensor(&Tensor::from_vec(
        data.to_vec(),
        shape,
        &Device::Cpu,
    )?)?)
}

impl LayerVars {
    pub fn new(
        node_index: usize,
        cb: &Codebook,
        base_bias: Vec<f32>,
        train_bias: bool,
    ) -> Result<LayerVars> {
        let [m, _, kh, kw] = cb.kernel_shape;
        ensure!(
            base_bias.len() == m,
            "bias of {} values for {m} output channels",
            base_bias.len()
        );
        let shift = cb.bias_shift.clone().unwrap_or_else(|| vec![0.0; m]);
        let bias: Vec<f32> = base_bias.iter().zip(&shift).map(|(b, s)| b + s).collect();
        // A palette is one variable every subspace reads (its gradient sums theirs), so it
        // stays one palette, the table the compact form stores once.
        let palette = match (cb.shared, cb.subspaces.first()) {
            (true, Some(s)) => Some(var(&s.atoms.data, &[s.atoms.len(), s.channels.len()])?),
            _ => None,
        };
        let subspaces = cb
            .subspaces
            .iter()
            .map(|s| {
                let d = s.channels.len();
                let atoms = match &palette {
                    Some(p) => p.clone(),
                    None => var(&s.atoms.data, &[s.atoms.len(), d])?,
                };
                let codes = match &s.codes {
                    Some(c) => {
                        let k = c.len();
                        let mask: Vec<f32> = c
                            .coefs
                            .iter()
                            .map(|&z| if z != 0.0 { 1.0 } else { 0.0 })
                            .collect();
                        Some((
                            var(&c.coefs, &[k, c.alpha])?,
                            Tensor::from_vec(c.atoms.clone(), c.atoms.len(), &Device::Cpu)?,
                            Tensor::from_vec(mask, (k, c.alpha), &Device::Cpu)?,
                        ))
                    }
                    None => None,
                };
                ensure!(
                    s.assignment.len() == m * kh * kw,
                    "Γ of {} columns",
                    s.assignment.len()
                );
                Ok(SubspaceVars {
                    channels: s.channels.clone(),
                    atoms,
                    codes,
                    assignment: Tensor::from_vec(s.assignment.clone(), m * kh * kw, &Device::Cpu)?,
                    soft: None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(LayerVars {
            node_index,
            shape: cb.kernel_shape,
            subspaces,
            shared: palette.is_some(),
            scale: match &cb.channel_scale {
                Some(s) => Some(var(s, &[m])?),
                None => None,
            },
            bias: var(&bias, &[m])?,
            base_bias,
            train_bias,
            tau_share: AtomicU64::new(1f64.to_bits()),
        })
    }

    fn tau_share(&self) -> f64 {
        f64::from_bits(self.tau_share.load(Ordering::Relaxed))
    }

    /// Sets the share of τ the soft assignments use from now on (1 at the start).
    pub fn anneal(&self, share: f64) {
        self.tau_share.store(share.to_bits(), Ordering::Relaxed);
    }

    /// Trains the k-means subspaces' assignments softly (DKM, at `temperature` × the typical
    /// distance between neighbouring centroids); DL subspaces keep Γ fixed.
    pub fn with_soft_assignments(mut self, cb: &Codebook, temperature: f64) -> Result<LayerVars> {
        for (v, s) in self.subspaces.iter_mut().zip(&cb.subspaces) {
            if s.codes.is_none() {
                v.soft = Some(Soft::new(
                    &s.atoms.data,
                    s.atoms.dim,
                    &s.assignment,
                    temperature,
                )?);
            }
        }
        Ok(self)
    }

    /// Every trainable variable.
    pub fn vars(&self) -> Vec<Var> {
        let mut v: Vec<Var> = Vec::new();
        for (i, s) in self.subspaces.iter().enumerate() {
            // A palette is listed once (the optimiser must step it once).
            if i == 0 || !self.shared {
                v.push(s.atoms.clone());
            }
            if let Some((coefs, _, _)) = &s.codes {
                v.push(coefs.clone());
            }
            if let Some(soft) = &s.soft {
                v.push(soft.weights.clone());
            }
        }
        if let Some(scale) = &self.scale {
            v.push(scale.clone());
        }
        if self.train_bias {
            v.push(self.bias.clone());
        }
        v
    }

    fn representatives(s: &SubspaceVars) -> Result<Tensor> {
        let Some((coefs, atom_index, mask)) = &s.codes else {
            return Ok(s.atoms.as_tensor().clone());
        };
        let (k, alpha) = coefs.dims2()?;
        let d = s.channels.len();
        let picked = s
            .atoms
            .index_select(atom_index, 0)?
            .reshape((k, alpha, d))?;
        let z = (coefs.as_tensor() * mask)?.reshape((k, alpha, 1))?;
        Ok(picked.broadcast_mul(&z)?.sum(1)?)
    }

    /// The kernel [M, N, kh, kw] and the bias [M]; `hard`: soft assignments hardened (what is
    /// evaluated and written), else soft (what is trained).
    pub fn kernel_and_bias(&self, hard: bool) -> Result<(Tensor, Tensor)> {
        let [m, _, kh, kw] = self.shape;
        let parts: Vec<Tensor> = self
            .subspaces
            .iter()
            .map(|s| {
                let reps = Self::representatives(s)?;
                let d = s.channels.len();
                let columns = match (&s.soft, hard) {
                    (None, _) => reps.index_select(&s.assignment, 0)?,
                    (Some(soft), false) => soft.columns(&reps, self.tau_share())?,
                    (Some(soft), true) => reps.index_select(&soft.nearest(&reps)?, 0)?,
                };
                Ok(columns.reshape((m, kh, kw, d))?.permute((0, 3, 1, 2))?)
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = parts.iter().collect();
        let mut kernel = Tensor::cat(&refs, 1)?.contiguous()?;
        if let Some(scale) = &self.scale {
            kernel = kernel.broadcast_mul(&scale.as_tensor().reshape((m, 1, 1, 1))?)?;
        }
        Ok((kernel, self.bias.as_tensor().clone()))
    }

    /// The current values, to restore the best epoch's.
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(self
            .vars()
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?)
    }

    pub fn restore(&self, snapshot: &[Tensor]) -> Result<()> {
        for (v, t) in self.vars().iter().zip(snapshot) {
            v.set(t)?;
        }
        Ok(())
    }

    /// `cb` with the trained values (same Γ, Λ support, sizes).
    pub fn to_codebook(&self, cb: &Codebook) -> Result<Codebook> {
        let mut out = cb.clone();
        if let Some(scale) = &self.scale {
            out.channel_scale = Some(scale.to_vec1()?);
        }
        for (sc, s) in out.subspaces.iter_mut().zip(&self.subspaces) {
            sc.atoms.data = s.atoms.flatten_all()?.to_vec1()?;
            if let Some(soft) = &s.soft {
                sc.assignment = soft.nearest(s.atoms.as_tensor())?.to_vec1()?;
            }
            if let (Some(codes), Some((coefs, _, mask))) = (sc.codes.as_mut(), &s.codes) {
                let z = (coefs.as_tensor() * mask)?.flatten_all()?.to_vec1()?;
                *codes = SparseCodes {
                    alpha: codes.alpha,
                    atoms: codes.atoms.clone(),
                    coefs: z,
                };
            }
        }
        // A float16 palette stays one (`Codebook::round_palette`).
        out.round_palette();
        if !self.train_bias {
            return Ok(out);
        }
        let bias: Vec<f32> = self.bias.to_vec1()?;
        out.bias_shift = Some(
            bias.iter()
                .zip(&self.base_bias)
                .map(|(b, o)| b - o)
                .collect(),
        );
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codebook::{self, ClusterParams, Method};
    use ndarray::Array4;

    /// The trainable form computes exactly the kernel the lowering writes.
    #[test]
    fn kernel_from_the_variables_is_the_reconstructed_kernel() {
        let kernel = Array4::from_shape_fn((12, 10, 3, 2), |(a, b, c, d)| {
            ((a * 31 + b * 17 + c * 7 + d * 3) % 23) as f32 / 23.0 - 0.5
        });
        for method in [Method::Vq, Method::Dl] {
            let mut p = ClusterParams::new(method, 3.0);
            (p.subspace, p.c, p.alpha) = (4, 1.5, 2);
            let mut cb = codebook::learn(kernel.view(), &p.check().unwrap()).unwrap();
            cb.bias_shift = Some((0..12).map(|k| k as f32 * 0.1).collect());
            let base: Vec<f32> = (0..12).map(|k| 1.0 - k as f32).collect();
            let vars = LayerVars::new(3, &cb, base.clone(), true).unwrap();
            let (w, b) = vars.kernel_and_bias(false).unwrap();
            let want = cb.reconstruct();
            let got: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
            for (g, e) in got.iter().zip(want.iter()) {
                assert!(
                    (g - e).abs() <= 1e-6 * (1.0 + e.abs()),
                    "{method:?}: {g} vs {e}"
                );
            }
            let bias: Vec<f32> = b.to_vec1().unwrap();
            assert_eq!(bias[5], base[5] + 0.5);
            // Untrained variables give back the same codebook.
            let back = vars.to_codebook(&cb).unwrap();
            assert_eq!(back.reconstruct(), cb.reconstruct());
            assert_eq!(back.subspaces[0].assignment, cb.subspaces[0].assignment);
        }
    }

    /// A shared codebook (palette) is one variable: a training step moves every subspace's
    /// copy the same way, and the codebook written back is still one palette — the table the
    /// compact form stores once, so what was trained is what is written.
    #[test]
    fn a_palette_is_trained_as_one_variable() {
        let kernel = Array4::from_shape_fn((8, 6, 3, 3), |(a, b, c, d)| {
            ((a * 13 + b * 7 + c * 5 + d) % 19) as f32 / 19.0 - 0.5
        });
        let mut p = ClusterParams::new(Method::Vq, 4.0);
        (p.subspace, p.shared) = (2, true);
        let cb = codebook::learn(kernel.view(), &p.check().unwrap()).unwrap();
        assert!(cb.shared && cb.subspaces.len() == 3);
        let vars = LayerVars::new(0, &cb, vec![0.0; 8], true).unwrap();
        assert_eq!(vars.vars().len(), 2, "the palette once, then the bias");
        // One gradient step on a loss that weighs the subspaces differently.
        let (w, _) = vars.kernel_and_bias(false).unwrap();
        let scale = Tensor::from_vec(
            (0..6).map(|c| 1.0 + c as f32).collect::<Vec<f32>>(),
            (1, 6, 1, 1),
            &Device::Cpu,
        )
        .unwrap();
        let loss = w
            .broadcast_mul(&scale)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let palette = &vars.vars()[0];
        let g = grads.get(palette.as_tensor()).unwrap();
        palette
            .set(&(palette.as_tensor() - (g * 0.01).unwrap()).unwrap())
            .unwrap();
        let back = vars.to_codebook(&cb).unwrap();
        assert_ne!(back.subspaces[0].atoms.data, cb.subspaces[0].atoms.data);
        for s in &back.subspaces {
            assert_eq!(s.atoms.data, back.subspaces[0].atoms.data);
        }
        let (w, _) = vars.kernel_and_bias(false).unwrap();
        let got: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let want = back.reconstruct();
        assert!(got.iter().zip(want.iter()).all(|(g, e)| g == e));
    }

    /// DKM's soft assignments: the hardened start is the clustered layer exactly; the soft
    /// kernel becomes the hardened one as τ is annealed; at full τ it blends centroids and passes
    /// gradients to the free weights and the centroids; a
    /// column whose weights move next to another centroid is re-assigned to it, in the
    /// hardened kernel and in the codebook written back (which rebuilds that kernel).
    #[test]
    fn soft_assignments_start_at_the_clustered_layer_and_reassign_by_nearest_centroid() {
        let kernel = Array4::from_shape_fn((8, 4, 3, 3), |(a, b, c, d)| {
            ((a * 13 + b * 7 + c * 5 + d * 3) % 17) as f32 / 17.0 - 0.5
        });
        let mut p = ClusterParams::new(Method::Vq, 4.0);
        p.subspace = 2;
        let cb = codebook::learn(kernel.view(), &p.check().unwrap()).unwrap();
        let vars = LayerVars::new(0, &cb, vec![0.0; 8], true)
            .unwrap()
            .with_soft_assignments(&cb, 1.0)
            .unwrap();
        assert_eq!(
            vars.vars().len(),
            2 * 2 + 1,
            "centroids and weights per subspace, bias"
        );
        let flat = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
        let hard = flat(vars.kernel_and_bias(true).unwrap().0);
        assert_eq!(hard, cb.reconstruct().iter().copied().collect::<Vec<f32>>());
        let (soft, _) = vars.kernel_and_bias(false).unwrap();
        assert_ne!(flat(soft.clone()), hard);
        // Annealed to (almost) 0, the soft kernel is the hardened one.
        vars.anneal(0.0);
        let annealed = flat(vars.kernel_and_bias(false).unwrap().0);
        assert!(annealed
            .iter()
            .zip(&hard)
            .all(|(a, h)| (a - h).abs() < 1e-5));
        vars.anneal(1.0);
        let grads = soft.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for v in vars.vars().iter().take(4) {
            let g = flat(grads.get(v.as_tensor()).unwrap().clone());
            assert!(g.iter().any(|x| *x != 0.0));
        }
        // Column 0 of subspace 0 moves onto another centroid.
        let s0 = &cb.subspaces[0];
        let (g0, d) = (s0.assignment[0] as usize, s0.atoms.dim);
        let other = (g0 + 1) % s0.atoms.len();
        let w = &vars.subspaces[0].soft.as_ref().unwrap().weights;
        let mut values = flat(w.as_tensor().clone());
        values[..d].copy_from_slice(&s0.atoms.data[other * d..(other + 1) * d]);
        w.set(&Tensor::from_vec(values, w.as_tensor().dims(), &Device::Cpu).unwrap())
            .unwrap();
        let back = vars.to_codebook(&cb).unwrap();
        assert_eq!(back.subspaces[0].assignment[0] as usize, other);
        assert_eq!(back.subspaces[0].assignment[1..], s0.assignment[1..]);
        let hard = flat(vars.kernel_and_bias(true).unwrap().0);
        assert_eq!(
            hard,
            back.reconstruct().iter().copied().collect::<Vec<f32>>()
        );
    }
}
