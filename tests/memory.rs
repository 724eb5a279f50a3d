//! Bounded memory on a high-resolution model: a 720×720 model of the fast-neural-style kind,
//! with an operator tract lacks (so shapes and timings come from ONNX Runtime), inspected and
//! converted under a 4 GiB address-space limit (`ulimit -v`). Exposing every inner tensor of
//! the converted model to ONNX Runtime at once, or timing the converted model, needed 24 GB.

mod common;

use std::process::Command;

/// The limit, in KiB for `ulimit -v`.
const LIMIT_KIB: u64 = 4 << 20;

fn under_limit(args: &[&str]) -> std::process::Output {
    let bin = env!("CARGO_BIN_EXE_onnx-dlq");
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -v {LIMIT_KIB} && exec '{bin}' {}",
            quoted.join(" ")
        ))
        .output()
        .unwrap()
}

#[test]
fn a_720_model_converts_within_4_gib() {
    let test = "a_720_model_converts_within_4_gib";
    let Some(python) = common::ort_python(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("hires.onnx");
    let out = tmp.path().join("hires-dl.onnx");
    let made = Command::new(&python)
        .arg(common::repo().join("scripts/make_hires_model.py"))
        .arg(&model)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", common::stderr(&made));
    let inspect = under_limit(&["inspect", common::path_str(&model)]);
    assert!(inspect.status.success(), "{}", common::stderr(&inspect));
    let o = under_limit(&[
        common::path_str(&model),
        common::path_str(&out),
        "--all",
        "--ratio",
        "4",
    ]);
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    // The latency check would run the converted model: its tensors exceed the limit, so it
    // says why it is skipped instead.
    assert!(
        err.contains("latency not measured") && err.contains("is available"),
        "{err}"
    );
    let checked = Command::new(&python)
        .args([
            "-c",
            "import onnx, sys; onnx.checker.check_model(sys.argv[1], full_check=True)",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(checked.status.success(), "{}", common::stderr(&checked));
}
