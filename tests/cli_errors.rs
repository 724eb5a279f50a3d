//! Bad input at the command line: every case gives one clear line naming the file and the
//! problem, the documented exit code, and no panic.

mod common;

use std::fs;
use std::path::Path;

use onnx_dlq::proto::{GraphProto, ModelProto, TensorProto};
use prost::Message;

/// Runs `inspect FILE` and checks: exit 1, one line on stderr naming the file and `expect`.
fn assert_clean_failure(file: &Path, expect: &str) {
    let out = common::run(&["inspect", common::path_str(file)]);
    let err = common::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{file:?}: {err}");
    assert!(!err.contains("panicked"), "{file:?} panicked: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(
        err.contains(common::path_str(file)),
        "message must name the file: {err}"
    );
    assert!(err.contains(expect), "message must say `{expect}`: {err}");
    assert!(common::stdout(&out).is_empty());
}

#[test]
fn missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    assert_clean_failure(&tmp.path().join("absent.onnx"), "No such file");
}

#[test]
fn directory() {
    let tmp = tempfile::tempdir().unwrap();
    assert_clean_failure(tmp.path(), "is a directory");
}

#[test]
fn empty_file() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("empty.onnx");
    fs::write(&f, b"").unwrap();
    assert_clean_failure(&f, "empty");
}

#[test]
fn random_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("random.onnx");
    // A fixed xorshift stream: the same "random" file every run.
    let mut x = 0x9E3779B97F4A7C15u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    fs::write(&f, bytes).unwrap();
    assert_clean_failure(&f, "not an ONNX model");
}

#[test]
fn truncated_protobuf() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("truncated.onnx");
    let bytes = fs::read(common::default_model()).unwrap();
    fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(&f, "truncated");
}

#[test]
fn protobuf_that_is_not_a_model() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("tensor.pb");
    let t = TensorProto {
        dims: vec![3],
        data_type: Some(1),
        float_data: vec![1.0, 2.0, 3.0],
        ..Default::default()
    };
    fs::write(&f, t.encode_to_vec()).unwrap();
    assert_clean_failure(&f, "not an ONNX model");
}

#[test]
fn model_without_a_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("nograph.onnx");
    let m = ModelProto {
        ir_version: Some(8),
        ..Default::default()
    };
    fs::write(&f, m.encode_to_vec()).unwrap();
    assert_clean_failure(&f, "has no graph");
}

#[test]
fn model_whose_graph_cannot_be_run_is_a_clean_error() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("dangling.onnx");
    let mut m = onnx_dlq::onnx::model::load(&common::default_model())
        .unwrap()
        .proto;
    let g: &mut GraphProto = m.graph.as_mut().unwrap();
    g.node[1].input[0] = "nowhere".into();
    g.input.clear();
    fs::write(&f, m.encode_to_vec()).unwrap();
    let out = common::run(&["inspect", common::path_str(&f)]);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    assert!(!common::stderr(&out).contains("panicked"));
}

