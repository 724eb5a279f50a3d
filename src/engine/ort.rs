//! ONNX Runtime as a second engine, loaded at run time from a shared library (nothing is linked
//! or downloaded at build time): `ORT_DYLIB_PATH`, or the library the `onnxruntime` Python
//! package bundles (the package the embedding Python imports, when onnx-dlq runs inside Python;
//! otherwise found through `ONNX_DLQ_PYTHON` or `python3`). Users deploy to ONNX
//! Runtime, so `verify --engine ort` measures accuracy and latency where the model will run.
//!
//! One session per worker thread, each single-threaded (`intra_op_num_threads = 1`), so a set of
//! inputs runs in parallel as with tract and latency is the single-threaded figure. Models with
//! `DlqConv` nodes (the fused form) get onnx-dlq's custom-op library registered.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, bail, ensure, Context, Result};
use ndarray::{ArrayD, IxDyn};
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::tensor::TensorElementType;
use ort::value::{Tensor, ValueType};
use prost::Message;

use crate::onnx::model::OnnxModel;

/// The oldest ONNX Runtime whose C API the `ort` crate's tables match (1.22).
const MIN_MINOR_VERSION: u32 = ort::MINOR_VERSION;

/// The loaded library's path and version, or why none could be loaded (once per process).
static RUNTIME: OnceLock<std::result::Result<(PathBuf, String), String>> = OnceLock::new();

/// Where a front end embedded in Python found what ONNX Runtime needs: the `onnxruntime`
/// package's directory and onnx-dlq's custom-op library (the Python extension module itself).
#[derive(Debug, Clone)]
pub struct Embedded {
    pub python_package: Option<PathBuf>,
    pub custom_ops_library: Option<PathBuf>,
}

static EMBEDDED: OnceLock<Embedded> = OnceLock::new();

/// Tells the engine where the embedding Python's ONNX Runtime and the custom-op library are;
/// the environment variables still win. Set once per process: `false` if it was set already.
pub fn set_embedded(found: Embedded) -> bool {
    EMBEDDED.set(found).is_ok()
}

/// Finds, checks and initialises ONNX Runtime; an error saying how to provide it otherwise.
pub fn runtime() -> Result<(&'static Path, &'static str)> {
    let loaded = RUNTIME.get_or_init(|| load().map_err(|e| format!("{e:#}")));
    match loaded {
        Ok((path, version)) => Ok((path.as_path(), version.as_str())),
        Err(e) => Err(anyhow!("{e}")),
    }
}

fn load() -> Result<(PathBuf, String)> {
    let path = locate()?;
    let version = library_version(&path)?;
    let minor: u32 = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    ensure!(
        minor >= MIN_MINOR_VERSION,
        "ONNX Runtime {version} at {} is older than 1.{MIN_MINOR_VERSION}, the oldest whose C API onnx-dlq's bindings match; point ORT_DYLIB_PATH at a newer libonnxruntime",
        path.display()
    );
    ort::init_from(path.display().to_string())
        .with_name("onnx-dlq")
        .commit()
        .map_err(|e| anyhow!("initialising ONNX Runtime from {}: {e}", path.display()))?;
    Ok((path, version))
}

/// `ORT_DYLIB_PATH`, else the Python package's bundled `capi/libonnxruntime.so*`.
fn locate() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        ensure!(
            p.is_file(),
            "ORT_DYLIB_PATH is {}, which is not a file",
            p.display()
        );
        return Ok(p);
    }
    let python = std::env::var_os("ONNX_DLQ_PYTHON").unwrap_or_else(|| "python3".into());
    let embedded = EMBEDDED.get().and_then(|e| e.python_package.clone());
    let found = embedded
        .or_else(|| python_package(&python))
        .map(|p| p.join("capi"));
    let not_found = || {
        anyhow!(
            "ONNX Runtime was not found: set ORT_DYLIB_PATH to a libonnxruntime shared library (1.{MIN_MINOR_VERSION} or newer), or install the `onnxruntime` Python package (`pip install onnxruntime`; its bundled library is used, found through {} — set ONNX_DLQ_PYTHON to pick another Python)",
            Path::new(&python).display()
        )
    };
    let capi = found.ok_or_else(not_found)?;
    let prefix = format!("{}onnxruntime", std::env::consts::DLL_PREFIX);
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&capi)
        .map_err(|_| not_found())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                // libonnxruntime.so[.1.31.1], not libonnxruntime_providers_shared.so.
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|rest| {
                    rest.starts_with('.') && rest.contains(std::env::consts::DLL_SUFFIX)
                })
        })
        .collect();
    libs.sort();
    libs.pop().ok_or_else(not_found)
}

