//! Tensor payloads: read an ONNX `TensorProto` (raw bytes, typed fields or external data) as
//! little-endian bytes or as `f32`, and write `f32` values back in the tensor's own element type.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use ndarray::{ArrayD, IxDyn};

use crate::proto::tensor_proto::{DataLocation, DataType};
use crate::proto::TensorProto;

/// The floating-point element types whose weights onnx-dlq can read as `f32` and write back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
    BF16,
    F64,
}

impl FloatType {
    pub fn from_onnx(data_type: i32) -> Option<FloatType> {
        match DataType::try_from(data_type).ok()? {
            DataType::Float => Some(FloatType::F32),
            DataType::Float16 => Some(FloatType::F16),
            DataType::Bfloat16 => Some(FloatType::BF16),
            DataType::Double => Some(FloatType::F64),
            _ => None,
        }
    }

    pub fn onnx(self) -> DataType {
        match self {
            FloatType::F32 => DataType::Float,
            FloatType::F16 => DataType::Float16,
            FloatType::BF16 => DataType::Bfloat16,
            FloatType::F64 => DataType::Double,
        }
    }

    pub fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::BF16 => 2,
            FloatType::F64 => 8,
        }
    }

    /// Little-endian bytes of `values` in this element type (rounding to nearest).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(values.len() * self.size());
        for &v in values {
            match self {
                FloatType::F32 => out.extend_from_slice(&v.to_le_bytes()),
                FloatType::F16 => out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                FloatType::BF16 => out.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                FloatType::F64 => out.extend_from_slice(&(v as f64).to_le_bytes()),
            }
        }
        out
    }

    /// `f32` values of little-endian bytes in this element type.
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            FloatType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            FloatType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            FloatType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            FloatType::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32)
                .collect(),
        }
    }
}

/// Human name of an ONNX element type, for messages.
pub fn data_type_name(data_type: i32) -> String {
    match DataType::try_from(data_type) {
        Ok(dt) => dt.as_str_name().to_string(),
        Err(_) => format!("unknown element type {data_type}"),
    }
}

/// Bytes per element of the fixed-size ONNX element types (None for strings and sub-byte types).
pub fn element_size(data_type: i32) -> Option<usize> {
    use DataType::*;
    Some(match DataType::try_from(data_type).ok()? {
        Float | Int32 | Uint32 => 4,
        Uint8 | Int8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz
        | Float8e8m0 => 1,
        Uint16 | Int16 | Float16 | Bfloat16 => 2,
        Int64 | Uint64 | Double | Complex64 => 8,
        Complex128 => 16,
        Undefined | String | Uint4 | Int4 | Float4e2m1 => return None,
    })
}

pub fn tensor_name(t: &TensorProto) -> &str {
    t.name.as_deref().unwrap_or("")
}

/// Dimensions as `usize`, rejecting negative ones.
pub fn dims(t: &TensorProto) -> Result<Vec<usize>> {
    t.dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                anyhow::anyhow!(
                    "tensor `{}` has a negative dimension in {:?}",
                    tensor_name(t),
                    t.dims
                )
            })
        })
        .collect()
}

/// Number of elements, with overflow reported as an error (dims come from untrusted files).
pub fn element_count(t: &TensorProto) -> Result<usize> {
    dims(t)?.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul(d).with_context(|| {
            format!(
                "tensor `{}` dimensions {:?} overflow",
                tensor_name(t),
                t.dims
            )
        })
    })
}

pub fn is_external(t: &TensorProto) -> bool {
    t.data_location == Some(DataLocation::External as i32)
}

/// Where an external tensor's bytes are: file (resolved against `base_dir`), offset, length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    pub location: String,
    pub path: PathBuf,
    pub offset: u64,
    pub length: Option<u64>,
}

