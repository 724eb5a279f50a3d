//! `convert --calibrate`: output-aware codebooks from unlabelled images (refitted on the full
//! input patches unless `--no-refit`), reported per layer,
//! reproducible, evaluated on held-out images; bad calibration input is a clean error with no
//! output file.

mod common;

use serde_json::Value;

/// Images of the default model's test set used for calibration; the rest are for evaluation.
const CALIBRATION_IMAGES: usize = 200;

fn repo_path(rel: &str) -> String {
    common::repo().join(rel).display().to_string()
}

fn convert_json(args: &[&str]) -> Value {
    let o = common::run(args);
    assert!(o.status.success(), "{}", common::stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", common::stdout(&o)))
}

#[test]
fn calibrated_conversion_lowers_every_layers_output_error_and_is_thread_count_independent() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data, spec) = (
        repo_path("models/digits-cnn.onnx"),
        repo_path("models/digits-test"),
        repo_path("models/digits-cnn.preprocess.json"),
    );
    let samples = CALIBRATION_IMAGES.to_string();
    let out = |name: &str| dir.path().join(name).display().to_string();
    let (a, b) = (out("a.onnx"), out("b.onnx"));
    let args = |o: &str| {
        vec![
            "convert".to_string(),
            model.clone(),
            o.to_string(),
            "--layers".into(),
            "conv2,conv3,conv4".into(),
            "--ratio".into(),
            "4".into(),
            "--calibrate".into(),
            data.clone(),
            "--preprocess".into(),
            spec.clone(),
            "--calib-samples".into(),
            samples.clone(),
            "--json".into(),
        ]
    };
    let a_args = args(&a);
    let j = convert_json(&a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let layers = j["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for l in layers {
        let (cal, plain) = (
            l["output_error"].as_f64().unwrap(),
            l["output_error_uncalibrated"].as_f64().unwrap(),
        );
        assert!(cal > 0.0 && cal < plain, "{}: {cal} vs {plain}", l["name"]);
        // The refit (default with --calibrate) lowers the error on the full patches.
        let refit = &l["refit"];
        let (before, after) = (refit["before"].as_f64(), refit["after"].as_f64());
        assert!(refit["applied"] == true, "{}: {refit}", l["name"]);
        assert!(after.unwrap() < before.unwrap(), "{}: {refit}", l["name"]);
    }
    // Same input, flags and seed: the same bytes, on one thread as on several.
    let o = common::bin()
        .args(args(&b))
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // --no-refit keeps the clustered codebooks: another model, and no refit in the report.
    let mut plain_args = args(&b);
    plain_args.push("--no-refit".into());
    let plain = convert_json(&plain_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(plain["layers"][0].get("refit").is_none(), "{plain}");
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // Held-out evaluation: the converted model still classifies the images it never saw.
    let v = convert_json(&[
        "verify",
        &model,
        &a,
        "--data",
        &data,
        "--preprocess",
        &spec,
        "--skip",
        &samples,
        "--runs",
        "1",
        "--json",
    ]);
    assert_eq!(v["samples"], 360 - CALIBRATION_IMAGES);
    let top1 = v["converted"]["top1"].as_f64().unwrap();
    assert!(top1 > 0.9, "held-out top-1 {top1}");
}

#[test]
fn bad_calibration_input_is_a_clean_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.onnx");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let model = repo_path("models/digits-cnn.onnx");
    let spec = repo_path("models/digits-cnn.preprocess.json");
    let cases: Vec<(Vec<String>, &str, i32)> = vec![
        (
            vec!["--calibrate".into(), repo_path("models/digits-test")],
            "--calibrate needs --preprocess",
            1,
        ),
        (
            vec![
                "--calibrate".into(),
                empty.display().to_string(),
                "--preprocess".into(),
                spec.clone(),
            ],
            "no labels.csv and no .png/.jpg/.jpeg images",
            1,
        ),
        (
            vec![
                "--calibrate".into(),
                dir.path().join("missing").display().to_string(),
                "--preprocess".into(),
                spec.clone(),
            ],
            "does not exist",
            1,
        ),
        (
            vec![
                "--calibrate".into(),
                repo_path("models/digits-test"),
                "--preprocess".into(),
                spec.clone(),
                "--calib-samples".into(),
                "0".into(),
            ],
            "--calib-samples must be at least 1",
            1,
        ),
        (vec!["--calib-samples".into(), "4".into()], "--calibrate", 2),
    ];
    for (extra, expect, code) in cases {
        let mut args = vec![
            "convert".to_string(),
            model.clone(),
            out.display().to_string(),
            "--layers".into(),
            "conv2".into(),
            "--ratio".into(),
            "4".into(),
        ];
        args.extend(extra);
        let o = common::run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: `{expect}` not in {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "{args:?} left an output file");
    }
}

