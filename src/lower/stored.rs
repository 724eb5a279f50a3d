//! A written layer read back: the nodes and initializers its form wrote, found by the names the
//! lowering gave them (`{layer}/dlq/…`), decoded into the codebook's parts, with where each
//! continuous value lives so that trained values can be written into the same initializers.
//! Each form's own reading is in its folder (`ops::read`, `fused::read`, `dense::read`); this
//! module holds what they share: the node and initializer look-ups, the tables of the fused and
//! compact forms, and index checks.

use std::ops::Range;

use anyhow::{bail, ensure, Context, Result};

use crate::codebook::dl::SparseCodes;
use crate::codebook::subspace::Points;
use crate::codebook::{Codebook, Method, SubspaceCodebook};
use crate::onnx::model::OnnxModel;
use crate::onnx::tensor;
use crate::proto::{NodeProto, TensorProto};

/// What a converted layer's initializers must fit: the kernel's shape `[M, N, kh, kw]`, the
/// channels of each subspace, and the method (from the layer's recorded settings).
#[derive(Debug, Clone, Copy)]
pub struct StoredShape<'a> {
    pub kernel: [usize; 4],
    pub channels: &'a [Range<usize>],
    pub method: Method,
}

/// Where a layer's continuous values live in the written model, and how trained values go back
/// there (each initializer keeping its shape and element type).
pub trait StoredValues: std::fmt::Debug + Send + Sync {
    fn write(&self, model: &mut OnnxModel, trained: &Codebook) -> Result<()>;
}

/// What a layer's nodes hold, in the codebook's terms.
#[derive(Debug)]
pub struct Decoded {
    pub values: Box<dyn StoredValues>,
    pub atoms: Vec<Points>,
    pub codes: Option<Vec<SparseCodes>>,
    /// Γ per subspace, in column order (`subspace::column`).
    pub assignment: Vec<Vec<u32>>,
    /// One palette shared by every subspace (the compact form's shared codebook).
    pub shared: bool,
    /// A palette stored as float16 (it stays one when trained).
    pub f16_palette: bool,
    /// A palette's per-channel scales.
    pub channel_scale: Option<Vec<f32>>,
    /// The initializer the layer's output adds as bias, when its form holds one.
    pub bias: Option<String>,
}

/// A layer's nodes and initializers in the converted model, by the names its lowering gave.
pub struct LayerNodes<'a> {
    pub model: &'a OnnxModel,
    pub prefix: String,
}

impl LayerNodes<'_> {
    pub fn named(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    pub fn find(&self, suffix: &str) -> Option<&NodeProto> {
        let name = self.named(suffix);
        self.model
            .graph()
            .node
            .iter()
            .find(|n| n.name.as_deref() == Some(name.as_str()))
    }

    pub fn node(&self, suffix: &str, op: &str) -> Result<&NodeProto> {
        let node = self.find(suffix).with_context(|| {
            format!(
                "no node `{}{suffix}`: the file's graph is not as onnx-dlq wrote it",
                self.prefix
            )
        })?;
        ensure!(
            node.op_type.as_deref() == Some(op),
            "node `{}{suffix}` is {}, expected {op}",
            self.prefix,
            node.op_type.as_deref().unwrap_or("?")
        );
        Ok(node)
    }

    /// The initializer `node` reads at `input`.
    pub fn input<'n>(&self, node: &'n NodeProto, input: usize) -> Result<&'n str> {
        match node.input.get(input).map(String::as_str) {
            Some(name) if !name.is_empty() => Ok(name),
            _ => bail!(
                "node `{}` has no input {input}",
                node.name.as_deref().unwrap_or("?")
            ),
        }
    }

    fn tensor(&self, name: &str) -> Result<&TensorProto> {
        self.model
            .initializer(name)
            .with_context(|| format!("`{name}` is not an initializer"))
    }

    pub fn floats(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.tensor(name)?;
        let values = self.model.tensor_f32(t)?;
        Ok((values.shape().to_vec(), values.iter().copied().collect()))
    }

    pub fn ints(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let t = self.tensor(name)?;
        Ok((tensor::dims(t)?, self.model.tensor_i64(t)?))
    }
}

/// The initializers of the fused and compact forms' tables (`wiring::tables`).
pub struct TableNames {
    pub atoms: String,
    pub atom_indices: Option<String>,
    pub coefficients: Option<String>,
    pub assignment: String,
    pub bias: Option<String>,
}

/// How a form stores Γ: reads `name` as `[S, M, kh, kw]` indices, each below `k`.
pub type AssignmentReader = fn(&LayerNodes, &str, [usize; 4], usize) -> Result<Vec<Vec<u32>>>;

