//! The Python fedora-messaging, installed from PyPI into a virtual
//! environment under the target directory, to check that files and
//! messages pass between it and this host unchanged.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::target_dir;

/// The release the round-trip tests hold us to.
pub const VERSION: &str = "3.9.1";

/// The virtual environment's directory, made (once) if missing.
fn venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let dir = target_dir().join(format!("python-fedora-messaging-{VERSION}"));
        if !dir.join("bin/fedora-messaging").exists() {
            // A half-made environment from an interrupted run is redone.
            let _ = std::fs::remove_dir_all(&dir);
            let status = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&dir)
                .status()
                .expect("run python3 -m venv (scripts/test installs python3-venv)");
            assert!(status.success(), "python3 -m venv failed: {status}");
            let status = Command::new(dir.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(format!("fedora-messaging=={VERSION}"))
                .status()
                .expect("run pip");
            assert!(
                status.success(),
                "pip install fedora-messaging failed: {status}"
            );
        }
        dir
    })
    .clone()
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
