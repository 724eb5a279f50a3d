//! Clustering parameters and the paper's rules (eqs. 14–16) that turn a target acceleration ρ
//! into codebook sizes: K_vq = p²M/ρ, K = c·K_vq, L = K_vq·(1 − α·c·S/N) (= K_vq(1 − αc/N′)
//! when N′ divides N), so that DL costs no more multiplications than VQ.

use serde::{Deserialize, Serialize};

use crate::setting::{self, require, InvalidSetting, Setting};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
/// [`ClusterParams::check`] once into [`ValidParams`], which is what the clustering takes.
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
    /// One codebook for the whole layer, shared by all its subspaces (a palette; scalar
    /// palettization with N′ = 1): K counts the layer's representatives, and the ratio rule
    /// divides all S·p²M sub-vectors. VQ only.
    #[serde(default)]
    pub shared: bool,
    /// A shared codebook's entries are scaled per output channel (one f32 each): every
    /// channel is clustered relative to its largest weight, so channels of small range keep
    /// their precision (Core ML's per-channel scale). Needs `shared`.
    #[serde(default)]
    pub channel_scale: bool,
    /// A shared codebook's entries (and scales) are float16 values, stored in half the bytes
    /// (rounded where the codebook is learnt). Needs `shared`.
    #[serde(default)]
    pub f16_palette: bool,
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
            shared: false,
            channel_scale: false,
            f16_palette: false,
        }
    }

    /// Checks what does not depend on the layer, once; the result is what the clustering takes.
    pub fn check(self) -> Result<ValidParams, InvalidSetting> {
        check_ratio(self.ratio)?;
        require(self.subspace > 0, Setting::Subspace, || {
            "must be at least 1".into()
        })?;
        require(self.iters > 0, Setting::Iters, || {
            "must be at least 1".into()
        })?;
        require(self.kmeans_iters > 0, Setting::KmeansIters, || {
            "must be at least 1".into()
        })?;
        require(
            !self.shared || self.method == Method::Vq,
            Setting::Method,
            || {
                "must be vq with a shared codebook (a palette of k-means centroids); dl learns a dictionary per subspace".into()
            },
        )?;
        require(
            !self.channel_scale || self.shared,
            Setting::ChannelScale,
            || {
                format!(
                    "needs {}: per-channel scales multiply a palette",
                    setting::name(Setting::SharedCodebook)
                )
            },
        )?;
        require(
            !self.f16_palette || self.shared,
            Setting::F16Palette,
            || {
                format!(
                    "needs {}: it stores a palette in float16",
                    setting::name(Setting::SharedCodebook)
                )
            },
        )?;
        if self.method == Method::Dl {
            require(self.alpha > 0, Setting::Alpha, || {
                "must be at least 1".into()
            })?;
            require(self.c.is_finite() && self.c >= 1.0, Setting::C, || {
                format!("must be at least 1 (K = c·K_vq), got {}", self.c)
            })?;
            if self.l.is_none() {
                require(
                    (self.alpha as f64) * self.c < self.subspace as f64,
                    Setting::Alpha,
                    || {
                        format!(
                        "(with c) gives α·c = {}·{} = {}, which must be below N′ = {} (eq. 16: L = K_vq(1 − αc/N′) > 0); lower α or c, or raise N′",
                        self.alpha,
                        self.c,
                        self.alpha as f64 * self.c,
                        self.subspace
                    )
                    },
                )?;
            }
        }
        Ok(ValidParams(self))
    }
}

fn check_ratio(ratio: f64) -> Result<(), InvalidSetting> {
    require(ratio.is_finite() && ratio > 1.0, Setting::Ratio, || {
        format!("must be above 1 (an acceleration), got {ratio}")
    })
}

/// Parameters that passed [`ClusterParams::check`]: every field is usable, and only
/// [`ValidParams::sizes`] can still fail (the rules also depend on the layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ClusterParams", into = "ClusterParams")]
pub struct ValidParams(ClusterParams);

impl TryFrom<ClusterParams> for ValidParams {
    type Error = InvalidSetting;
    fn try_from(p: ClusterParams) -> Result<Self, InvalidSetting> {
        p.check()
    }
}

