//! One run of the command: its input, its output, its end.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use fm_plugin_api::Message;

use crate::Settings;

/// The host's own log target (shown as `fedora_messaging.exec`): this
/// plugin ships with the host, and its lines are the command's output,
/// which the default log_config should show, as it shows the host's.
const LOG_TARGET: &str = "fm_host::exec";

/// How much of the command's output reaches the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longer lines are cut, saying how much was left out.
    pub max_line_bytes: usize,
    /// Lines after these many (standard output and error together, per
    /// message) are counted, not logged.
    pub max_lines: usize,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    Signalled(i32),
    TimedOut(Duration),
}

/// How long output may keep arriving after the command ended (from a
/// child that escaped its group with the pipes open) before the run
/// stops waiting for it.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// The environment the command gets from `message`, each variable with
/// the field it comes from. (The program and its arguments come from the
/// configuration alone, and the message itself goes in on standard input,
/// which carries any bytes.)
fn environment<'m>(message: &'m Message<'_>) -> [(&'static str, &'static str, &'m str); 3] {
    [
        ("FM_TOPIC", "topic", message.topic()),
        ("FM_ID", "id", message.id()),
        ("FM_QUEUE", "queue name", message.queue()),
    ]
}

/// `TRACEPARENT` and `TRACESTATE` for the message being consumed, as
/// OpenTelemetry's SDKs read them from the environment.
fn trace_environment() -> Vec<(&'static str, String)> {
    let Some(context) = fm_plugin_api::trace::context() else {
        return Vec::new();
    };
    let mut variables = vec![("TRACEPARENT", context.traceparent)];
    if !context.tracestate.is_empty() {
        variables.push(("TRACESTATE", context.tracestate));
    }
    variables
}

/// The field of `message` that cannot be an environment variable's value
/// (a NUL byte ends a C string), if any: the publisher chose it.
pub fn unfit_for_the_environment(message: &Message<'_>) -> Option<&'static str> {
    environment(message)
        .into_iter()
        .find(|(_, _, value)| value.contains('\0'))
        .map(|(_, field, _)| field)
}

/// Runs the command for `message` and waits for it, at most the timeout.
pub fn run(settings: &Settings, message: &Message<'_>) -> io::Result<Ending> {
    let mut command = Command::new(&settings.argv[0]);
    command
        .args(&settings.argv[1..])
        .envs(environment(message).map(|(name, _, value)| (name, value)))
        // The message's trace goes on in the command (interface revision
        // 5; nothing when traces are off or the host is older).
        .envs(trace_environment())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout ends everything it started,
        // and a terminal's Ctrl-C is the host's alone to handle.
        .process_group(0);
    // SAFETY: getpid is async-signal-safe, and runs before the fork.
    let host = unsafe { libc::getpid() };
    // SAFETY: between fork and exec only async-signal-safe calls run:
    // prctl, getppid and _exit.
    unsafe {
        command.pre_exec(move || {
            // Killed if the host dies first (a stop that gave up waiting
            // for it, a SIGKILL): a command never outlives its host. The
            // signal follows the consumer thread that runs the command,
            // which waits for it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != host {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let started = Instant::now();
    let group = i32::try_from(child.id()).map_err(io::Error::other)?;

    let input = message.to_record_line();
    let stdin = child.stdin.take();
    // A command that never reads its input must not block the run, nor
    // one that leaves a child holding it: the writer is not waited for;
    // it ends when the pipe's last reader does.
    thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(input.as_bytes());
        }
    });

    let (lines_done, output_ended) = mpsc::channel();
    let budget = Arc::new(AtomicUsize::new(settings.limits.max_lines));
    let mut readers = 0;
    let stdout = child
        .stdout
        .take()
        .map(|s| (Box::new(s) as Output, log::Level::Info, "stdout"));
    let stderr = child
        .stderr
        .take()
        .map(|s| (Box::new(s) as Output, log::Level::Warn, "stderr"));
    for (stream, level, name) in [stdout, stderr].into_iter().flatten() {
        readers += 1;
        let done = lines_done.clone();
        let budget = Arc::clone(&budget);
        let id = message.id().to_owned();
        let limits = settings.limits;
        thread::spawn(move || {
            log_lines(stream, level, name, &id, limits, &budget);
            let _ = done.send(());
        });
    }
    drop(lines_done);

    let (ended, ending) = mpsc::channel();
    thread::spawn(move || {
        // The command's exit is seen before it is reaped, so that its
        // group's id cannot be taken by another process before what the
        // command left running in it (`sleep 60 &`) is ended with it.
        wait_for_exit(group);
        end_group(group);
        let _ = ended.send(child.wait());
    });
    let status = match settings.timeout {
        None => ending.recv().map_err(io::Error::other)??,
        Some(timeout) => match ending.recv_timeout(timeout) {
            Ok(status) => status?,
            Err(_) => {
                end_group(group);
                // A process in uninterruptible sleep dies only when its
                // I/O returns: the run does not wait for that.
                let _ = ending.recv_timeout(KILLED_GRACE);
                wait_for_output(&output_ended, readers);
                return Ok(Ending::TimedOut(started.elapsed()));
            }
        },
    };
    wait_for_output(&output_ended, readers);
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => Ending::Exited(code),
        (None, Some(signal)) => Ending::Signalled(signal),
        (None, None) => Ending::Signalled(0),
    })
}