/// The `onnxruntime` package's directory as `python` imports it.
fn python_package(python: &std::ffi::OsStr) -> Option<PathBuf> {
    let script = "import os, onnxruntime; print(os.path.dirname(onnxruntime.__file__))";
    std::process::Command::new(python)
        .args(["-c", script])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
}

/// The version string the library reports (`OrtGetApiBase()->GetVersionString()`), read before
/// `ort` touches it: `ort` panics on a library it cannot use.
fn library_version(path: &Path) -> Result<String> {
    // SAFETY: loading runs the library's initialisers; it is ONNX Runtime by the checks above
    // (its name), and the symbol below is part of its stable C ABI.
    let lib = unsafe { libloading::Library::new(path) }
        .with_context(|| format!("loading ONNX Runtime from {}", path.display()))?;
    let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
        unsafe { lib.get(b"OrtGetApiBase") }.with_context(|| {
            format!("{} has no OrtGetApiBase: not ONNX Runtime", path.display())
        })?;
    // SAFETY: OrtGetApiBase returns a pointer to a static table whose first entries (GetApi,
    // GetVersionString) are the same in every ONNX Runtime release.
    let version = unsafe {
        let base = get_base();
        ensure!(
            !base.is_null(),
            "{}: OrtGetApiBase returned null",
            path.display()
        );
        CStr::from_ptr(((*base).GetVersionString)())
            .to_string_lossy()
            .into_owned()
    };
    // Kept loaded: ort opens the same library next, and unloading ORT is not supported.
    std::mem::forget(lib);
    Ok(version)
}

/// A model prepared in ONNX Runtime for one input shape.
pub struct OrtRunner {
    sessions: Vec<Mutex<Session>>,
    input_name: String,
    /// What `run_all` returns, in order.
    output_names: Vec<String>,
    input_shape: Vec<usize>,
    /// A float16 model takes float16 inputs: ours are rounded to it.
    f16_input: bool,
    /// Each output's shape as ONNX Runtime's shape inference declares it, when every dimension
    /// is known.
    declared: Vec<Option<Vec<usize>>>,
}

impl OrtRunner {
    /// Prepares `model` (file path in errors) for inputs of `input_shape`, one session per
    /// rayon worker.
    pub fn new(model: &OnnxModel, input_shape: &[usize]) -> Result<OrtRunner> {
        OrtRunner::with_outputs(model, input_shape, &[])
    }

    /// Like [`OrtRunner::new`], but the session's outputs are the named tensors (any tensor of
    /// the graph, e.g. a Conv's input) instead of the model's, when `outputs` is not empty.
    pub fn with_outputs(
        model: &OnnxModel,
        input_shape: &[usize],
        outputs: &[String],
    ) -> Result<OrtRunner> {
        let workers = rayon::current_num_threads().max(1);
        OrtRunner::with_sessions(model, input_shape, outputs, workers)
    }