pub fn external_ref(t: &TensorProto, base_dir: &Path) -> Result<ExternalRef> {
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for entry in &t.external_data {
        let value = entry.value.as_deref().unwrap_or("");
        match entry.key.as_deref().unwrap_or("") {
            "location" => location = Some(value.to_string()),
            "offset" => {
                offset = value.parse().with_context(|| {
                    format!(
                        "tensor `{}`: external offset `{value}` is not a number",
                        tensor_name(t)
                    )
                })?
            }
            "length" => {
                length = Some(value.parse().with_context(|| {
                    format!(
                        "tensor `{}`: external length `{value}` is not a number",
                        tensor_name(t)
                    )
                })?)
            }
            _ => {}
        }
    }
    let location = location.with_context(|| {
        format!(
            "tensor `{}` is external but names no `location`",
            tensor_name(t)
        )
    })?;
    let rel = Path::new(&location);
    // Like ONNX Runtime, only accept data files inside the model's folder.
    ensure!(
        rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
        "tensor `{}`: external data location `{location}` must be a relative path inside the model's folder",
        tensor_name(t)
    );
    Ok(ExternalRef {
        path: base_dir.join(rel),
        location,
        offset,
        length,
    })
}

fn read_external(t: &TensorProto, base_dir: &Path) -> Result<Vec<u8>> {
    let r = external_ref(t, base_dir)?;
    let ctx = || {
        format!(
            "tensor `{}`: external data file {}",
            tensor_name(t),
            r.path.display()
        )
    };
    let mut file = File::open(&r.path).with_context(ctx)?;
    let file_len = file.metadata().with_context(ctx)?.len();
    let end = match r.length {
        Some(len) => r.offset.checked_add(len).with_context(ctx)?,
        None => file_len,
    };
    // Checked before allocating, so a lying length cannot make us allocate.
    if r.offset > file_len || end > file_len {
        bail!(
            "{}: bytes {}..{} requested but the file has {} bytes",
            ctx(),
            r.offset,
            end,
            file_len
        );
    }
    let mut buf = vec![0u8; (end - r.offset) as usize];
    file.seek(SeekFrom::Start(r.offset)).with_context(ctx)?;
    file.read_exact(&mut buf).with_context(ctx)?;
    Ok(buf)
}

/// Payload size in bytes without reading external files (0 when it cannot be told).
pub fn raw_bytes_len_hint(t: &TensorProto) -> usize {
    if let Some(raw) = &t.raw_data {
        return raw.len();
    }
    if is_external(t) {
        return t
            .external_data
            .iter()
            .find(|e| e.key.as_deref() == Some("length"))
            .and_then(|e| e.value.as_deref()?.parse().ok())
            .unwrap_or(0);
    }
    match (element_count(t), element_size(t.data_type.unwrap_or(0))) {
        (Ok(n), Some(size)) => n.saturating_mul(size),
        _ => 0,
    }
}

/// The payload as little-endian bytes, whichever way the file stores it. External data is
/// resolved against `base_dir` (the model file's folder).
pub fn raw_bytes<'a>(t: &'a TensorProto, base_dir: &Path) -> Result<Cow<'a, [u8]>> {
    let dt = t.data_type.unwrap_or(0);
    if is_external(t) {
        return Ok(Cow::Owned(read_external(t, base_dir)?));
    }
    if let Some(raw) = &t.raw_data {
        return Ok(Cow::Borrowed(raw));
    }
    use DataType::*;
    let dtype = DataType::try_from(dt).unwrap_or(Undefined);
    let bytes: Vec<u8> = match dtype {
        Float | Complex64 => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Double | Complex128 => t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Int64 => t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Uint64 => t.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Uint32 => t
            .uint64_data
            .iter()
            .flat_map(|v| (*v as u32).to_le_bytes())
            .collect(),
        Int32 => t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        // Narrow types are stored one element per int32 (float16/bfloat16 as their bit pattern).
        Int16 | Uint16 | Float16 | Bfloat16 => t
            .int32_data
            .iter()
            .flat_map(|v| (*v as u16).to_le_bytes())
            .collect(),
        Int8 | Uint8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz
        | Float8e8m0 => t.int32_data.iter().map(|v| *v as u8).collect(),
        _ => bail!(
            "tensor `{}`: element type {} has no byte form onnx-dlq can read",
            tensor_name(t),
            data_type_name(dt)
        ),
    };
    Ok(Cow::Owned(bytes))
}

