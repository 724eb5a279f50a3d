//! Helpers shared by the integration tests: where the shared assets and the default model are,
//! and how to run the binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn default_model() -> PathBuf {
    repo().join("models/digits-cnn.onnx")
}

/// `../shared`, or `None` with a loud note. In CI (`CI=true`) its absence fails the test:
/// shared-asset tests must never silently skip there.
pub fn shared(test: &str) -> Option<PathBuf> {
    let dir = repo().join("../shared");
    if dir.join("models").is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: ../shared is missing but CI=true; shared-asset tests must run in CI");
    }
    eprintln!("SKIPPED {test}: ../shared (real models and data) not found beside the repository");
    None
}

pub fn shared_model(test: &str, file: &str) -> Option<PathBuf> {
    shared(test).map(|d| d.join("models").join(file))
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_onnx-dlq"))
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run onnx-dlq")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
