//! One Python process running the callback, and the conversation with it.

use std::io::{self, BufRead, BufReader, PipeReader, PipeWriter, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fm_plugin_api::{ConsumerError, HostConfiguration, Message, PublishError, Publisher};
use serde_json::{Value, json};

use crate::{CallbackKind, python_callback};

/// The Python side, compiled into this library so the two always match.
const DRIVER: &str = include_str!("driver.py");

/// What `python -c` runs: the driver, handed over in the environment so
/// that `ps` shows a short command line, and named in tracebacks. It is
/// taken out of the environment before the callback or anything it starts
/// can see it.
const BOOTSTRAP: &str =
    "import os; exec(compile(os.environ.pop('FM_PYTHON_DRIVER'), 'fm_python_driver.py', 'exec'))";

/// The interpreter used when `[python] interpreter` is not set.
pub const DEFAULT_INTERPRETER: &str = "python3";

/// Top-level keys only this host reads: fedora-messaging refuses unknown
/// keys, so Python is given the file without them.
const HOST_KEYS: [&str; 5] = [
    "workers",
    "delivery_limit",
    "amqp_urls",
    "python",
    "stop_timeout",
];

/// How long a stopping Python process may take to end before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the bridge runs, from the host's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub callback: String,
    pub kind: CallbackKind,
    pub interpreter: String,
    pub config_file: Option<String>,
    /// How long Python may take to import the callback and be ready.
    pub start_timeout: Duration,
}

/// `[python] start_timeout`'s default: room for a large schema package's
/// import on a busy machine, and a bound on one that hangs.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(120);

impl Settings {
    /// The callback is the one the host was given when that is a Python
    /// one; when the host was pointed at this library itself
    /// (`--callback=libfm_python.so:Python`), the file's `callback`.
    pub fn from_host(host: &HostConfiguration) -> Result<Settings, String> {
        let from_file = host.table.get("callback").and_then(Value::as_str);
        let (callback, kind) = [host.callback.as_deref(), from_file]
            .into_iter()
            .flatten()
            .find_map(|spec| python_callback(spec).map(|kind| (spec.trim().to_owned(), kind)))
            .ok_or_else(|| {
                "the Python bridge has no Python callback to run: set `callback = \"package.module:callable\"` in the configuration file, or pass --callback=package.module:callable".to_owned()
            })?;
        let interpreter = match host.table.get("python").and_then(|p| p.get("interpreter")) {
            None => DEFAULT_INTERPRETER.to_owned(),
            Some(Value::String(path)) if !path.is_empty() => path.clone(),
            Some(_) => {
                return Err(
                    "[python] interpreter must be the path of a Python interpreter, as a string"
                        .to_owned(),
                );
            }
        };
        let start_timeout = match host
            .table
            .get("python")
            .and_then(|p| p.get("start_timeout"))
        {
            None => DEFAULT_START_TIMEOUT,
            Some(value) => value
                .as_f64()
                .filter(|seconds| *seconds > 0.0 && *seconds <= 86_400.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    format!("[python] start_timeout must be seconds above 0 and at most 86400, not {value}")
                })?,
        };
        Ok(Settings {
            callback,
            kind,
            interpreter,
            config_file: host.file.as_ref().map(|f| f.display().to_string()),
            start_timeout,
        })
    }
}

/// What the Python process says, as the consumer waits for it.
enum Answer {
    Ready(Value),
    StartFailed(String),
    Done(Value),
}

/// A running Python process and its two pipes.
pub struct Worker {
    child: Child,
    callback: String,
    requests: Arc<Mutex<Option<PipeWriter>>>,
    answers: Receiver<Answer>,
}