/// Reads an integer tensor (INT64 or INT32, e.g. a Slice's starts or a Reshape's shape; or an
/// unsigned index tensor).
pub fn to_i64(t: &TensorProto, base_dir: &Path) -> Result<Vec<i64>> {
    let bytes = raw_bytes(t, base_dir)?;
    let dt = DataType::try_from(t.data_type.unwrap_or(0)).unwrap_or(DataType::Undefined);
    Ok(match dt {
        DataType::Int64 => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        DataType::Int32 => bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64)
            .collect(),
        // The unsigned index types [`new_index_tensor`] writes.
        DataType::Uint32 => bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as i64)
            .collect(),
        DataType::Uint16 => bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes")) as i64)
            .collect(),
        DataType::Uint8 => bytes.iter().map(|&b| b as i64).collect(),
        _ => bail!(
            "tensor `{}` is {}, expected an integer type (INT64, INT32, UINT32, UINT16, UINT8)",
            tensor_name(t),
            data_type_name(t.data_type.unwrap_or(0))
        ),
    })
}

/// Reads a floating-point tensor as an `f32` array of its shape.
pub fn to_f32(t: &TensorProto, base_dir: &Path) -> Result<ArrayD<f32>> {
    let dt = t.data_type.unwrap_or(0);
    let ft = FloatType::from_onnx(dt).with_context(|| {
        format!(
            "tensor `{}` is {}, expected FLOAT, FLOAT16, BFLOAT16 or DOUBLE",
            tensor_name(t),
            data_type_name(dt)
        )
    })?;
    let shape = dims(t)?;
    let count = element_count(t)?;
    let bytes = raw_bytes(t, base_dir)?;
    ensure!(
        bytes.len() == count * ft.size(),
        "tensor `{}`: payload has {} bytes, expected {} for {:?} {}",
        tensor_name(t),
        bytes.len(),
        count * ft.size(),
        shape,
        data_type_name(dt)
    );
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), ft.decode(&bytes)).expect("checked length"))
}

/// Replaces the payload of `t` with `values` of `shape`, stored as `raw_data` in `elem`.
pub fn set_f32(t: &mut TensorProto, shape: &[usize], values: &[f32], elem: FloatType) {
    debug_assert_eq!(shape.iter().product::<usize>(), values.len());
    t.dims = shape.iter().map(|&d| d as i64).collect();
    t.data_type = Some(elem.onnx() as i32);
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
    t.string_data.clear();
    t.external_data.clear();
    t.data_location = None;
    t.raw_data = Some(elem.encode(values));
}

/// A new tensor called `name` holding `values` of `shape` in element type `elem`.
pub fn new_tensor(name: &str, shape: &[usize], values: &[f32], elem: FloatType) -> TensorProto {
    let mut t = TensorProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    set_f32(&mut t, shape, values, elem);
    t
}

/// A new INT32 tensor (look-up indices: half the bytes of INT64).
pub fn new_i32_tensor(name: &str, shape: &[usize], values: &[i32]) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Int32 as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// A new unsigned index tensor of the smallest type (UINT8, UINT16 or UINT32) holding every
/// index below `bound` (`values` must all be below it).
pub fn new_index_tensor(name: &str, shape: &[usize], values: &[u32], bound: usize) -> TensorProto {
    let (data_type, raw_data): (DataType, Vec<u8>) = if bound <= 1 << 8 {
        (DataType::Uint8, values.iter().map(|&v| v as u8).collect())
    } else if bound <= 1 << 16 {
        let bytes = values.iter().flat_map(|&v| (v as u16).to_le_bytes());
        (DataType::Uint16, bytes.collect())
    } else {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes());
        (DataType::Uint32, bytes.collect())
    };
    TensorProto {
        name: Some(name.to_string()),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type as i32),
        raw_data: Some(raw_data),
        ..Default::default()
    }
}

