//! `onnx_dlq._onnx_dlq`: the command line run inside Python. The package's Python layer
//! (`python/onnx_dlq`) turns keyword arguments into the command's flags, so the API and the
//! command share one parser, one set of rules and one report; this module runs a command with
//! the GIL released, stops it on Ctrl-C, and turns its errors into Python exceptions.
//!
//! The same shared library is ONNX Runtime's custom-op library for the fused form: it carries
//! dlq-ort's `RegisterCustomOps`.

use std::ffi::OsString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use onnx_dlq::engine::ort::{set_embedded, Embedded};
use onnx_dlq::progress;
use pyo3::create_exception;
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

// ONNX Runtime looks this symbol up when it loads the module as a custom-op library.
pub use onnx_dlq_ort::RegisterCustomOps;

create_exception!(
    onnx_dlq,
    ConversionError,
    PyRuntimeError,
    "onnx-dlq could not do what was asked of a model (its message is the command line's `error:` line)."
);

/// How often a running command looks for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// A command's worker gets the main thread's stack size, not the spawned threads' 2 MiB.
const WORKER_STACK: usize = 8 << 20;

/// Runs the command line `argv` (the program name first) exactly as the `onnx-dlq` executable
/// does, report on stdout and errors on stderr, and returns its exit code.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<OsString>) -> i32 {
    py.detach(|| onnx_dlq::cli::main(argv))
}

/// Runs the command `argv` (the program name first) and returns what it writes to stdout.
/// Settings errors raise `ValueError`, other failures `ConversionError`, both with the command
/// line's message; Ctrl-C stops the command at its next progress point.
#[pyfunction]
fn run(py: Python<'_>, argv: Vec<OsString>) -> PyResult<String> {
    progress::clear_cancel();
    let (sender, receiver) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("onnx-dlq".into())
        .stack_size(WORKER_STACK)
        .spawn(move || {
            let mut out = Vec::new();
            let result = catch_unwind(AssertUnwindSafe(|| onnx_dlq::cli::run(argv, &mut out)));
            let _ = sender.send((result, out));
        })
        .map_err(|e| PyRuntimeError::new_err(format!("starting onnx-dlq's worker: {e}")))?;
    let mut receiver = receiver;
    let (result, out) = loop {
        // The receiver goes into the GIL-free closure and back (it is not Sync).
        let (received, back) = py.detach(move || (receiver.recv_timeout(SIGNAL_POLL), receiver));
        receiver = back;
        match received {
            Ok(done) => break done,
            Err(RecvTimeoutError::Timeout) => {
                if let Err(interrupt) = py.check_signals() {
                    progress::cancel();
                    let _ = py.detach(|| worker.join());
                    progress::clear_cancel();
                    return Err(interrupt);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err(
                    "onnx-dlq's worker ended without a result",
                ))
            }
        }
    };
    let _ = worker.join();
    match result {
        Ok(Ok(())) => Ok(String::from_utf8_lossy(&out).into_owned()),
        Ok(Err(e)) => Err(python_error(&e)),
        Err(payload) if payload.is::<progress::Cancelled>() => {
            Err(PyKeyboardInterrupt::new_err(()))
        }
        Err(payload) => Err(PyRuntimeError::new_err(format!(
            "onnx-dlq internal error (a bug; please report it with the command): {}",
            panic_message(payload.as_ref())
        ))),
    }
}

/// `ValueError` for the user's settings, `ConversionError` otherwise, with the CLI's message.
fn python_error(e: &anyhow::Error) -> PyErr {
    let rendered = onnx_dlq::cli::render_error(e);
    // clap's usage errors carry their own `error: ` heading and a usage line after it.
    let message = rendered
        .trim_end()
        .trim_start_matches("error: ")
        .to_string();
    match onnx_dlq::cli::is_usage_error(e) {
        true => PyValueError::new_err(message),
        false => ConversionError::new_err(message),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Tells the engine where this Python's `onnxruntime` package is and which file is the custom-op
/// library (this module's own), so that nothing has to be set in the environment.
#[pyfunction]
#[pyo3(signature = (onnxruntime_package, custom_ops_library))]
fn set_runtime(onnxruntime_package: Option<PathBuf>, custom_ops_library: PathBuf) -> bool {
    set_embedded(Embedded {
        python_package: onnxruntime_package,
        custom_ops_library: Some(custom_ops_library),
    })
}

/// Cancelled work unwinds quietly: Ctrl-C is not a crash.
fn silence_cancelled_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.payload().is::<progress::Cancelled>() {
            previous(info);
        }
    }));
}

#[pymodule]
fn _onnx_dlq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    silence_cancelled_panics();
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(set_runtime, m)?)?;
    m.add("ConversionError", m.py().get_type::<ConversionError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