    /// [`OrtRunner::with_outputs`] with `workers` sessions.
    fn with_sessions(
        model: &OnnxModel,
        input_shape: &[usize],
        outputs: &[String],
        workers: usize,
    ) -> Result<OrtRunner> {
        let (lib_path, _) = runtime()?;
        let ctx = || {
            format!(
                "ONNX Runtime ({}) on {}",
                lib_path.display(),
                model.path.display()
            )
        };
        let bytes = exposing(model, outputs)?.encode_to_vec();
        let custom_ops = has_custom_ops(model).then(custom_ops_library).transpose()?;
        let sessions = (0..workers)
            .map(|_| session(&bytes, custom_ops.as_deref()).map(Mutex::new))
            .collect::<Result<Vec<_>>>()
            .with_context(ctx)?;
        let first = sessions[0].lock().expect("fresh session");
        ensure!(
            first.inputs.len() == 1,
            "{}: the model has {} inputs; onnx-dlq runs models with one",
            ctx(),
            first.inputs.len()
        );
        let input = &first.inputs[0];
        let f16_input = matches!(
            input.input_type,
            ValueType::Tensor {
                ty: TensorElementType::Float16,
                ..
            }
        );
        let input_name = input.name.clone();
        let output_names = first.outputs.iter().map(|o| o.name.clone()).collect();
        let declared = first
            .outputs
            .iter()
            .map(|o| match &o.output_type {
                // No dimensions is how ONNX Runtime declares a shape it could not infer (a true
                // scalar is then found by running): the style-transfer models' outputs of
                // `Crop` (an experimental operator without shape inference) came back as [].
                ValueType::Tensor { shape, .. }
                    if !shape.is_empty() && shape.iter().all(|&d| d >= 0) =>
                {
                    Some(dims_of(shape))
                }
                _ => None,
            })
            .collect();
        drop(first);
        Ok(OrtRunner {
            sessions,
            input_name,
            output_names,
            input_shape: input_shape.to_vec(),
            f16_input,
            declared,
        })
    }

    /// The outputs' shapes as ONNX Runtime's shape inference declares them (no run).
    pub fn declared_shapes(&self) -> Vec<Option<Vec<usize>>> {
        self.declared.clone()
    }

    /// Runs on `x`; the first output as f32.
    pub fn run(&self, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        let mut outputs = self.run_all(x)?;
        ensure!(!outputs.is_empty(), "the model has no outputs");
        Ok(outputs.swap_remove(0))
    }

    /// Runs on `x`; every output as f32, in order.
    pub fn run_all(&self, x: &ArrayD<f32>) -> Result<Vec<ArrayD<f32>>> {
        self.run_with(x, |name, value| match value {
            Some(value) => as_f32(value).with_context(|| format!("output `{name}`")),
            None => Ok(x.clone()),
        })
    }

    /// Runs on `x`; the shape of every output that is a tensor (of any element type), in order.
    pub fn output_shapes(&self, x: &ArrayD<f32>) -> Result<Vec<Option<Vec<usize>>>> {
        self.run_with(x, |_, value| {
            Ok(match value.map(|v| v.dtype()) {
                Some(ValueType::Tensor { shape, .. }) => Some(dims_of(shape)),
                Some(_) => None,
                None => Some(x.shape().to_vec()),
            })
        })
    }

    /// Runs on `x` and reads every output with `read` (its name and value), in order. An output
    /// that is the graph's input is read as `None` (it is `x`): ONNX Runtime hands such an
    /// output back as a view of the input buffer, which is gone once the run returns.
    fn run_with<T>(
        &self,
        x: &ArrayD<f32>,
        read: impl Fn(&str, Option<&ort::value::DynValue>) -> Result<T>,
    ) -> Result<Vec<T>> {
        ensure!(
            x.shape() == self.input_shape.as_slice(),
            "input shape {:?}, expected {:?}",
            x.shape(),
            self.input_shape
        );
        let worker = rayon::current_thread_index().unwrap_or(0) % self.sessions.len();
        let mut session = self.sessions[worker]
            .lock()
            .map_err(|_| anyhow!("an ONNX Runtime session panicked earlier"))?;
        let shape: Vec<i64> = x.shape().iter().map(|&d| d as i64).collect();
        let data: Vec<f32> = x.iter().copied().collect();
        let input = match self.f16_input {
            true => {
                let data: Vec<half::f16> = data.into_iter().map(half::f16::from_f32).collect();
                Tensor::from_array((shape, data)).map(Tensor::into_dyn)
            }
            false => Tensor::from_array((shape, data)).map(Tensor::into_dyn),
        }
        .map_err(ort_error)?;
        let outputs = session
            .run(ort::inputs![self.input_name.as_str() => input])
            .map_err(ort_error)?;
        self.output_names
            .iter()
            .map(|name| {
                if *name == self.input_name {
                    return read(name, None);
                }
                let value = outputs
                    .get(name.as_str())
                    .with_context(|| format!("ONNX Runtime returned no `{name}`"))?;
                read(name, Some(value))
            })
            .collect()
    }
}

