//! Distillation fine-tuning (`convert --finetune`): the trainer runs models as tract does, its
//! report shows every epoch and keeps the best held-out one, the result is reproducible, and bad
//! input is refused before any work with nothing written.

mod common;

use ndarray::{ArrayD, IxDyn};
use onnx_dlq::engine::runner::Runner;
use onnx_dlq::finetune::graph::{self, Graph, Overrides};
use serde_json::Value;

/// Graph against tract, on the logits both compute (the input of a final Softmax).
fn assert_graph_matches_tract(model_path: &std::path::Path, input_shape: &[usize]) {
    let model = onnx_dlq::onnx::model::load(model_path).unwrap();
    let g = Graph::new(&model).unwrap();
    // Backward too (candle differentiates max_pool2d only when its window is its stride).
    g.check_backward(&common::input_like(input_shape, 3))
        .unwrap();
    let mut batch = input_shape.to_vec();
    batch[0] = 2;
    let x = common::input_like(&batch, 7);
    let got = g
        .forward(&graph::to_tensor(&x).unwrap(), &Overrides::new())
        .unwrap();
    let got = ArrayD::from_shape_vec(
        IxDyn(got.dims()),
        got.flatten_all().unwrap().to_vec1().unwrap(),
    )
    .unwrap();
    // tract one image at a time (SqueezeNet's graph fixes the batch to 1).
    let runner = Runner::with_outputs(&model, input_shape, &[g.output_name().to_string()]).unwrap();
    let per_image: Vec<ArrayD<f32>> = (0..2)
        .map(|i| {
            let xi = x
                .index_axis(ndarray::Axis(0), i)
                .insert_axis(ndarray::Axis(0));
            runner.run(&xi.to_owned()).unwrap()
        })
        .collect();
    let views: Vec<_> = per_image.iter().map(|a| a.view()).collect();
    let want = ndarray::concatenate(ndarray::Axis(0), &views).unwrap();
    let want = want
        .to_shape((2, want.len() / 2))
        .unwrap()
        .into_owned()
        .into_dyn();
    let scale = common::max_abs(&want).max(1.0);
    let err = common::max_abs_diff(&got, &want);
    assert!(
        err <= 1e-4 * scale,
        "{}: max |Δ| {err} (scale {scale})",
        model_path.display()
    );
}

#[test]
fn trainer_runs_the_models_as_tract_does() {
    assert_graph_matches_tract(&common::default_model(), &[1, 3, 8, 8]);
    let Some(shared) = common::shared("trainer_runs_the_models_as_tract_does") else {
        return;
    };
    // Slice with steps, channel Pad, Add, Gemm (ResNet); MaxPool, Concat, Softmax (SqueezeNet).
    assert_graph_matches_tract(
        &shared.join("models/resnet20-cifar10.onnx"),
        &[1, 3, 32, 32],
    );
    assert_graph_matches_tract(&shared.join("models/squeezenet1.1.onnx"), &[1, 3, 224, 224]);
}

fn repo_path(rel: &str) -> String {
    common::repo().join(rel).display().to_string()
}

