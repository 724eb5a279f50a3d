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

use onnx_dlq::onnx::build::{attr_ints, attr_str, node};
use onnx_dlq::proto::{GraphProto, ModelProto, OperatorSetIdProto, ValueInfoProto};

/// Geometry of a single-Conv test model.
#[derive(Debug, Clone)]
pub struct ConvSpec {
    pub batch: usize,
    pub n: usize,
    pub m: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub strides: [i64; 2],
    pub dilations: [i64; 2],
    /// [top, left, bottom, right], ignored when `auto_pad` is set.
    pub pads: [i64; 4],
    pub auto_pad: Option<&'static str>,
    pub bias: bool,
    pub opset: i64,
}

pub fn value_info(name: &str, elem: i32, dims: Option<&[usize]>) -> ValueInfoProto {
    let dims: Option<Vec<i64>> = dims.map(|d| d.iter().map(|&v| v as i64).collect());
    onnx_dlq::onnx::build::value_info(name, elem, dims.as_deref())
}

/// A model `y = Conv(x, w[, b])` with the given weights, named `conv`, weight `w`, bias `b`.
pub fn conv_model(spec: &ConvSpec, weight: &[f32], bias: &[f32]) -> ModelProto {
    use onnx_dlq::onnx::tensor::{new_tensor, FloatType};
    let mut attrs = vec![
        attr_ints("kernel_shape", &[spec.kh as i64, spec.kw as i64]),
        attr_ints("strides", &spec.strides),
        attr_ints("dilations", &spec.dilations),
    ];
    match spec.auto_pad {
        Some(mode) => attrs.push(attr_str("auto_pad", mode)),
        None => attrs.push(attr_ints("pads", &spec.pads)),
    }
    let mut inputs = vec!["x", "w"];
    let mut inits = vec![new_tensor(
        "w",
        &[spec.m, spec.n, spec.kh, spec.kw],
        weight,
        FloatType::F32,
    )];
    if spec.bias {
        inputs.push("b");
        inits.push(new_tensor("b", &[spec.m], bias, FloatType::F32));
    }
    ModelProto {
        ir_version: Some(if spec.opset <= 9 { 4 } else { 8 }),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(spec.opset),
        }],
        producer_name: Some("onnx-dlq tests".into()),
        graph: Some(GraphProto {
            name: Some("conv".into()),
            node: vec![node("Conv", "conv", &inputs, &["y"], attrs)],
            initializer: inits,
            input: vec![value_info(
                "x",
                1,
                Some(&[spec.batch, spec.n, spec.h, spec.w]),
            )],
            output: vec![value_info("y", 1, None)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The initializer `name` of `m`, to edit (the test's model must have it).
pub fn initializer_mut<'a>(
    m: &'a mut onnx_dlq::onnx::model::OnnxModel,
    name: &str,
) -> &'a mut onnx_dlq::proto::TensorProto {
    m.graph_mut()
        .initializer
        .iter_mut()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no initializer `{name}`"))
}

/// Wraps a protobuf as a loaded model living in `dir` (for tract and the rewrite).
pub fn in_memory(proto: ModelProto, dir: &Path) -> onnx_dlq::onnx::model::OnnxModel {
    onnx_dlq::onnx::model::OnnxModel {
        proto,
        path: dir.join("model.onnx"),
        base_dir: dir.to_path_buf(),
    }
}

/// Writes a float32 array as a `.npy` file (version 1.0, little-endian, C order).
pub fn write_npy(path: &Path, a: &ndarray::ArrayD<f32>) {
    let shape: Vec<String> = a.shape().iter().map(|d| d.to_string()).collect();
    let shape = if shape.len() == 1 {
        format!("({},)", shape[0])
    } else {
        format!("({})", shape.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in a.iter() {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Reads a float32 `.npy` file written by numpy (version 1.0, little-endian, C order).
pub fn read_npy(path: &Path) -> ndarray::ArrayD<f32> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(
        header.contains("'<f4'") && header.contains("False"),
        "{header}"
    );
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_txt
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[10 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), data).unwrap()
}

/// The Python of the cross-check venv (set by scripts/test.sh), or `None` with a loud note;
/// in CI its absence fails the test.
pub fn ort_python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("ONNX_DLQ_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{test}: ONNX_DLQ_PYTHON is not set but CI=true; run the tests through scripts/test.sh");
            }
            eprintln!("SKIPPED {test} (ONNX Runtime part): ONNX_DLQ_PYTHON not set; scripts/test.sh sets it up");
            None
        }
    }
}

/// Checks `model` with onnx.checker (full check) and runs it in ONNX Runtime on `input`.
pub fn run_ort(python: &Path, model: &Path, input: &ndarray::ArrayD<f32>) -> ndarray::ArrayD<f32> {
    run_ort_with(python, model, input, None)
}