/// The tables of the fused and compact forms: atoms `[S, L, width]` (`atoms`: the shape and
/// values of `names.atoms`, which the caller has read), DL's `[S, K, α]` codes, Γ.
pub fn read_tables(
    nodes: &LayerNodes,
    (names, (dims, data)): (TableNames, (Vec<usize>, Vec<f32>)),
    shape: StoredShape,
    read_assignment: AssignmentReader,
) -> Result<Decoded> {
    let [m, _, kh, kw] = shape.kernel;
    let channels = shape.channels;
    let s_count = channels.len();
    let atoms_name = names.atoms;
    ensure!(
        dims.len() == 3,
        "atoms `{atoms_name}` of shape {dims:?}, expected [S, L, width]"
    );
    ensure!(
        dims[0] == s_count,
        "atoms `{atoms_name}` hold {} subspaces, the layer has {s_count}",
        dims[0]
    );
    let (l, width) = (dims[1], dims[2]);
    let atoms = channels
        .iter()
        .enumerate()
        .map(|(s, ch)| {
            ensure!(
                ch.len() <= width,
                "atoms `{atoms_name}` rows of {width} values for {} channels",
                ch.len()
            );
            let rows = (0..l).flat_map(|a| data[(s * l + a) * width..][..ch.len()].iter().copied());
            Ok(Points {
                data: rows.collect(),
                dim: ch.len(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let codes = match (shape.method, &names.atom_indices, &names.coefficients) {
        (Method::Vq, ..) => None,
        (Method::Dl, Some(i), Some(c)) => Some(table_codes(nodes, i, c, s_count, l)?),
        (Method::Dl, ..) => bail!("a DL layer without atom indices and coefficients"),
    };
    let k = codes.as_ref().map_or(l, |c| c[0].len());
    let assignment = read_assignment(nodes, &names.assignment, [s_count, m, kh, kw], k)?;
    Ok(Decoded {
        values: Box::new(Tables {
            atoms: atoms_name,
            width,
            coefficients: names.coefficients,
        }),
        atoms,
        codes,
        assignment,
        shared: false,
        f16_palette: false,
        channel_scale: None,
        bias: names.bias,
    })
}

/// The fused and compact forms' values: atoms `[S, L, width]` (rows zero-padded to the widest
/// subspace) and DL's coefficients `[S, K, α]`.
#[derive(Debug)]
struct Tables {
    atoms: String,
    width: usize,
    coefficients: Option<String>,
}

impl StoredValues for Tables {
    fn write(&self, model: &mut OnnxModel, trained: &Codebook) -> Result<()> {
        let subspaces = &trained.subspaces;
        let l = trained.sizes.l;
        let mut table = vec![0f32; subspaces.len() * l * self.width];
        for (s, sc) in subspaces.iter().enumerate() {
            for (a, row) in sc.atoms.data.chunks_exact(sc.atoms.dim).enumerate() {
                table[(s * l + a) * self.width..][..row.len()].copy_from_slice(row);
            }
        }
        set_initializer(model, &self.atoms, &table)?;
        if let Some(name) = &self.coefficients {
            let coefs: Vec<f32> = subspaces
                .iter()
                .flat_map(|s| codes(s).coefs.iter().copied())
                .collect();
            set_initializer(model, name, &coefs)?;
        }
        Ok(())
    }
}

/// Γ per subspace from the plain `[S, M, kh, kw]` initializer `name`, each index below `k`.
pub fn plain_assignment(
    nodes: &LayerNodes,
    name: &str,
    shape: [usize; 4],
    k: usize,
) -> Result<Vec<Vec<u32>>> {
    let (dims, gamma) = nodes.ints(name)?;
    ensure!(
        dims == shape,
        "assignment `{name}` of shape {dims:?}, expected {shape:?}"
    );
    split_assignment(&gamma, shape, k, name)
}

/// Γ per subspace from its flat values, each index below `k`.
pub fn split_assignment(
    gamma: &[i64],
    [_, m, kh, kw]: [usize; 4],
    k: usize,
    name: &str,
) -> Result<Vec<Vec<u32>>> {
    gamma
        .chunks_exact(m * kh * kw)
        .map(|g| to_indices(g, 0, k, name))
        .collect()
}

/// Λ from `[S, K, α]` atom indices and coefficients.
fn table_codes(
    nodes: &LayerNodes,
    indices: &str,
    coefficients: &str,
    s_count: usize,
    l: usize,
) -> Result<Vec<SparseCodes>> {
    let (idims, idx) = nodes.ints(indices)?;
    let (cdims, coefs) = nodes.floats(coefficients)?;
    ensure!(
        idims.len() == 3 && idims[0] == s_count && cdims == idims,
        "atom indices `{indices}` {idims:?} and coefficients `{coefficients}` {cdims:?}, expected both [{s_count}, K, α]"
    );
    let per = idims[1] * idims[2];
    (0..s_count)
        .map(|s| {
            Ok(SparseCodes {
                alpha: idims[2],
                atoms: to_indices(&idx[s * per..][..per], 0, l, indices)?,
                coefs: coefs[s * per..][..per].to_vec(),
            })
        })
        .collect()
}

/// `values` less `offset`, each checked to be below `bound`.
pub fn to_indices(values: &[i64], offset: i64, bound: usize, what: &str) -> Result<Vec<u32>> {
    values
        .iter()
        .map(|&v| {
            let i = v - offset;
            ensure!(
                (0..bound as i64).contains(&i),
                "`{what}`: index {v} out of range (below {bound} after {offset})"
            );
            Ok(i as u32)
        })
        .collect()
}

/// A DL subspace's sparse codes.
pub fn codes(s: &SubspaceCodebook) -> &SparseCodes {
    s.codes
        .as_ref()
        .expect("a DL codebook's subspaces have codes")
}

/// Replaces the values of initializer `name` (same shape and element type).
pub fn set_initializer(model: &mut OnnxModel, name: &str, values: &[f32]) -> Result<()> {
    let path = model.path.display().to_string();
    let t = model
        .graph_mut()
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some(name))
        .with_context(|| format!("initializer `{name}` is not in {path}"))?;
    let dims = tensor::dims(t)?;
    let elem = tensor::FloatType::from_onnx(t.data_type.unwrap_or(0))
        .with_context(|| format!("initializer `{name}` is not a float tensor"))?;
    ensure!(
        dims.iter().product::<usize>() == values.len(),
        "initializer `{name}`: {} values for shape {dims:?}",
        values.len()
    );
    tensor::set_f32(t, &dims, values, elem);
    Ok(())
}
