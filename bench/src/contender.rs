//! The programs compared, each consuming the benchmark queue until it has
//! seen a given number of messages, then exiting 0.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::broker::{AMQP_URL, QUEUE};

/// Where the programs are.
pub struct Programs {
    /// The directory with `fedora-messaging`, `libbench_noop.so` and
    /// `bare-lapin` (the harness's own).
    pub bin_dir: PathBuf,
    /// The Python fedora-messaging's `fedora-messaging`, if it takes part.
    pub python: Option<PathBuf>,
    /// The Python consumer (`bench/python_consumer.py`).
    pub python_consumer: PathBuf,
    /// Where configurations and logs go.
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// This host with the no-op plugin.
    Ours,
    /// A lapin consumer acking each message (the naive one).
    LapinEach,
    /// A lapin consumer acking with `multiple` every prefetch/2 messages
    /// (the hand-tuned one: the bar).
    LapinMultiple,
    /// A lapin consumer with automatic acks: no at-least-once, the
    /// broker's delivery ceiling.
    LapinAuto,
    /// The hand-tuned consumer with each message handed to a thread and
    /// back: what keeping a consumer off the connection's task costs.
    LapinThread,
    /// Python fedora-messaging with an equivalent callback.
    Python,
    /// This host running that same Python callback through the Python
    /// bridge, with the same interpreter and virtual environment.
    PythonBridge,
}

impl Contender {
    pub fn name(self) -> &'static str {
        match self {
            Contender::Ours => "ours",
            Contender::LapinEach => "lapin-each",
            Contender::LapinMultiple => "lapin-multiple",
            Contender::LapinAuto => "lapin-autoack",
            Contender::LapinThread => "lapin-thread",
            Contender::Python => "python",
            Contender::PythonBridge => "python-bridge",
        }
    }
}

/// What one run is asked to do.
pub struct Settings {
    pub prefetch: u16,
    pub messages: u64,
    /// Consumer instances (ours, and the Python bridge's processes).
    pub workers: usize,
    /// Milliseconds the no-op consumer sleeps per message (ours only).
    pub sleep_ms: u64,
}

impl Programs {
    pub fn host(&self) -> PathBuf {
        self.bin_dir.join("fedora-messaging")
    }

    /// The command that runs `contender` with `settings`.
    pub fn command(&self, contender: Contender, settings: &Settings) -> Result<Command, String> {
        match contender {
            Contender::Ours => {
                // Measured against consumers that log nothing: without the
                // two INFO lines a message fedora-messaging's consumer
                // logs (docs/operating.md gives their cost on their own).
                let quiet = "\n[log_config.loggers.fedora_messaging]\nlevel = \"INFO\"\n\n[log_config.loggers.\"fedora_messaging.twisted.consumer\"]\nlevel = \"WARNING\"\n";
                let conf = self.write_config("ours", settings, true, quiet)?;
                let mut command = Command::new(self.host());
                command.arg("--conf").arg(conf).arg("consume");
                Ok(command)
            }
            Contender::LapinEach
            | Contender::LapinMultiple
            | Contender::LapinAuto
            | Contender::LapinThread => {
                let acks = match contender {
                    Contender::LapinEach => "each",
                    Contender::LapinMultiple => "multiple",
                    Contender::LapinThread => "thread",
                    _ => "auto",
                };
                let mut command = Command::new(self.bin_dir.join("bare-lapin"));
                command.args([
                    AMQP_URL,
                    QUEUE,
                    &settings.prefetch.to_string(),
                    &settings.messages.to_string(),
                    acks,
                ]);
                Ok(command)
            }
            Contender::Python => {
                let conf = self.write_config("python", settings, false, "")?;
                let mut command = Command::new(self.python()?);
                command
                    .env_remove("FEDORA_MESSAGING_CONF")
                    .arg("--conf")
                    .arg(conf)
                    .arg("consume")
                    .arg(self.python_callback_file());
                Ok(command)
            }
            Contender::PythonBridge => {
                // The interpreter next to Python's own command: the same
                // environment, packages and callback.
                let interpreter = self.python()?.with_file_name("python");
                let python_table =
                    format!("\n[python]\ninterpreter = \"{}\"\n", interpreter.display());
                let mut extra = python_table;
                if settings.workers > 1 {
                    // One Python process a worker: they count together.
                    let count_file = self.work_dir.join("bridge-count");
                    let _ = std::fs::remove_file(&count_file);
                    extra = format!("count_file = \"{}\"\n{extra}", count_file.display());
                }
                let conf = self.write_config("python-bridge", settings, false, &extra)?;
                let mut command = Command::new(self.host());
                command
                    .env("FEDORA_MESSAGING_PLUGIN_PATH", &self.bin_dir)
                    .env("FM_PYTHON_BRIDGE_TIMING", "1")
                    .arg("--conf")
                    .arg(conf)
                    .arg("consume")
                    .arg(self.python_callback_file());
                Ok(command)
            }
        }
    }

    /// Python fedora-messaging's command.
    fn python(&self) -> Result<&Path, String> {
        self.python
            .as_deref()
            .ok_or_else(|| "the Python fedora-messaging is not installed (--python)".to_owned())
    }

    /// The Python callback, as both Python contenders are given it.
    fn python_callback_file(&self) -> String {
        format!("--callback-file={}:Counter", self.python_consumer.display())
    }

    /// A configuration consuming the benchmark queue as it is declared,
    /// with the consumer told when to halt; `ours` adds the plugin, and
    /// `extra` (keys of `[consumer_config]`, then TOML tables) goes at the
    /// end.
    fn write_config(
        &self,
        name: &str,
        settings: &Settings,
        ours: bool,
        extra: &str,
    ) -> Result<PathBuf, String> {
        let mut toml = format!(
            r#"amqp_url = "{AMQP_URL}"
"#
        );
        if ours {
            toml += &format!(
                "callback = \"{}:Noop\"\n",
                self.bin_dir.join("libbench_noop.so").display(),
            );
        }
        if settings.workers > 1 {
            toml += &format!("workers = {}\n", settings.workers);
        }
        toml += &format!(
            r#"
[queues."{QUEUE}"]
durable = true
auto_delete = false
exclusive = false
arguments = {{}}

[[bindings]]
queue = "{QUEUE}"
exchange = "amq.topic"
routing_keys = ["{QUEUE}.#"]

[qos]
prefetch_size = 0
prefetch_count = {}

[consumer_config]
halt_after = {}
"#,
            settings.prefetch, settings.messages
        );
        if ours && settings.sleep_ms > 0 {
            toml += &format!("sleep_ms = {}\n", settings.sleep_ms);
        }
        toml += extra;
        let path = self.work_dir.join(format!("{name}.toml"));
        std::fs::write(&path, toml).map_err(|error| format!("{}: {error}", path.display()))?;
        Ok(path)
    }

    pub fn log(&self, what: &str) -> PathBuf {
        self.work_dir.join(format!("{what}.log"))
    }
}

/// The harness's own directory: the programs are built next to it.
pub fn bin_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|error| format!("current_exe: {error}"))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "the harness has no directory".to_owned())
}