/// How long a killed command may take to be reaped before the run goes
/// on without it.
const KILLED_GRACE: Duration = Duration::from_secs(5);

/// Waits until the command leading `group` has exited, leaving it to be
/// reaped.
fn wait_for_exit(group: i32) {
    // SAFETY: waitid(2) on the command's pid (the group's id), with
    // WNOWAIT, into a zeroed siginfo_t it fills in; nothing is reaped.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        let waited = unsafe {
            libc::waitid(
                libc::P_PID,
                group as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if waited == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Kills every process of the command's group: what it started ends with
/// it.
fn end_group(group: i32) {
    // SAFETY: kill(2) on the process group the command leads, whose
    // leader is not reaped yet (or was killed for its timeout).
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

/// Lets the output readers finish logging, as long as the output ends
/// soon after the command.
fn wait_for_output(output_ended: &mpsc::Receiver<()>, readers: usize) {
    let deadline = Instant::now() + OUTPUT_GRACE;
    for _ in 0..readers {
        let left = deadline.saturating_duration_since(Instant::now());
        if output_ended.recv_timeout(left).is_err() {
            return;
        }
    }
}

/// One of the command's output streams.
type Output = Box<dyn Read + Send>;

fn log_lines(
    stream: Output,
    level: log::Level,
    name: &str,
    id: &str,
    limits: Limits,
    budget: &AtomicUsize,
) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut unlogged = 0usize;
    loop {
        line.clear();
        // Read at most a little more than a line may show, so a command
        // writing one endless line cannot fill the memory.
        let read = read_bounded_line(&mut reader, &mut line, limits.max_line_bytes);
        let Ok(Some(cut)) = read else { break };
        let allowed = budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if !allowed {
            unlogged += 1;
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if cut > 0 {
            log::log!(target: LOG_TARGET, level, "message {id} {name}: {text}… ({cut} more bytes)");
        } else {
            log::log!(target: LOG_TARGET, level, "message {id} {name}: {text}");
        }
    }
    if unlogged > 0 {
        log::warn!(target: LOG_TARGET, "message {id} {name}: {unlogged} more line(s) not logged (max_lines)");
    }
}

/// One line into `line`, keeping its first `max` bytes; the bytes after
/// them are read and counted (the count is returned). `None` at the end of
/// the stream.
fn read_bounded_line(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<usize>> {
    let mut total = 0;
    let mut cut = 0;
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok((total > 0).then_some(cut));
        }
        let end = buffer.iter().position(|&b| b == b'\n').map(|at| at + 1);
        let chunk = &buffer[..end.unwrap_or(buffer.len())];
        let room = max.saturating_sub(line.len());
        let kept = chunk.len().min(room);
        line.extend_from_slice(&chunk[..kept]);
        cut += chunk.len() - kept;
        total += chunk.len();
        let used = chunk.len();
        reader.consume(used);
        if end.is_some() {
            // The newline itself is not "cut" text.
            if kept < used {
                cut -= 1;
            }
            return Ok(Some(cut));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_and_counted() {
        let text = format!("short\n{}\nlast", "x".repeat(10_000));
        let mut reader = BufReader::with_capacity(64, text.as_bytes());
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while let Some(cut) = read_bounded_line(&mut reader, &mut line, 100).unwrap() {
            lines.push((String::from_utf8(line.clone()).unwrap(), cut));
            line.clear();
        }
        assert_eq!(
            lines,
            [
                ("short\n".to_owned(), 0),
                ("x".repeat(100), 9_900),
                ("last".to_owned(), 0)
            ]
        );
    }
}