fn finetune_args(out: &str) -> Vec<String> {
    [
        "convert",
        &repo_path("models/digits-cnn.onnx"),
        out,
        "--layers",
        "conv2,conv3,conv4",
        "--ratio",
        "4",
        "--finetune",
        &repo_path("models/digits-test"),
        "--preprocess",
        &repo_path("models/digits-cnn.preprocess.json"),
        "--finetune-samples",
        "200",
        "--epochs",
        "2",
        "--lr",
        "1e-3",
        "--no-latency",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn finetuning_reports_each_epoch_keeps_the_best_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.onnx").display().to_string(),
        dir.path().join("b.onnx").display().to_string(),
    );
    let o = common::bin().args(finetune_args(&a)).output().unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = &j["finetune"];
    assert_eq!(f["train_images"], 180);
    assert_eq!(f["heldout_images"], 20);
    let epochs = f["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    let start = f["start"]["heldout_loss"].as_f64().unwrap();
    let losses: Vec<f64> = epochs
        .iter()
        .map(|e| e["heldout_loss"].as_f64().unwrap())
        .collect();
    // The kept epoch is the one with the lowest held-out loss, if any beat the start.
    let best = losses.iter().copied().fold(start, f64::min);
    match f["best_epoch"].as_u64() {
        Some(e) => assert_eq!(losses[e as usize - 1], best, "{f}"),
        None => assert_eq!(best, start, "{f}"),
    }
    assert!(losses.iter().all(|l| l.is_finite() && *l >= 0.0), "{f}");
    // Same input, flags and seed: the same bytes on one thread as on several.
    let o = common::bin()
        .args(finetune_args(&b))
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn bad_finetuning_input_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let out_s = out.display().to_string();
    // An operator the trainer does not run: one Relu of the default model made an Elu (tract
    // runs it, so only the trainer's check can refuse it).
    let mut proto = onnx_dlq::onnx::model::load(&common::default_model())
        .unwrap()
        .proto;
    let node = proto
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.op_type.as_deref() == Some("Relu"))
        .unwrap();
    node.op_type = Some("Elu".into());
    let elu_name = node.name.clone().unwrap_or_default();
    let elu = dir.path().join("elu.onnx");
    std::fs::write(&elu, prost::Message::encode_to_vec(&proto)).unwrap();
    let mut unsupported = finetune_args(&out_s);
    unsupported[1] = elu.display().to_string();
    let mut missing = finetune_args(&out_s);
    missing[8] = dir.path().join("no-such-folder").display().to_string();
    let mut no_spec = finetune_args(&out_s);
    no_spec.drain(9..11);
    for (args, expect) in [
        (
            unsupported,
            format!("Elu `{elu_name}`: fine-tuning does not run this operator"),
        ),
        (missing, "no-such-folder".to_string()),
        (no_spec, "--finetune needs --preprocess".to_string()),
    ] {
        let o = common::bin().args(&args).output().unwrap();
        let err = common::stderr(&o);
        assert!(!o.status.success(), "{args:?}");
        assert!(err.contains(&expect), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{args:?} left an output file");
    }
}

/// A converted fully connected layer is part of the student (its W̃ in place, so the start's
/// held-out loss sees its error) but is not trained: its stored codebook is the one the
/// conversion without fine-tuning writes.
#[test]
fn converted_fully_connected_layers_are_held_fixed_in_the_student() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).display().to_string();
    let run = |out: &str, layers: &str, finetune: bool| -> Value {
        let mut args = finetune_args(out);
        let at = args.iter().position(|a| a == "--layers").unwrap();
        args[at + 1] = layers.into();
        args.extend(["--method".into(), "vq".into()]);
        if !finetune {
            // Drop --finetune DIR --preprocess SPEC --finetune-samples 200 --epochs 2 --lr 1e-3.
            let at = args.iter().position(|a| a == "--finetune").unwrap();
            args.drain(at..at + 10);
        }
        let o = common::bin().args(&args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", common::stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let with_fc = run(&path("a.onnx"), "conv4,fc", true);
    let conv_only = run(&path("b.onnx"), "conv4", true);
    let start = |j: &Value| j["finetune"]["start"]["heldout_loss"].as_f64().unwrap();
    assert_ne!(
        start(&with_fc),
        start(&conv_only),
        "the student runs fc's W̃"
    );
    run(&path("c.onnx"), "conv4,fc", false);
    let fc_tensors = |p: &str| {
        let m = onnx_dlq::onnx::model::load(std::path::Path::new(p)).unwrap();
        let mut t: Vec<_> = m
            .graph()
            .initializer
            .iter()
            .filter(|t| t.name.as_deref().unwrap_or_default().starts_with("fc/dlq/"))
            .cloned()
            .collect();
        t.sort_by(|a, b| a.name.cmp(&b.name));
        t
    };
    let (tuned, plain) = (fc_tensors(&path("a.onnx")), fc_tensors(&path("c.onnx")));
    assert!(!tuned.is_empty());
    assert_eq!(tuned, plain, "fc's codebook is not fine-tuned");
}

/// `--train-original-layers` also trains the layers left original (conv1 and fc here): their
/// weights change in the output, the converted layers' graph does not, and the start (before
/// any step) is the same as without the flag.
#[test]
fn train_original_layers_changes_their_weights_not_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).display().to_string();
    let run = |out: &str, originals: bool| -> Value {
        let mut args = finetune_args(out);
        if originals {
            args.push("--train-original-layers".into());
        }
        let o = common::bin().args(&args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", common::stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (with, without) = (run(&path("a.onnx"), true), run(&path("b.onnx"), false));
    let f = &with["finetune"];
    assert_eq!(
        f["trained_original_tensors"], 4,
        "conv1 and fc: weight and bias"
    );
    assert_eq!(without["finetune"]["trained_original_tensors"], 0);
    assert_eq!(
        f["start"]["heldout_loss"],
        without["finetune"]["start"]["heldout_loss"]
    );
    assert!(
        f["best_epoch"].as_u64().is_some(),
        "two epochs beat the start: {f}"
    );
    let load = |p: &str| onnx_dlq::onnx::model::load(std::path::Path::new(p)).unwrap();
    let (a, b) = (load(&path("a.onnx")), load(&path("b.onnx")));
    let original = load(&repo_path("models/digits-cnn.onnx"));
    let ops = |m: &onnx_dlq::onnx::model::OnnxModel| -> Vec<_> {
        let g = m.graph();
        g.node.iter().map(|n| n.op_type.clone()).collect()
    };
    assert_eq!(ops(&a), ops(&b), "the graph is the same");
    let tensor = |m: &onnx_dlq::onnx::model::OnnxModel, layer: &str, input: usize| {
        let g = m.graph();
        let node = g
            .node
            .iter()
            .find(|n| n.name.as_deref() == Some(layer))
            .unwrap();
        let name = &node.input[input];
        let t = g
            .initializer
            .iter()
            .find(|t| t.name.as_ref() == Some(name))
            .unwrap();
        onnx_dlq::onnx::tensor::to_f32(t, std::path::Path::new(".")).unwrap()
    };
    for (layer, input) in [("conv1", 1), ("conv1", 2), ("fc", 1), ("fc", 2)] {
        let trained = tensor(&a, layer, input);
        assert_eq!(trained.len(), tensor(&original, layer, input).len());
        assert_ne!(
            trained,
            tensor(&original, layer, input),
            "{layer} input {input}"
        );
        assert_eq!(tensor(&b, layer, input), tensor(&original, layer, input));
    }
}

/// `onnx-dlq finetune ORIGINAL CONVERTED OUT` reads the codebooks back from each form's
/// initializers and trains them as `convert --finetune` does: the standard-operator and fused
/// outputs are byte-identical to `convert --finetune`'s; the compact form's values are equal
/// (its trained bias goes into the Conv's existing bias rather than a new initializer). A
/// converted fully connected layer is read back too, and held fixed; so are shared codebooks
/// (palettes) with Γ bit-packed or not, and a calibrated model (whose record of the images it
/// saw is not a layer).
#[test]
fn finetune_subcommand_equals_convert_finetune_in_every_form() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).display().to_string();
    let training = ["--finetune-samples", "200", "--epochs", "2", "--lr", "1e-3"];
    // A converted fully connected layer (VQ: DL's rules leave fc no atoms) is held fixed.
    let fc = ["--layers", "conv4,fc", "--method", "vq"];
    // N′ = 5 divides neither 32 nor 64: the atoms' Conv is a head and a tail.
    let uneven = ["--subspace", "5", "--c", "2"];
    let palette = |k| {
        [
            "--method",
            "vq",
            "--shared-codebook",
            "",
            "--subspace",
            "4",
            "--k",
            k,
        ]
    };
    // Γ in 4 bits, in 7 bits (two planes), in one byte.
    let (packed, split, bytes) = (palette("16"), palette("100"), palette("140"));
    // Per-channel scales (which the digits model's conv4 keeps), in float16: trained, rounded
    // and written back.
    let mut scaled = palette("16").to_vec();
    scaled.extend(["--channel-scale", "", "--f16-palette", ""]);
    let digits = repo_path("models/digits-test");
    let calibrated = ["--calibrate", digits.as_str(), "--calib-samples", "32"];
    let variants = [
        ("ops", &[][..]),
        ("fused", &[]),
        ("dense", &[]),
        ("ops", &fc[..]),
        ("fused", &fc),
        ("ops", &uneven[..]),
        ("fused", &uneven),
        ("dense", &packed[..]),
        ("dense", &split[..]),
        ("dense", &bytes[..]),
        ("dense", &scaled[..]),
        ("ops", &calibrated[..]),
    ];
    for (i, (form, extra)) in variants.into_iter().enumerate() {
        let (plain, direct, later) = (
            path(&format!("{i}-{form}.onnx")),
            path(&format!("{i}-{form}-convert-ft.onnx")),
            path(&format!("{i}-{form}-finetune.onnx")),
        );
        let mut convert = finetune_args(&direct);
        convert.extend(["--form".to_string(), form.to_string()]);
        for pair in extra.chunks(2) {
            match convert.iter().position(|a| a == pair[0]) {
                Some(at) => convert[at + 1] = pair[1].to_string(),
                None if pair[1].is_empty() => convert.push(pair[0].to_string()),
                None => convert.extend([pair[0].to_string(), pair[1].to_string()]),
            }
        }
        let o = common::bin().args(&convert).output().unwrap();
        assert!(o.status.success(), "{}", common::stderr(&o));
        let at = convert.iter().position(|a| a == "--finetune").unwrap();
        convert.drain(at..at + 10);
        if extra.contains(&"--calibrate") {
            convert.extend(
                [
                    "--preprocess",
                    &repo_path("models/digits-cnn.preprocess.json"),
                ]
                .map(String::from),
            );
        }
        convert[2] = plain.clone();
        let o = common::bin().args(&convert).output().unwrap();
        assert!(o.status.success(), "{}", common::stderr(&o));
        if extra.contains(&"--channel-scale") {
            let m = onnx_dlq::onnx::model::load(std::path::Path::new(&plain)).unwrap();
            let names = m.graph().initializer.iter().filter_map(|t| t.name.clone());
            assert!(
                names.filter(|n| n.ends_with("channel_scale")).count() > 0,
                "no layer kept its channel scales"
            );
            let half = m.graph().initializer.iter().filter(|t| {
                t.name.as_deref().is_some_and(|n| n.ends_with("atoms")) && t.data_type == Some(10)
            });
            assert!(half.count() > 0, "no float16 palette");
        }
        let o = common::bin()
            .args([
                "finetune",
                &repo_path("models/digits-cnn.onnx"),
                &plain,
                &later,
            ])
            .args(["--data", &repo_path("models/digits-test")])
            .args([
                "--preprocess",
                &repo_path("models/digits-cnn.preprocess.json"),
            ])
            .args(training)
            .arg("--json")
            .output()
            .unwrap();
        assert!(o.status.success(), "{form}: {}", common::stderr(&o));
        let j: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(j["finetune"]["best_epoch"].as_u64().is_some(), "{j}");
        let (a, b) = (
            std::fs::read(&direct).unwrap(),
            std::fs::read(&later).unwrap(),
        );
        if form != "dense" {
            assert!(a == b, "{form}: not the bytes convert --finetune writes");
            continue;
        }
        let floats = |p: &str| -> Vec<f32> {
            let m = onnx_dlq::onnx::model::load(std::path::Path::new(p)).unwrap();
            let mut inits: Vec<_> = m.graph().initializer.clone();
            inits.retain(|t| t.data_type == Some(1));
            inits.sort_by_key(|t| {
                let v = m.tensor_f32(t).unwrap();
                (v.len(), v.iter().map(|x| x.to_bits() as u64).sum::<u64>())
            });
            inits
                .iter()
                .flat_map(|t| m.tensor_f32(t).unwrap().into_iter().collect::<Vec<_>>())
                .collect()
        };
        assert_eq!(floats(&direct), floats(&later), "dense: the same values");
    }
}

