//! A converted layer's continuous parameters as candle variables, and its kernel computed from
//! them the way the lowering computes it: representatives = Λ-weighted atoms (or the
//! centroids), the kernel = the representatives looked up by Γ. Γ, Λ's support and K stay
//! fixed, so the graph and its multiplication count do not change; gradients reach the atoms,
//! the used coefficients, the centroids and the bias.

use std::ops::Range;

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
}

/// The trainable form of one converted layer.
pub struct LayerVars {
    pub node_index: usize,
    shape: [usize; 4],
    subspaces: Vec<SubspaceVars>,
    /// Every subspace's `atoms` is one variable (a shared codebook).
    shared: bool,
    bias: Var,
    /// The layer's bias before calibration (zeros when it had none): the codebook's
    /// `bias_shift` is the trained bias minus this.
    base_bias: Vec<f32>,
    /// Whether the bias is trained (not when the stored form has no place for one).
    train_bias: bool,
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
                })
            })
            .collect::<Result<_>>()?;
        Ok(LayerVars {
            node_index,
            shape: cb.kernel_shape,
            subspaces,
            shared: palette.is_some(),
            bias: var(&bias, &[m])?,
            base_bias,
            train_bias,
        })
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

    /// The kernel [M, N, kh, kw] and the bias [M].
    pub fn kernel_and_bias(&self) -> Result<(Tensor, Tensor)> {
        let [m, _, kh, kw] = self.shape;
        let parts: Vec<Tensor> = self
            .subspaces
            .iter()
            .map(|s| {
                let reps = Self::representatives(s)?;
                let d = s.channels.len();
                Ok(reps
                    .index_select(&s.assignment, 0)?
                    .reshape((m, kh, kw, d))?
                    .permute((0, 3, 1, 2))?)
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = parts.iter().collect();
        let kernel = Tensor::cat(&refs, 1)?.contiguous()?;
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
        for (sc, s) in out.subspaces.iter_mut().zip(&self.subspaces) {
            sc.atoms.data = s.atoms.flatten_all()?.to_vec1()?;
            if let (Some(codes), Some((coefs, _, mask))) = (sc.codes.as_mut(), &s.codes) {
                let z = (coefs.as_tensor() * mask)?.flatten_all()?.to_vec1()?;
                *codes = SparseCodes {
                    alpha: codes.alpha,
                    atoms: codes.atoms.clone(),
                    coefs: z,
                };
            }
        }
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
            let (w, b) = vars.kernel_and_bias().unwrap();
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
        let (w, _) = vars.kernel_and_bias().unwrap();
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
        let (w, _) = vars.kernel_and_bias().unwrap();
        let got: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let want = back.reconstruct();
        assert!(got.iter().zip(want.iter()).all(|(g, e)| g == e));
    }
}