/// Tensors exposed per run when ONNX Runtime must run the model to learn their shapes: an
/// exposed tensor lives until the run ends, and at 720×720 one tensor of 64 channels is 130 MB
/// (exposing all of a converted style-transfer model's at once needed 24 GB).
const SHAPE_RUN_TENSORS: usize = 4;

/// The shapes of `tensors` for an input of `input_shape`. First from ONNX Runtime's own shape
/// inference (a session with the input's dimensions fixed and the tensors as outputs, never
/// run); with `runs`, the tensors it leaves unknown from runs on zeros exposing at most
/// [`SHAPE_RUN_TENSORS`] at a time, so that memory stays that of the model plus a few tensors.
pub fn tensor_shapes(
    model: &OnnxModel,
    input_shape: &[usize],
    tensors: &[String],
    runs: bool,
) -> Result<Vec<(String, Vec<usize>)>> {
    let fixed = OnnxModel {
        proto: with_input_dims(model, input_shape)?,
        path: model.path.clone(),
        base_dir: model.base_dir.clone(),
    };
    let declared = OrtRunner::with_sessions(&fixed, input_shape, tensors, 1)?.declared_shapes();
    let mut found = vec![];
    let mut unknown = vec![];
    for (name, shape) in tensors.iter().zip(declared) {
        match shape {
            Some(shape) => found.push((name.clone(), shape)),
            None => unknown.push(name.clone()),
        }
    }
    if !runs {
        return Ok(found);
    }
    let zeros = ArrayD::zeros(IxDyn(input_shape));
    for chunk in unknown.chunks(SHAPE_RUN_TENSORS) {
        let runner = OrtRunner::with_sessions(&fixed, input_shape, chunk, 1)?;
        let shapes = runner.output_shapes(&zeros)?;
        found.extend(
            chunk
                .iter()
                .zip(shapes)
                .filter_map(|(name, shape)| Some((name.clone(), shape?))),
        );
    }
    Ok(found)
}

/// `model`'s proto with its (single) run-time input declared at `input_shape`, so that ONNX
/// Runtime's shape inference can resolve the shapes that follow from it.
fn with_input_dims(model: &OnnxModel, input_shape: &[usize]) -> Result<crate::proto::ModelProto> {
    let mut proto = model.proto.clone();
    let graph = proto.graph.as_mut().context("the model has no graph")?;
    let inits: std::collections::HashSet<&str> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let dims: Vec<i64> = input_shape.iter().map(|&d| d as i64).collect();
    let inputs: Vec<usize> = (0..graph.input.len())
        .filter(|&i| !inits.contains(graph.input[i].name.as_deref().unwrap_or_default()))
        .collect();
    if let [i] = inputs[..] {
        let v = &graph.input[i];
        let elem = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(crate::proto::type_proto::Value::TensorType(t)) => t.elem_type.unwrap_or(1),
            _ => 1,
        };
        let name = v.name.clone().unwrap_or_default();
        graph.input[i] = crate::onnx::build::value_info(&name, elem, Some(&dims));
    }
    Ok(proto)
}

