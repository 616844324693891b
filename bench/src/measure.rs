//! Running one contender: its wall time from start to exit and its CPU
//! time, from the kernel's accounting of the child (`wait4`), its peak
//! resident memory (`VmHWM`, read while it runs), and the time it says it
//! took from its first delivery to its last settlement.
//!
//! `wait4`'s `ru_maxrss` is no measure of a child's memory: a child
//! started with `vfork` (as `Command` starts them) records at `exec` the
//! peak of the memory it shared with the harness, so every contender
//! would report at least the harness's own peak.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How one run went.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// From exec to exit.
    pub seconds: f64,
    /// From the first delivery to the last settlement, as the contender
    /// logged it: connection set-up and shutdown left out.
    pub active_seconds: f64,
    /// User and system CPU time of the whole process.
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
}

/// What every contender prints when it is done (the host as part of a log
/// line), followed by the seconds.
const ACTIVE_MARK: &str = "first delivery to last settle: ";

/// Runs `command` to its end, its output going to `log`, and kills it
/// after `deadline`. A non-zero exit or a kill is an error naming the log.
pub fn measure(command: &mut Command, log: &Path, deadline: Duration) -> Result<Measured, String> {
    let output = File::create(log).map_err(|error| format!("{}: {error}", log.display()))?;
    let errors = output
        .try_clone()
        .map_err(|error| format!("{}: {error}", log.display()))?;
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(errors)
        .spawn()
        .map_err(|error| format!("cannot start {command:?}: {error}"))?;
    let pid = child.id() as libc::pid_t;
    let finished = Arc::new(AtomicBool::new(false));
    let peak_rss_kib = Arc::new(AtomicU64::new(0));
    let watchdog = {
        let finished = finished.clone();
        let peak_rss_kib = peak_rss_kib.clone();
        let status = format!("/proc/{pid}/status");
        std::thread::spawn(move || {
            let until = Instant::now() + deadline;
            while Instant::now() < until {
                if finished.load(Ordering::SeqCst) {
                    return;
                }
                if let Some(peak) = status_kib(&status, "VmHWM:") {
                    peak_rss_kib.fetch_max(peak, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if !finished.load(Ordering::SeqCst) {
                // SAFETY: kill(2) takes any pid. This one is our child's,
                // unreaped unless wait4 returned in the few instructions
                // before `finished` is set.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        })
    };
    let (status, usage) = wait4(pid)?;
    let seconds = started.elapsed().as_secs_f64();
    finished.store(true, Ordering::SeqCst);
    let _ = watchdog.join();
    // std's Child is never waited on: wait4 reaped it.
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    if code != 0 {
        return Err(format!(
            "{command:?} ended with {} (killed after {deadline:?}?); see {}",
            code,
            log.display()
        ));
    }
    let active_seconds = active_seconds(log)?;
    let cpu = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    Ok(Measured {
        seconds,
        active_seconds,
        cpu_seconds: cpu(usage.ru_utime) + cpu(usage.ru_stime),
        peak_rss_kib: peak_rss_kib.load(Ordering::SeqCst),
    })
}

/// A `/proc/PID/status` field in KiB (`VmHWM:`, `VmRSS:`), if the process
/// is still there.
pub fn status_kib(status_path: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The seconds after [`ACTIVE_MARK`] on the last line of `log` that has
/// it.
fn active_seconds(log: &Path) -> Result<f64, String> {
    let text =
        std::fs::read_to_string(log).map_err(|error| format!("{}: {error}", log.display()))?;
    text.lines()
        .rev()
        .find_map(|line| {
            let (_, after) = line.split_once(ACTIVE_MARK)?;
            after.split_whitespace().next()?.parse::<f64>().ok()
        })
        .ok_or_else(|| format!("no {ACTIVE_MARK:?} line in {}", log.display()))
}

/// What the Python bridge's processes say they spent in Python (building
/// the message and running the callback), summed over them: the lines
/// [`PYTHON_TIME_MARK`]` N message(s) in S s; waiting for the host W s`
/// that its driver writes at its end when `FM_PYTHON_BRIDGE_TIMING` is set.
/// `None` without such a line.
pub fn python_seconds(log: &Path) -> Option<f64> {
    python_figure(log, " in ")
}

/// The time the bridge's processes waited for the host to send a message
/// (the `W` of [`python_seconds`]'s lines), summed over them.
pub fn python_waiting_seconds(log: &Path) -> Option<f64> {
    python_figure(log, "waiting for the host ")
}

/// The seconds after `label` on each [`PYTHON_TIME_MARK`] line, summed.
fn python_figure(log: &Path, label: &str) -> Option<f64> {
    let text = std::fs::read_to_string(log).ok()?;
    let seconds: Vec<f64> = text
        .lines()
        .filter_map(|line| {
            let (_, after) = line.split_once(PYTHON_TIME_MARK)?;
            let (_, seconds) = after.split_once(label)?;
            seconds.split_whitespace().next()?.parse::<f64>().ok()
        })
        .collect();
    (!seconds.is_empty()).then(|| seconds.iter().sum())
}

/// Where the bridge's driver reports its own time (see [`python_seconds`]).
pub const PYTHON_TIME_MARK: &str = "fm-python-bridge timing:";

fn wait4(pid: libc::pid_t) -> Result<(i32, libc::rusage), String> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for the kernel to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our child; status and usage are valid for writes.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            return Ok((status, usage));
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4: {error}"));
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[middle],
        _ => (sorted[middle - 1] + sorted[middle]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
