//! A `fedora-messaging` process the test talks to while it runs: waits for
//! lines of its output, signals it, and collects how it ended.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use crate::{RUN_DEADLINE, Run};

pub struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    /// The other stream, read whole.
    rest: std::thread::JoinHandle<String>,
    /// Whether `lines` are standard error's (else standard output's).
    watching_stderr: bool,
}

impl Running {
    /// Starts `command`; its standard output is read line by line.
    pub fn start(command: &mut Command) -> Running {
        Running::start_watching(command, false)
    }

    /// Starts `command`; its standard error is read line by line, for a
    /// process that writes its logs there.
    pub fn start_watching_stderr(command: &mut Command) -> Running {
        Running::start_watching(command, true)
    }

    fn start_watching(command: &mut Command, watching_stderr: bool) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (watched, mut rest): (Box<dyn Read + Send>, Box<dyn Read + Send>) = if watching_stderr {
            (Box::new(stderr), Box::new(stdout))
        } else {
            (Box::new(stdout), Box::new(stderr))
        };
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(watched).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let rest = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = rest.read_to_string(&mut text);
            text
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            rest,
            watching_stderr,
        }
    }

    /// Waits until a line containing `needle` appears (or was seen), and
    /// returns it; fails the test after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|line| line.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "no line with {needle:?} within {timeout:?}; output so far:\n{}",
                        self.seen.join("\n")
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "the process ended without a line with {needle:?}: {:#?}",
                        self.finish_now()
                    );
                }
            }
        }
    }

    /// Waits until `count` lines containing `needle` have appeared; fails
    /// the test after `timeout`.
    pub fn wait_for_count(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        // Counted once, then line by line: a consumer's per-message lines
        // make tens of thousands of them.
        let mut seen = self
            .seen
            .iter()
            .filter(|line| line.contains(needle))
            .count();
        while seen < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    seen += usize::from(line.contains(needle));
                    self.seen.push(line);
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!(
                        "fewer than {count} lines with {needle:?} within {timeout:?}; output:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// The lines with `needle` written so far, without waiting.
    pub fn lines_so_far(&mut self, needle: &str) -> Vec<String> {
        self.seen.extend(self.lines.try_iter());
        self.seen
            .iter()
            .filter(|line| line.contains(needle))
            .cloned()
            .collect()
    }

    /// Whether the process has ended (it is not reaped until
    /// [`Running::finish`]).
    pub fn has_ended(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM") to the process.
    /// Sends `signal` to the process group the process leads (started
    /// with `process_group(0)`), as a terminal or `kill -- -PID` does.
    pub fn signal_group(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg("--")
            .arg(format!("-{}", self.child.id()))
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} -- -PID failed");
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to end (failing the test after
    /// [`RUN_DEADLINE`]) and returns everything it wrote.
    pub fn finish(mut self) -> Run {
        let started = Instant::now();
        loop {
            if self.child.try_wait().expect("wait").is_some() {
                return self.finish_now();
            }
            if started.elapsed() > RUN_DEADLINE {
                let _ = self.child.kill();
                let run = self.finish_now();
                panic!("the process did not end within {RUN_DEADLINE:?}: {run:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish_now(&mut self) -> Run {
        let status = self.child.wait().expect("wait");
        for line in self.lines.try_iter() {
            self.seen.push(line);
        }
        // The reader thread ends at EOF; collect what it still had.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let rest = std::mem::replace(&mut self.rest, std::thread::spawn(String::new));
        let rest = rest.join().unwrap_or_default();
        let mut watched = self.seen.join("\n");
        if !watched.is_empty() {
            watched.push('\n');
        }
        let (stdout, stderr) = if self.watching_stderr {
            (rest, watched)
        } else {
            (watched, rest)
        };
        Run {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test must not leave a consumer behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
