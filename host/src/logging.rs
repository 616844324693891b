//! The host's logger, set up from fedora-messaging's `log_config`.
//!
//! `log_config` is a Python `logging.config.dictConfig` table. What maps
//! onto env_logger is used: the level of `root` and of each entry of
//! `loggers` (a Python logger name, `a.b`, is the Rust target `a::b`; the
//! name `fedora_messaging` is this host), and whether the handlers write to
//! `ext://sys.stdout` (the default) or `ext://sys.stderr`. Formatters,
//! filters and other handler kinds have no equivalent and are ignored. The
//! line format is fedora-messaging's default, `[logger LEVEL] message`.
//! `RUST_LOG`, when set, replaces the levels from the file.
//!
//! Lines carry no timestamp (journald adds its own). When the stream is
//! journald's (systemd says so in `JOURNAL_STREAM`), each line starts with
//! its syslog priority, `<3>` to `<7>`, which journald strips and records,
//! so `journalctl -p warning` finds the host's warnings.

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use fm_plugin_api::FORWARDED_LOG_TARGET;

/// The Python logger name that stands for this host's own log lines.
const HOST_LOGGER: &str = "fedora_messaging";
/// This crate's targets, shown and configured as `HOST_LOGGER`.
const HOST_TARGET: &str = "fm_host";

/// What the logger does, as read from `log_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The level for everything not named below.
    pub root: log::LevelFilter,
    /// Per Rust target, most specific wins.
    pub targets: Vec<(String, log::LevelFilter)>,
    pub to_stderr: bool,
}

impl Default for LogSettings {
    /// fedora-messaging's default: its own loggers at INFO, the rest at
    /// WARNING, to standard output.
    fn default() -> Self {
        LogSettings {
            root: log::LevelFilter::Warn,
            targets: vec![(HOST_TARGET.to_owned(), log::LevelFilter::Info)],
            to_stderr: false,
        }
    }
}

impl LogSettings {
    /// Maps a `log_config` table; `None` gives the defaults.
    pub fn from_log_config(log_config: Option<&toml::Table>) -> LogSettings {
        let Some(table) = log_config else {
            return LogSettings::default();
        };
        // Levels Python refuses were refused with the file (check_levels).
        let level_of = |entry: &toml::Value| {
            entry
                .get("level")
                .and_then(|level| python_level(level).ok().flatten())
        };
        let mut settings = LogSettings {
            root: table
                .get("root")
                .and_then(level_of)
                .unwrap_or(log::LevelFilter::Warn),
            targets: Vec::new(),
            to_stderr: false,
        };
        if let Some(loggers) = table.get("loggers").and_then(toml::Value::as_table) {
            for (name, entry) in loggers {
                if let Some(level) = level_of(entry) {
                    settings.targets.push((rust_target(name), level));
                }
            }
        }
        if let Some(handlers) = table.get("handlers").and_then(toml::Value::as_table) {
            settings.to_stderr = handlers.values().any(|handler| {
                handler.get("stream").and_then(toml::Value::as_str) == Some("ext://sys.stderr")
            });
        }
        settings
    }

    /// Installs the logger for the whole process (plugins included, through
    /// the bridge in [`crate::plugin`]).
    pub fn install(&self) {
        let mut builder = env_logger::Builder::new();
        self.filters(std::env::var("RUST_LOG").ok().as_deref(), &mut builder);
        builder.target(if self.to_stderr {
            env_logger::Target::Stderr
        } else {
            env_logger::Target::Pipe(Box::new(StdoutOrStderr::default()))
        });
        let to_journal = if self.to_stderr {
            is_journal_stream(std::io::stderr().as_fd())
        } else {
            is_journal_stream(std::io::stdout().as_fd())
        };
        builder.format(move |out, record| {
            if to_journal {
                write!(out, "<{}>", syslog_priority(record.level()))?;
            }
            writeln!(
                out,
                "[{} {}] {}",
                python_logger_name(record.target()),
                python_level_name(record.level()),
                record.args()
            )
        });
        // A second install (tests calling into the library) keeps the first.
        let _ = builder.try_init();
    }

    /// Lets through at least `level`, root and every logger named.
    pub fn at_least(&mut self, level: log::LevelFilter) {
        self.root = self.root.max(level);
        for (_, named) in &mut self.targets {
            *named = (*named).max(level);
        }
    }

    /// The most verbose level the configuration names, root or logger.
    fn most_verbose(&self) -> log::LevelFilter {
        self.targets
            .iter()
            .map(|(_, level)| *level)
            .fold(self.root, std::cmp::max)
    }