#[test]
fn target_speedup_allocates_ratios_that_meet_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.onnx").display().to_string();
    let (model, data, spec) = (
        repo_path("models/digits-cnn.onnx"),
        repo_path("models/digits-test"),
        repo_path("models/digits-cnn.preprocess.json"),
    );
    let samples = CALIBRATION_IMAGES.to_string();
    let budget = |extra: &[&str]| {
        let mut args = vec![
            "convert",
            &model,
            &out,
            "--target-speedup",
            "2.5",
            "--calibrate",
            &data,
            "--preprocess",
            &spec,
            "--calib-samples",
            &samples,
            "--json",
        ];
        args.extend_from_slice(extra);
        convert_json(&args)
    };
    let j = budget(&[]);
    let a = &j["allocation"];
    assert_eq!(a["sensitivity"], "output");
    // DL's c is 2 under --target-speedup unless given.
    assert_eq!(j["params"]["c"], 2.0);
    let allocated = a["layers"].as_array().unwrap();
    assert!(!allocated.is_empty());
    for l in allocated {
        let r = l["ratio"].as_f64().unwrap();
        assert!(onnx_dlq::budget::CANDIDATE_RATIOS.contains(&r), "{l}");
        // Each layer's error is weighed by how much of it reaches the model's output.
        let gain = l["gain"].as_f64().unwrap_or(-1.0);
        assert!(gain.is_finite() && gain > 0.0, "{l}");
    }
    // The rewrite's own count meets the target, and the allocation's estimate is that count.
    let speedup = j["speedup"].as_f64().unwrap();
    assert!(speedup >= 2.5, "speed-up {speedup}");
    let estimate = a["estimated_speedup"].as_f64().unwrap();
    assert!(
        (estimate - speedup).abs() < 0.02 * speedup,
        "{estimate} vs {speedup}"
    );
    // Every allocated layer (and only those) was converted, at its ratio.
    let converted: Vec<&str> = j["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    let names: Vec<&str> = allocated
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(converted, names);

    // --layer-sensitivity weighs the layers' own errors alike: no gains, maybe other ratios.
    let alike = budget(&["--layer-sensitivity"]);
    for l in alike["allocation"]["layers"].as_array().unwrap() {
        assert!(l.get("gain").is_none(), "{l}");
    }

    // Impossible or meaningless targets are errors, and nothing is written.
    std::fs::remove_file(&out).unwrap();
    for (target, expect) in [
        ("0.5", "must be above 1"),
        ("1000", "cannot save that much"),
    ] {
        let o = common::run(&["convert", &model, &out, "--target-speedup", target]);
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(expect), "{err}");
        assert!(!std::path::Path::new(&out).exists());
    }
}

