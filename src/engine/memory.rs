//! What running a model may take in memory, checked before an engine runs it: an engine keeps
//! some of a run's tensors alive at once, at most all of them, and a converted model at a high
//! resolution can hold tens of gigabytes of them (the standard-operator form of a 720×720
//! style-transfer network: 21.6 GB in ONNX Runtime).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::setting::Setting;

/// The bytes of every tensor of `shapes` as float32: an upper bound of what one run holds at
/// once (engines reuse buffers, so they usually need far less).
pub fn tensors_bytes(shapes: &HashMap<String, Vec<usize>>) -> u64 {
    shapes
        .values()
        .map(|s| s.iter().fold(4u64, |b, &d| b.saturating_mul(d as u64)))
        .fold(0u64, u64::saturating_add)
}

/// The memory cap a user set for this process, in bytes (0: none).
static CAP: AtomicU64 = AtomicU64::new(0);

/// Caps what every check of this module counts as available (`None`: the system's figures only).
pub fn set_cap(bytes: Option<u64>) {
    CAP.store(bytes.unwrap_or(0), Ordering::SeqCst);
}

fn cap() -> Option<u64> {
    Some(CAP.load(Ordering::SeqCst)).filter(|&b| b > 0)
}

/// Which bound makes the memory available what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// What the system can give without swapping (`MemAvailable`).
    System,
    /// The address-space limit (`ulimit -v`).
    AddressSpace,
    /// The cgroup's `memory.max`.
    Cgroup,
    /// The cap the user set ([`set_cap`]).
    Cap,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bound::System => "what the system has free",
            Bound::AddressSpace => "the address-space limit (ulimit -v)",
            Bound::Cgroup => "the cgroup's memory.max",
            Bound::Cap => "the memory cap set for this run",
        })
    }
}

/// The memory this process can have and the bound that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Available {
    pub bytes: u64,
    pub bound: Bound,
}

/// The least of what the system can give without swapping (`MemAvailable`), the address-space
/// limit (`ulimit -v`), the cgroup's `memory.max` and the user's cap, of those that are stated.
pub fn available() -> Option<Available> {
    [
        (meminfo_available(), Bound::System),
        (address_space_limit(), Bound::AddressSpace),
        (cgroup_limit(), Bound::Cgroup),
        (cap(), Bound::Cap),
    ]
    .into_iter()
    .filter_map(|(bytes, bound)| bytes.map(|bytes| Available { bytes, bound }))
    .min_by_key(|a| a.bytes)
}

/// [`available`]'s bytes.
pub fn available_bytes() -> Option<u64> {
    available().map(|a| a.bytes)
}

/// A step that would need more memory than the process can have, found before it starts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct MemoryError {
    /// What would take the memory, in the domain's words ("the 256 calibration images").
    pub step: String,
    pub need: u64,
    pub available: Available,
    /// The settings that would lower the need (and the cap, when it is the bound).
    pub remedies: Vec<Setting>,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} would take {}, and {} is available ({}); nothing was started",
            self.step,
            gb(self.need),
            gb(self.available.bytes),
            self.available.bound
        )
    }
}

/// `Err(MemoryError)` when `need` bytes are more than `share` of what is available (the rest
/// is left for the runs that follow); `Ok` when the system states no figure.
pub fn check_fits(
    step: impl FnOnce() -> String,
    need: u64,
    share: f64,
    remedies: &[Setting],
) -> Result<(), MemoryError> {
    match available() {
        Some(available) => fits(step, need, share, available, remedies),
        None => Ok(()),
    }
}

fn fits(
    step: impl FnOnce() -> String,
    need: u64,
    share: f64,
    available: Available,
    remedies: &[Setting],
) -> Result<(), MemoryError> {
    if need as f64 <= share * available.bytes as f64 {
        return Ok(());
    }
    let mut remedies = remedies.to_vec();
    if available.bound == Bound::Cap {
        remedies.push(Setting::MaxMemory);
    }
    Err(MemoryError {
        step: step(),
        need,
        available,
        remedies,
    })
}

fn meminfo_available() -> Option<u64> {
    kib_field("/proc/meminfo", "MemAvailable:")
}

/// The `key: N kB` line of a /proc file, in bytes.
fn kib_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The soft `Max address space` of /proc/self/limits, in bytes ("unlimited": none).
fn address_space_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// cgroup v2's `memory.max` of this process's group ("max": none).
fn cgroup_limit() -> Option<u64> {
    let group = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = group.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok()?;
    max.trim().parse().ok()
}

/// The process's peak resident memory so far (VmHWM of /proc/self/status; `None` where there
/// is none).
pub fn peak_memory_bytes() -> Option<u64> {
    kib_field("/proc/self/status", "VmHWM:")
}

/// Gigabytes (megabytes, kilobytes below one), for messages.
pub fn gb(bytes: u64) -> String {
    match bytes {
        0..1_000_000 => format!("{:.0} KB", bytes as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.0} MB", bytes as f64 / 1e6),
        _ => format!("{:.1} GB", bytes as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_bytes_add_up_and_saturate() {
        let mut shapes = HashMap::new();
        shapes.insert("a".to_string(), vec![1, 32, 720, 720]);
        shapes.insert("b".to_string(), vec![10]);
        assert_eq!(tensors_bytes(&shapes), 4 * 32 * 720 * 720 + 40);
        shapes.insert("huge".to_string(), vec![usize::MAX, usize::MAX]);
        assert_eq!(tensors_bytes(&shapes), u64::MAX);
        assert_eq!(gb(21_600_000_000), "21.6 GB");
    }

    #[test]
    fn a_step_fits_in_its_share_and_a_cap_is_named_as_a_remedy() {
        let cap = Available {
            bytes: 4_000_000_000,
            bound: Bound::Cap,
        };
        assert!(fits(|| "x".into(), 2_000_000_000, 0.5, cap, &[]).is_ok());
        let e = fits(
            || "the 9 images".into(),
            2_500_000_000,
            0.5,
            cap,
            &[Setting::Samples],
        )
        .unwrap_err();
        assert_eq!(e.remedies, vec![Setting::Samples, Setting::MaxMemory]);
        assert_eq!(
            e.to_string(),
            "the 9 images would take 2.5 GB, and 4.0 GB is available (the memory cap set for this run); nothing was started"
        );
        let system = Available {
            bound: Bound::System,
            ..cap
        };
        let e = fits(|| "y".into(), 3_000_000_000, 0.5, system, &[]).unwrap_err();
        assert!(e.remedies.is_empty());
        assert_eq!(gb(600_000), "600 KB");
        assert_eq!(gb(2_400_000), "2 MB");
    }
}