    /// The levels: `RUST_LOG`'s when it is set (it replaces the file's
    /// wholesale, so `RUST_LOG=warn` silences the host's INFO lines too),
    /// else the file's.
    fn filters(&self, rust_log: Option<&str>, builder: &mut env_logger::Builder) {
        // The AMQP library's own lines repeat, less clearly, what this host
        // logs about the same events; `loggers.lapin` or RUST_LOG=lapin=…
        // bring them back. Its tracing bridge also reports every span enter
        // and exit, which says nothing to a user.
        builder.filter_module("lapin", log::LevelFilter::Off);
        builder.filter_module("tracing::span", log::LevelFilter::Off);
        // Records a plugin forwards were filtered by their own logging's
        // configuration (the Python bridge applies log_config in Python):
        // let through what the most verbose level here allows.
        builder.filter_module(FORWARDED_LOG_TARGET, self.most_verbose());
        match rust_log {
            Some(spec) => {
                builder.parse_filters(spec);
            }
            None => {
                builder.filter_level(self.root);
                for (target, level) in &self.targets {
                    builder.filter_module(target, *level);
                }
            }
        }
    }
}

/// Standard output, or standard error once standard output is closed (its
/// reader gone, as with `| head -1`), so the host's last words, a
/// failure's cause above all, still reach someone.
#[derive(Default)]
struct StdoutOrStderr {
    stdout_closed: bool,
}

