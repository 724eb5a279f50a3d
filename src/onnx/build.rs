//! Builders of ONNX attributes and nodes, shared by the lowering and the tests, so that an
//! attribute is spelled one way everywhere.

use crate::proto::attribute_proto::AttributeType;
use crate::proto::{
    tensor_shape_proto, type_proto, AttributeProto, NodeProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// An INTS attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// An INT attribute.
pub fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

/// A FLOAT attribute.
pub fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

/// A FLOATS attribute.
pub fn attr_floats(name: &str, v: &[f32]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Floats as i32),
        floats: v.to_vec(),
        ..Default::default()
    }
}

/// A STRING attribute.
pub fn attr_str(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

/// A default-domain node named `name` (empty: unnamed) computing `outputs` from `inputs`.
pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: (!name.is_empty()).then(|| name.to_string()),
        op_type: Some(op.into()),
        attribute: attrs,
        ..Default::default()
    }
}

/// The value info of a tensor `name` of element type `elem` (an ONNX `DataType`), with concrete
/// `dims` or no shape.
pub fn value_info(name: &str, elem: i32, dims: Option<&[i64]>) -> ValueInfoProto {
    let dim = |&d: &i64| tensor_shape_proto::Dimension {
        value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
        denotation: None,
    };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: dims.map(|d| TensorShapeProto {
                    dim: d.iter().map(dim).collect(),
                }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}
