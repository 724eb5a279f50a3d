//! The standard-operator form read back: the atoms' 1×1 Conv weights (one, or the head's and
//! the tail's when N′ does not divide N), one Gather and Mul per Λ slot, one Gather per kernel
//! position, the bias Add.

use anyhow::{ensure, Context, Result};

use crate::codebook::dl::SparseCodes;
use crate::codebook::subspace::{self, Points};
use crate::codebook::{Codebook, Method};
use crate::lower::stored::{
    codes, set_initializer, to_indices, Decoded, LayerNodes, StoredShape, StoredValues,
};
use crate::onnx::model::OnnxModel;
use crate::onnx::tensor;

/// The layer's codebook, when its nodes are the standard-operator form's (no single
/// `{layer}/dlq/conv` node).
pub fn read(nodes: &LayerNodes, shape: StoredShape) -> Option<Result<Decoded>> {
    nodes.find("conv").is_none().then(|| read_ops(nodes, shape))
}

/// The standard-operator form: the atoms' Conv, one Gather and Mul per Λ slot, one Gather per
/// kernel position, the bias Add.
fn read_ops(nodes: &LayerNodes, shape: StoredShape) -> Result<Decoded> {
    let [m, _, kh, kw] = shape.kernel;
    let (channels, method) = (shape.channels, shape.method);
    let s_count = channels.len();
    let atom_convs = match nodes.find("atoms_head") {
        Some(_) => vec![
            nodes.node("atoms_head", "Conv")?,
            nodes.node("atoms_tail", "Conv")?,
        ],
        None => vec![nodes.node("atoms", "Conv")?],
    };
    let atom_names: Vec<String> = atom_convs
        .iter()
        .map(|n| nodes.input(n, 1).map(str::to_string))
        .collect::<Result<_>>()?;
    let mut flat = Vec::new();
    for name in &atom_names {
        flat.extend(nodes.floats(name)?.1);
    }
    let widths: usize = channels.iter().map(|c| c.len()).sum();
    ensure!(
        flat.len() % widths == 0,
        "atom weights of {} values for {widths} channels",
        flat.len()
    );
    let l = flat.len() / widths;
    let mut at = 0;
    let atoms: Vec<Points> = channels
        .iter()
        .map(|ch| {
            let data = flat[at..at + l * ch.len()].to_vec();
            at += l * ch.len();
            Points {
                data,
                dim: ch.len(),
            }
        })
        .collect();
    let (codes, coefficient_names) = match method {
        Method::Vq => (None, vec![]),
        Method::Dl => {
            let (codes, names) = ops_codes(nodes, s_count, l)?;
            (Some(codes), names)
        }
    };
    let k = codes.as_ref().map_or(l, |c| c[0].len());
    let mut assignment = vec![vec![0u32; m * kh * kw]; s_count];
    for u in 0..kh {
        for v in 0..kw {
            let gather = nodes.node(&format!("k{u}_{v}_lookup"), "Gather")?;
            let name = nodes.input(gather, 1)?;
            let (_, idx) = nodes.ints(name)?;
            ensure!(
                idx.len() == s_count * m,
                "`{name}`: {} indices, expected {}",
                idx.len(),
                s_count * m
            );
            for (s, g) in assignment.iter_mut().enumerate() {
                let reps = to_indices(&idx[s * m..][..m], (s * k) as i64, k, name)?;
                for (o, r) in reps.into_iter().enumerate() {
                    g[subspace::column(o, u, v, kh, kw)] = r;
                }
            }
        }
    }
    let bias = match nodes.find("output") {
        Some(add) if add.op_type.as_deref() == Some("Add") => {
            Some(nodes.input(add, 1)?.to_string())
        }
        _ => None,
    };
    Ok(Decoded {
        values: Box::new(OpsValues {
            atoms: atom_names,
            coefficients: coefficient_names,
        }),
        atoms,
        codes,
        assignment,
        shared: false,
        f16_palette: false,
        channel_scale: None,
        bias,
    })
}

/// Λ from the per-slot Gathers (global atom indices s·L + a) and Muls (coefficients).
fn ops_codes(
    nodes: &LayerNodes,
    s_count: usize,
    l: usize,
) -> Result<(Vec<SparseCodes>, Vec<String>)> {
    let mut slots = Vec::new();
    while let Some(gather) = nodes.find(&format!("term{}_atoms", slots.len())) {
        let t = slots.len();
        let (_, idx) = nodes.ints(nodes.input(gather, 1)?)?;
        let mul = nodes.node(&format!("term{t}"), "Mul")?;
        let name = nodes.input(mul, 1)?.to_string();
        let (_, coefs) = nodes.floats(&name)?;
        ensure!(
            idx.len() == coefs.len() && idx.len() % s_count == 0,
            "Λ slot {t}: {} atom indices and {} coefficients for {s_count} subspaces",
            idx.len(),
            coefs.len()
        );
        slots.push((idx, coefs, name));
    }
    ensure!(
        !slots.is_empty(),
        "a DL layer without Λ (no node `{}term0_atoms`)",
        nodes.prefix
    );
    let (alpha, k) = (slots.len(), slots[0].0.len() / s_count);
    let mut codes = Vec::with_capacity(s_count);
    for s in 0..s_count {
        let (mut atoms, mut coefs) = (vec![0u32; k * alpha], vec![0f32; k * alpha]);
        for (t, (idx, c, name)) in slots.iter().enumerate() {
            ensure!(
                idx.len() == s_count * k,
                "`{name}`: Λ slots of different sizes"
            );
            let a = to_indices(&idx[s * k..][..k], (s * l) as i64, l, name)?;
            for r in 0..k {
                atoms[r * alpha + t] = a[r];
                coefs[r * alpha + t] = c[s * k + r];
            }
        }
        codes.push(SparseCodes {
            alpha,
            atoms,
            coefs,
        });
    }
    Ok((codes, slots.into_iter().map(|s| s.2).collect()))
}

/// The standard-operator form's values: the atoms' Conv weights and one coefficient tensor
/// `[1, S·K, 1, 1]` per Λ slot.
#[derive(Debug)]
struct OpsValues {
    atoms: Vec<String>,
    coefficients: Vec<String>,
}

impl StoredValues for OpsValues {
    fn write(&self, model: &mut OnnxModel, trained: &Codebook) -> Result<()> {
        let subspaces = &trained.subspaces;
        let flat: Vec<f32> = subspaces
            .iter()
            .flat_map(|s| s.atoms.data.iter().copied())
            .collect();
        let mut at = 0;
        for name in &self.atoms {
            let len = tensor::element_count(model.initializer(name).context("atoms")?)?;
            set_initializer(model, name, &flat[at..at + len])?;
            at += len;
        }
        for (t, name) in self.coefficients.iter().enumerate() {
            let slot: Vec<f32> = subspaces
                .iter()
                .flat_map(|s| {
                    let c = codes(s);
                    c.coefs
                        .iter()
                        .skip(t)
                        .step_by(c.alpha)
                        .copied()
                        .collect::<Vec<_>>()
                })
                .collect();
            set_initializer(model, name, &slot)?;
        }
        Ok(())
    }
}