impl Worker {
    /// Starts Python and waits until the callback is imported (and a
    /// class instantiated), or has failed to be.
    pub fn start(settings: &Settings) -> Result<Worker, String> {
        let (requests_read, requests_write) =
            io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        let (answers_read, answers_write) =
            io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        let driver_settings = json!({
            "callback": settings.callback,
            "kind": match settings.kind {
                CallbackKind::Module => "module",
                CallbackKind::File => "file",
            },
            "conf": settings.config_file,
            "host_keys": HOST_KEYS,
            "log_level": python_level(log::max_level()),
        });
        let mut command = Command::new(&settings.interpreter);
        command
            .arg("-c")
            .arg(BOOTSTRAP)
            .arg(driver_settings.to_string())
            .env("FM_PYTHON_DRIVER", DRIVER)
            .stdin(Stdio::null())
            // Its own process group: a terminal's Ctrl-C is the host's to
            // handle; the host then ends Python by closing its input.
            .process_group(0);
        let (child_reads, child_writes) = (requests_read.as_raw_fd(), answers_write.as_raw_fd());
        // SAFETY: getpid is async-signal-safe, and runs before the fork.
        let host = unsafe { libc::getpid() };
        // SAFETY: between fork and exec only async-signal-safe calls run:
        // fcntl and dup2 on descriptors the parent keeps open until spawn
        // returns, prctl, getppid and _exit.
        unsafe {
            command.pre_exec(move || {
                die_with_the_host(host);
                place_fds(child_reads, child_writes)
            });
        }
        let child = command.spawn().map_err(|error| {
            format!(
                "cannot start the Python interpreter {:?}: {error}: install Python 3 or set [python] interpreter to one (a virtual environment's bin/python)",
                settings.interpreter
            )
        })?;
        drop((requests_read, answers_write));
        let requests = Arc::new(Mutex::new(Some(requests_write)));
        let (sender, answers) = mpsc::channel();
        let replies = Arc::clone(&requests);
        thread::Builder::new()
            .name("fm-python-answers".to_owned())
            .spawn(move || read_answers(answers_read, &sender, &replies))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let mut worker = Worker {
            child,
            callback: settings.callback.clone(),
            requests,
            answers,
        };
        match worker.answers.recv_timeout(settings.start_timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                kill_group(&mut worker.child);
                Err(format!(
                    "the Python callback {} was not ready within {} s ([python] start_timeout): its import hangs, or takes longer",
                    settings.callback,
                    settings.start_timeout.as_secs_f64()
                ))
            }
            Ok(Answer::Ready(about)) => {
                log::debug!("Python callback {} ready: {about}", settings.callback);
                Ok(worker)
            }
            Ok(Answer::StartFailed(reason)) => {
                worker.finish();
                Err(format!(
                    "the Python callback {} cannot start: {reason}",
                    settings.callback
                ))
            }
            Ok(Answer::Done(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = worker.reap();
                Err(format!(
                    "the Python process for {} ended before it was ready ({}); is {:?} a Python 3 with fedora-messaging installed?",
                    settings.callback,
                    describe(status),
                    settings.interpreter
                ))
            }
        }
    }

    /// Hands one message to Python and returns what the callback made of
    /// it.
    pub fn run(&mut self, message: &Message<'_>) -> Result<(), ConsumerError> {
        let body = String::from_utf8_lossy(message.raw_body());
        let priority = match message.priority() {
            0 => Value::Null,
            priority => Value::from(priority),
        };
        let request = json!({"message": {
            "id": message.id(),
            "topic": message.topic(),
            "queue": message.queue(),
            "headers": message.headers(),
            "priority": priority,
            "body": body,
        }});
        if let Err(error) = self.send(&request) {
            return Err(self.gone(message.id(), &error.to_string()));
        }
        match self.answers.recv() {
            Ok(Answer::Done(done)) => outcome(&done),
            Ok(_) => Err(ConsumerError::failed(
                "the Python bridge answered out of turn",
            )),
            Err(_) => Err(self.gone(message.id(), "its output closed")),
        }
    }

    fn send(&self, request: &Value) -> io::Result<()> {
        send_line(&self.requests, request)
    }

    /// The failure of a message whose Python process died under it.
    fn gone(&mut self, id: &str, what: &str) -> ConsumerError {
        let status = self.reap();
        ConsumerError::failed(format!(
            "the Python process running {} ended while handling message {id} ({what}; {})",
            self.callback,
            describe(status)
        ))
    }