#[test]
fn usage_errors_exit_with_2() {
    let out = common::run(&["inspect"]);
    assert_eq!(out.status.code(), Some(2));
    let out = common::run(&["inspect", "a.onnx", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    let out = common::run(&[]);
    assert_eq!(out.status.code(), Some(2));
    let out = common::run(&[
        "inspect",
        common::path_str(&common::default_model()),
        "--input-shape",
        "x=1,b",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
}

/// Parameters the command line cannot take: a negative or non-numeric seed, a ratio that is not
/// a number, a zero iteration count. Usage errors (2) or clear failures (1) naming the flag; no
/// output file.
#[test]
fn impossible_parameters_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let model = common::default_model();
    let cases: [(&[&str], i32, &str); 6] = [
        (&["--seed", "-1"], 2, "--seed"),
        (&["--seed", "seven"], 2, "--seed"),
        (&["--ratio", "fast"], 2, "--ratio"),
        (&["--ratio", "1"], 1, "--ratio must be above 1"),
        (&["--iters", "0"], 1, "--iters must be at least 1"),
        (&["--alpha", "8", "--subspace", "8"], 1, "α"),
    ];
    for (extra, code, expect) in cases {
        let mut args = vec![
            "convert",
            common::path_str(&model),
            common::path_str(&out),
            "--layers",
            "conv2",
        ];
        args.extend_from_slice(extra);
        let o = common::run(&args);
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{extra:?}: {err}");
        assert!(err.contains(expect), "{extra:?}: `{expect}` not in {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{extra:?} wrote {out:?}");
    }
}

/// An output that cannot be written (its folder missing, a file, or read-only) is refused
/// before any work: exit 1, the path named, nothing left behind.
#[test]
fn unwritable_outputs_are_refused_before_converting() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::default_model();
    let a_file = tmp.path().join("a-file");
    fs::write(&a_file, b"x").unwrap();
    let read_only = tmp.path().join("read-only");
    fs::create_dir(&read_only).unwrap();
    let mut cases = vec![
        (tmp.path().join("missing/out.onnx"), "does not exist"),
        (a_file.join("out.onnx"), "is not a folder"),
        // procfs takes no new files, even from root.
        (
            Path::new("/proc/onnx-dlq-out.onnx").to_path_buf(),
            "cannot create a file",
        ),
    ];
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&read_only, fs::Permissions::from_mode(0o555)).unwrap();
        // root writes into read-only folders anyway; the /proc case covers it then.
        if tempfile::tempfile_in(&read_only).is_err() {
            cases.push((read_only.join("out.onnx"), "cannot create a file"));
        } else {
            eprintln!("running as root: a mode-555 folder is writable, /proc stands in for it");
        }
    }
    for (out, expect) in cases {
        let o = common::run(&[
            common::path_str(&model),
            common::path_str(&out),
            "--layers",
            "conv2",
        ]);
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{}: {err}", out.display());
        assert!(
            err.contains(common::path_str(&out)) && err.contains(expect),
            "{}: {err}",
            out.display()
        );
        assert!(
            !err.contains("conv2: ["),
            "work started before the check: {err}"
        );
        assert!(!out.exists());
    }
    assert_eq!(fs::read_dir(&read_only).unwrap().count(), 0);
    assert_eq!(fs::read(&a_file).unwrap(), b"x");
}

/// Converts the default model with `conv2.weight` set to 0.5 except at the `(index, value)`
/// pairs given, and checks: exit 1, the weight and `expect` named, nothing written.
fn assert_kernel_refused(bad: &[(usize, f32)], expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = onnx_dlq::onnx::model::load(&common::default_model()).unwrap();
    let t = common::initializer_mut(&mut m, "conv2.weight");
    let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
    let mut values = vec![0.5f32; dims.iter().product()];
    for &(i, v) in bad {
        values[i] = v;
    }
    onnx_dlq::onnx::tensor::set_f32(t, &dims, &values, onnx_dlq::onnx::tensor::FloatType::F32);
    let input = tmp.path().join("bad-kernel.onnx");
    fs::write(&input, m.proto.encode_to_vec()).unwrap();
    let out = tmp.path().join("out.onnx");
    let o = common::run(&[
        common::path_str(&input),
        common::path_str(&out),
        "--layers",
        "conv2",
    ]);
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("conv2.weight") && err.contains(expect),
        "{err}"
    );
    assert!(!out.exists());
}

/// A kernel holding NaN or ±inf (a broken export, or a fuzzer's) is named and refused rather
/// than clustered into NaN codebooks.
#[test]
fn non_finite_weights_are_refused() {
    assert_kernel_refused(&[(7, f32::NAN), (9, f32::INFINITY)], "2 non-finite values");
}

/// Weights so large that clustering's f32 arithmetic overflows (a fuzzed file had 1e19) are
/// refused with the layer named, not turned into NaN codebooks.
#[test]
fn overflowing_weights_are_refused() {
    assert_kernel_refused(&[(3, 1e19)], "values up to 1e19");
}
