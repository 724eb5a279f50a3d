//! Clustering parameters and the paper's rules (eqs. 14–16) that turn a target acceleration ρ
//! into codebook sizes: K_vq = p²M/ρ, K = c·K_vq, L = K_vq·(1 − α·c·S/N) (= K_vq(1 − αc/N′)
//! when N′ divides N), so that DL costs no more multiplications than VQ.

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// k-means centroids (the VQ baseline).
    Vq,
    /// Sparse combinations of a learned dictionary (the paper's method).
    Dl,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Vq => "vq",
            Method::Dl => "dl",
        }
    }
}

/// What the user asks for. Build with [`ClusterParams::new`], adjust fields, then
/// [`ClusterParams::validate`]; [`ClusterParams::sizes`] applies the rules to one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterParams {
    pub method: Method,
    /// Target acceleration ρ of each converted layer.
    pub ratio: f64,
    /// N′, input channels per subspace.
    pub subspace: usize,
    /// c = K / K_vq.
    pub c: f64,
    /// α, atoms per representative.
    pub alpha: usize,
    /// Explicit K (DL) or K_vq (VQ), overriding the rules.
    pub k: Option<usize>,
    /// Explicit L, overriding the rules.
    pub l: Option<usize>,
    /// Dictionary-learning iterations after the initialisation.
    pub iters: usize,
    /// Lloyd iterations at most, for every k-means run.
    pub kmeans_iters: usize,
    pub seed: u64,
}

impl ClusterParams {
    /// The paper's defaults: N′ = 8, c = 3, α = 2.
    pub fn new(method: Method, ratio: f64) -> ClusterParams {
        ClusterParams {
            method,
            ratio,
            subspace: 8,
            c: 3.0,
            alpha: 2,
            k: None,
            l: None,
            iters: 20,
            kmeans_iters: 100,
            seed: 0,
        }
    }

    /// Checks what does not depend on the layer.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.ratio.is_finite() && self.ratio > 1.0,
            "--ratio must be above 1 (an acceleration), got {}",
            self.ratio
        );
        ensure!(self.subspace > 0, "--subspace (N′) must be at least 1");
        ensure!(self.iters > 0, "--iters must be at least 1");
        ensure!(
            self.kmeans_iters > 0,
            "k-means iterations must be at least 1"
        );
        if self.method == Method::Dl {
            ensure!(self.alpha > 0, "--alpha must be at least 1");
            ensure!(
                self.c.is_finite() && self.c >= 1.0,
                "--c must be at least 1 (K = c·K_vq), got {}",
                self.c
            );
            if self.l.is_none() {
                ensure!(
                    (self.alpha as f64) * self.c < self.subspace as f64,
                    "α·c = {}·{} = {} must be below N′ = {} (eq. 16: L = K_vq(1 − αc/N′) > 0); lower --alpha or --c, or raise --subspace",
                    self.alpha,
                    self.c,
                    self.alpha as f64 * self.c,
                    self.subspace
                );
            }
        }
        Ok(())
    }

    /// Codebook sizes for a layer with `m` output channels, `n` input channels and `positions`
    /// = kh·kw kernel positions.
    pub fn sizes(&self, m: usize, n: usize, positions: usize) -> Result<Sizes> {
        self.validate()?;
        let columns = m * positions;
        ensure!(
            self.subspace <= n,
            "N′ = {} is larger than the layer's {n} input channels; use --subspace {n} or less",
            self.subspace
        );
        let s = n.div_ceil(self.subspace);
        let k_vq = match (self.method, self.k) {
            (Method::Vq, Some(k)) => k,
            _ => (columns as f64 / self.ratio).round() as usize,
        };
        ensure!(
            k_vq >= 1,
            "ρ = {} is too large for a layer with p²M = {columns} kernel sub-vectors per subspace (K_vq = p²M/ρ < 1); use ρ ≤ {columns}",
            self.ratio
        );
        ensure!(
            k_vq <= columns,
            "K_vq = {k_vq} exceeds p²M = {columns}, the number of sub-vectors per subspace"
        );
        if self.method == Method::Vq {
            return Ok(Sizes {
                k_vq,
                k: k_vq,
                l: k_vq,
                subspaces: s,
            });
        }
        let k = self.k.unwrap_or((self.c * k_vq as f64).round() as usize);
        ensure!(k >= 1, "K must be at least 1");
        if k > columns {
            bail!(
                "K = c·K_vq = {k} exceeds p²M = {columns}, the number of sub-vectors per subspace; lower --c to at most {:.2} or raise --ratio",
                columns as f64 / k_vq as f64
            );
        }
        let l = match self.l {
            Some(l) => l,
            // N·L + α·S·K ≤ N·K_vq: DL costs at most what VQ costs at the same ρ.
            None => ((n * k_vq).saturating_sub(self.alpha * s * k)) / n,
        };
        ensure!(
            l >= self.alpha,
            "L = {l} atoms is fewer than α = {} (eq. 16 gives L = K_vq(1 − αcS/N) = {k_vq}·(1 − {}·{}·{s}/{n})); lower --ratio, --alpha or --c",
            self.alpha,
            self.alpha,
            self.c
        );
        ensure!(
            l <= k,
            "L = {l} exceeds K = {k}: more atoms than representatives"
        );
        Ok(Sizes {
            k_vq,
            k,
            l,
            subspaces: s,
        })
    }
}

