//! The per-layer sweep on the shared SqueezeNet fire8/expand3x3 (the paper's Fig. 2(c) layer):
//! quality against an independent implementation's figures, and the sweep's outputs.

mod common;

use onnx_dlq::eval::approx::QUALITY_SLACK;
use serde_json::Value;

/// Relative errors an independent implementation measured (N′ = 8, c = 3, α = 2).
const INDEPENDENT_VQ: [(f64, f64); 3] = [(10.0, 0.4646), (20.0, 0.5398), (40.0, 0.6072)];
const INDEPENDENT_DL: [(f64, f64); 3] = [(10.0, 0.3855), (20.0, 0.4755), (40.0, 0.5511)];

fn error(rows: &[Value], method: &str, ratio: f64) -> f64 {
    rows.iter()
        .find(|r| r["method"] == method && r["ratio"].as_f64() == Some(ratio))
        .unwrap_or_else(|| panic!("{method} at {ratio}"))["relative_error"]
        .as_f64()
        .unwrap()
}

#[test]
fn fire8_quality_matches_the_independent_implementation() {
    let Some(sq) = common::shared_model(
        "fire8_quality_matches_the_independent_implementation",
        "squeezenet1.1.onnx",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (csv, svg) = (tmp.path().join("s.csv"), tmp.path().join("s.svg"));
    let o = common::run(&[
        "sweep",
        common::path_str(&sq),
        "--layer",
        "fire8/expand3x3_1",
        "--ratios",
        "10,20,40",
        "--json",
        "--csv",
        common::path_str(&csv),
        "--plot",
        common::path_str(&svg),
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = j["rows"].as_array().unwrap();
    for ((ratio, vq_ref), (_, dl_ref)) in INDEPENDENT_VQ.iter().zip(INDEPENDENT_DL.iter()) {
        let (vq, dl) = (error(rows, "vq", *ratio), error(rows, "dl", *ratio));
        assert!(dl < vq, "ρ={ratio}: DL {dl} not below VQ {vq}");
        assert!(
            vq <= vq_ref + QUALITY_SLACK,
            "ρ={ratio}: VQ {vq} vs independent {vq_ref}"
        );
        assert!(
            dl <= dl_ref + QUALITY_SLACK,
            "ρ={ratio}: DL {dl} vs independent {dl_ref}"
        );
    }
    // The paper's headline: DL at twice the acceleration is about as accurate as VQ.
    assert!(error(rows, "dl", 20.0) <= 1.03 * error(rows, "vq", 10.0));
    let gain = j["gain_at_equal_error"].as_f64().unwrap();
    assert!(gain > 1.5, "gain at equal error {gain}");
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap().lines().count(),
        1 + rows.len()
    );
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg") && plot.contains("DL c=3") && plot.contains("VQ"),
        "the plot has both methods"
    );
}