#[test]
fn finetune_subcommand_refuses_what_it_cannot_train_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).display().to_string();
    let original = repo_path("models/digits-cnn.onnx");
    let convert = |out: &str, layers: &str, form: &str| {
        let o = common::bin()
            .args([
                "convert", &original, out, "--layers", layers, "--ratio", "4",
            ])
            .args(["--method", "vq", "--no-latency", "--form", form])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", common::stderr(&o));
    };
    convert(&path("conv.onnx"), "conv2", "ops");
    convert(&path("fc.onnx"), "conv2,fc", "dense");
    // Another model: the default one with conv2 renamed.
    let mut proto = onnx_dlq::onnx::model::load(&common::default_model())
        .unwrap()
        .proto;
    let graph = proto.graph.as_mut().unwrap();
    let conv2 = graph
        .node
        .iter_mut()
        .find(|n| n.name.as_deref() == Some("conv2"));
    conv2.unwrap().name = Some("renamed".into());
    std::fs::write(path("other.onnx"), prost::Message::encode_to_vec(&proto)).unwrap();
    let out = path("out.onnx");
    let cases = [
        (
            original.clone(),
            original.clone(),
            "no layer converted by onnx-dlq",
        ),
        (
            path("other.onnx"),
            path("conv.onnx"),
            "has no such layer: give the model it was converted from",
        ),
        (
            original.clone(),
            path("fc.onnx"),
            "a fully connected layer in the compact form",
        ),
    ];
    let finetune = |teacher: &str, converted: &str, out: &str| {
        common::bin()
            .args(["finetune", teacher, converted, out])
            .args(["--data", &repo_path("models/digits-test")])
            .args([
                "--preprocess",
                &repo_path("models/digits-cnn.preprocess.json"),
            ])
            .output()
            .unwrap()
    };
    for (teacher, converted, expect) in cases {
        let o = finetune(&teacher, &converted, &out);
        let err = common::stderr(&o);
        assert!(
            !o.status.success() && err.contains(expect),
            "{converted}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!std::path::Path::new(&out).exists());
    }
    let o = finetune(&original, &path("conv.onnx"), &path("conv.onnx"));
    assert!(common::stderr(&o).contains("it is an input model"));
    // Soft assignments re-assign Γ, which `finetune` does not write back.
    let o = common::bin()
        .args(["finetune", &original, &path("conv.onnx"), &out])
        .args(["--data", &repo_path("models/digits-test")])
        .args([
            "--preprocess",
            &repo_path("models/digits-cnn.preprocess.json"),
        ])
        .arg("--soft-assignments")
        .output()
        .unwrap();
    assert!(
        common::stderr(&o).contains("--soft-assignments re-assign Γ"),
        "{}",
        common::stderr(&o)
    );
    assert!(!std::path::Path::new(&out).exists());
}

