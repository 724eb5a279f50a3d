//! Progress of long work (clustering many layers, calibration, verification, stages, sweeps),
//! reported to a sink the front end installs — the CLI draws bars on stderr. With no sink
//! installed (tests, the fuzz harness, other library users) nothing is drawn. Like the `log`
//! facade, the sink is global, so the library's signatures carry no user-interface types.
//!
//! The same points stop work a front end cancels ([`cancel`]: the Python package on Ctrl-C):
//! the next task started or step counted unwinds with a [`Cancelled`] payload, which drops
//! every temporary file on the way, and the front end catches it where it started the work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// What draws progress: one [`ProgressBar`] per task.
pub trait ProgressSink: Send + Sync {
    fn start(&self, label: &str, total: u64) -> Box<dyn ProgressBar>;
}

/// One task's progress, drawn by the sink.
pub trait ProgressBar: Send + Sync {
    fn inc(&self, n: u64);
    fn finish(&self);
    /// A short status beside the label (e.g. the current loss); ignored by default.
    fn note(&self, _text: &str) {}
}

static SINK: OnceLock<Box<dyn ProgressSink>> = OnceLock::new();

/// Installs the sink for the rest of the process; `false` if one was installed already.
pub fn install(sink: Box<dyn ProgressSink>) -> bool {
    SINK.set(sink).is_ok()
}

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// The panic payload that stops cancelled work.
#[derive(Debug)]
pub struct Cancelled;

/// Asks the work under way to stop at its next progress point (from any thread).
pub fn cancel() {
    CANCELLED.store(true, Ordering::SeqCst);
}

/// Lets new work run after a [`cancel`].
pub fn clear_cancel() {
    CANCELLED.store(false, Ordering::SeqCst);
}

/// A point where cancelled work stops, in long work that counts no steps.
pub fn checkpoint() {
    stop_if_cancelled();
}

fn stop_if_cancelled() {
    if CANCELLED.load(Ordering::Relaxed) {
        std::panic::panic_any(Cancelled);
    }
}

/// A task of `total` steps labelled `label`; finished when dropped.
pub struct Task {
    bar: Option<Box<dyn ProgressBar>>,
}

/// Starts a task (drawn only when a sink is installed).
pub fn task(label: &str, total: u64) -> Task {
    stop_if_cancelled();
    Task {
        bar: SINK.get().map(|s| s.start(label, total)),
    }
}

impl Task {
    /// `n` more steps done (callable from parallel workers).
    pub fn inc(&self, n: u64) {
        stop_if_cancelled();
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Shows `text` beside the label (the loss of a training step, say).
    pub fn note(&self, text: &str) {
        stop_if_cancelled();
        if let Some(b) = &self.bar {
            b.note(text);
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}