impl From<ValidParams> for ClusterParams {
    fn from(p: ValidParams) -> ClusterParams {
        p.0
    }
}

impl std::ops::Deref for ValidParams {
    type Target = ClusterParams;
    fn deref(&self) -> &ClusterParams {
        &self.0
    }
}

impl ValidParams {
    /// The same parameters with another ρ (a budget's per-layer choice).
    pub fn with_ratio(&self, ratio: f64) -> Result<ValidParams, InvalidSetting> {
        check_ratio(ratio)?;
        Ok(ValidParams(ClusterParams {
            ratio,
            ..self.0.clone()
        }))
    }

    /// The same parameters with another K (a size budget's per-layer palette size).
    pub fn with_k(&self, k: usize) -> ValidParams {
        ValidParams(ClusterParams {
            k: Some(k),
            ..self.0.clone()
        })
    }

    /// The same parameters with another seed (a layer's own stream).
    pub fn with_seed(&self, seed: u64) -> ValidParams {
        ValidParams(ClusterParams {
            seed,
            ..self.0.clone()
        })
    }

    /// Codebook sizes for a layer with `m` output channels, `n` input channels and `positions`
    /// = kh·kw kernel positions.
    pub fn sizes(&self, m: usize, n: usize, positions: usize) -> Result<Sizes, SizeError> {
        let p = &self.0;
        if p.subspace > n {
            return Err(SizeError::SubspaceTooLarge {
                subspace: p.subspace,
                n,
            });
        }
        let s = n.div_ceil(p.subspace);
        if p.shared && !n.is_multiple_of(p.subspace) {
            return Err(SizeError::SharedUneven {
                subspace: p.subspace,
                n,
            });
        }
        // A shared codebook's representatives stand for every sub-vector of the layer.
        let columns = if p.shared {
            s * m * positions
        } else {
            m * positions
        };
        let k_vq = match (p.method, p.k) {
            (Method::Vq, Some(k)) => k,
            _ => (columns as f64 / p.ratio).round() as usize,
        };
        if k_vq < 1 {
            return Err(SizeError::RatioTooLarge {
                ratio: p.ratio,
                columns,
            });
        }
        if k_vq > columns {
            return Err(SizeError::KvqTooLarge { k_vq, columns });
        }
        if p.method == Method::Vq {
            return Ok(Sizes {
                k_vq,
                k: k_vq,
                l: k_vq,
                subspaces: s,
            });
        }
        let k = p.k.unwrap_or((p.c * k_vq as f64).round() as usize);
        if k < 1 {
            return Err(SizeError::NoRepresentative);
        }
        if k > columns {
            let max_c = columns as f64 / k_vq as f64;
            return Err(SizeError::KTooLarge { k, columns, max_c });
        }
        let l = match p.l {
            Some(l) => l,
            // N·L + α·S·K ≤ N·K_vq: DL costs at most what VQ costs at the same ρ.
            None => ((n * k_vq).saturating_sub(p.alpha * s * k)) / n,
        };
        if l < p.alpha {
            let (alpha, c) = (p.alpha, p.c);
            return Err(SizeError::TooFewAtoms {
                l,
                alpha,
                c,
                k_vq,
                s,
                n,
            });
        }
        if l > k {
            return Err(SizeError::MoreAtomsThanRepresentatives { l, k });
        }
        Ok(Sizes {
            k_vq,
            k,
            l,
            subspaces: s,
        })
    }
}

