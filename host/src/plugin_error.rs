//! Why a consumer could not be loaded ([`LoadError`]), each reason with
//! a message that names the cause and the fix, and the names those
//! messages point to (the plugin path variable, the Python bridge's
//! library, the interface revision to rebuild against).

use std::fmt;
use std::path::PathBuf;

use crate::exit::{Exit, Fatal};

/// The environment variable listing extra plugin directories.
pub const PLUGIN_PATH_VAR: &str = "FEDORA_MESSAGING_PLUGIN_PATH";

/// The Python bridge plugin, looked for in the plugin search path when the
/// callback is a Python one.
pub const PYTHON_BRIDGE_LIBRARY: &str = "libfm_python.so";

/// The interface revision plugins must be built against, e.g. "0.1".
pub fn api_revision() -> String {
    let version = env!("CARGO_PKG_VERSION");
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => format!("0.{minor}"),
        (Some(major), _) => major.to_owned(),
        _ => version.to_owned(),
    }
}

/// Why a consumer could not be loaded. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    NoCallback,
    BadSpec {
        spec: String,
    },
    /// A Python callback, and no Python bridge in the search path.
    PythonCallback {
        spec: String,
        searched: Vec<PathBuf>,
    },
    NotFound {
        path: PathBuf,
    },
    NotInSearchPath {
        name: String,
        searched: Vec<PathBuf>,
        in_working_dir: bool,
    },
    Unreadable {
        path: PathBuf,
        reason: String,
    },
    NotRegularFile {
        path: PathBuf,
        kind: &'static str,
    },
    Insecure {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    NotSharedObject {
        path: PathBuf,
    },
    OpenFailed {
        path: PathBuf,
        reason: String,
    },
    NotAPlugin {
        path: PathBuf,
    },
    IncompatibleVersion {
        path: PathBuf,
        plugin: String,
        host: String,
    },
    IncompatibleAbi {
        path: PathBuf,
        mismatch: String,
    },
    ModuleFailed {
        path: PathBuf,
        reason: String,
    },
    PanicAbort {
        path: PathBuf,
    },
    NoSuchConsumer {
        path: PathBuf,
        name: String,
        available: Vec<String>,
    },
    NewFailed {
        name: String,
        reason: String,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rebuild = api_revision();
        match self {
            LoadError::NoCallback => write!(
                f,
                "no consumer given: pass --callback=path/to/libNAME.so:Consumer or set `callback` in the configuration file"
            ),
            LoadError::BadSpec { spec } => write!(
                f,
                "cannot parse the callback {spec:?}: give a library and a consumer name separated by ':', as in --callback=libsaver.so:SaveMessage"
            ),
            LoadError::PythonCallback { spec, searched } => write!(
                f,
                "{spec:?} is a Python callback, which runs through the Python bridge plugin, {PYTHON_BRIDGE_LIBRARY}; it is not in {}: install the fedora-messaging-rs package, which ships it, or build it (cargo build --release -p fm-python) and add its directory to {PLUGIN_PATH_VAR}",
                join_paths(searched)
            ),
            LoadError::NotFound { path } => write!(
                f,
                "plugin {} does not exist: check the path (a relative path starts from the working directory)",
                path.display()
            ),
            LoadError::NotInSearchPath {
                name,
                searched,
                in_working_dir: true,
            } => write!(
                f,
                "plugin {name} not found in {} (a bare file name is looked up there, not in the working directory): pass ./{name} to load the one in the working directory",
                join_paths(searched)
            ),
            LoadError::NotInSearchPath { name, searched, .. } => write!(
                f,
                "plugin {name} not found in {}: give its path (with a '/') or add its directory to {PLUGIN_PATH_VAR}",
                join_paths(searched)
            ),
            LoadError::Unreadable { path, reason } => {
                write!(f, "cannot read plugin {}: {reason}", path.display())
            }
            LoadError::NotRegularFile { path, kind } => write!(
                f,
                "plugin {} is {kind}, not a regular file: pass the libNAME.so file itself",
                path.display()
            ),
            LoadError::Insecure { path, problem, fix } => write!(
                f,
                "refusing to load plugin {}: {problem}, so another user could change the code this process runs; {fix}",
                path.display()
            ),
            LoadError::NotSharedObject { path } => write!(
                f,
                "{} is not a shared object (no ELF header): pass the libNAME.so that cargo builds for a crate with crate-type = [\"cdylib\"]",
                path.display()
            ),
            LoadError::OpenFailed { path, reason } => {
                write!(f, "cannot load plugin {}: {reason}", path.display())
            }
            LoadError::NotAPlugin { path } => write!(
                f,
                "{} is a shared object but not a fedora-messaging consumer plugin: build it against fm-plugin-api and export its consumers with export_consumers!",
                path.display()
            ),
            LoadError::IncompatibleVersion { path, plugin, host } => write!(
                f,
                "plugin {} was built against plugin-api {plugin}, this host uses {host}: rebuild the plugin against plugin-api {rebuild}",
                path.display()
            ),
            LoadError::IncompatibleAbi { path, mismatch } => write!(
                f,
                "plugin {} was built against an incompatible plugin-api ({mismatch}): rebuild the plugin against plugin-api {rebuild}",
                path.display()
            ),
            LoadError::ModuleFailed { path, reason } => {
                write!(
                    f,
                    "plugin {} failed to initialise: {reason}",
                    path.display()
                )
            }
            LoadError::PanicAbort { path } => write!(
                f,
                "plugin {} was built with panic = \"abort\", so a panic in it would kill the host instead of failing one message: rebuild it with panic = \"unwind\" (remove panic = \"abort\" from its Cargo profile)",
                path.display()
            ),
            LoadError::NoSuchConsumer {
                path,
                name,
                available,
            } => write!(
                f,
                "plugin {} exports no consumer named {name:?} (available: {})",
                path.display(),
                available.join(", ")
            ),
            LoadError::NewFailed { name, reason } => {
                write!(f, "consumer {name} could not start: {reason}")
            }
        }
    }
}

impl std::error::Error for LoadError {}

impl From<LoadError> for Fatal {
    fn from(error: LoadError) -> Fatal {
        Fatal::new(Exit::Error, error.to_string())
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
