//! Golden outputs: the README's main job (`--all --ratio 4` on the default model, DL and VQ) must
//! keep producing the same graph and the same bytes, so that a refactor which changes the
//! converted model by accident fails here instead of passing every tolerance-based check.
//!
//! When a change to the lowering or the clustering is intended, update the literals: run
//! `cargo test --test golden`, check that the printed histogram is what the change meant to do
//! (and look at the model with `onnx-dlq diff`), then copy the printed values into the test and
//! say in the commit why they changed. An unintended change must fail and is not to be updated
//! away. The version string is recorded in the model's metadata, so a version bump also moves
//! the digest (not the histogram).

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
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("golden.onnx");
    let mut args = vec![
        common::path_str(&common::default_model()).to_string(),
        common::path_str(&out).to_string(),
        "--all".into(),
        "--ratio".into(),
        "4".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = common::bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", common::stderr(&o));
    let got_ops = histogram(&onnx_dlq::onnx::model::load(&out).unwrap());
    let got_digest = fnv1a64(&std::fs::read(&out).unwrap());
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
        "{args:?}: the converted file's bytes changed, digest {got_digest:#018x} \
         (see this file's header)"
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
        0x01b7_1e06_c4e7_33f6,
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
        0x7c62_20aa_619c_1e92,
    );
}
