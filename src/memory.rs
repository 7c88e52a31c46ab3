//! Sizes checked before allocating: a model, its activations or a data set too large for the
//! machine ends in one line saying what, how big and what to change, instead of an
//! allocation abort (or, with Linux's overcommit, the OOM killer minutes later).

use crate::error::{Error, Result};

/// Bytes of memory the system can still give this process (Linux: `MemAvailable` in
/// /proc/meminfo); None where that is not known.
pub fn available_host_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A size in bytes for people: "512 KB", "3.2 GB".
pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1u64 << 20) as f64),
        b => format!("{} KB", b.div_ceil(1024)),
    }
}

/// Fails when `bytes` for `what` exceed the memory available now; `fix` says what to change.
pub fn check_host(what: &str, bytes: u64, fix: &str) -> Result<()> {
    match available_host_bytes() {
        Some(avail) if bytes > avail => Err(Error::Memory(format!(
            "{what} need {}, more than the {} of memory available; {fix}",
            human(bytes),
            human(avail)
        ))),
        _ => Ok(()),
    }
}
