//! Runs a command for each message, the job fedmsg-trigger did: the
//! message goes in on standard input as one line of fedora-messaging's
//! record format, `FM_TOPIC`, `FM_ID` and `FM_QUEUE` are in its
//! environment, and its exit status decides the message's outcome.
//!
//! ```toml
//! callback = "libfm_exec.so:Exec"
//! [consumer_config]
//! command = ["/usr/local/bin/on-build", "--notify"]   # argv; no shell
//! # shell = "jq -r .body.build_id | xargs /usr/local/bin/on-build"   # or /bin/sh -c
//! timeout = 300          # seconds; the command's process group is killed then
//! on_timeout = "fail"    # or "nack"
//! exit_codes = { 0 = "ack", 75 = "nack", 65 = "drop", 3 = "halt:3" }
//! other_exit_codes = "fail"
//! ```
//!
//! Outcomes: `ack`, `nack` (back to the queue), `drop` (rejected, to the
//! dead-letter exchange if the queue has one), `fail` (the host's failure:
//! the message goes back, the host exits 13), `halt` (acknowledged, then
//! the host stops with exit 0) and `halt:N` (exit N). A command killed by a
//! signal fails. A message whose topic, id or queue holds a NUL byte
//! cannot be put in the environment: it is dropped, with a warning, and
//! the command does not run. Its standard output (INFO) and error (WARNING) are logged
//! line by line under `fedora_messaging.exec`, which the default
//! log_config shows like the host's own lines, each line cut at
//! `max_line_bytes`, at most `max_lines` lines per message. `workers = N`
//! runs N commands at once.

mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fm_plugin_api::{Consumer, ConsumerError, Init, Message, export_consumers};
use serde::Deserialize;

pub use crate::run::{Ending, Limits};

/// What a message comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    Nack,
    Drop,
    Fail,
    Halt(i32),
}

impl Outcome {
    fn parse(text: &str) -> Result<Outcome, String> {
        Ok(match text {
            "ack" => Outcome::Ack,
            "nack" => Outcome::Nack,
            "drop" => Outcome::Drop,
            "fail" => Outcome::Fail,
            "halt" => Outcome::Halt(0),
            other => match other.strip_prefix("halt:").map(str::parse) {
                Some(Ok(code)) => Outcome::Halt(code),
                _ => {
                    return Err(format!(
                        "unknown outcome {other:?}: use ack, nack, drop, fail, halt or halt:N"
                    ));
                }
            },
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    command: Option<Vec<String>>,
    shell: Option<String>,
    #[serde(default = "defaults::timeout")]
    timeout: f64,
    #[serde(default = "defaults::on_timeout")]
    on_timeout: String,
    #[serde(default)]
    exit_codes: BTreeMap<String, String>,
    #[serde(default = "defaults::other_exit_codes")]
    other_exit_codes: String,
    #[serde(default = "defaults::max_line_bytes")]
    max_line_bytes: usize,
    #[serde(default = "defaults::max_lines")]
    max_lines: usize,
}

mod defaults {
    pub fn timeout() -> f64 {
        300.0
    }
    pub fn on_timeout() -> String {
        "fail".to_owned()
    }
    pub fn other_exit_codes() -> String {
        "fail".to_owned()
    }
    pub fn max_line_bytes() -> usize {
        4096
    }
    pub fn max_lines() -> usize {
        1000
    }
}

/// The checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub argv: Vec<String>,
    pub timeout: Option<Duration>,
    pub on_timeout: Outcome,
    pub exit_codes: BTreeMap<i32, Outcome>,
    pub other_exit_codes: Outcome,
    pub limits: Limits,
}

impl Settings {
    fn from_conf(conf: Conf) -> Result<Settings, String> {
        let argv = match (conf.command, conf.shell) {
            (Some(_), Some(_)) => {
                return Err("give either command (an argv list) or shell (a /bin/sh command line), not both".to_owned());
            }
            (None, None) => {
                return Err("give the command to run: command = [\"/path/to/program\", \"arg\"], or shell = \"a | pipeline\"".to_owned());
            }
            (Some(argv), None) if argv.is_empty() || argv[0].is_empty() => {
                return Err("command is empty: name the program to run first".to_owned());
            }
            (Some(argv), None) => argv,
            (None, Some(line)) => vec!["/bin/sh".to_owned(), "-c".to_owned(), line],
        };
        let timeout = if conf.timeout.is_finite() && conf.timeout > 0.0 {
            Some(Duration::try_from_secs_f64(conf.timeout).map_err(|_| {
                format!(
                    "timeout {} is longer than any wait can be: give seconds (0: none)",
                    conf.timeout
                )
            })?)
        } else if conf.timeout == 0.0 {
            None
        } else {
            return Err(format!(
                "timeout {} is not a number of seconds (0: none)",
                conf.timeout
            ));
        };
        let on_timeout = match conf.on_timeout.as_str() {
            "fail" => Outcome::Fail,
            "nack" => Outcome::Nack,
            other => return Err(format!("on_timeout {other:?}: use \"fail\" or \"nack\"")),
        };
        let mut exit_codes = BTreeMap::new();
        exit_codes.insert(0, Outcome::Ack);
        for (code, outcome) in &conf.exit_codes {
            let number: i32 = code
                .parse()
                .ok()
                .filter(|n| (0..=255).contains(n))
                .ok_or_else(|| format!("exit_codes: {code:?} is not an exit status (0 to 255)"))?;
            let outcome = Outcome::parse(outcome).map_err(|e| format!("exit_codes.{code}: {e}"))?;
            exit_codes.insert(number, outcome);
        }
        let other_exit_codes =
            Outcome::parse(&conf.other_exit_codes).map_err(|e| format!("other_exit_codes: {e}"))?;
        let program = &argv[0];
        if find_program(program).is_none() {
            return Err(format!(
                "the command's program {program:?} is not {}: install it or give its full path",
                if program.contains('/') {
                    "an executable file"
                } else {
                    "in PATH"
                }
            ));
        }
        Ok(Settings {
            argv,
            timeout,
            on_timeout,
            exit_codes,
            other_exit_codes,
            limits: Limits {
                max_line_bytes: conf.max_line_bytes.max(1),
                max_lines: conf.max_lines,
            },
        })
    }

    /// The outcome of a command that ended this way.
    pub fn outcome(&self, ending: &Ending) -> (Outcome, String) {
        match ending {
            Ending::Exited(code) => (
                *self.exit_codes.get(code).unwrap_or(&self.other_exit_codes),
                format!("exit status {code}"),
            ),
            Ending::Signalled(signal) => (Outcome::Fail, format!("killed by signal {signal}")),
            Ending::TimedOut(after) => (
                self.on_timeout,
                format!(
                    "still running after {:.1} s, its process group killed",
                    after.as_secs_f64()
                ),
            ),
        }
    }
}

/// The program as `execvp` would find it: a path with a `/` as given, a
/// bare name in `PATH`.
fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return executable(&path).then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
}

/// Runs the configured command per message; see the crate documentation.
pub struct Exec {
    settings: Settings,
}

impl Consumer for Exec {
    fn new(init: &Init<'_>) -> Result<Self, ConsumerError> {
        let conf: Conf = init.config()?;
        let settings = Settings::from_conf(conf)
            .map_err(|reason| ConsumerError::failed(format!("consumer_config: {reason}")))?;
        log::info!("running {:?} for each message", settings.argv);
        Ok(Exec { settings })
    }

