//! Golden outputs: the README's main job (`--all --ratio 4` on the default model, DL and VQ) and
//! the other output forms on the same model — fused, compact with per-subspace codebooks,
//! palettes with bit-packed assignments and float16 entries, calibrated, int8 — must keep
//! producing the same graph and the same bytes, so that a refactor which changes a converted
//! model by accident fails here instead of passing every tolerance-based check.
//!
//! When a change to the lowering or the clustering is intended, update the literals: run
//! `cargo test --test golden`, check that the printed histogram is what the change meant to do
//! (and look at the model with `onnx-dlq diff`), then copy the printed values into the test and
//! say in the commit why they changed. An unintended change must fail and is not to be updated
//! away. The digest leaves out the `onnx-dlq/version` metadata entry, so a version bump does not
//! move it, and the record of the calibration images, which names their folder's path.

mod common;

use std::collections::BTreeMap;

/// FNV-1a, 64-bit: enough to tell two files apart in a test, with no crate to add.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What a digest covers: every byte, or the structure only (nodes, attributes, names, types
/// and shapes, but not the initializers' values). A calibrated conversion's values come from
/// activations the engine computes in float, whose last bits differ between CPUs (tract's
/// AVX2 and AVX-512 kernels sum in different orders); its structure does not.
#[derive(Clone, Copy)]
enum Covers {
    Bytes,
    Structure,
}

/// The digest of a written model without its `onnx-dlq/version` entry (the model re-encoded).
fn digest(path: &std::path::Path, covers: Covers) -> u64 {
    use prost::Message;
    let bytes = std::fs::read(path).unwrap();
    let mut proto = onnx_dlq::proto::ModelProto::decode(bytes.as_slice()).unwrap();
    let before = proto.metadata_props.len();
    proto
        .metadata_props
        .retain(|p| p.key.as_deref() != Some("onnx-dlq/version"));
    assert_eq!(proto.metadata_props.len() + 1, before, "one version entry");
    // Which images calibration saw is recorded with their folder's path, which depends on
    // where the repository is (tests/calibrate.rs checks the record itself).
    proto.metadata_props.retain(|p| {
        !p.key
            .as_deref()
            .unwrap_or_default()
            .starts_with("onnx-dlq/seen/")
    });
    if let Covers::Structure = covers {
        for t in &mut proto.graph.as_mut().unwrap().initializer {
            t.raw_data = None;
            t.float_data.clear();
            t.int32_data.clear();
            t.int64_data.clear();
        }
    }
    fnv1a64(&proto.encode_to_vec())
}

