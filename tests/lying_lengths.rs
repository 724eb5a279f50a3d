//! Crafted files whose length fields or tensor dimensions lie: reading, inspecting and converting
//! them must fail with an error after allocating no more than a small multiple of the file's size
//! (plus a fixed allowance for the engine's own tables), never try the allocation the file asks
//! for. A counting global allocator measures the peak; this file holds a single test so that no
//! other test's allocations are counted.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use onnx_dlq::codebook::{ClusterParams, Method};
use onnx_dlq::convert::{self, ConvertOptions, Selection};
use onnx_dlq::onnx::model::{self, ExternalData};
use onnx_dlq::proto::tensor_proto::DataType;
use onnx_dlq::proto::TensorProto;
use prost::Message;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What reading, inspecting or converting a file may allocate beyond its own size times
/// `SIZE_FACTOR`: tract's operator tables and the like, independent of the file.
const FIXED_ALLOWANCE: usize = 1 << 20;
const SIZE_FACTOR: usize = 8;

/// Runs `f` and returns the peak number of bytes allocated above what was live before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field whose length says `claimed` but carries `payload`.
fn lying_field(field: u32, claimed: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(((field << 3) | 2) as u64, &mut out);
    varint(claimed, &mut out);
    out.extend_from_slice(payload);
    out
}

/// The default model with its `conv2.weight` replaced by `t`.
fn default_model_with_weight(t: TensorProto) -> Vec<u8> {
    let mut m = model::load(&common::default_model()).unwrap();
    let w = common::initializer_mut(&mut m, "conv2.weight");
    *w = t;
    m.proto.encode_to_vec()
}

#[test]
fn lying_lengths_and_dimensions_are_errors_not_allocations() {
    let tmp = tempfile::tempdir().unwrap();
    let ir_version = [0x08u8, 0x08];
    // ModelProto.graph (field 7) claims 2 GiB - 1 and ends after 8 bytes.
    let mut graph_lies = ir_version.to_vec();
    graph_lies.extend(lying_field(7, (1 << 31) - 1, &[0; 8]));
    // GraphProto.initializer (5) → TensorProto.raw_data (9) claims 1 TiB.
    let raw = lying_field(9, 1 << 40, &[1, 2, 3, 4]);
    let init = lying_field(5, raw.len() as u64, &raw);
    let mut raw_lies = ir_version.to_vec();
    raw_lies.extend(lying_field(7, init.len() as u64, &init));
    // A well-formed protobuf whose kernel claims 2^20 × 2^20 × 3 × 3 floats (36 TiB) but holds
    // 4 bytes, as raw_data and as float_data.
    let huge_dims = vec![1i64 << 20, 1 << 20, 3, 3];
    let dims_lie_raw = default_model_with_weight(TensorProto {
        name: Some("conv2.weight".into()),
        dims: huge_dims.clone(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(vec![0; 4]),
        ..Default::default()
    });
    let dims_lie_floats = default_model_with_weight(TensorProto {
        name: Some("conv2.weight".into()),
        dims: huge_dims,
        data_type: Some(DataType::Float as i32),
        float_data: vec![1.0],
        ..Default::default()
    });
    let cases: [(&str, Vec<u8>); 4] = [
        ("graph length", graph_lies),
        ("raw_data length", raw_lies),
        ("dims vs raw_data", dims_lie_raw),
        ("dims vs float_data", dims_lie_floats),
    ];
    for (what, bytes) in cases {
        let path = tmp.path().join("crafted.onnx");
        std::fs::write(&path, &bytes).unwrap();
        let out = tmp.path().join("out.onnx");
        let ((), peak) = peak_during(|| {
            let loaded = model::load(&path);
            let Ok(m) = loaded else {
                return;
            };
            let inspected = onnx_dlq::analysis::inventory::inventory(&m, &[]);
            assert!(inspected.is_err(), "{what}: inspect accepted the file");
            let opts = ConvertOptions {
                selection: Selection::Named(vec!["conv2".into()]),
                params: ClusterParams::new(Method::Vq, 4.0).check().unwrap(),
                input_shapes: vec![],
                external: ExternalData::Auto,
                calibration: None,
                target_speedup: None,
                target_compression: None,
                measure_latency: false,
                form: Default::default(),
                finetune: None,
                engine: None,
                int8: None,
            };
            let e = convert::convert(&path, &out, &opts).unwrap_err();
            let msg = format!("{e:#}");
            assert!(
                msg.contains("crafted.onnx") || msg.contains("conv2"),
                "{what}: the error names neither file nor tensor: {msg}"
            );
        });
        let bound = SIZE_FACTOR * bytes.len() + FIXED_ALLOWANCE;
        eprintln!("{what}: {} bytes, peak {peak} bytes", bytes.len());
        assert!(
            peak <= bound,
            "{what}: a {}-byte file made us allocate {peak} bytes (bound {bound})",
            bytes.len()
        );
        assert!(!out.exists(), "{what}: an output was written");
    }
}
