//! `ConvAttrs`: a Conv node's attributes read once, checked, with the ONNX defaults filled in,
//! and the output-size / padding arithmetic that the rest of the tool relies on.

use anyhow::{bail, ensure, Context, Result};

use crate::proto::{AttributeProto, NodeProto};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AutoPad {
    NotSet,
    SameUpper,
    SameLower,
    Valid,
}

impl AutoPad {
    pub fn as_str(self) -> &'static str {
        match self {
            AutoPad::NotSet => "NOTSET",
            AutoPad::SameUpper => "SAME_UPPER",
            AutoPad::SameLower => "SAME_LOWER",
            AutoPad::Valid => "VALID",
        }
    }
}

/// Attributes of a Conv over `rank` spatial axes. `pads` is ONNX order: all begins, then all ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvAttrs {
    pub kernel_shape: Option<Vec<usize>>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<usize>,
    pub auto_pad: AutoPad,
    pub group: usize,
}

pub fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
}

fn ints(
    node: &NodeProto,
    name: &str,
    rank: usize,
    default: usize,
    len: usize,
) -> Result<Vec<usize>> {
    let Some(a) = attribute(node, name) else {
        return Ok(vec![default; len]);
    };
    ensure!(
        a.ints.len() == len,
        "attribute `{name}` has {} values, expected {len} for a {rank}-D convolution",
        a.ints.len()
    );
    a.ints
        .iter()
        .map(|&v| {
            usize::try_from(v)
                .map_err(|_| anyhow::anyhow!("attribute `{name}` has a negative value {v}"))
        })
        .collect()
}

impl ConvAttrs {
    /// Reads the attributes of a Conv (or ConvTranspose) node with `rank` spatial axes.
    pub fn from_node(node: &NodeProto, rank: usize) -> Result<ConvAttrs> {
        let kernel_shape = match attribute(node, "kernel_shape") {
            Some(_) => Some(ints(node, "kernel_shape", rank, 1, rank)?),
            None => None,
        };
        let strides = ints(node, "strides", rank, 1, rank)?;
        let dilations = ints(node, "dilations", rank, 1, rank)?;
        let pads = ints(node, "pads", rank, 0, 2 * rank)?;
        ensure!(
            strides.iter().all(|&s| s > 0),
            "attribute `strides` must be positive, got {strides:?}"
        );
        ensure!(
            dilations.iter().all(|&d| d > 0),
            "attribute `dilations` must be positive, got {dilations:?}"
        );
        let auto_pad = match attribute(node, "auto_pad").and_then(|a| a.s.as_deref()) {
            None | Some(b"NOTSET") | Some(b"") => AutoPad::NotSet,
            Some(b"SAME_UPPER") => AutoPad::SameUpper,
            Some(b"SAME_LOWER") => AutoPad::SameLower,
            Some(b"VALID") => AutoPad::Valid,
            Some(other) => bail!(
                "attribute `auto_pad` is `{}`, expected NOTSET, SAME_UPPER, SAME_LOWER or VALID",
                String::from_utf8_lossy(other)
            ),
        };
        let group = match attribute(node, "group") {
            Some(a) => {
                let g = a.i.unwrap_or(1);
                usize::try_from(g)
                    .ok()
                    .filter(|&g| g > 0)
                    .with_context(|| format!("attribute `group` must be positive, got {g}"))?
            }
            None => 1,
        };
        Ok(ConvAttrs {
            kernel_shape,
            strides,
            dilations,
            pads,
            auto_pad,
            group,
        })
    }

    /// A 1×1 2-D Conv's attributes (no padding, unit strides and dilations, one group): the
    /// convolution a fully connected layer is, on a 1×1 input.
    pub fn pointwise() -> ConvAttrs {
        ConvAttrs {
            kernel_shape: Some(vec![1, 1]),
            strides: vec![1, 1],
            dilations: vec![1, 1],
            pads: vec![0; 4],
            auto_pad: AutoPad::NotSet,
            group: 1,
        }
    }

    pub fn rank(&self) -> usize {
        self.strides.len()
    }

    /// Explicit (begin, end) padding per spatial axis for an input of `input` size and a kernel
    /// of `kernel` size, resolving `auto_pad` as the ONNX spec does.
    pub fn resolved_pads(&self, input: &[usize], kernel: &[usize]) -> Vec<(usize, usize)> {
        (0..self.rank())
            .map(|i| {
                let extent = self.dilations[i] * (kernel[i] - 1) + 1;
                match self.auto_pad {
                    AutoPad::NotSet => (self.pads[i], self.pads[i + self.rank()]),
                    AutoPad::Valid => (0, 0),
                    AutoPad::SameUpper | AutoPad::SameLower => {
                        let out = input[i].div_ceil(self.strides[i]);
                        let total = ((out - 1) * self.strides[i] + extent).saturating_sub(input[i]);
                        let small = total / 2;
                        if self.auto_pad == AutoPad::SameUpper {
                            (small, total - small)
                        } else {
                            (total - small, small)
                        }
                    }
                }
            })
            .collect()
    }

    /// The (begin, end) padding per spatial axis when it does not depend on the input's size:
    /// explicit pads, `VALID`, and `SAME_*` at stride 1 (which pads the kernel extent − 1 in
    /// all). `None` for `SAME_*` with a stride above 1, whose padding follows the size modulo
    /// the stride.
    pub fn size_free_pads(&self, kernel: &[usize]) -> Option<Vec<(usize, usize)>> {
        let same = matches!(self.auto_pad, AutoPad::SameUpper | AutoPad::SameLower);
        if same && self.strides.iter().any(|&s| s != 1) {
            return None;
        }
        // At stride 1 the SAME padding is size-independent: any size resolves it.
        let any_size = vec![1; self.rank()];
        Some(self.resolved_pads(&any_size, kernel))
    }

