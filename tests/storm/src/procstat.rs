//! A process's peak memory and CPU time from /proc, and our own CPU time.

use anyhow::{Context, Result};
use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// VmHWM: peak resident set, bytes.
    pub peak_rss_bytes: u64,
    /// utime + stime, seconds.
    pub cpu_secs: f64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `pid`'s VmHWM and CPU time so far.
pub fn usage(pid: u32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM in /proc status")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok(Usage {
        peak_rss_bytes: hwm_kib * 1024,
        cpu_secs: cpu_from_stat(&stat)?,
    })
}

/// utime (field 14) + stime (field 15); the command name (field 2) may
/// hold spaces, so fields are counted after its closing parenthesis.
fn cpu_from_stat(stat: &str) -> Result<f64> {
    let rest = &stat[stat.rfind(')').context("malformed /proc stat")? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = f.get(11).context("short /proc stat")?.parse()?;
    let stime: u64 = f.get(12).context("short /proc stat")?.parse()?;
    Ok((utime + stime) as f64 / clock_ticks())
}

/// This process's CPU time (all threads), seconds.
pub fn own_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_from_stat(&s).ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() -> Result<()> {
        let line = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 1000 10";
        assert!((cpu_from_stat(line)? - 300.0 / clock_ticks()).abs() < 1e-9);
        let u = usage(std::process::id())?;
        assert!(u.peak_rss_bytes > 0);
        Ok(())
    }
}