/// A new INT64 tensor (shapes, axes, slice bounds).
pub fn new_i64_tensor(name: &str, shape: &[usize], values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Int64 as i32),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_DIR: &str = ".";

    fn roundtrip(elem: FloatType, values: &[f32]) -> Vec<f32> {
        let t = new_tensor("t", &[values.len()], values, elem);
        to_f32(&t, Path::new(NO_DIR))
            .unwrap()
            .into_raw_vec_and_offset()
            .0
    }

    #[test]
    fn float_types_round_trip_through_their_own_encoding() {
        let exact = [0.0, 1.0, -2.5, 0.125, 1024.0];
        for elem in [
            FloatType::F32,
            FloatType::F16,
            FloatType::BF16,
            FloatType::F64,
        ] {
            assert_eq!(roundtrip(elem, &exact), exact, "{elem:?}");
            let t = new_tensor("t", &[5], &exact, elem);
            assert_eq!(t.raw_data.as_ref().unwrap().len(), 5 * elem.size());
            assert_eq!(t.data_type, Some(elem.onnx() as i32));
        }
        // Rounding, not truncation, for the narrow types.
        assert_eq!(
            roundtrip(FloatType::F16, &[0.1])[0],
            half::f16::from_f32(0.1).to_f32()
        );
        assert_eq!(
            roundtrip(FloatType::BF16, &[0.1])[0],
            half::bf16::from_f32(0.1).to_f32()
        );
    }

    #[test]
    fn typed_fields_are_read_like_raw_data() {
        let dir = Path::new(NO_DIR);
        let f32s = TensorProto {
            dims: vec![2, 2],
            data_type: Some(DataType::Float as i32),
            float_data: vec![1.0, 2.0, 3.0, 4.0],
            ..Default::default()
        };
        assert_eq!(to_f32(&f32s, dir).unwrap().shape(), &[2, 2]);
        assert_eq!(to_f32(&f32s, dir).unwrap()[[1, 0]], 3.0);
        let f16s = TensorProto {
            dims: vec![2],
            data_type: Some(DataType::Float16 as i32),
            int32_data: vec![
                half::f16::from_f32(1.5).to_bits() as i32,
                half::f16::from_f32(-3.0).to_bits() as i32,
            ],
            ..Default::default()
        };
        assert_eq!(
            to_f32(&f16s, dir).unwrap().as_slice().unwrap(),
            &[1.5, -3.0]
        );
        let bf16s = TensorProto {
            dims: vec![1],
            data_type: Some(DataType::Bfloat16 as i32),
            int32_data: vec![half::bf16::from_f32(-0.5).to_bits() as i32],
            ..Default::default()
        };
        assert_eq!(to_f32(&bf16s, dir).unwrap().as_slice().unwrap(), &[-0.5]);
        let f64s = TensorProto {
            dims: vec![1],
            data_type: Some(DataType::Double as i32),
            double_data: vec![2.25],
            ..Default::default()
        };
        assert_eq!(to_f32(&f64s, dir).unwrap().as_slice().unwrap(), &[2.25]);
    }

    #[test]
    fn wrong_sizes_and_types_are_errors_not_panics() {
        let dir = Path::new(NO_DIR);
        let short = TensorProto {
            name: Some("w".into()),
            dims: vec![3],
            data_type: Some(DataType::Float as i32),
            raw_data: Some(vec![0; 8]),
            ..Default::default()
        };
        let err = format!("{:#}", to_f32(&short, dir).unwrap_err());
        assert!(err.contains("`w`") && err.contains("expected 12"), "{err}");
        let ints = new_i64_tensor("i", &[1], &[1]);
        assert!(format!("{:#}", to_f32(&ints, dir).unwrap_err()).contains("INT64"));
        let huge = TensorProto {
            dims: vec![i64::MAX, i64::MAX],
            data_type: Some(DataType::Float as i32),
            ..Default::default()
        };
        assert!(to_f32(&huge, dir).is_err());
        let negative = TensorProto {
            dims: vec![-1],
            data_type: Some(1),
            ..Default::default()
        };
        assert!(to_f32(&negative, dir).is_err());
    }

    #[test]
    fn external_locations_outside_the_model_folder_are_refused() {
        let mut t = new_tensor("w", &[1], &[1.0], FloatType::F32);
        t.raw_data = None;
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = vec![crate::proto::StringStringEntryProto {
            key: Some("location".into()),
            value: Some("../secret.bin".into()),
        }];
        let err = format!("{:#}", to_f32(&t, Path::new(NO_DIR)).unwrap_err());
        assert!(err.contains("inside the model's folder"), "{err}");
    }
}