impl Write for StdoutOrStderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if !self.stdout_closed {
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(line).and_then(|()| stdout.flush()) {
                Ok(()) => return Ok(line.len()),
                Err(error) => {
                    self.stdout_closed = true;
                    let _ = writeln!(
                        std::io::stderr(),
                        "[{HOST_LOGGER} WARNING] cannot write the log to standard output ({error}); writing it to standard error"
                    );
                }
            }
        }
        std::io::stderr().write_all(line)?;
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `stream` is the one systemd connected to journald: its device
/// and inode are those `JOURNAL_STREAM` gives (`DEV:INODE`).
fn is_journal_stream(stream: std::os::fd::BorrowedFd<'_>) -> bool {
    let Some((device, inode)) = std::env::var("JOURNAL_STREAM").ok().and_then(|value| {
        let (device, inode) = value.split_once(':')?;
        Some((device.parse::<u64>().ok()?, inode.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    let Ok(owned) = stream.try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(owned)
        .metadata()
        .is_ok_and(|meta| meta.dev() == device && meta.ino() == inode)
}

/// sd-daemon's priority prefixes: `<3>` error to `<7>` debug.
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// A Python level: a name or a number; `NOTSET` (0) inherits, so it maps
/// to nothing. A value Python's logging would refuse is `Err`.
fn python_level(value: &toml::Value) -> Result<Option<log::LevelFilter>, ()> {
    let number = match value {
        toml::Value::Integer(n) if *n >= 0 => *n,
        toml::Value::String(name) => match name.to_uppercase().as_str() {
            "CRITICAL" | "FATAL" => 50,
            "ERROR" => 40,
            "WARNING" | "WARN" => 30,
            "INFO" => 20,
            "DEBUG" => 10,
            "NOTSET" => 0,
            _ => return Err(()),
        },
        _ => return Err(()),
    };
    Ok(match number {
        n if n > 30 => Some(log::LevelFilter::Error),
        n if n > 20 => Some(log::LevelFilter::Warn),
        n if n > 10 => Some(log::LevelFilter::Info),
        n if n > 5 => Some(log::LevelFilter::Debug),
        n if n > 0 => Some(log::LevelFilter::Trace),
        _ => None,
    })
}

/// Checks each level `log_config` gives (the root's and each logger's),
/// as Python's `dictConfig` would: a level it does not know is an error
/// naming the logger, the value, and the levels there are, with the value
/// as written so that the caller can find its line.
pub fn check_levels(log_config: &toml::Table) -> Result<(), (String, String)> {
    let root = log_config.get("root").map(|entry| ("root", entry));
    let loggers = log_config
        .get("loggers")
        .and_then(toml::Value::as_table)
        .into_iter()
        .flatten()
        .map(|(name, entry)| (name.as_str(), entry));
    for (logger, entry) in root.into_iter().chain(loggers) {
        if let Some(level) = entry.get("level")
            && python_level(level).is_err()
        {
            let written = level.to_string();
            return Err((
                written.clone(),
                format!(
                    "log_config: logger {logger:?} has the level {written}, which Python's logging does not know: give DEBUG, INFO, WARNING, ERROR, CRITICAL or NOTSET, or a number"
                ),
            ));
        }
    }
    Ok(())
}

fn rust_target(python_name: &str) -> String {
    let rest = python_name.strip_prefix(HOST_LOGGER);
    match rest {
        Some(rest) if rest.is_empty() || rest.starts_with('.') => {
            format!("{HOST_TARGET}{}", rest.replace('.', "::"))
        }
        _ => python_name.replace('.', "::"),
    }
}

fn python_logger_name(target: &str) -> String {
    if let Some(name) = target
        .strip_prefix(FORWARDED_LOG_TARGET)
        .and_then(|rest| rest.strip_prefix("::"))
    {
        return name.replace("::", ".");
    }
    let rest = target.strip_prefix(HOST_TARGET);
    match rest {
        Some(rest) if rest.is_empty() || rest.starts_with("::") => {
            format!("{HOST_LOGGER}{}", rest.replace("::", "."))
        }
        _ => target.replace("::", "."),
    }
}

fn python_level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "ERROR",
        log::Level::Warn => "WARNING",
        log::Level::Info => "INFO",
        log::Level::Debug => "DEBUG",
        log::Level::Trace => "TRACE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fedora_messaging_default_log_config_maps_to_the_defaults() {
        let table: toml::Table = toml::from_str(
            r#"
            version = 1
            disable_existing_loggers = false
            [formatters.simple]
            format = "[%(name)s %(levelname)s] %(message)s"
            [handlers.console]
            class = "logging.StreamHandler"
            formatter = "simple"
            stream = "ext://sys.stdout"
            [loggers.fedora_messaging]
            level = "INFO"
            propagate = false
            handlers = ["console"]
            [root]
            level = "WARNING"
            handlers = ["console"]
            "#,
        )
        .unwrap();
        assert_eq!(
            LogSettings::from_log_config(Some(&table)),
            LogSettings::default()
        );
    }

    #[test]
    fn logger_names_map_to_targets_and_back() {
        assert_eq!(rust_target("fedora_messaging.plugin"), "fm_host::plugin");
        assert_eq!(rust_target("saver"), "saver");
        assert_eq!(
            rust_target("fedora_messaging_extra"),
            "fedora_messaging_extra"
        );
        assert_eq!(
            python_logger_name("fm_host::reconsume"),
            "fedora_messaging.reconsume"
        );
        assert_eq!(python_logger_name("my_plugin::db"), "my_plugin.db");
        assert_eq!(
            python_logger_name("fm_forwarded::fedora_messaging::message"),
            "fedora_messaging.message"
        );
    }

    #[test]
    fn rust_log_replaces_the_configured_levels() {
        let enabled = |rust_log: Option<&str>, target: &str, level: log::Level| {
            let mut builder = env_logger::Builder::new();
            LogSettings::default().filters(rust_log, &mut builder);
            log::Log::enabled(
                &builder.build(),
                &log::Metadata::builder().target(target).level(level).build(),
            )
        };
        use log::Level::{Debug, Info, Warn};
        assert!(enabled(None, "fm_host::broker", Info));
        assert!(!enabled(None, "lapin::io_loop", Warn));
        for spec in ["off", "error", "warn"] {
            assert!(!enabled(Some(spec), "fm_host::broker", Info), "{spec}");
        }
        assert!(enabled(Some("warn"), "fm_host::broker", Warn));
        assert!(enabled(Some("debug"), "fm_host::broker", Debug));
        assert!(!enabled(Some("info"), "lapin::io_loop", Info));
        assert!(enabled(Some("lapin=info"), "lapin::io_loop", Info));
        // Forwarded records were filtered by their own configuration: up
        // to the most verbose level the file names (fedora_messaging's
        // INFO by default), whatever their logger's name.
        let forwarded = "fm_forwarded::some::library";
        assert!(enabled(None, forwarded, Info));
        assert!(!enabled(None, forwarded, Debug));
        assert!(enabled(Some("warn"), forwarded, Info));
    }

    #[test]
    fn levels_and_streams_are_read() {
        let table: toml::Table = toml::from_str(
            "[handlers.h]\nstream = 'ext://sys.stderr'\n[loggers.saver]\nlevel = 'DEBUG'\n[root]\nlevel = 40\n",
        )
        .unwrap();
        let settings = LogSettings::from_log_config(Some(&table));
        assert!(settings.to_stderr);
        assert_eq!(settings.root, log::LevelFilter::Error);
        assert_eq!(
            settings.targets,
            [("saver".to_owned(), log::LevelFilter::Debug)]
        );
    }

    #[test]
    fn a_level_python_does_not_know_is_refused_naming_its_logger() {
        let refused = |toml: &str| {
            let table: toml::Table = toml::from_str(toml).unwrap();
            check_levels(&table).err()
        };
        let (written, message) = refused("[root]\nlevel = 'LOUD'\n").unwrap();
        assert_eq!(written, "\"LOUD\"");
        assert!(message.contains("logger \"root\""), "{message}");
        assert!(message.contains("DEBUG, INFO"), "{message}");
        let (_, message) = refused("[loggers.saver]\nlevel = true\n").unwrap();
        assert!(message.contains("\"saver\""), "{message}");
        assert!(refused("[loggers.a]\nlevel = -1\n").is_some());
        for fine in ["INFO", "warn", "NOTSET", "Critical"] {
            assert_eq!(
                refused(&format!("[root]\nlevel = '{fine}'\n")),
                None,
                "{fine}"
            );
        }
        assert_eq!(
            refused("[root]\nlevel = 25\n[loggers.x]\nlevel = 0\n"),
            None
        );
    }
}
