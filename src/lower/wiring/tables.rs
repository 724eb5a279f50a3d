//! A codebook as the tables the fused and the compact forms store: atoms `[S, L, width]` (rows
//! zero-padded to the widest subspace), DL's atom indices and coefficients `[S, K, α]`, and Γ
//! `[S, M, kh, kw]` in the smallest unsigned type that holds K.

use anyhow::{ensure, Context, Result};

use crate::codebook::{Codebook, Method};
use crate::onnx::tensor;

use super::builder::Builder;

/// Per subspace sizes shared by every subspace: (S, L, K, α, N′).
pub(in crate::lower) fn codebook_sizes(codebook: &Codebook, ctx: &str) -> Result<[usize; 5]> {
    let first = codebook
        .subspaces
        .first()
        .with_context(|| format!("{ctx}: the codebook has no subspaces"))?;
    let alpha = first.codes.as_ref().map_or(1, |c| c.alpha);
    let sizes = [
        codebook.subspaces.len(),
        first.atoms.len(),
        first.num_representatives(),
        alpha,
        first.channels.len(),
    ];
    for s in &codebook.subspaces {
        ensure!(
            s.atoms.len() == sizes[1]
                && s.num_representatives() == sizes[2]
                && s.codes.as_ref().map_or(1, |c| c.alpha) == alpha
                && s.channels.len() <= sizes[4],
            "{ctx}: subspaces have different codebook sizes"
        );
    }
    Ok(sizes)
}

/// The initializers of the codebook (atoms, and for DL the atom indices and coefficients), as
/// the node's inputs 1–3 (empty names for VQ's absent codes).
pub(in crate::lower) fn codebook_inputs(
    b: &mut Builder,
    codebook: &Codebook,
    [s_count, l, k, alpha, width]: [usize; 5],
    ctx: &str,
) -> Result<Vec<String>> {
    let mut atoms = vec![0.0f32; s_count * l * width];
    for (s, sc) in codebook.subspaces.iter().enumerate() {
        let w = sc.channels.len();
        for (a, row) in sc.atoms.data.chunks_exact(w).enumerate() {
            atoms[(s * l + a) * width..][..w].copy_from_slice(row);
        }
    }
    let mut inputs = vec![b.float_init("atoms", &[s_count, l, width], &atoms)?];
    if codebook.method == Method::Vq {
        inputs.extend([String::new(), String::new()]);
    } else {
        let (mut idx, mut coef) = (Vec::new(), Vec::new());
        for sc in &codebook.subspaces {
            let codes = sc
                .codes
                .as_ref()
                .with_context(|| format!("{ctx}: DL without codes"))?;
            idx.extend_from_slice(&codes.atoms);
            coef.extend_from_slice(&codes.coefs);
        }
        let name = b.name("atom_indices")?;
        b.inits.push(tensor::new_index_tensor(
            &name,
            &[s_count, k, alpha],
            &idx,
            l,
        ));
        inputs.push(name);
        inputs.push(b.float_init("coefficients", &[s_count, k, alpha], &coef)?);
    }
    Ok(inputs)
}

/// Γ of every subspace as one `[S, M, kh, kw]` initializer of the smallest unsigned type that
/// holds `k` (the number of representatives).
pub(in crate::lower) fn assignment_input(
    b: &mut Builder,
    codebook: &Codebook,
    shape: [usize; 4],
    k: usize,
) -> Result<String> {
    let assignment = codebook.flat_assignment();
    let name = b.name("assignment")?;
    b.inits
        .push(tensor::new_index_tensor(&name, &shape, &assignment, k));
    Ok(name)
}
