//! Compiles `proto/onnx.proto` with a pure-Rust protobuf compiler (protox), so a
//! fresh machine needs no system `protoc`; and passes the locked tract version to the reports.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["proto/onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rustc-env=ONNX_DLQ_TRACT_VERSION={}", tract_version());
    Ok(())
}

/// tract-onnx's version in Cargo.lock ("unknown" when the lock file has none).
fn tract_version() -> String {
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"tract-onnx\"" {
            if let Some(v) = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = "))
            {
                return v.trim_matches('"').to_string();
            }
        }
    }
    "unknown".into()
}
