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
    // Verifying the standard-operator form at 720×720 would hold more than the limit in its
    // parallel runs: it stops before running, saying so, instead of meeting the limit.
    let v = under_limit(&[
        "verify",
        common::path_str(&model),
        common::path_str(&out),
        "--engine",
        "ort",
    ]);
    let err = common::stderr(&v);
    assert_eq!(v.status.code(), Some(1), "{err}");
    assert!(
        err.contains("inputs at once")
            && err.contains("(the address-space limit (ulimit -v)); nothing was started"),
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

/// The default model's images: 360 inputs of [1, 3, 8, 8] float32, 276 KB in all.
fn digits(tail: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let repo = common::repo();
    let model = common::default_model();
    let out = tmp.path().join("out.onnx");
    let data = repo.join("models/digits-test");
    let spec = repo.join("models/digits-cnn.preprocess.json");
    let mut args: Vec<String> = vec![];
    for a in tail {
        args.push(
            a.replace("{model}", common::path_str(&model))
                .replace("{out}", common::path_str(&out))
                .replace("{data}", common::path_str(&data))
                .replace("{spec}", common::path_str(&spec)),
        );
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    (common::run(&refs), tmp)
}

#[test]
fn images_beyond_the_memory_cap_stop_the_command_before_it_starts() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["{model}", "{out}", "--all", "--calibrate", "{data}", "--preprocess", "{spec}"],
            "the 256 calibration images ([1, 3, 8, 8] each, as float32) would take 197 KB, and 50 KB is available (the memory cap set for this run); nothing was started [--calib-samples, --max-memory]",
        ),
        (
            &["verify", "{model}", "{model}", "--data", "{data}", "--preprocess", "{spec}"],
            "the 360 images to evaluate ([1, 3, 8, 8] each, as float32) would take 276 KB, and 50 KB is available (the memory cap set for this run); nothing was started [--samples, --max-memory]",
        ),
        (
            &["{model}", "{out}", "--all", "--finetune", "{data}", "--preprocess", "{spec}"],
            "fine-tuning images",
        ),
    ];
    let (o, _) = digits(&["verify", "{model}", "{model}", "--max-memory", "10K"]);
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("inputs at once") && err.ends_with("[--max-memory]\n"),
        "{err}"
    );
    for (args, expected) in cases {
        let mut capped = args.to_vec();
        capped.extend(["--max-memory", "50K"]);
        let (o, tmp) = digits(&capped);
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(!tmp.path().join("out.onnx").exists(), "{args:?}");
    }
}

/// Images that fit, but a training batch that would not: refused before the conversion.
#[test]
fn a_fine_tuning_batch_beyond_the_cap_stops_before_converting() {
    let (o, tmp) = digits(&[
        "{model}",
        "{out}",
        "--all",
        "--finetune",
        "{data}",
        "--preprocess",
        "{spec}",
        "--finetune-samples",
        "10",
        "--max-memory",
        "1M",
    ]);
    let err = common::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: a fine-tuning batch of 32 images of [1, 3, 8, 8]")
            && err.ends_with("nothing was started [--batch, --max-memory]\n"),
        "{err}"
    );
    assert!(
        !err.contains("relative error"),
        "the conversion started: {err}"
    );
    assert!(!tmp.path().join("out.onnx").exists());
}

#[test]
fn a_cap_that_leaves_room_lets_the_command_run() {
    let (o, tmp) = digits(&[
        "{model}",
        "{out}",
        "--all",
        "--calibrate",
        "{data}",
        "--preprocess",
        "{spec}",
        "--calib-samples",
        "64",
        "--max-memory",
        "4GiB",
        "--no-latency",
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(tmp.path().join("out.onnx").exists());
    let (bad, _) = digits(&["{model}", "{out}", "--all", "--max-memory", "lots"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        common::stderr(&bad).contains("`lots` is not a size"),
        "{}",
        common::stderr(&bad)
    );
}