/// `stages --finetune`: every stage's model is fine-tuned and evaluated again, the next stage
/// converted in the fine-tuned model (the paper's scheme: its figures before fine-tuning differ
/// from the plain run's, which converts in the original); fine-tuning on the images the rows
/// are evaluated on is refused.
#[test]
fn stages_finetune_evaluates_each_stage_after_fine_tuning() {
    let args = |skip: &str| -> Vec<String> {
        [
            "stages",
            &repo_path("models/digits-cnn.onnx"),
            "--stages",
            "conv2,conv3",
            "--ratios",
            "4",
            "--methods",
            "dl",
            "--data",
            &repo_path("models/digits-test"),
            "--preprocess",
            &repo_path("models/digits-cnn.preprocess.json"),
            "--skip",
            skip,
            "--calibrate",
            &repo_path("models/digits-test"),
            "--calib-samples",
            "50",
            "--finetune",
            &repo_path("models/digits-test"),
            "--finetune-samples",
            "100",
            "--epochs",
            "2",
            "--lr",
            "1e-3",
            "--runs",
            "1",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let o = common::bin().args(args("100")).output().unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = j["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows[0].get("finetuned").is_none(),
        "the original is not fine-tuned"
    );
    for row in &rows[1..] {
        let f = &row["finetuned"];
        let top1 = f["top1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&top1), "{row}");
        // No epoch kept: the model is the one before, and so are its figures.
        if f["best_epoch"].is_null() {
            assert_eq!(f["top1"], row["top1"], "{row}");
        }
    }
    // Without --finetune: the first stage's row is the same, the second is not (the first
    // stage's fine-tuning kept an epoch, so the second was calibrated in another model).
    let mut plain = args("100");
    let at = plain.iter().position(|a| a == "--finetune").unwrap();
    plain.drain(at..at + 8);
    let o = common::bin().args(&plain).output().unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    let p: Value = serde_json::from_slice(&o.stdout).unwrap();
    let prow = p["rows"].as_array().unwrap();
    assert_eq!(prow[1]["weight_error"], rows[1]["weight_error"]);
    assert!(rows[1]["finetuned"]["best_epoch"].is_u64(), "{}", rows[1]);
    assert_ne!(prow[2]["weight_error"], rows[2]["weight_error"]);
    let o = common::bin().args(args("50")).output().unwrap();
    assert!(!o.status.success());
    assert!(common::stderr(&o).contains("fine-tuning used 100 images of"));
}

/// `--finetune-labels` adds the labels' cross-entropy to the training loss (so the reported
/// training loss grows); the held-out loss before training does not change; a folder without
/// labels.csv is refused before any work.
#[test]
fn finetune_labels_add_cross_entropy_and_need_labels() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| -> std::process::Output {
        let mut args = finetune_args(&dir.path().join("out.onnx").display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        common::bin().args(&args).output().unwrap()
    };
    let json = |o: &std::process::Output| -> Value {
        assert!(o.status.success(), "{}", common::stderr(o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (plain, labelled) = (json(&run(&[])), json(&run(&["--finetune-labels"])));
    let first = |j: &Value| j["finetune"]["epochs"][0]["train_loss"].as_f64().unwrap();
    assert!(first(&labelled) > first(&plain), "{labelled} vs {plain}");
    assert_eq!(
        labelled["finetune"]["start"]["heldout_loss"],
        plain["finetune"]["start"]["heldout_loss"]
    );
    // A folder of images without labels.csv.
    let unlabelled = dir.path().join("unlabelled");
    std::fs::create_dir(&unlabelled).unwrap();
    for e in std::fs::read_dir(common::repo().join("models/digits-test/images"))
        .unwrap()
        .take(4)
    {
        let p = e.unwrap().path();
        std::fs::copy(&p, unlabelled.join(p.file_name().unwrap())).unwrap();
    }
    let mut args = finetune_args(&dir.path().join("out2.onnx").display().to_string());
    let at = args.iter().position(|a| a == "--finetune").unwrap();
    args[at + 1] = unlabelled.display().to_string();
    args.push("--finetune-labels".into());
    let o = common::bin().args(&args).output().unwrap();
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("has no labels.csv"),
        "{}",
        common::stderr(&o)
    );
    assert!(!dir.path().join("out2.onnx").exists());
}