    /// Waits for the process after its pipes closed.
    fn reap(&mut self) -> Option<ExitStatus> {
        self.close_requests();
        wait_with_deadline(&mut self.child, STOP_GRACE)
    }

    fn close_requests(&self) {
        if let Ok(mut requests) = self.requests.lock() {
            requests.take();
        }
    }

    /// Ends Python: its input closes, it returns from its loop; killed if
    /// it is still there after a grace period.
    pub fn finish(&mut self) {
        if let Some(status) = self.reap()
            && !status.success()
        {
            log::warn!(
                "the Python process for {} ended with {}",
                self.callback,
                describe(Some(status))
            );
        }
    }
}

impl Drop for Worker {
    /// After a failure the host drops consumers without `stop`; Python
    /// must not outlive them, nor anything it started.
    fn drop(&mut self) {
        self.close_requests();
        if let Ok(None) = self.child.try_wait() {
            kill_group(&mut self.child);
            let _ = self.child.wait();
        }
    }
}

/// Kills Python's process group (it leads one of its own): what a
/// callback started goes with it.
fn kill_group(child: &mut Child) {
    match libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on the group the child leads; the child is not
        // reaped yet, so the id is still its.
        Ok(group) => unsafe {
            libc::kill(-group, libc::SIGKILL);
        },
        Err(_) => {
            let _ = child.kill();
        }
    }
}

/// Makes the kernel kill Python when the host dies, however it dies (a
/// SIGKILL leaves no time to end it): a child never outlives its host.
/// The signal follows the thread that started Python, a consumer thread,
/// which lives as long as this worker.
///
/// # Safety
/// Called between fork and exec: async-signal-safe calls only.
unsafe fn die_with_the_host(host: libc::pid_t) {
    // SAFETY: prctl, getppid and _exit are async-signal-safe.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The host died before the request took effect.
        if libc::getppid() != host {
            libc::_exit(1);
        }
    }
}

/// Puts the child's ends of the pipes at fds 3 and 4, without close-on-exec.
/// Both are first moved above 4, so neither is overwritten by the other's
/// `dup2`, and `dup2` onto a different descriptor always clears the flag.
fn place_fds(reads: RawFd, writes: RawFd) -> io::Result<()> {
    let check = |result: libc::c_int| {
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    };
    // SAFETY: plain descriptor calls on descriptors this process owns.
    unsafe {
        let reads = check(libc::fcntl(reads, libc::F_DUPFD_CLOEXEC, 10))?;
        let writes = check(libc::fcntl(writes, libc::F_DUPFD_CLOEXEC, 10))?;
        check(libc::dup2(reads, 3))?;
        check(libc::dup2(writes, 4))?;
    }
    Ok(())
}

fn send_line(requests: &Mutex<Option<PipeWriter>>, request: &Value) -> io::Result<()> {
    let mut line = request.to_string();
    line.push('\n');
    let mut requests = requests
        .lock()
        .map_err(|_| io::Error::other("the request pipe's lock is poisoned"))?;
    match requests.as_mut() {
        Some(pipe) => pipe.write_all(line.as_bytes()),
        None => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
    }
}

/// The reader thread: log records and publish requests are served here,
/// at any time; everything else goes to the consumer waiting for it.
fn read_answers(
    from_python: PipeReader,
    answers: &Sender<Answer>,
    requests: &Mutex<Option<PipeWriter>>,
) {
    for line in BufReader::new(from_python).lines() {
        let Ok(line) = line else { break };
        let Ok(Value::Object(mut answer)) = serde_json::from_str::<Value>(&line) else {
            log::error!("the Python bridge sent a line it should not have: {line:?}");
            continue;
        };
        let forwarded = if let Some(record) = answer.remove("log") {
            forward_log(&record);
            Ok(())
        } else if let Some(request) = answer.remove("publish") {
            let reply = publish(&request);
            if send_line(requests, &reply).is_err() {
                break;
            }
            Ok(())
        } else if let Some(about) = answer.remove("ready") {
            answers.send(Answer::Ready(about))
        } else if let Some(reason) = answer.remove("start_failed") {
            answers.send(Answer::StartFailed(
                reason.as_str().unwrap_or_default().to_owned(),
            ))
        } else if let Some(done) = answer.remove("done") {
            answers.send(Answer::Done(done))
        } else {
            log::error!("the Python bridge sent a line it should not have: {line:?}");
            Ok(())
        };
        if forwarded.is_err() {
            break;
        }
    }
}

