//! What running a model may take in memory, checked before an engine runs it: an engine keeps
//! some of a run's tensors alive at once, at most all of them, and a converted model at a high
//! resolution can hold tens of gigabytes of them (the standard-operator form of a 720×720
//! style-transfer network: 21.6 GB in ONNX Runtime).

use std::collections::HashMap;

/// The bytes of every tensor of `shapes` as float32: an upper bound of what one run holds at
/// once (engines reuse buffers, so they usually need far less).
pub fn tensors_bytes(shapes: &HashMap<String, Vec<usize>>) -> u64 {
    shapes
        .values()
        .map(|s| s.iter().fold(4u64, |b, &d| b.saturating_mul(d as u64)))
        .fold(0u64, u64::saturating_add)
}

/// The memory this process can have: the least of what the system can give without swapping
/// (`MemAvailable`), the address-space limit (`ulimit -v`) and the cgroup's `memory.max`, of
/// those the system states.
pub fn available_bytes() -> Option<u64> {
    [meminfo_available(), address_space_limit(), cgroup_limit()]
        .into_iter()
        .flatten()
        .min()
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

/// Gigabytes, for messages.
pub fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
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
}