/// A labelled folder ordered by class (as CIFAR-10's is): calibrating on its first images,
/// which hold one class, gives a warning naming the folder; a mixed order gives none, and
/// neither does `--calib-select spread`. The output records the images calibration took, and
/// `verify` refuses to evaluate on any of them.
#[test]
fn calibrating_on_the_first_images_of_a_class_ordered_folder_warns() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(common::repo().join("models/digits-test/labels.csv"));
    let mut rows: Vec<(String, usize)> = text
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.rsplit_once(','))
        .map(|(f, l)| (f.to_string(), l.trim().parse().unwrap()))
        .collect();
    let folder = |name: &str, rows: &[(String, usize)]| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        let src = common::repo().join("models/digits-test");
        std::fs::copy(src.join("classes.txt"), d.join("classes.txt")).unwrap();
        std::fs::create_dir(d.join("images")).unwrap();
        let mut csv = String::from("file,label\n");
        for (f, l) in rows {
            std::fs::copy(src.join(f), d.join(f)).unwrap();
            csv += &format!("{f},{l}\n");
        }
        std::fs::write(d.join("labels.csv"), csv).unwrap();
        d
    };
    let mixed = folder("mixed", &rows[..40]);
    rows.sort_by_key(|r| r.1);
    let sorted = folder("sorted", &rows[..]);
    let out = dir.path().join("out.onnx");
    let warns = |data: &std::path::Path, select: &str| {
        let o = common::bin()
            .args(["convert", &repo_path("models/digits-cnn.onnx")])
            .arg(&out)
            .args(["--layers", "conv2", "--ratio", "4", "--no-latency"])
            .arg("--calibrate")
            .arg(data)
            .args([
                "--preprocess",
                &repo_path("models/digits-cnn.preprocess.json"),
            ])
            .args(["--calib-samples", "16", "--calib-select", select])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", common::stderr(&o));
        common::stderr(&o).contains("hold 1 of its 10 classes (the folder is ordered by class?)")
    };
    let verify = |data: &std::path::Path, skip: &str, samples: &str| {
        common::bin()
            .args(["verify", &repo_path("models/digits-cnn.onnx")])
            .arg(&out)
            .arg("--data")
            .arg(data)
            .args([
                "--preprocess",
                &repo_path("models/digits-cnn.preprocess.json"),
            ])
            .args(["--skip", skip, "--samples", samples, "--runs", "1"])
            .output()
            .unwrap()
    };
    let refused = |o: &std::process::Output| {
        !o.status.success() && common::stderr(o).contains("calibration used 16 images of")
    };
    assert!(warns(&sorted, "first"));
    // The first 16 images were seen: evaluating from image 10 is refused, from 16 it runs.
    assert!(refused(&verify(&sorted, "10", "8")));
    let o = verify(&sorted, "16", "8");
    assert!(o.status.success(), "{}", common::stderr(&o));
    // Another folder holding the same files is another folder.
    assert!(verify(&mixed, "0", "8").status.success());
    assert!(!warns(&mixed, "first"));
    // Spread over the folder: every class, and images all over it are refused.
    assert!(!warns(&sorted, "spread"));
    let n = rows.len();
    assert!(refused(&verify(&sorted, "16", &(n - 16).to_string())));
    let half = (n / 2).to_string();
    assert!(refused(&verify(&sorted, &half, &half)));
}

/// `--calib-mirror` calibrates on every image and its mirror image: the codebooks change, the
/// output records the same images (a mirror image is no new image), and the same flags give the
/// same bytes.
#[test]
fn mirror_images_join_calibration_and_the_record_keeps_the_images_taken() {
    let dir = tempfile::tempdir().unwrap();
    let data = repo_path("models/digits-test");
    let convert = |name: &str, mirror: bool| {
        let out = dir.path().join(name);
        let mut c = common::bin();
        c.args(["convert", &repo_path("models/digits-cnn.onnx")])
            .arg(&out)
            .args(["--layers", "conv2", "--ratio", "4", "--no-latency"])
            .args(["--calibrate", &data, "--calib-samples", "16"])
            .args([
                "--preprocess",
                &repo_path("models/digits-cnn.preprocess.json"),
            ]);
        if mirror {
            c.arg("--calib-mirror");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", common::stderr(&o));
        std::fs::read(&out).unwrap()
    };
    let plain = convert("plain.onnx", false);
    let mirrored = convert("mirrored.onnx", true);
    assert_ne!(plain, mirrored, "the mirror images changed nothing");
    assert_eq!(mirrored, convert("again.onnx", true));
    let verify = |skip: &str| {
        common::bin()
            .args(["verify", &repo_path("models/digits-cnn.onnx")])
            .arg(dir.path().join("mirrored.onnx"))
            .args([
                "--data",
                &data,
                "--skip",
                skip,
                "--samples",
                "8",
                "--runs",
                "1",
            ])
            .args([
                "--preprocess",
                &repo_path("models/digits-cnn.preprocess.json"),
            ])
            .output()
            .unwrap()
    };
    let o = verify("10");
    assert!(!o.status.success() && common::stderr(&o).contains("calibration used 16 images of"));
    let o = verify("16");
    assert!(o.status.success(), "{}", common::stderr(&o));
}