/// How many nodes of each op type the graph has.
fn histogram(model: &onnx_dlq::onnx::model::OnnxModel) -> BTreeMap<String, usize> {
    let mut h = BTreeMap::new();
    for n in &model.graph().node {
        *h.entry(n.op_type.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    h
}

/// Converts the default model through the binary with the README's main job flags plus
/// `extra`, and checks the op histogram and the file digest against the expected literals.
fn check_golden(extra: &[&str], want_ops: &[(&str, usize)], want_digest: u64) {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    check_golden_owned(&extra, want_ops, want_digest, Covers::Bytes);
}

fn check_golden_owned(
    extra: &[String],
    want_ops: &[(&str, usize)],
    want_digest: u64,
    covers: Covers,
) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("golden.onnx");
    let mut args = vec![
        common::path_str(&common::default_model()).to_string(),
        common::path_str(&out).to_string(),
        "--all".into(),
        "--ratio".into(),
        "4".into(),
    ];
    args.extend(extra.iter().cloned());
    let o = common::bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", common::stderr(&o));
    let got_ops = histogram(&onnx_dlq::onnx::model::load(&out).unwrap());
    let got_digest = digest(&out, covers);
    let want_ops: BTreeMap<String, usize> =
        want_ops.iter().map(|&(k, v)| (k.to_string(), v)).collect();
    // Both printed before asserting, so an intended change can be copied from one run.
    eprintln!("{args:?}\n  ops: {got_ops:?}\n  digest: {got_digest:#018x}");
    assert_eq!(
        got_ops, want_ops,
        "{args:?}: the converted graph's op types changed (see this file's header)"
    );
    assert_eq!(
        got_digest, want_digest,
        "{args:?}: the converted file changed, digest {got_digest:#018x} (see this file's header)"
    );
}

#[test]
fn readme_main_job_dl_is_unchanged() {
    // DL is the default method.
    check_golden(
        &[],
        &[
            ("Add", 27),
            ("Conv", 4),
            ("Flatten", 1),
            ("Gather", 33),
            ("Gemm", 1),
            ("GlobalAveragePool", 1),
            ("MaxPool", 1),
            ("Mul", 6),
            ("Pad", 3),
            ("Relu", 4),
            ("Slice", 43),
            ("Sum", 6),
        ],
        0xaff5_b371_7551_0921,
    );
}

#[test]
fn readme_main_job_vq_is_unchanged() {
    // The fully connected `fc` (10x64 Gemm) is converted too since --all includes such layers:
    // its 1x1 Conv view (one more Conv, Gather and Add), wrapped in Reshapes, summed by one
    // ReduceSum; Shape/Slice/Concat rebuild its output shape.
    check_golden(
        &["--method", "vq"],
        &[
            ("Add", 28),
            ("Concat", 1),
            ("Conv", 5),
            ("Flatten", 1),
            ("Gather", 28),
            ("GlobalAveragePool", 1),
            ("MaxPool", 1),
            ("Pad", 3),
            ("ReduceSum", 1),
            ("Relu", 4),
            ("Reshape", 4),
            ("Shape", 1),
            ("Slice", 45),
            ("Sum", 3),
        ],
        0x4f86_1a79_71f5_a31d,
    );
}

/// The flags that calibrate on the default model's shipped images (a golden, not an accuracy
/// figure: nothing is evaluated on them here).
fn calibration() -> Vec<String> {
    let repo = common::repo();
    vec![
        "--calibrate".into(),
        repo.join("models/digits-test").display().to_string(),
        "--preprocess".into(),
        repo.join("models/digits-cnn.preprocess.json")
            .display()
            .to_string(),
        "--calib-samples".into(),
        "64".into(),
    ]
}

fn with(extra: &[&str], more: &[String]) -> Vec<String> {
    extra
        .iter()
        .map(|s| s.to_string())
        .chain(more.iter().cloned())
        .collect()
}

/// The fused form's layout (one DlqConv node per layer, the codebook as its inputs), which the
/// ONNX Runtime library and `finetune` read back.
#[test]
fn fused_form_is_unchanged() {
    check_golden_owned(
        &with(&["--form", "fused"], &[]),
        &[
            ("Conv", 1),
            ("DlqConv", 3),
            ("Flatten", 1),
            ("Gemm", 1),
            ("GlobalAveragePool", 1),
            ("MaxPool", 1),
            ("Relu", 1),
        ],
        0xc34d_45f3_5f61_dc3e,
        Covers::Bytes,
    );
}

/// The compact form with per-subspace DL codebooks.
#[test]
fn compact_form_is_unchanged() {
    check_golden_owned(
        &with(&["--form", "dense"], &[]),
        &[
            ("Add", 6),
            ("Cast", 6),
            ("Conv", 4),
            ("Flatten", 1),
            ("Gather", 6),
            ("Gemm", 1),
            ("GlobalAveragePool", 1),
            ("MatMul", 3),
            ("MaxPool", 1),
            ("Relu", 4),
            ("Reshape", 12),
            ("Transpose", 3),
        ],
        0x40d4_465a_9a2d_3613,
        Covers::Bytes,
    );
}

/// Palettes with bit-packed 4-bit assignments and float16 entries.
#[test]
fn packed_f16_palettes_are_unchanged() {
    let flags = [
        "--form",
        "dense",
        "--shared-codebook",
        "--k",
        "16",
        "--f16-palette",
    ];
    check_golden_owned(
        &with(&flags, &[]),
        &[
            ("Cast", 8),
            ("Conv", 4),
            ("Div", 4),
            ("Flatten", 1),
            ("Gather", 4),
            ("Gemm", 1),
            ("GlobalAveragePool", 1),
            ("MaxPool", 1),
            ("Mod", 4),
            ("Relu", 4),
            ("Reshape", 9),
            ("Transpose", 4),
        ],
        0xfb31_9a8c_7b2b_1ae5,
        Covers::Bytes,
    );
}

/// A calibrated conversion (clustering on the layers' inputs, then the refit): its structure
/// ([`Covers::Structure`]).
#[test]
fn calibrated_conversion_is_unchanged() {
    check_golden_owned(
        &with(&[], &calibration()),
        &[
            ("Add", 27),
            ("Conv", 4),
            ("Flatten", 1),
            ("Gather", 33),
            ("Gemm", 1),
            ("GlobalAveragePool", 1),
            ("MaxPool", 1),
            ("Mul", 6),
            ("Pad", 3),
            ("Relu", 4),
            ("Slice", 43),
            ("Sum", 6),
        ],
        0xc38a_24f5_de75_6ac7,
        Covers::Structure,
    );
}

/// The int8 output (compact palettes, stored as float16, written as a QDQ model): its
/// structure, as calibrated.
#[test]
fn int8_output_is_unchanged() {
    let flags = ["--form", "dense", "--shared-codebook", "--int8"];
    check_golden_owned(
        &with(&flags, &calibration()),
        &[
            ("Cast", 6),
            ("Conv", 4),
            ("DequantizeLinear", 18),
            ("Flatten", 1),
            ("Gather", 3),
            ("Gemm", 1),
            ("GlobalAveragePool", 1),
            ("MaxPool", 1),
            ("Mul", 5),
            ("QuantizeLinear", 11),
            ("Reshape", 3),
            ("Transpose", 3),
        ],
        0x3bb9_5231_fcd1_bb95,
        Covers::Structure,
    );
}
