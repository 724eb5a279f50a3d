//! Arbitrary bytes through decode → inspect → convert → save → reload
//! (`onnx_dlq::harness::exercise`). A panic anywhere, or a conversion that succeeds but writes a
//! model tract cannot read back, is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let _ = onnx_dlq::harness::exercise(data, scratch.path());
});