/// A float tensor (f32 or f16) as f32.
fn as_f32(value: &ort::value::DynValue) -> Result<ArrayD<f32>> {
    let (dims, values): (Vec<usize>, Vec<f32>) = match value.try_extract_tensor::<f32>() {
        Ok((s, v)) => (dims_of(s), v.to_vec()),
        Err(_) => {
            let (s, v) = value.try_extract_tensor::<half::f16>().map_err(ort_error)?;
            (dims_of(s), v.iter().map(|h| h.to_f32()).collect())
        }
    };
    Ok(ArrayD::from_shape_vec(IxDyn(&dims), values)?)
}

/// `model`'s proto (external data read in) with `outputs` as its graph outputs (ONNX Runtime
/// infers their types), or with its own when `outputs` is empty.
fn exposing(model: &OnnxModel, outputs: &[String]) -> Result<crate::proto::ModelProto> {
    let mut proto = model.proto_inline()?;
    if outputs.is_empty() {
        return Ok(proto);
    }
    let graph = proto.graph.as_mut().context("the model has no graph")?;
    let produced = |name: &str| {
        graph.input.iter().any(|v| v.name.as_deref() == Some(name))
            || graph
                .node
                .iter()
                .any(|n| n.output.iter().any(|o| o == name))
    };
    if let Some(missing) = outputs.iter().find(|o| !produced(o)) {
        bail!("tensor `{missing}` is not in the model");
    }
    graph.output = outputs
        .iter()
        .map(|name| crate::proto::ValueInfoProto {
            name: Some(name.clone()),
            ..Default::default()
        })
        .collect();
    Ok(proto)
}

fn dims_of(shape: &ort::tensor::Shape) -> Vec<usize> {
    shape.iter().map(|&d| d.max(0) as usize).collect()
}

fn ort_error(e: ort::Error) -> anyhow::Error {
    anyhow!("ONNX Runtime: {e}")
}

/// A single-threaded session with ONNX Runtime's full graph optimisations, as deployed.
fn session(bytes: &[u8], custom_ops: Option<&Path>) -> Result<Session> {
    let mut b = Session::builder()
        .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3))
        .and_then(|b| b.with_intra_threads(1))
        // ONNX Runtime's own error log would repeat on stderr what the returned error says.
        .and_then(|b| b.with_log_level(ort::logging::LogLevel::Fatal))
        .map_err(ort_error)?;
    if let Some(lib) = custom_ops {
        b = b.with_operator_library(lib).map_err(ort_error)?;
    }
    b.commit_from_memory(bytes).map_err(ort_error)
}

fn has_custom_ops(model: &OnnxModel) -> bool {
    model
        .graph()
        .node
        .iter()
        .any(|n| n.op_type.as_deref() == Some(super::dlq_op::OP_TYPE))
}

/// onnx-dlq's custom-op library (`cargo build -p dlq-ort`): `ONNX_DLQ_ORT_LIBRARY`, the Python
/// extension module when onnx-dlq runs inside Python, or beside
/// this executable (or its parent, for test binaries under `deps/`).
fn custom_ops_library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ONNX_DLQ_ORT_LIBRARY") {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = EMBEDDED.get().and_then(|e| e.custom_ops_library.clone()) {
        return Ok(p);
    }
    let name = format!(
        "{}onnx_dlq_ort{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the executable's directory")?;
    // The CLI binary sits in target/<profile>, test binaries and cdylib dev-dependencies in
    // target/<profile>/deps.
    let mut candidates = vec![dir.join(&name), dir.join("deps").join(&name)];
    if dir.ends_with("deps") {
        candidates.extend(dir.parent().map(|p| p.join(&name)));
    }
    if let Some(found) = candidates.into_iter().find(|c| c.is_file()) {
        return Ok(found);
    }
    bail!(
        "the model has DlqConv nodes (the fused form) and ONNX Runtime needs onnx-dlq's custom-op library for them: build it with `cargo build --release -p dlq-ort` and set ONNX_DLQ_ORT_LIBRARY to the {name} it writes"
    )
}