    fn consume(&mut self, message: &Message<'_>) -> Result<(), ConsumerError> {
        if let Some(field) = run::unfit_for_the_environment(message) {
            // The message's problem, never the host's: failing would
            // requeue it, and it would fail every host that meets it.
            log::warn!(
                "message {:?}: its {field} holds a NUL byte, which no environment variable can carry: dropping it (rejected, to the queue's dead-letter exchange if it has one)",
                message.id()
            );
            return Err(ConsumerError::Drop);
        }
        let ending = run::run(&self.settings, message).map_err(|error| {
            ConsumerError::failed(format!("cannot run {:?}: {error}", self.settings.argv[0]))
        })?;
        let (outcome, how) = self.settings.outcome(&ending);
        match outcome {
            Outcome::Ack => Ok(()),
            Outcome::Nack => {
                log::warn!(
                    "message {}: the command ended with {how}: returning it to the queue",
                    message.id()
                );
                Err(ConsumerError::Nack)
            }
            Outcome::Drop => {
                log::warn!(
                    "message {}: the command ended with {how}: dropping it",
                    message.id()
                );
                Err(ConsumerError::Drop)
            }
            Outcome::Halt(code) => {
                log::info!(
                    "message {}: the command ended with {how}: halting with exit code {code}",
                    message.id()
                );
                Err(ConsumerError::halt(code))
            }
            Outcome::Fail => Err(ConsumerError::failed(format!(
                "the command {:?} ended with {how}",
                self.settings.argv[0]
            ))),
        }
    }
}

export_consumers!(Exec);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml_conf: serde_json::Value) -> Result<Settings, String> {
        Settings::from_conf(serde_json::from_value(toml_conf).map_err(|e| e.to_string())?)
    }

    #[test]
    fn exit_statuses_map_through_the_table_with_zero_acking_by_default() {
        let settings = settings(serde_json::json!({
            "command": ["true"],
            "exit_codes": {"75": "nack", "65": "drop", "3": "halt:4", "4": "halt"},
        }))
        .unwrap();
        for (ending, expected) in [
            (Ending::Exited(0), Outcome::Ack),
            (Ending::Exited(75), Outcome::Nack),
            (Ending::Exited(65), Outcome::Drop),
            (Ending::Exited(3), Outcome::Halt(4)),
            (Ending::Exited(4), Outcome::Halt(0)),
            (Ending::Exited(1), Outcome::Fail),
            (Ending::Signalled(9), Outcome::Fail),
            (Ending::TimedOut(Duration::from_secs(1)), Outcome::Fail),
        ] {
            assert_eq!(settings.outcome(&ending).0, expected, "{ending:?}");
        }
    }

    #[test]
    fn mistakes_are_refused_naming_the_key() {
        for (conf, expected) in [
            (serde_json::json!({}), "give the command to run"),
            (serde_json::json!({"command": []}), "command is empty"),
            (
                serde_json::json!({"command": ["true"], "shell": "true"}),
                "not both",
            ),
            (
                serde_json::json!({"command": ["no-such-program-here"]}),
                "is not in PATH",
            ),
            (
                serde_json::json!({"command": ["/no/such/program"]}),
                "is not an executable file",
            ),
            (
                serde_json::json!({"command": ["true"], "exit_codes": {"x": "ack"}}),
                "exit_codes: \"x\"",
            ),
            (
                serde_json::json!({"command": ["true"], "exit_codes": {"1": "retry"}}),
                "exit_codes.1: unknown outcome",
            ),
            (
                serde_json::json!({"command": ["true"], "on_timeout": "drop"}),
                "on_timeout",
            ),
            (
                serde_json::json!({"command": ["true"], "timeout": -1}),
                "timeout -1",
            ),
            (
                serde_json::json!({"command": ["true"], "timeout": 1e30}),
                "longer than any wait can be",
            ),
        ] {
            let error = settings(conf.clone()).unwrap_err();
            assert!(error.contains(expected), "{conf}: {error}");
        }
    }
}