/// A Python log record, through the host's logger under the Python
/// logger's name (`a.b` is the target `a::b`, which the host shows and
/// filters as `a.b`).
fn forward_log(record: &Value) {
    let level = match record.get("level").and_then(Value::as_u64).unwrap_or(40) {
        40.. => log::Level::Error,
        30..40 => log::Level::Warn,
        20..30 => log::Level::Info,
        10..20 => log::Level::Debug,
        _ => log::Level::Trace,
    };
    let name = record.get("name").and_then(Value::as_str).unwrap_or("root");
    let text = record
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let target = name.replace('.', "::");
    log::log!(target: &target, level, "{text}");
}

/// A publish request from Python, done through the host.
fn publish(request: &Value) -> Value {
    let timeout = request
        .get("timeout")
        .and_then(Value::as_f64)
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0)
        // One too long to be a Duration is as good as for ever: the host
        // bounds every wait.
        .map_or(Publisher::DEFAULT_TIMEOUT, |seconds| {
            Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
        });
    let record = request
        .get("record")
        .cloned()
        .unwrap_or_default()
        .to_string();
    let exchange = request.get("exchange").and_then(Value::as_str);
    match Publisher::with_timeout(timeout).publish_record(&record, exchange) {
        Ok(id) => json!({"published": id}),
        Err(error) => {
            let (kind, reason) = match error {
                PublishError::Timeout(reason) => ("Timeout", reason),
                PublishError::Unreachable(reason) => ("Unreachable", reason),
                PublishError::Forbidden(reason) => ("Forbidden", reason),
                PublishError::Returned(reason) => ("Returned", reason),
                PublishError::Invalid(reason) => ("Invalid", reason),
                PublishError::Unavailable(reason) => ("Unavailable", reason),
                other => ("Unavailable", other.to_string()),
            };
            json!({"publish_failed": {"kind": kind, "reason": reason}})
        }
    }
}

/// The callback's answer as an outcome, as fedora-messaging maps its
/// exceptions.
fn outcome(done: &Value) -> Result<(), ConsumerError> {
    match done {
        Value::String(word) if word == "ack" => Ok(()),
        Value::String(word) if word == "nack" => Err(ConsumerError::Nack),
        Value::String(word) if word == "drop" => Err(ConsumerError::Drop),
        Value::Object(answer) => {
            if let Some(halt) = answer.get("halt") {
                let exit_code = halt
                    .get("exit_code")
                    .and_then(Value::as_i64)
                    .and_then(|code| i32::try_from(code).ok())
                    .unwrap_or(1);
                let requeue = halt
                    .get("requeue")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if let Some(reason) = halt.get("reason").and_then(Value::as_str) {
                    log::info!("the Python callback halts the consumer: {reason}");
                }
                return Err(ConsumerError::Halt { exit_code, requeue });
            }
            let reason = answer
                .get("failed")
                .and_then(Value::as_str)
                .unwrap_or("the Python callback failed");
            Err(ConsumerError::failed(reason))
        }
        other => Err(ConsumerError::failed(format!(
            "the Python bridge answered {other}, which is no outcome"
        ))),
    }
}

/// The Python logging level that lets through what the host's logger does.
fn python_level(max: log::LevelFilter) -> u8 {
    match max {
        log::LevelFilter::Off => 60,
        log::LevelFilter::Error => 40,
        log::LevelFilter::Warn => 30,
        log::LevelFilter::Info => 20,
        log::LevelFilter::Debug => 10,
        log::LevelFilter::Trace => 1,
    }
}

fn wait_with_deadline(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                kill_group(child);
                return child.wait().ok();
            }
            Err(_) => return None,
        }
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => status.to_string(),
        },
        None => "its exit status is unknown".to_owned(),
    }
}