/// Why the paper's rules give no codebook for a layer with these parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizeError {
    #[error("N′ = {subspace} is larger than the layer's {n} input channels; use N′ ≤ {n}")]
    SubspaceTooLarge { subspace: usize, n: usize },
    #[error("a shared codebook needs N′ = {subspace} to divide the layer's {n} input channels (every sub-vector the same length)")]
    SharedUneven { subspace: usize, n: usize },
    #[error("ρ = {ratio} is too large for a layer with p²M = {columns} kernel sub-vectors per subspace (K_vq = p²M/ρ < 1); use ρ ≤ {columns}")]
    RatioTooLarge { ratio: f64, columns: usize },
    #[error("K_vq = {k_vq} exceeds p²M = {columns}, the number of sub-vectors per subspace")]
    KvqTooLarge { k_vq: usize, columns: usize },
    #[error("K must be at least 1")]
    NoRepresentative,
    #[error("K = c·K_vq = {k} exceeds p²M = {columns}, the number of sub-vectors per subspace; lower c to at most {max_c:.2} or raise ρ")]
    KTooLarge {
        k: usize,
        columns: usize,
        max_c: f64,
    },
    #[error("L = {l} atoms is fewer than α = {alpha} (eq. 16 gives L = K_vq(1 − αcS/N) = {k_vq}·(1 − {alpha}·{c}·{s}/{n})); lower ρ, α or c")]
    TooFewAtoms {
        l: usize,
        alpha: usize,
        c: f64,
        k_vq: usize,
        s: usize,
        n: usize,
    },
    #[error("L = {l} exceeds K = {k}: more atoms than representatives")]
    MoreAtomsThanRepresentatives { l: usize, k: usize },
}

impl SizeError {
    /// The settings that would lift the failure.
    pub fn remedies(&self) -> &'static [Setting] {
        match self {
            SizeError::SubspaceTooLarge { .. } | SizeError::SharedUneven { .. } => {
                &[Setting::Subspace]
            }
            SizeError::RatioTooLarge { .. } => &[Setting::Ratio],
            SizeError::KvqTooLarge { .. } | SizeError::NoRepresentative => &[Setting::K],
            SizeError::KTooLarge { .. } => &[Setting::C, Setting::Ratio],
            SizeError::TooFewAtoms { .. } => &[Setting::Ratio, Setting::Alpha, Setting::C],
            SizeError::MoreAtomsThanRepresentatives { .. } => &[Setting::L, Setting::K],
        }
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
        let p = ClusterParams::new(Method::Dl, 20.0).check().unwrap();
        let s = p.sizes(256, 64, 9).unwrap();
        assert_eq!(s.k_vq, 115); // 2304 / 20 = 115.2
        assert_eq!(s.k, 345);
        assert_eq!(s.l, 28); // 115·(1 − 6/8) = 28.75, floored so DL costs ≤ VQ
        assert_eq!(s.subspaces, 8);
        let vq = ClusterParams::new(Method::Vq, 20.0)
            .check()
            .unwrap()
            .sizes(256, 64, 9)
            .unwrap();
        assert_eq!((vq.k_vq, vq.k, vq.l), (115, 115, 115));
    }

    #[test]
    fn invalid_combinations_say_which_rule_failed() {
        let mut p = ClusterParams::new(Method::Dl, 20.0);
        p.alpha = 3;
        assert!(p
            .check()
            .unwrap_err()
            .to_string()
            .contains("must be below N′"));
        let p = ClusterParams::new(Method::Dl, 1.0);
        let e = p.check().unwrap_err();
        assert_eq!(e.setting, Setting::Ratio);
        assert!(e.to_string().contains("above 1"));
        let mut p = ClusterParams::new(Method::Vq, 4.0);
        p.channel_scale = true;
        let e = p.check().unwrap_err();
        assert_eq!(e.setting, Setting::ChannelScale);
        assert!(e.to_string().contains("shared codebook"), "{e}");
        let p = ClusterParams::new(Method::Vq, 5000.0).check().unwrap();
        assert!(p
            .sizes(256, 64, 9)
            .unwrap_err()
            .to_string()
            .contains("too large"));
        let p = ClusterParams::new(Method::Dl, 400.0).check().unwrap();
        assert!(p
            .sizes(256, 64, 9)
            .unwrap_err()
            .to_string()
            .contains("fewer than α"));
        let mut p = ClusterParams::new(Method::Dl, 2.0);
        p.c = 5.0;
        p.alpha = 1;
        assert!(p
            .check()
            .unwrap()
            .sizes(256, 64, 9)
            .unwrap_err()
            .to_string()
            .contains("exceeds p²M"));
        let p = ClusterParams::new(Method::Dl, 10.0).check().unwrap();
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
        let s = p.check().unwrap().sizes(256, 64, 9).unwrap();
        assert_eq!((s.k, s.l), (100, 10));
    }
}