/// Codebook sizes for one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sizes {
    pub k_vq: usize,
    /// Representatives per subspace (K; = K_vq for VQ).
    pub k: usize,
    /// Atoms per subspace (L; = K_vq centroids for VQ).
    pub l: usize,
    /// S, subspaces.
    pub subspaces: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_rules_for_fire8() {
        // fire8/expand3x3: M = 256, N = 64, 3×3; ρ = 20, N′ = 8, c = 3, α = 2.
        let p = ClusterParams::new(Method::Dl, 20.0);
        let s = p.sizes(256, 64, 9).unwrap();
        assert_eq!(s.k_vq, 115); // 2304 / 20 = 115.2
        assert_eq!(s.k, 345);
        assert_eq!(s.l, 28); // 115·(1 − 6/8) = 28.75, floored so DL costs ≤ VQ
        assert_eq!(s.subspaces, 8);
        let vq = ClusterParams::new(Method::Vq, 20.0)
            .sizes(256, 64, 9)
            .unwrap();
        assert_eq!((vq.k_vq, vq.k, vq.l), (115, 115, 115));
    }

    #[test]
    fn invalid_combinations_say_which_rule_failed() {
        let mut p = ClusterParams::new(Method::Dl, 20.0);
        p.alpha = 3;
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("must be below N′"));
        let p = ClusterParams::new(Method::Dl, 1.0);
        assert!(p.validate().unwrap_err().to_string().contains("above 1"));
        let p = ClusterParams::new(Method::Vq, 5000.0);
        assert!(p
            .sizes(256, 64, 9)
            .unwrap_err()
            .to_string()
            .contains("too large"));
        let p = ClusterParams::new(Method::Dl, 400.0);
        assert!(p
            .sizes(256, 64, 9)
            .unwrap_err()
            .to_string()
            .contains("fewer than α"));
        let mut p = ClusterParams::new(Method::Dl, 2.0);
        p.c = 5.0;
        p.alpha = 1;
        assert!(p
            .sizes(256, 64, 9)
            .unwrap_err()
            .to_string()
            .contains("exceeds p²M"));
        let p = ClusterParams::new(Method::Dl, 10.0);
        assert!(p
            .sizes(32, 3, 9)
            .unwrap_err()
            .to_string()
            .contains("larger than the layer's 3 input channels"));
    }

    #[test]
    fn explicit_sizes_override_the_rules() {
        let mut p = ClusterParams::new(Method::Dl, 20.0);
        p.k = Some(100);
        p.l = Some(10);
        let s = p.sizes(256, 64, 9).unwrap();
        assert_eq!((s.k, s.l), (100, 10));
    }
}
