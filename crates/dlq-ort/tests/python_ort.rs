//! The library inside ONNX Runtime, through the Python `onnxruntime` of the test venv
//! (`ONNX_DLQ_PYTHON`, set up by scripts/test.sh): scripts/ort_dlqconv_check.py checks DlqConv
//! against ORT's dense Conv with the reconstructed kernel over strides, pads, auto_pad,
//! dilations, odd sizes, batches, index types and float16, and that malformed nodes are refused
//! at session creation naming the node.

use std::path::PathBuf;
use std::process::Command;

/// The cdylib cargo built beside this test binary (target/<profile>/deps).
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("target/<profile>/deps");
    let name = format!(
        "{}onnx_dlq_ort{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    [deps.join(&name), deps.join("..").join(&name)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found next to {}", exe.display()))
}

#[test]
fn dlqconv_in_onnx_runtime_equals_dense_conv_and_refuses_bad_nodes() {
    let Some(python) = std::env::var_os("ONNX_DLQ_PYTHON") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("ONNX_DLQ_PYTHON is not set but CI=true; run the tests through scripts/test.sh");
        }
        eprintln!(
            "SKIPPED dlqconv_in_onnx_runtime: ONNX_DLQ_PYTHON not set; scripts/test.sh sets it up"
        );
        return;
    };
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/ort_dlqconv_check.py");
    let out = Command::new(python)
        .arg(script)
        .arg(library())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    assert!(
        stdout.contains("exactness: 72 runs of 36 models passed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("refusals: 9 malformed models refused"),
        "{stdout}"
    );
}
