//! The Python fedora-messaging, installed from PyPI into a virtual
//! environment under the target directory, to check that files and
//! messages pass between it and this host unchanged.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::{fedora_messaging, plugin, target_dir, workspace_root};

/// The release the round-trip tests hold us to.
pub const VERSION: &str = "3.9.1";

/// The virtual environment's directory, made (once) if missing.
fn venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        make_venv(
            &format!("python-fedora-messaging-{VERSION}"),
            &[&format!("fedora-messaging=={VERSION}")],
        )
    })
    .clone()
}

/// The schema package the Python bridge's tests validate messages with.
pub const SCHEMA_PACKAGE: &str = "koji-fedoramessaging-messages==1.3.0";

/// A second environment, as a deployment of a Python consumer has: the
/// same fedora-messaging and a schema package. Its `bin/python` is what
/// the bridge's `[python] interpreter` names.
pub fn bridge_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        make_venv(
            &format!("python-bridge-{VERSION}"),
            &[&format!("fedora-messaging=={VERSION}"), SCHEMA_PACKAGE],
        )
    })
    .clone()
}

/// The environment of a consumer published on PyPI, robosignatory 0.8.2,
/// deployed as its users deploy it: with fedora-messaging and koji (its
/// import needs koji; koji's Kerberos support, which needs a compiler and
/// krb5's headers, is left out: the test signs nothing through koji).
pub fn robosignatory_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let dir = make_venv(
            "python-robosignatory-0.8.2",
            &[
                &format!("fedora-messaging=={VERSION}"),
                "robosignatory==0.8.2",
                "requests",
                "python-dateutil",
                "six",
                "defusedxml",
            ],
        );
        if !dir.join("lib").read_dir().is_ok_and(|mut libs| {
            libs.any(|lib| lib.is_ok_and(|lib| lib.path().join("site-packages/koji").is_dir()))
        }) {
            let status = Command::new(dir.join("bin/pip"))
                .args([
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--no-deps",
                    "koji==1.35.3",
                ])
                .status()
                .expect("run pip");
            assert!(status.success(), "pip install koji failed: {status}");
        }
        dir
    })
    .clone()
}

/// OpenTelemetry for the trace tests: the protobuf types an OTLP receiver
/// decodes with, and an application's SDK, exporter and pika
/// instrumentation (`tests/fixtures/python/otlp_receiver.py`,
/// `pika_publisher.py`).
pub fn tracing_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        make_venv(
            "python-opentelemetry-1.45.1",
            &[
                "opentelemetry-proto==1.45.1",
                "opentelemetry-sdk==1.45.1",
                "opentelemetry-exporter-otlp-proto-http==1.45.1",
                "opentelemetry-instrumentation-pika==0.66b1",
                "pika==1.4.4",
            ],
        )
    })
    .clone()
}

/// A virtual environment under the target directory holding `packages`
/// from PyPI, made if `bin/python` lacks any of them. A half-made one from
/// an interrupted run is redone.
fn make_venv(name: &str, packages: &[&str]) -> PathBuf {
    let dir = target_dir().join(name);
    let done = dir.join(".installed");
    let wanted = packages.join("\n");
    // scripts/bench makes the plain fedora-messaging one too, without the
    // marker: its command is the sign there.
    let made_by_bench = packages.len() == 1 && dir.join("bin/fedora-messaging").exists();
    if made_by_bench || std::fs::read_to_string(&done).ok().as_deref() == Some(wanted.as_str()) {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .expect("run python3 -m venv (scripts/test installs python3-venv)");
    assert!(status.success(), "python3 -m venv failed: {status}");
    let status = Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .status()
        .expect("run pip");
    assert!(
        status.success(),
        "pip install {packages:?} failed: {status}"
    );
    std::fs::write(&done, wanted).expect("write the environment's marker");
    dir
}

/// A `log_config` in fedora-messaging's default shape (one console
/// handler on standard output, the `[logger LEVEL] message` format), root
/// at `root` and each of `loggers` (name, level) not propagating.
pub fn log_config(root: &str, loggers: &[(&str, &str)]) -> String {
    let mut text = String::from(
        r#"
[log_config]
version = 1
disable_existing_loggers = false

[log_config.formatters.simple]
format = "[%(name)s %(levelname)s] %(message)s"

[log_config.handlers.console]
class = "logging.StreamHandler"
formatter = "simple"
stream = "ext://sys.stdout"
"#,
    );
    for (name, level) in loggers {
        text += &format!(
            "\n[log_config.loggers.\"{name}\"]\nlevel = \"{level}\"\npropagate = false\nhandlers = [\"console\"]\n"
        );
    }
    text + &format!("\n[log_config.root]\nlevel = \"{root}\"\nhandlers = [\"console\"]\n")
}

/// Python's `fedora-messaging` command.
pub fn fedora_messaging_py() -> Command {
    let mut command = Command::new(venv().join("bin/fedora-messaging"));
    command
        .env_remove("FEDORA_MESSAGING_CONF")
        .stdin(std::process::Stdio::null());
    command
}

/// The virtual environment's Python.
pub fn python() -> Command {
    Command::new(venv().join("bin/python"))
}

/// The bridge's virtual environment's Python.
pub fn interpreter() -> PathBuf {
    bridge_venv().join("bin/python")
}

/// This host, finding the bridge among the workspace's plugins and the
/// test callbacks on `PYTHONPATH`.
pub fn bridge_host(conf: &Path) -> Command {
    bridge_host_running(conf, "consume")
}

/// [`bridge_host`] running `subcommand`.
pub fn bridge_host_running(conf: &Path, subcommand: &str) -> Command {
    let mut command = fedora_messaging();
    command
        .env(
            "FEDORA_MESSAGING_PLUGIN_PATH",
            plugin("fm_python").parent().expect("a plugin directory"),
        )
        .env("PYTHONPATH", workspace_root().join("tests/fixtures/python"))
        .arg("--conf")
        .arg(conf)
        .arg(subcommand);
    command
}

/// A queue's configuration with a Python `callback`, `[python]` naming the
/// test environment, and `consumer_config.out` where the callbacks write.
pub fn bridge_config(config: &str, callback: &str, out: &Path, label: &str) -> String {
    format!(
        "callback = \"{callback}\"\n{config}\n[python]\ninterpreter = \"{}\"\n\n[consumer_config]\nout = \"{}\"\nlabel = \"{label}\"\n",
        interpreter().display(),
        out.display()
    )
}

/// What the callbacks wrote, a JSON object a line.
pub fn written(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// The ids in what the callbacks wrote, in order.
pub fn ids_of(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|line| line["id"].as_str())
        .collect()
}
