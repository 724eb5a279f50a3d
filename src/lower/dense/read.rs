//! The compact form read back: the Conv keeps its node (`{layer}/dlq/conv`) and its weight is
//! rebuilt from initializers named after the layer: per-subspace tables as the fused form's,
//! or one `[K, N′]` palette with optional per-channel scales; Γ plain or bit-packed.

use anyhow::{ensure, Context, Result};

use crate::codebook::subspace::Points;
use crate::codebook::{Codebook, Method};
use crate::lower::stored::{
    self, set_initializer, Decoded, LayerNodes, StoredShape, StoredValues, TableNames,
};
use crate::onnx::model::OnnxModel;
use crate::proto::tensor_proto::DataType;
use dlq_kernels::operator::OP_TYPE;

use super::packing;

/// The layer's codebook, when its nodes are the compact form's (a Conv of a rebuilt kernel).
pub fn read(nodes: &LayerNodes, shape: StoredShape) -> Option<Result<Decoded>> {
    let node = nodes.find("conv")?;
    (node.op_type.as_deref() != Some(OP_TYPE)).then(|| {
        let dl = shape.method == Method::Dl;
        let names = TableNames {
            atoms: nodes.named("atoms"),
            atom_indices: dl.then(|| nodes.named("atom_indices")),
            coefficients: dl.then(|| nodes.named("coefficients")),
            assignment: nodes.named("assignment"),
            bias: nodes.input(node, 2).ok().map(str::to_string),
        };
        let atoms = nodes.floats(&names.atoms)?;
        if shape.method == Method::Vq && atoms.0.len() == 2 {
            return palette(nodes, atoms, names, shape);
        }
        stored::read_tables(nodes, (names, atoms), shape, assignment)
    })
}

/// The palette (`[K, N′]`, every subspace's codebook) and Γ indexing it.
fn palette(
    nodes: &LayerNodes,
    (dims, data): (Vec<usize>, Vec<f32>),
    names: TableNames,
    shape: StoredShape,
) -> Result<Decoded> {
    let [m, _, kh, kw] = shape.kernel;
    let channels = shape.channels;
    let atoms_name = names.atoms;
    let (k, width) = (dims[0], dims[1]);
    ensure!(
        channels.iter().all(|c| c.len() == width),
        "palette `{atoms_name}` of {width}-value rows, for subspaces of {:?} channels",
        channels.iter().map(|c| c.len()).collect::<Vec<_>>()
    );
    let assignment = assignment(nodes, &names.assignment, [channels.len(), m, kh, kw], k)?;
    let scale_name = nodes.named("channel_scale");
    let scale = match nodes.model.initializer(&scale_name) {
        Some(_) => {
            let (dims, values) = nodes.floats(&scale_name)?;
            ensure!(
                dims == [m, 1, 1, 1],
                "channel scales `{scale_name}` of shape {dims:?}, expected [{m}, 1, 1, 1]"
            );
            Some((scale_name, values))
        }
        None => None,
    };
    // A float16 palette stays one when trained (the initializer keeps its type).
    let f16_palette = nodes
        .model
        .initializer(&atoms_name)
        .is_some_and(|t| t.data_type == Some(DataType::Float16 as i32));
    Ok(Decoded {
        values: Box::new(Palette {
            atoms: atoms_name,
            scale: scale.as_ref().map(|(n, _)| n.clone()),
        }),
        channel_scale: scale.map(|(_, v)| v),
        atoms: vec![Points { data, dim: width }; channels.len()],
        codes: None,
        assignment,
        shared: true,
        f16_palette,
        bias: names.bias,
    })
}

/// The compact form's shared codebook: one `[K, N′]` palette (VQ), and its per-channel scales
/// `[M, 1, 1, 1]` when it has them.
#[derive(Debug)]
struct Palette {
    atoms: String,
    scale: Option<String>,
}

impl StoredValues for Palette {
    fn write(&self, model: &mut OnnxModel, trained: &Codebook) -> Result<()> {
        // One variable in training: every subspace's copy is the palette.
        set_initializer(model, &self.atoms, &trained.subspaces[0].atoms.data)?;
        if let (Some(name), Some(values)) = (&self.scale, &trained.channel_scale) {
            set_initializer(model, name, values)?;
        }
        Ok(())
    }
}

/// Γ per subspace from the `[S, M, kh, kw]` initializer `name`, or from the bit-packed tensors
/// the compact form stores below 8 bits (`packing`: `{name}_packed`, or its two planes at 7
/// bits); each index below `k`.
fn assignment(
    nodes: &LayerNodes,
    name: &str,
    shape: [usize; 4],
    k: usize,
) -> Result<Vec<Vec<u32>>> {
    let count = shape.iter().product::<usize>();
    let bits = packing::bits_for(k);
    let packed = packing::packed_names(name, bits);
    if nodes.model.initializer(&packed[0]).is_none() {
        return stored::plain_assignment(nodes, name, shape, k);
    }
    let mut planes = Vec::with_capacity(packed.len());
    for p in &packed {
        let (_, bytes) = nodes.ints(p)?;
        planes.push(bytes.iter().map(|&b| b as u8).collect::<Vec<u8>>());
    }
    let values = match planes.as_slice() {
        [low, high] => packing::unpack_split(low, high, count),
        [one] => packing::unpack(one, bits, count),
        _ => None,
    };
    let values = values.with_context(|| {
        format!(
            "`{}`: {} bytes do not hold {count} indices of {bits} bits",
            packed.join("`, `"),
            planes.iter().map(Vec::len).sum::<usize>()
        )
    })?;
    let gamma: Vec<i64> = values.into_iter().map(i64::from).collect();
    stored::split_assignment(&gamma, shape, k, name)
}