    /// Output spatial size, or an error when the kernel does not fit the padded input.
    pub fn output_size(&self, input: &[usize], kernel: &[usize]) -> Result<Vec<usize>> {
        let pads = self.resolved_pads(input, kernel);
        (0..self.rank())
            .map(|i| {
                let extent = self.dilations[i] * (kernel[i] - 1) + 1;
                let padded = input[i] + pads[i].0 + pads[i].1;
                ensure!(
                    padded >= extent,
                    "kernel extent {extent} is larger than the padded input {padded} on spatial axis {i}"
                );
                Ok((padded - extent) / self.strides[i] + 1)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::build::{self, attr_ints, attr_str};

    /// A Conv node with these attributes (inputs and outputs do not matter to the parsing).
    fn node(attrs: Vec<AttributeProto>) -> NodeProto {
        build::node("Conv", "", &[], &[], attrs)
    }

    #[test]
    fn defaults_are_filled_in() {
        let a = ConvAttrs::from_node(&node(vec![]), 2).unwrap();
        assert_eq!(a.strides, vec![1, 1]);
        assert_eq!(a.dilations, vec![1, 1]);
        assert_eq!(a.pads, vec![0, 0, 0, 0]);
        assert_eq!(a.group, 1);
        assert_eq!(a.auto_pad, AutoPad::NotSet);
        assert_eq!(a.output_size(&[7, 5], &[3, 3]).unwrap(), vec![5, 3]);
    }

    #[test]
    fn output_sizes_follow_the_onnx_formula() {
        let a = ConvAttrs::from_node(
            &node(vec![
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 0, 2, 1]),
                attr_ints("dilations", &[2, 1]),
            ]),
            2,
        )
        .unwrap();
        // axis 0: (9 + 1 + 2 - 5) / 2 + 1 = 4; axis 1: (8 + 0 + 1 - 3) / 2 + 1 = 4
        assert_eq!(a.output_size(&[9, 8], &[3, 3]).unwrap(), vec![4, 4]);
    }

    #[test]
    fn same_padding_puts_the_odd_pixel_where_the_mode_says() {
        let up = ConvAttrs::from_node(
            &node(vec![
                attr_str("auto_pad", "SAME_UPPER"),
                attr_ints("strides", &[2, 2]),
            ]),
            2,
        )
        .unwrap();
        // input 8, stride 2 -> out 4; total pad = 3*2 + 3 - 8 = 1
        assert_eq!(up.resolved_pads(&[8, 8], &[3, 3]), vec![(0, 1), (0, 1)]);
        assert_eq!(up.output_size(&[8, 7], &[3, 3]).unwrap(), vec![4, 4]);
        let low = ConvAttrs::from_node(
            &node(vec![
                attr_str("auto_pad", "SAME_LOWER"),
                attr_ints("strides", &[2, 2]),
            ]),
            2,
        )
        .unwrap();
        assert_eq!(low.resolved_pads(&[8, 8], &[3, 3]), vec![(1, 0), (1, 0)]);
        let valid = ConvAttrs::from_node(
            &node(vec![
                attr_str("auto_pad", "VALID"),
                attr_ints("pads", &[1, 1, 1, 1]),
            ]),
            2,
        )
        .unwrap();
        assert_eq!(valid.output_size(&[5, 5], &[3, 3]).unwrap(), vec![3, 3]);
    }

    #[test]
    fn size_free_pads_hold_at_every_size_or_are_refused() {
        let modes = ["NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"];
        for (mode, stride, dilation) in mode_stride_dilation(&modes) {
            let a = ConvAttrs::from_node(
                &node(vec![
                    attr_str("auto_pad", mode),
                    attr_ints("strides", &[stride, 1]),
                    attr_ints("dilations", &[dilation, 2]),
                ]),
                2,
            )
            .unwrap();
            let kernel = [3, 2];
            let same = mode.starts_with("SAME");
            match a.size_free_pads(&kernel) {
                Some(p) => {
                    assert!(!same || stride == 1, "{mode} stride {stride}");
                    for h in 4..12 {
                        assert_eq!(p, a.resolved_pads(&[h, h + 1], &kernel), "{mode} {h}");
                    }
                }
                None => assert!(same && stride > 1, "{mode} stride {stride}"),
            }
        }
    }

    /// Every (mode, stride, dilation) with stride and dilation in 1..=3.
    fn mode_stride_dilation<'a>(modes: &[&'a str]) -> Vec<(&'a str, i64, i64)> {
        let mut all = Vec::new();
        for &m in modes {
            for s in 1..=3 {
                for d in 1..=3 {
                    all.push((m, s, d));
                }
            }
        }
        all
    }

    #[test]
    fn malformed_attributes_name_the_attribute() {
        let e = ConvAttrs::from_node(&node(vec![attr_ints("strides", &[1])]), 2).unwrap_err();
        assert!(
            e.to_string().contains("`strides` has 1 values, expected 2"),
            "{e}"
        );
        let e = ConvAttrs::from_node(&node(vec![attr_ints("dilations", &[0, 1])]), 2).unwrap_err();
        assert!(e.to_string().contains("dilations"), "{e}");
        let e = ConvAttrs::from_node(&node(vec![attr_str("auto_pad", "SAME")]), 2).unwrap_err();
        assert!(e.to_string().contains("auto_pad"), "{e}");
        let e =
            ConvAttrs::from_node(&node(vec![attr_ints("pads", &[-1, 0, 0, 0])]), 2).unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
        let a = ConvAttrs::from_node(&node(vec![]), 2).unwrap();
        assert!(a.output_size(&[2, 2], &[3, 3]).is_err());
    }
}
