//! One Python process running the callback, and the conversation with it.

use std::io::{self, PipeReader, PipeWriter, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fm_plugin_api::{ConsumerError, HostConfiguration, Message};
use serde_json::{Value, json};

use crate::frames::{FrameError, FrameReader, frame, kind};
use crate::{CallbackKind, python_callback, serve};

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

/// Top-level keys only this host reads (the host's
/// `config::host_file::HOST_ONLY_KEYS`): fedora-messaging refuses unknown
/// keys, so Python is given the file without them.
const HOST_KEYS: [&str; 7] = [
    "workers",
    "delivery_limit",
    "amqp_urls",
    "python",
    "stop_timeout",
    "soft_timeout",
    "tracing",
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

/// A running Python process and the conversation with it.
pub struct Worker {
    child: Child,
    callback: String,
    interpreter: String,
    /// Messages and publish replies, fd 3 in Python; shared with the
    /// thread serving Python's other threads.
    requests: Arc<Mutex<Option<PipeWriter>>>,
    /// What Python's main thread sends (answers, and its log records and
    /// publishes), fd 4 in Python, read while waiting for it.
    answers: FrameReader<PipeReader>,
    /// A message taken ahead ([`fm_plugin_api::ahead`]) was sent to
    /// Python: the host's next message is that one, already there.
    sent_ahead: bool,
    /// Python ended before it answered the message before that one, so it
    /// never began it.
    lost_ahead: bool,
}

/// What the main thread may send while the plugin waits for it.
const MAIN_THREAD_KINDS: [u8; 5] = [
    kind::READY,
    kind::START_FAILED,
    kind::DONE,
    kind::LOG,
    kind::PUBLISH,
];

impl Worker {
    /// Starts Python and waits until the callback is imported (and a
    /// class instantiated), or has failed to be.
    pub fn start(settings: &Settings) -> Result<Worker, String> {
        let pipe = || io::pipe().map_err(|e| format!("cannot create a pipe: {e}"));
        let (requests_read, requests_write) = pipe()?;
        let (answers_read, answers_write) = pipe()?;
        let (others_read, others_write) = pipe()?;
        // Python checks it before it begins a message: one sent ahead is
        // not begun once the host drains.
        let draining = fm_plugin_api::ahead::draining_fd();
        let driver_settings = json!({
            "callback": settings.callback,
            "kind": match settings.kind {
                CallbackKind::Module => "module",
                CallbackKind::File => "file",
            },
            "conf": settings.config_file,
            "host_keys": HOST_KEYS,
            "log_level": python_level(log::max_level()),
            "draining_fd": draining.is_some(),
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
        let child_fds = [
            requests_read.as_raw_fd(),
            answers_write.as_raw_fd(),
            others_write.as_raw_fd(),
            draining.unwrap_or(NO_FD),
        ];
        // SAFETY: getpid is async-signal-safe, and runs before the fork.
        let host = unsafe { libc::getpid() };
        // SAFETY: between fork and exec only async-signal-safe calls run:
        // fcntl and dup2 on descriptors the parent keeps open until spawn
        // returns, prctl, getppid and _exit.
        unsafe {
            command.pre_exec(move || {
                die_with_the_host(host);
                place_fds(child_fds)
            });
        }
        let child = command.spawn().map_err(|error| {
            format!(
                "cannot start the Python interpreter {:?} for the callback {}: {error}: install Python 3 or set [python] interpreter to one (a virtual environment's bin/python)",
                settings.interpreter, settings.callback
            )
        })?;
        drop((requests_read, answers_write, others_write));
        let requests = Arc::new(Mutex::new(Some(requests_write)));
        let replies = Arc::clone(&requests);
        thread::Builder::new()
            .name("fm-python-others".to_owned())
            .spawn(move || serve_other_threads(FrameReader::new(others_read), &replies))
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let mut worker = Worker {
            child,
            callback: settings.callback.clone(),
            interpreter: settings.interpreter.clone(),
            requests,
            answers: FrameReader::new(answers_read),
            sent_ahead: false,
            lost_ahead: false,
        };
        let deadline = Instant::now() + settings.start_timeout;
        let answer = next_answer(
            &mut worker.answers,
            &MAIN_THREAD_KINDS,
            Some(deadline),
            &worker.requests,
        );
        let ready = match answer {
            Ok((kind::READY, about)) => Ok(about),
            Ok((kind::START_FAILED, reason)) => {
                let reason: String = serde_json::from_slice(&reason).unwrap_or_default();
                worker.finish();
                return Err(format!(
                    "the Python callback {} cannot start: {reason} ({})",
                    settings.callback,
                    worker.interpreter_named()
                ));
            }
            Ok((other, _)) => Err(FrameError::Corrupt(format!(
                "a frame of kind {:?} before it was ready",
                char::from(other)
            ))),
            Err(error) => Err(error),
        };
        match ready {
            Ok(about) => {
                log::info!("{}", ready_line(&settings.callback, &about));
                Ok(worker)
            }
            Err(FrameError::TimedOut) => {
                kill_group(&mut worker.child);
                Err(format!(
                    "the Python callback {} was not ready within {} s ([python] start_timeout): its import hangs, or takes longer",
                    settings.callback,
                    settings.start_timeout.as_secs_f64()
                ))
            }
            Err(FrameError::Closed) => {
                let status = worker.reap();
                Err(format!(
                    "the Python process for {} ended before it was ready ({}); is {} a Python 3 with fedora-messaging installed?",
                    settings.callback,
                    describe(status),
                    worker.interpreter_named()
                ))
            }
            Err(error) => {
                kill_group(&mut worker.child);
                Err(format!(
                    "the Python process for {} could not be started: {error}",
                    settings.callback
                ))
            }
        }
    }

    /// The interpreter, with its version when it can say (for errors that
    /// must say which Python ran).
    fn interpreter_named(&self) -> String {
        interpreter_with_version(&self.interpreter)
    }

    /// Hands one message to Python and returns what the callback made of
    /// it. While Python works on it, the next message, if the host has it
    /// already, goes to Python too, so that Python never waits for the
    /// host between two messages.
    pub fn run(&mut self, message: &Message<'_>) -> Result<(), ConsumerError> {
        if !std::mem::take(&mut self.sent_ahead) {
            if let Err(error) = self.send(message_frame(message)) {
                return Err(self.gone(message.id(), &error.to_string()));
            }
        } else if std::mem::take(&mut self.lost_ahead) {
            return Err(ConsumerError::Unstarted);
        }
        let requests = &self.requests;
        let mut delivered = true;
        self.sent_ahead = fm_plugin_api::ahead::take_next(|next| {
            delivered = send_frame(requests, &message_frame(next)).is_ok();
        });
        let answer = next_answer(&mut self.answers, &MAIN_THREAD_KINDS, None, &self.requests);
        // With no answer to this message, Python never began the next.
        self.lost_ahead = self.sent_ahead && (!delivered || !matches!(answer, Ok((kind::DONE, _))));
        match answer {
            Ok((kind::DONE, done)) => serve::outcome(&done),
            Ok((other, _)) => {
                let error = FrameError::Corrupt(format!(
                    "a frame of kind {:?} while handling a message",
                    char::from(other)
                ));
                Err(self.broken(message.id(), &error))
            }
            Err(FrameError::Closed) => Err(self.gone(message.id(), "its output closed")),
            // A publish reply that could not be written: Python is gone.
            Err(FrameError::Io(error)) => Err(self.gone(message.id(), &error.to_string())),
            Err(error) => Err(self.broken(message.id(), &error)),
        }
    }

    fn send(&self, frame: Vec<u8>) -> io::Result<()> {
        send_frame(&self.requests, &frame)
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

    /// The failure of a message whose conversation broke: what came is
    /// no answer (a writer other than the driver, or a driver that died
    /// half-way), so none will come; Python is killed rather than waited
    /// for.
    fn broken(&mut self, id: &str, error: &FrameError) -> ConsumerError {
        kill_group(&mut self.child);
        let status = self.reap();
        ConsumerError::failed(format!(
            "the Python process running {} was killed while handling message {id}: {error} ({})",
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

    /// Ends Python: its input closes, it returns from its loop (what its
    /// main thread logs meanwhile is still read); killed if it is still
    /// there after a grace period.
    pub fn finish(&mut self) {
        self.close_requests();
        let deadline = Instant::now() + STOP_GRACE;
        while let Ok((kind, payload)) = self.answers.next(&MAIN_THREAD_KINDS, Some(deadline)) {
            if kind == kind::LOG {
                serve::forward_log(&payload);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(status) = wait_with_deadline(&mut self.child, left)
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

/// A message as Python reads it: its description (id, topic, queue,
/// headers, priority) as JSON after its length, then the body's bytes as
/// they came.
fn message_frame(message: &Message<'_>) -> Vec<u8> {
    // Written field by field: the headers are not copied into a value.
    let described = |out: &mut Vec<u8>| -> serde_json::Result<()> {
        out.extend_from_slice(b"{\"id\":");
        serde_json::to_writer(&mut *out, message.id())?;
        out.extend_from_slice(b",\"topic\":");
        serde_json::to_writer(&mut *out, message.topic())?;
        out.extend_from_slice(b",\"queue\":");
        serde_json::to_writer(&mut *out, message.queue())?;
        out.extend_from_slice(b",\"headers\":");
        serde_json::to_writer(&mut *out, message.headers())?;
        out.extend_from_slice(b",\"priority\":");
        match message.priority() {
            0 => out.extend_from_slice(b"null"),
            priority => serde_json::to_writer(&mut *out, &priority)?,
        }
        out.push(b'}');
        Ok(())
    };
    frame(kind::MESSAGE, |out| {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        // Writing JSON to a Vec cannot fail.
        let _ = described(out);
        let length = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
        out[at..at + 4].copy_from_slice(&length.to_le_bytes());
        out.extend_from_slice(message.raw_body());
    })
}

/// What a worker's Python said it runs with, once ready: the line the
/// journal (and `fedora-messaging check`) shows.
fn ready_line(callback: &str, about: &[u8]) -> String {
    let about: Value = serde_json::from_slice(about).unwrap_or_default();
    let text = |key: &str| about.get(key).and_then(Value::as_str).unwrap_or("unknown");
    let schemas: Vec<&str> = about
        .get("schema_packages")
        .and_then(Value::as_array)
        .map(|packages| packages.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    format!(
        "Python callback {callback} ready: Python {} ({}), fedora-messaging {}, schema packages: {}",
        text("python"),
        text("executable"),
        text("fedora_messaging"),
        if schemas.is_empty() {
            "none".to_owned()
        } else {
            schemas.join(", ")
        }
    )
}

/// `interpreter --version`'s answer beside the interpreter, bounded in
/// time; the interpreter alone when it gives none.
pub fn interpreter_with_version(interpreter: &str) -> String {
    let asked = Command::new(interpreter)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own group, which a deadline passed kills.
        .process_group(0)
        .spawn();
    let version = asked.ok().and_then(|mut child| {
        let status = wait_with_deadline(&mut child, Duration::from_secs(5))?;
        let mut answer = String::new();
        // A line at most: it fits the pipe, so it is all there once the
        // process ended.
        io::Read::read_to_string(&mut child.stdout.take()?, &mut answer).ok()?;
        Some(answer.trim().to_owned()).filter(|version| status.success() && !version.is_empty())
    });
    match version {
        Some(version) => format!("{interpreter:?}, {version}"),
        None => format!("{interpreter:?}"),
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

/// No descriptor, in [`place_fds`].
const NO_FD: RawFd = -1;

/// Puts the child's ends of the pipes at fds 3, 4 and 5, and the host's
/// draining descriptor at 6 (unless it is [`NO_FD`]), without
/// close-on-exec. All are first moved above 6, so none is overwritten by
/// another's `dup2`, and `dup2` onto a different descriptor always clears
/// the flag.
fn place_fds(fds: [RawFd; 4]) -> io::Result<()> {
    let check = |result: libc::c_int| {
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    };
    // SAFETY: plain descriptor calls on descriptors this process owns.
    unsafe {
        let mut moved = [NO_FD; 4];
        for (moved, fd) in moved.iter_mut().zip(fds) {
            if fd != NO_FD {
                *moved = check(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10))?;
            }
        }
        for (target, fd) in (3..).zip(moved) {
            if fd != NO_FD {
                check(libc::dup2(fd, target))?;
            }
        }
    }
    Ok(())
}

fn send_frame(requests: &Mutex<Option<PipeWriter>>, frame: &[u8]) -> io::Result<()> {
    let mut requests = requests
        .lock()
        .map_err(|_| io::Error::other("the request pipe's lock is poisoned"))?;
    match requests.as_mut() {
        Some(pipe) => pipe.write_all(frame),
        None => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
    }
}

/// The next frame from Python among `kinds` that is neither a log record
/// nor a publish request: those are served on the way (a publish's reply
/// goes on `requests`; one that cannot be written is `FrameError::Io`).
fn next_answer(
    from_python: &mut FrameReader<PipeReader>,
    kinds: &[u8],
    first_byte_by: Option<Instant>,
    requests: &Mutex<Option<PipeWriter>>,
) -> Result<(u8, Vec<u8>), FrameError> {
    loop {
        match from_python.next(kinds, first_byte_by)? {
            (kind::LOG, record) => serve::forward_log(&record),
            (kind::PUBLISH, request) => {
                let reply = serve::publish(&request);
                send_frame(
                    requests,
                    &frame(kind::REPLY, |out| out.extend_from_slice(&reply)),
                )
                .map_err(FrameError::Io)?;
            }
            answer => return Ok(answer),
        }
    }
}

/// The thread serving Python's other threads: their log records and
/// publish requests, at any time. What is no frame of theirs ends it
/// (logged): their later writes then fail in Python, where they are
/// reported; the main thread's conversation goes on.
fn serve_other_threads(
    mut from_python: FrameReader<PipeReader>,
    requests: &Mutex<Option<PipeWriter>>,
) {
    match next_answer(
        &mut from_python,
        &[kind::LOG, kind::PUBLISH],
        None,
        requests,
    ) {
        Err(FrameError::Closed | FrameError::Io(_)) => {}
        Err(error) => {
            log::error!("the Python bridge stops reading what Python's other threads send: {error}")
        }
        // Only logs and publishes are taken, and those are served.
        Ok(_) => {}
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
