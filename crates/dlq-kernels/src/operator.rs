//! The `DlqConv` ONNX operator's node form (docs/OPERATOR.md): its attributes and constant
//! inputs, decoded into a validated [`DlqConv`] the same way by every engine that runs it
//! (onnx-dlq's tract op and the ONNX Runtime library), so that they accept and refuse the same
//! nodes with the same messages. The callers read the model's values; this module only checks
//! and converts them.

use crate::conv::{Codes, DlqConv, Subspace};
use crate::error::{checked_product, KernelError};
use crate::geometry::Geometry;

/// The operator-set domain of `DlqConv`.
pub const DOMAIN: &str = "ai.onnx_dlq";
/// The op type within [`DOMAIN`].
pub const OP_TYPE: &str = "DlqConv";
/// The domain version this crate implements.
pub const VERSION: i64 = 1;

/// A constant input: its shape and its values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Constant<T> {
    pub shape: Vec<usize>,
    pub values: Vec<T>,
}

/// The attributes as written in the node (`None` = absent), before any check.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawAttributes {
    pub strides: Option<Vec<i64>>,
    pub pads: Option<Vec<i64>>,
    pub dilations: Option<Vec<i64>>,
    pub auto_pad: Option<String>,
    pub subspace: Option<i64>,
    /// `"Relu"` (the following Relu fused into the node) or absent.
    pub activation: Option<String>,
}

/// How the input is padded: ONNX Conv's `pads` / `auto_pad`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// `[top, left, bottom, right]` (auto_pad NOTSET, or VALID as all zeros).
    Explicit([usize; 4]),
    /// SAME_UPPER (`upper = true`, the odd pixel at the end) or SAME_LOWER: output = ⌈in / stride⌉.
    Same { upper: bool },
}

/// The checked attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    pub padding: Padding,
    /// N′, input channels per subspace.
    pub subspace: usize,
    /// Whether `max(0, ·)` is applied to the output (attribute `activation = "Relu"`).
    pub relu: bool,
}

fn node_error(message: String) -> KernelError {
    KernelError::Node { message }
}

/// `values` as `N` integers of at least `min`, or `default` when absent.
fn ints<const N: usize>(
    name: &str,
    values: &Option<Vec<i64>>,
    min: i64,
    default: usize,
) -> Result<[usize; N], KernelError> {
    let Some(values) = values else {
        return Ok([default; N]);
    };
    if values.len() != N || values.iter().any(|&v| v < min) {
        return Err(node_error(format!(
            "attribute {name} is {values:?}, expected {N} integers of at least {min}"
        )));
    }
    let mut out = [0usize; N];
    for (o, &v) in out.iter_mut().zip(values) {
        *o = usize::try_from(v).map_err(|_| node_error(format!("attribute {name}: {v}")))?;
    }
    Ok(out)
}

impl RawAttributes {
    /// Checks the attributes: strides and dilations ≥ 1 (two each), pads ≥ 0 (four), auto_pad
    /// one of ONNX's four values (pads and a SAME or VALID auto_pad exclude each other, as in
    /// ONNX Conv), subspace ≥ 1 and present.
    pub fn check(&self) -> Result<Attributes, KernelError> {
        let strides = ints::<2>("strides", &self.strides, 1, 1)?;
        let dilations = ints::<2>("dilations", &self.dilations, 1, 1)?;
        let pads = ints::<4>("pads", &self.pads, 0, 0)?;
        let mode = self.auto_pad.as_deref().unwrap_or("NOTSET");
        let padding = match mode {
            "NOTSET" => Padding::Explicit(pads),
            "VALID" | "SAME_UPPER" | "SAME_LOWER" if self.pads.is_some() => {
                return Err(node_error(format!(
                    "attributes pads and auto_pad {mode} exclude each other"
                )))
            }
            "VALID" => Padding::Explicit([0; 4]),
            "SAME_UPPER" => Padding::Same { upper: true },
            "SAME_LOWER" => Padding::Same { upper: false },
            other => {
                return Err(node_error(format!(
                "attribute auto_pad is {other:?}, expected NOTSET, VALID, SAME_UPPER or SAME_LOWER"
            )))
            }
        };
        let subspace = match self.subspace {
            Some(n) if n >= 1 => n as usize,
            Some(n) => {
                return Err(node_error(format!(
                    "attribute subspace is {n}, must be at least 1"
                )))
            }
            None => return Err(node_error("attribute subspace is missing".into())),
        };
        let relu = match self.activation.as_deref() {
            None | Some("") => false,
            Some("Relu") => true,
            Some(other) => {
                return Err(node_error(format!(
                    "attribute activation is {other:?}, expected \"Relu\" or none"
                )))
            }
        };
        Ok(Attributes {
            strides,
            dilations,
            padding,
            subspace,
            relu,
        })
    }
}

