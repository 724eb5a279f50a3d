//! `inspect` and layer addressing on the default model and the shared models.

mod common;

use onnx_dlq::analysis::select::{self, ResolvedBy};
use onnx_dlq::{analysis::inventory, onnx::model};
use serde_json::Value;

fn inspect_json(path: &std::path::Path) -> Value {
    let out = common::run(&["inspect", common::path_str(path), "--json"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON")
}

#[test]
fn default_model_inventory() {
    let j = inspect_json(&common::default_model());
    let layers = j["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 5, "four Conv and the fully connected `fc`");
    let conv2 = &layers[1];
    assert_eq!(conv2["name"], "conv2");
    assert_eq!(conv2["kernel"], serde_json::json!([32, 32, 3, 3]));
    assert_eq!(conv2["output_hw"], serde_json::json!([8, 8]));
    // 32 outputs x 8 x 8 pixels x (32 x 3 x 3) products each, batch taken as 1.
    assert_eq!(conv2["multiplications"], 32 * 64 * 32 * 9);
    assert_eq!(conv2["convertible"], true);
    assert!(conv2["reason"].is_null());
    assert_eq!(conv2["fully_connected"], false);
    // The classifier: Gemm 64 -> 10, [M, N], no convolution geometry.
    let fc = &layers[4];
    assert_eq!(fc["name"], "fc");
    assert_eq!(fc["op_type"], "Gemm");
    assert_eq!(fc["fully_connected"], true);
    assert_eq!(fc["kernel"], serde_json::json!([10, 64]));
    assert!(fc["stride"].is_null() && fc["output_hw"].is_null());
    assert_eq!(fc["multiplications"], 640);
    assert_eq!(fc["convertible"], true);
    let total = j["total_multiplications"].as_u64().unwrap();
    let conv_sum: u64 = layers[..4]
        .iter()
        .map(|l| l["multiplications"].as_u64().unwrap())
        .sum();
    assert_eq!(j["conv_multiplications"].as_u64().unwrap(), conv_sum);
    // The Gemm and the average pool's divisions come on top of the convolutions.
    assert_eq!(total, conv_sum + 640 + 64);
    let share: f64 = layers.iter().map(|l| l["share"].as_f64().unwrap()).sum();
    assert!((share - (conv_sum + 640) as f64 / total as f64).abs() < 1e-9);
    assert!(j["assumptions"][0].as_str().unwrap().contains("taken as 1"));
    let table = common::run(&["inspect", common::path_str(&common::default_model())]);
    let table = common::stdout(&table);
    assert!(
        table.contains("4 convolution and 1 fully connected layers (5 convertible)"),
        "{table}"
    );
    assert!(table.contains("fc [Gemm]  10x64"), "{table}");
}

/// `--all` converts the fully connected layer too; `--exclude-fc` leaves it original, saying so.
#[test]
fn all_includes_fully_connected_layers_unless_excluded() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.onnx");
    let convert = |extra: &[&str]| -> Value {
        let model = common::default_model();
        let mut args = vec![common::path_str(&model), common::path_str(&out)];
        args.extend([
            "--all",
            "--method",
            "vq",
            "--ratio",
            "4",
            "--no-latency",
            "--json",
        ]);
        args.extend(extra);
        let o = common::run(&args);
        assert!(o.status.success(), "{}", common::stderr(&o));
        serde_json::from_slice(&o.stdout).expect("convert --json prints JSON")
    };
    let names = |j: &Value, key: &str| -> Vec<String> {
        j[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect()
    };
    let all = convert(&[]);
    assert!(names(&all, "layers").contains(&"fc".to_string()), "{all}");
    let converted = model::load(&out).unwrap();
    assert!(
        !converted
            .graph()
            .node
            .iter()
            .any(|n| n.op_type.as_deref() == Some("Gemm")),
        "the Gemm is replaced by its look-up subgraph"
    );
    let without = convert(&["--exclude-fc"]);
    assert!(!names(&without, "layers").contains(&"fc".to_string()));
    let skipped = without["skipped"].as_array().unwrap();
    let fc = skipped
        .iter()
        .find(|s| s["name"] == "fc")
        .expect("fc listed as skipped");
    assert!(
        fc["reason"].as_str().unwrap().contains("--exclude-fc"),
        "{fc}"
    );
}

#[test]
fn batch_given_on_the_command_line_scales_the_counts() {
    let out = common::run(&[
        "inspect",
        common::path_str(&common::default_model()),
        "--json",
        "--input-shape",
        "input=3,3,8,8",
    ]);
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["layers"][1]["multiplications"], 3 * 32 * 64 * 32 * 9);
}

#[test]
fn squeezenet_fp32_and_fp16_give_the_same_table() {
    let Some(fp32) = common::shared_model(
        "squeezenet_fp32_and_fp16_give_the_same_table",
        "squeezenet1.1.onnx",
    ) else {
        return;
    };
    let a = inspect_json(&fp32);
    let b = inspect_json(&fp32.with_file_name("squeezenet1.1-fp16.onnx"));
    assert_eq!(a["layers"], b["layers"]);
    assert_eq!(a["layers"].as_array().unwrap().len(), 26);
    let total = a["total_multiplications"].as_u64().unwrap();
    assert!((348_000_000..350_000_000).contains(&total), "{total}");
    let fire8 = a["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["output"] == "fire8/expand3x3_1")
        .unwrap();
    assert_eq!(fire8["multiplications"], 256 * 13 * 13 * 64 * 9);
    assert_eq!(fire8["weight"], "fire8/expand3x3_w_0");
    // The table form says the same.
    let out = common::run(&["inspect", common::path_str(&fp32)]);
    let table = common::stdout(&out);
    assert!(
        table.contains("fire8/expand3x3_1 (output)") && table.contains("256x64x3x3"),
        "{table}"
    );
    assert!(
        table.contains("26 convolution layers (26 convertible)"),
        "{table}"
    );
}

#[test]
fn layers_resolve_by_node_output_or_weight_name() {
    let m = model::load(&common::default_model()).unwrap();
    let layers = select::conv_layers(&m);
    let (l, by) = select::resolve(&layers, "conv3").unwrap();
    assert_eq!((l.name.as_str(), by), ("conv3", ResolvedBy::NodeName));
    let (l, by) = select::resolve(&layers, "conv3_out").unwrap();
    assert_eq!((l.name.as_str(), by), ("conv3", ResolvedBy::OutputName));
    let (l, by) = select::resolve(&layers, "conv3.weight").unwrap();
    assert_eq!((l.name.as_str(), by), ("conv3", ResolvedBy::WeightName));
    let e = select::resolve(&layers, "conv33").unwrap_err().to_string();
    assert!(e.contains("did you mean") && e.contains("`conv3`"), "{e}");
    let e = select::resolve_all(&layers, &["conv3".into(), "conv3.weight".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("named twice"), "{e}");
}

#[test]
fn squeezenet_layers_without_node_names_resolve_by_output() {
    let Some(path) = common::shared_model(
        "squeezenet_layers_without_node_names_resolve_by_output",
        "squeezenet1.1.onnx",
    ) else {
        return;
    };
    let m = model::load(&path).unwrap();
    let layers = select::conv_layers(&m);
    let (l, by) = select::resolve(&layers, "fire8/expand3x3_1").unwrap();
    assert_eq!(by, ResolvedBy::OutputName);
    assert_eq!(l.kernel.as_deref(), Some(&[256, 64, 3, 3][..]));
    let e = select::resolve(&layers, "fire8/expand3x3")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`fire8/expand3x3_1`"), "{e}");
    let inv = inventory::inventory(&m, &[]).unwrap();
    assert_eq!(
        inv.shapes.get("fire8/expand3x3_1"),
        Some(&[1, 256, 13, 13][..])
    );
}

#[test]
fn ineligible_layers_say_why() {
    use onnx_dlq::proto::AttributeProto;
    let mut m = model::load(&common::default_model()).unwrap();
    // Make conv2 grouped (2 groups of 16 input channels) and conv3's weight a run-time value.
    {
        let g = m.graph_mut();
        g.node[2]
            .attribute
            .retain(|a| a.name.as_deref() != Some("group"));
        g.node[2].attribute.push(AttributeProto {
            name: Some("group".into()),
            i: Some(2),
            r#type: Some(2),
            ..Default::default()
        });
        g.node[5].input[1] = "conv2_out".into();
    }
    let layers = select::conv_layers(&m);
    assert!(
        layers[1]
            .reason()
            .unwrap()
            .to_string()
            .contains("grouped convolution (group = 2)"),
        "{:?}",
        layers[1].eligibility
    );
    assert!(
        layers[2]
            .reason()
            .unwrap()
            .to_string()
            .contains("computed at run time"),
        "{:?}",
        layers[2].eligibility
    );
    let e = select::resolve_all(&layers, &["conv2".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be converted: grouped"), "{e}");
}