/// The ONNX Runtime custom-op library (crates/dlq-ort, a dev-dependency, so cargo builds it
/// beside the test binaries).
#[allow(dead_code)]
pub fn ort_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let name = format!(
        "{}onnx_dlq_ort{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let path = deps.join(&name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// [`run_ort`] with a custom-op library registered (for models with DlqConv nodes).
pub fn run_ort_with(
    python: &Path,
    model: &Path,
    input: &ndarray::ArrayD<f32>,
    library: Option<&Path>,
) -> ndarray::ArrayD<f32> {
    let tmp = tempfile::tempdir().unwrap();
    let (inp, out) = (tmp.path().join("x.npy"), tmp.path().join("y.npy"));
    write_npy(&inp, input);
    let o = Command::new(python)
        .arg(repo().join("scripts/ort_run.py"))
        .arg(model)
        .arg(&inp)
        .arg(&out)
        .args(library)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ONNX Runtime / onnx.checker on {}: {}",
        model.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    read_npy(&out)
}

/// Operator counts of `model` after ONNX Runtime's graph optimisations (JSON object text).
#[allow(dead_code)]
pub fn ort_optimized_ops(python: &Path, model: &Path) -> String {
    let o = Command::new(python)
        .arg(repo().join("scripts/ort_optimized_ops.py"))
        .arg(model)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ONNX Runtime on {}: {}",
        model.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Deterministic uniform input in [-1, 1).
pub fn input_like(shape: &[usize], seed: u64) -> ndarray::ArrayD<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(shape), |_| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

pub fn max_abs_diff(a: &ndarray::ArrayD<f32>, b: &ndarray::ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

pub fn max_abs(a: &ndarray::ArrayD<f32>) -> f32 {
    a.iter().fold(0.0, |m, &x| m.max(x.abs()))
}

/// W̃ of `cb`, [M, N, kh, kw] flattened, computed from the codebook's stored parts with plain
/// loops: representative r of a subspace is Σ_j coefs[rα+j] · atoms[atom_ids[rα+j]] (DL) or
/// atom r (VQ), column (k, u, v) of a subspace is stored at (k·kh + u)·kw + v, and a palette's
/// channel scale multiplies row k. Written apart from `Codebook::reconstruct` so that the tests'
/// dense references do not share the code they check.
pub fn independent_reconstruction(cb: &onnx_dlq::codebook::Codebook) -> Vec<f32> {
    let [m, n, kh, kw] = cb.kernel_shape;
    let mut w = vec![0f32; m * n * kh * kw];
    for sub in &cb.subspaces {
        let dim = sub.atoms.dim;
        let atom = |i: usize| &sub.atoms.data[i * dim..(i + 1) * dim];
        for k in 0..m {
            let scale = cb.channel_scale.as_ref().map_or(1.0, |s| s[k]);
            for u in 0..kh {
                for v in 0..kw {
                    let r = sub.assignment[(k * kh + u) * kw + v] as usize;
                    let mut rep = vec![0f32; dim];
                    match &sub.codes {
                        None => rep.copy_from_slice(atom(r)),
                        Some(codes) => {
                            for j in 0..codes.alpha {
                                let slot = r * codes.alpha + j;
                                let a = atom(codes.atoms[slot] as usize);
                                for (x, &y) in rep.iter_mut().zip(a) {
                                    *x += codes.coefs[slot] * y;
                                }
                            }
                        }
                    }
                    for (i, c) in sub.channels.clone().enumerate() {
                        w[((k * n + c) * kh + u) * kw + v] = scale * rep[i];
                    }
                }
            }
        }
    }
    w
}

fn f32_values(t: &onnx_dlq::proto::TensorProto) -> Vec<f32> {
    match &t.raw_data {
        Some(raw) => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        None => t.float_data.clone(),
    }
}

fn set_f32_values(t: &mut onnx_dlq::proto::TensorProto, values: &[f32]) {
    t.raw_data = Some(values.iter().flat_map(|v| v.to_le_bytes()).collect());
    t.float_data.clear();
}

/// The dense reference of a single-Conv model made by [`conv_model`] (float32 weight `w`, bias
/// `b`): W̃ from [`independent_reconstruction`] in place of `w`, and the codebook's bias shift
/// added to `b` (or given as a new bias) — without the library's reconstruction.
pub fn dense_reference(
    original: &onnx_dlq::onnx::model::OnnxModel,
    cb: &onnx_dlq::codebook::Codebook,
) -> onnx_dlq::onnx::model::OnnxModel {
    let mut dense = original.clone();
    set_f32_values(
        initializer_mut(&mut dense, "w"),
        &independent_reconstruction(cb),
    );
    let Some(shift) = &cb.bias_shift else {
        return dense;
    };
    let has_bias = dense.graph().node[0].input.len() > 2;
    if has_bias {
        let b = initializer_mut(&mut dense, "b");
        let shifted: Vec<f32> = f32_values(b)
            .iter()
            .zip(shift)
            .map(|(x, s)| x + s)
            .collect();
        set_f32_values(b, &shifted);
    } else {
        use onnx_dlq::onnx::tensor::{new_tensor, FloatType};
        let g = dense.graph_mut();
        g.initializer
            .push(new_tensor("b", &[shift.len()], shift, FloatType::F32));
        g.node[0].input.push("b".into());
    }
    dense
}