impl Attributes {
    /// The `[top, left, bottom, right]` pads for an `h × w` input and a `kernel`: the explicit
    /// ones, or ONNX's SAME rule (total = max(0, (⌈n/s⌉ − 1)·s + (k − 1)·d + 1 − n), the odd
    /// pixel after (SAME_UPPER) or before (SAME_LOWER)). `None` on overflow.
    pub fn pads_for(&self, h: usize, w: usize, kernel: [usize; 2]) -> Option<[usize; 4]> {
        let upper = match self.padding {
            Padding::Explicit(pads) => return Some(pads),
            Padding::Same { upper } => upper,
        };
        let mut pads = [0usize; 4];
        for (axis, n) in [h, w].into_iter().enumerate() {
            let (s, d, k) = (self.strides[axis], self.dilations[axis], kernel[axis]);
            let out = n.div_ceil(s);
            let span = d.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
            let needed = out.saturating_sub(1).checked_mul(s)?.checked_add(span)?;
            let total = needed.saturating_sub(n);
            let (small, large) = (total / 2, total - total / 2);
            let (before, after) = if upper {
                (small, large)
            } else {
                (large, small)
            };
            pads[axis] = before;
            pads[axis + 2] = after;
        }
        Some(pads)
    }

    /// Applies the node's activation to its output, in place.
    pub fn activate(&self, out: &mut [f32]) {
        if self.relu {
            for v in out {
                *v = v.max(0.0);
            }
        }
    }

    /// The output `[height, width]` for an `h × w` input and a `kernel`, as ONNX Conv computes
    /// it; `None` when the dilated kernel does not fit the padded input.
    pub fn output_size(&self, h: usize, w: usize, kernel: [usize; 2]) -> Option<[usize; 2]> {
        let geometry = Geometry {
            in_channels: 1,
            out_channels: 1,
            kernel,
            strides: self.strides,
            dilations: self.dilations,
            pads: self.pads_for(h, w, kernel)?,
        };
        geometry.output_size(h, w)
    }
}

/// The node's constant inputs 1–5 (input 0, X, is the data).
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// `[S, L, N′]`.
    pub atoms: Constant<f32>,
    /// `[S, K, α]`, absent for VQ.
    pub atom_indices: Option<Constant<u32>>,
    /// `[S, K, α]`, present exactly when `atom_indices` is.
    pub coefficients: Option<Constant<f32>>,
    /// Γ, `[S, M, kh, kw]`.
    pub assignment: Constant<u32>,
    /// `[M]`.
    pub bias: Option<Constant<f32>>,
}

impl Inputs {
    /// `[kh, kw]`, from the assignment's shape (checked by [`Inputs::build`]).
    pub fn kernel(&self) -> Option<[usize; 2]> {
        match self.assignment.shape[..] {
            [_, _, kh, kw] => Some([kh, kw]),
            _ => None,
        }
    }

    /// M, the number of output channels (the assignment's second dimension).
    pub fn out_channels(&self) -> Option<usize> {
        self.assignment.shape.get(1).copied()
    }

