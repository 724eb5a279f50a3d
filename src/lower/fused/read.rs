//! The fused form read back: the `DlqConv` node's inputs name its tables (atoms, DL's atom
//! indices and coefficients, Γ, the bias), stored as `wiring::tables` writes them.

use anyhow::Result;

use crate::lower::stored::{self, Decoded, LayerNodes, StoredShape, TableNames};
use crate::proto::NodeProto;

use dlq_kernels::operator::OP_TYPE;

/// The layer's codebook, when its nodes are the fused form's (a `DlqConv` node).
pub fn read(nodes: &LayerNodes, shape: StoredShape) -> Option<Result<Decoded>> {
    let node = nodes.find("conv")?;
    (node.op_type.as_deref() == Some(OP_TYPE)).then(|| tables(nodes, node, shape))
}

fn tables(nodes: &LayerNodes, node: &NodeProto, shape: StoredShape) -> Result<Decoded> {
    let optional = |i: usize| nodes.input(node, i).ok().map(str::to_string);
    let names = TableNames {
        atoms: nodes.input(node, 1)?.to_string(),
        atom_indices: optional(2),
        coefficients: optional(3),
        assignment: nodes.input(node, 4)?.to_string(),
        bias: optional(5),
    };
    let atoms = nodes.floats(&names.atoms)?;
    stored::read_tables(nodes, (names, atoms), shape, stored::plain_assignment)
}