    /// The validated kernel for an input of `in_channels` channels padded by `pads`: shapes
    /// agree with each other and with `attributes.subspace`, atom entries beyond the last
    /// subspace's channels are 0, and everything [`DlqConv::new`] checks (indices in range,
    /// finite values).
    pub fn build(
        &self,
        attributes: &Attributes,
        pads: [usize; 4],
        in_channels: usize,
    ) -> Result<DlqConv, KernelError> {
        let width = attributes.subspace;
        let s_count = in_channels.div_ceil(width);
        let ad = &self.atoms.shape;
        if ad.len() != 3 || ad[0] != s_count || ad[2] != width || ad[1] == 0 {
            return Err(node_error(format!(
                "input atoms has shape {ad:?}, expected [{s_count}, L, {width}] for {in_channels} input channels and subspace {width}"
            )));
        }
        let gd = &self.assignment.shape;
        if gd.len() != 4 || gd[0] != s_count {
            return Err(node_error(format!(
                "input assignment has shape {gd:?}, expected [{s_count}, M, kh, kw]"
            )));
        }
        let l = ad[1];
        let codes = self.codes(s_count)?;
        let per_sub = checked_product(&gd[1..], "assignment")?;
        let check_len = |what: &str, c_len: usize, expected: usize| {
            if c_len == expected {
                Ok(())
            } else {
                Err(node_error(format!(
                    "input {what} has {c_len} values, its shape says {expected}"
                )))
            }
        };
        check_len(
            "atoms",
            self.atoms.values.len(),
            checked_product(&[s_count, l, width], "atoms")?,
        )?;
        check_len(
            "assignment",
            self.assignment.values.len(),
            checked_product(&[s_count, per_sub], "assignment")?,
        )?;
        let mut subspaces = Vec::with_capacity(s_count);
        for s in 0..s_count {
            let channels = s * width..in_channels.min((s + 1) * width);
            let w = channels.len();
            let rows = &self.atoms.values[s * l * width..][..l * width];
            if rows
                .chunks_exact(width)
                .any(|r| r[w..].iter().any(|&v| v != 0.0))
            {
                return Err(node_error(format!(
                    "subspace {s}: atom entries beyond its {w} channels are not 0"
                )));
            }
            subspaces.push(Subspace {
                channels,
                atoms: rows
                    .chunks_exact(width)
                    .flat_map(|r| r[..w].iter().copied())
                    .collect(),
                num_atoms: l,
                codes: codes.as_ref().map(|c| c[s].clone()),
                assignment: self.assignment.values[s * per_sub..][..per_sub].to_vec(),
            });
        }
        if let Some(bias) = &self.bias {
            if bias.shape != [gd[1]] {
                return Err(node_error(format!(
                    "input B has shape {:?}, expected [{}]",
                    bias.shape, gd[1]
                )));
            }
        }
        let geometry = Geometry {
            in_channels,
            out_channels: gd[1],
            kernel: [gd[2], gd[3]],
            strides: attributes.strides,
            dilations: attributes.dilations,
            pads,
        };
        DlqConv::new(
            geometry,
            subspaces,
            self.bias.as_ref().map(|b| b.values.clone()),
        )
    }

    /// The sparse codes per subspace (`None` for VQ).
    fn codes(&self, s_count: usize) -> Result<Option<Vec<Codes>>, KernelError> {
        let (idx, coef) = match (&self.atom_indices, &self.coefficients) {
            (None, None) => return Ok(None),
            (Some(idx), Some(coef)) => (idx, coef),
            _ => {
                return Err(node_error(
                    "inputs atom_indices and coefficients go together (both or neither)".into(),
                ))
            }
        };
        let id = &idx.shape;
        if id.len() != 3 || id[0] != s_count || coef.shape != *id || id[2] == 0 {
            return Err(node_error(format!(
                "inputs atom_indices {id:?} and coefficients {:?} must both be [{s_count}, K, alpha]",
                coef.shape
            )));
        }
        let per_sub = checked_product(&id[1..], "atom_indices")?;
        let total = checked_product(&[s_count, per_sub], "atom_indices")?;
        if idx.values.len() != total || coef.values.len() != total {
            return Err(node_error(format!(
                "inputs atom_indices and coefficients must hold {total} values each"
            )));
        }
        Ok(Some(
            (0..s_count)
                .map(|s| Codes {
                    alpha: id[2],
                    atoms: idx.values[s * per_sub..][..per_sub].to_vec(),
                    coefficients: coef.values[s * per_sub..][..per_sub].to_vec(),
                })
                .collect(),
        ))
    }
}
