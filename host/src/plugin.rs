//! Loading consumers from plugin libraries: `--callback=LIB:Symbol`.
//!
//! A library is checked before any of its code runs ([`PluginFile`]: a
//! regular file, ours or root's, not writable by others, nor replaceable
//! in any directory above it, an ELF file), loaded from the very file
//! checked, then abi_stable checks that it was built against a compatible
//! `fm-plugin-api`. Everything that can go wrong is a [`LoadError`], whose
//! message names the cause and the fix. The FFI types stay in here:
//! the rest of the host sees [`Plugin`], [`LoadedConsumer`] and
//! [`Outcome`].

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use abi_stable::StableAbi;
use abi_stable::library::{LibraryError, lib_header_from_path};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::sabi_types::{RMut, RRef};
use abi_stable::std_types::{RErr, ROk, RResult, RSlice, RStr, RString};
use abi_stable::type_layout::TypeLayout;
use fm_plugin_api::abi::{
    self, ConsumerBox, HeadersSource, HeadersSource_TO, HostServices, HostServices_Ref, InitArgs,
    NextSink_TO, PluginModule_Ref, PublishFailure, PublishFailure_NE, RawMessage,
};

use crate::engine::ahead;
use crate::engine::gate;
use crate::engine::handler::{Handler, Unstarted};
use crate::outcome::Outcome;
pub use crate::plugin_error::{LoadError, PLUGIN_PATH_VAR, PYTHON_BRIDGE_LIBRARY, api_revision};
use crate::plugin_file::PluginFile;
use crate::publisher;
use crate::traces;
use crate::wire::{HeadersJson, MessageView};

/// Directories searched for a plugin given by file name alone, after those
/// in `FEDORA_MESSAGING_PLUGIN_PATH`.
pub const SYSTEM_PLUGIN_DIRS: [&str; 2] =
    ["/usr/lib64/fedora-messaging", "/usr/lib/fedora-messaging"];

/// `LIB:Symbol`, split on the last `:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackSpec {
    pub library: String,
    pub consumer: String,
}

impl CallbackSpec {
    pub fn parse(spec: &str) -> Result<CallbackSpec, LoadError> {
        match spec.rsplit_once(':') {
            Some((library, consumer)) if !library.is_empty() && !consumer.is_empty() => {
                Ok(CallbackSpec {
                    library: library.to_owned(),
                    consumer: consumer.to_owned(),
                })
            }
            _ => Err(LoadError::BadSpec {
                spec: spec.to_owned(),
            }),
        }
    }

    /// The library file: a path with a '/' as given, a bare file name from
    /// the plugin search path.
    pub fn resolve_library(&self) -> Result<PathBuf, LoadError> {
        let looks_like_python = self.library.ends_with(".py")
            || (!self.library.contains('/')
                && !self.library.contains(".so")
                && self
                    .library
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '.'));
        let python = || LoadError::PythonCallback {
            spec: format!("{}:{}", self.library, self.consumer),
            searched: search_dirs(),
        };
        if self.library.ends_with(".py") {
            return Err(python());
        }
        if self.library.contains('/') {
            let path = PathBuf::from(&self.library);
            return if path.exists() {
                Ok(path)
            } else {
                Err(LoadError::NotFound { path })
            };
        }
        let searched = search_dirs();
        if let Some(found) = searched
            .iter()
            .map(|dir| dir.join(&self.library))
            .find(|candidate| candidate.exists())
        {
            return Ok(found);
        }
        let in_working_dir = Path::new(&self.library).is_file();
        if looks_like_python && !in_working_dir {
            return Err(python());
        }
        Err(LoadError::NotInSearchPath {
            name: self.library.clone(),
            searched,
            in_working_dir,
        })
    }
}

/// `FEDORA_MESSAGING_PLUGIN_PATH`'s directories, then the system ones.
pub fn search_dirs() -> Vec<PathBuf> {
    let from_env = std::env::var_os(PLUGIN_PATH_VAR).unwrap_or_default();
    std::env::split_paths(&from_env)
        .filter(|dir| !dir.as_os_str().is_empty())
        .chain(SYSTEM_PLUGIN_DIRS.iter().map(PathBuf::from))
        .collect()
}

/// Loads `spec`'s library and builds its consumer from `config`, the
/// `consumer_config` table.
pub fn load_consumer(spec: &str, config: &serde_json::Value) -> Result<LoadedConsumer, LoadError> {
    let (plugin, consumer) = load_library(spec)?;
    plugin.build(&consumer, config)
}

/// `spec`'s library, and the name of the consumer it asks for. A Python
/// callback (`package.module:callable`, `file.py:name`) is the Python
/// bridge's consumer, which reads the callback from the host's
/// configuration ([`describe_configuration`]).
pub fn load_library(spec: &str) -> Result<(Plugin, String), LoadError> {
    let spec = CallbackSpec::parse(spec)?;
    match spec.resolve_library() {
        Ok(library) => Ok((Plugin::load(&library)?, spec.consumer)),
        Err(LoadError::PythonCallback { spec, searched }) => {
            let bridge = searched
                .iter()
                .map(|dir| dir.join(PYTHON_BRIDGE_LIBRARY))
                .find(|candidate| candidate.exists())
                .ok_or(LoadError::PythonCallback { spec, searched })?;
            Ok((Plugin::load(&bridge)?, PYTHON_BRIDGE_CONSUMER.to_owned()))
        }
        Err(other) => Err(other),
    }
}

/// The consumer the Python bridge plugin ([`PYTHON_BRIDGE_LIBRARY`])
/// exports.
pub const PYTHON_BRIDGE_CONSUMER: &str = "Python";

/// What plugins are told of the configuration (revision 3's
/// `configuration` service), as the JSON text handed over.
static CONFIGURATION: OnceLock<String> = OnceLock::new();

/// The configuration file the host read, to name in plugins' errors.
static CONFIG_FILE: OnceLock<PathBuf> = OnceLock::new();

/// A plugin's reason for not starting, with `FILE:LINE: ` before it when it
/// begins with a `consumer_config` key path (as `Init::config`'s errors do)
/// that the configuration file holds.
fn located(reason: String) -> String {
    let Some(file) = CONFIG_FILE.get() else {
        return reason;
    };
    let key_path = match reason.split_once(": ") {
        Some((path, _)) if path == "consumer_config" || path.starts_with("consumer_config.") => {
            path
        }
        _ => return reason,
    };
    match crate::config::locate::key_path_in_file(file, key_path) {
        Some(place) => format!("{place}: {reason}"),
        None => reason,
    }
}

/// Records the configuration file and callback the host runs with, for
/// plugins that ask (the Python bridge hands them to Python). Call once,
/// before loading a plugin; the file's table is read again here (with the
/// host file's keys, which the configuration's loading checked), its
/// top-level keys lower-cased as fedora-messaging reads them.
pub fn describe_configuration(
    file: Option<&Path>,
    host_file: Option<&Path>,
    callback: Option<&str>,
) {
    let read = |file: &Path| {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|text| toml::from_str::<toml::Table>(&text).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key.to_lowercase(), value))
    };
    let table: toml::Table = file.into_iter().chain(host_file).flat_map(read).collect();
    let table = serde_json::to_value(table).unwrap_or_else(|_| serde_json::json!({}));
    let description = serde_json::json!({
        "file": file.map(|file| file.display().to_string()),
        "callback": callback,
        "table": table,
    });
    let _ = CONFIGURATION.set(description.to_string());
    if let Some(file) = file {
        let _ = CONFIG_FILE.set(file.to_owned());
    }
}

extern "C" fn configuration_for_plugin() -> RString {
    CONFIGURATION.get().map_or_else(
        || r#"{"file":null,"callback":null,"table":{}}"#.into(),
        |text| text.as_str().into(),
    )
}

/// A loaded plugin library. Libraries are never unloaded.
pub struct Plugin {
    path: PathBuf,
    module: PluginModule_Ref,
}

impl Plugin {
    /// The library's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks and loads the library at `path`.
    pub fn load(path: &Path) -> Result<Plugin, LoadError> {
        let loader_path = PluginFile::open(path)?.into_loader_path();
        let module = lib_header_from_path(&loader_path)
            .and_then(|header| header.init_root_module::<PluginModule_Ref>())
            .map_err(|error| library_error(path, &loader_path, error))?;
        if !module.panic_unwinds() {
            return Err(LoadError::PanicAbort {
                path: path.to_owned(),
            });
        }
        module.init()(host_services());
        Ok(Plugin {
            path: path.to_owned(),
            module,
        })
    }

    /// The names of the consumers the library exports.
    pub fn consumer_names(&self) -> Vec<String> {
        self.entries()
            .iter()
            .map(|entry| entry.name.as_str().to_owned())
            .collect()
    }

    fn entries(&self) -> abi_stable::std_types::RVec<abi::ConsumerEntry> {
        self.module.consumers()()
    }

    /// Builds the consumer `name` with its `consumer_config`.
    /// Whether the library exports a consumer named `name`.
    pub fn ensure_consumer(&self, name: &str) -> Result<(), LoadError> {
        if self
            .entries()
            .iter()
            .any(|entry| entry.name.as_str() == name)
        {
            Ok(())
        } else {
            Err(self.no_such_consumer(name))
        }
    }

    fn no_such_consumer(&self, name: &str) -> LoadError {
        LoadError::NoSuchConsumer {
            path: self.path.clone(),
            name: name.to_owned(),
            available: self.consumer_names(),
        }
    }

    pub fn build(
        &self,
        name: &str,
        config: &serde_json::Value,
    ) -> Result<LoadedConsumer, LoadError> {
        let entries = self.entries();
        let Some(entry) = entries.iter().find(|entry| entry.name.as_str() == name) else {
            return Err(self.no_such_consumer(name));
        };
        let config_json = config.to_string();
        let args = InitArgs {
            name: RStr::from_str(name),
            config_json: RStr::from_str(&config_json),
        };
        match (entry.new)(&args) {
            RResult::ROk(object) => Ok(LoadedConsumer {
                object,
                name: name.to_owned(),
            }),
            RErr(reason) => Err(LoadError::NewFailed {
                name: name.to_owned(),
                reason: located(reason.into_string()),
            }),
        }
    }
}

/// One consumer instance. Calls are made one at a time (`&mut self`).
pub struct LoadedConsumer {
    object: ConsumerBox,
    name: String,
}

impl LoadedConsumer {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Lends `message` to the consumer and returns its answer.
    pub fn consume(&mut self, message: &MessageView<'_>) -> Result<Outcome, Unstarted> {
        let object = &mut self.object;
        let answer = with_raw(message, |raw| object.consume(raw));
        if ahead::left_unstarted() {
            return Err(Unstarted);
        }
        match answer.as_enum() {
            Ok(abi::Outcome::Ack) => Ok(Outcome::Ack),
            Ok(abi::Outcome::Nack) => Ok(Outcome::Nack),
            Ok(abi::Outcome::Drop) => Ok(Outcome::Drop),
            Ok(abi::Outcome::Halt { exit_code, requeue }) => Ok(Outcome::Halt {
                exit_code: *exit_code,
                requeue: *requeue,
            }),
            Ok(abi::Outcome::Failed { reason }) => Ok(Outcome::Failed {
                reason: reason.to_string(),
            }),
            Ok(_) | Err(_) => Ok(Outcome::Failed {
                reason: "the consumer answered with an outcome this host does not know (is the plugin built against a newer plugin-api?)".to_owned(),
            }),
        }
    }

    /// Tells the consumer the host is stopping gracefully.
    pub fn stop(&mut self) {
        self.object.stop();
    }
}

impl Handler for LoadedConsumer {
    fn consume(&mut self, message: &MessageView<'_>) -> Result<Outcome, Unstarted> {
        LoadedConsumer::consume(self, message)
    }

    fn stop(&mut self) {
        LoadedConsumer::stop(self);
    }
}

/// Runs `call` with `message` as it crosses to a plugin.
fn with_raw<R>(message: &MessageView<'_>, call: impl FnOnce(&RawMessage<'_>) -> R) -> R {
    let headers = HeadersAdapter(message.headers);
    let raw = RawMessage {
        id: RStr::from_str(message.id),
        topic: RStr::from_str(message.topic),
        queue: RStr::from_str(message.queue),
        body: RSlice::from_slice(message.body),
        severity: message.severity,
        priority: message.priority,
        sent_at: message.sent_at.map(RStr::from_str).into(),
        schema: message.schema.map(RStr::from_str).into(),
        headers: HeadersSource_TO::from_ptr(RRef::new(&headers), TD_Opaque),
    };
    call(&raw)
}

struct HeadersAdapter<'a>(&'a dyn HeadersJson);

impl HeadersSource for HeadersAdapter<'_> {
    fn to_json(&self) -> RString {
        self.0.headers_json().into()
    }
}

/// The services handed to every plugin, built once.
fn host_services() -> HostServices_Ref {
    static SERVICES: OnceLock<HostServices_Ref> = OnceLock::new();
    *SERVICES.get_or_init(|| {
        HostServices {
            max_log_level: log::max_level() as u8,
            log: log_from_plugin,
            publish: publish_from_plugin,
            layout: host_services_layout,
            publish_confirmed: publish_confirmed_from_plugin,
            configuration: configuration_for_plugin,
            take_next: take_next_for_plugin,
            draining_fd: draining_fd_for_plugin,
            leave_unstarted: ahead::leave_unstarted,
            trace_context: trace_context_for_plugin,
            span_attribute: span_attribute_from_plugin,
            span_event: span_event_from_plugin,
        }
        .leak_into_prefix()
    })
}

extern "C" fn log_from_plugin(level: u8, target: RStr<'_>, message: RStr<'_>) {
    let level = log::Level::iter()
        .find(|l| *l as u8 == level)
        .unwrap_or(log::Level::Error);
    // A panic must not unwind into the plugin; losing one line is better.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        log::logger().log(
            &log::Record::builder()
                .level(level)
                .target(target.as_str())
                .args(format_args!("{}", message.as_str()))
                .build(),
        );
    }));
}

/// Revision 4: the message the calling consumer gets next, if it has
/// arrived ([`ahead::take_next`]).
extern "C" fn take_next_for_plugin(mut next: NextSink_TO<'_, RMut<'_, ()>>) -> bool {
    // A panic must not unwind into the plugin. One after the message was
    // taken would lose it for the consumer, so none can happen there: the
    // offer is the plugin's, which catches its own.
    catch_unwind(AssertUnwindSafe(|| {
        ahead::take_next(|message| with_raw(message, |raw| next.offer(raw)))
    }))
    .unwrap_or(false)
}

/// Revision 4: the descriptor that becomes readable once the host drains.
extern "C" fn draining_fd_for_plugin() -> i32 {
    gate::draining_fd().unwrap_or(-1)
}

/// Revision 5: the calling thread's trace context, `traceparent` and
/// `tracestate` on two lines; empty outside a span.
extern "C" fn trace_context_for_plugin() -> RString {
    catch_unwind(traces::current_context)
        .ok()
        .flatten()
        .map_or_else(RString::new, |(parent, state)| {
            format!("{parent}\n{state}").into()
        })
}

/// Revision 5: an attribute of the calling thread's `process` span.
extern "C" fn span_attribute_from_plugin(key: RStr<'_>, value: RStr<'_>) {
    let _ = catch_unwind(|| traces::set_current_attribute(key.as_str(), value.as_str()));
}

/// Revision 5: an event on the calling thread's `process` span.
extern "C" fn span_event_from_plugin(name: RStr<'_>, attributes: RStr<'_>) {
    let _ = catch_unwind(|| traces::add_current_event(name.as_str(), attributes.as_str()));
}

/// The layout plugins of revision 2 and later check before reading the
/// fields after `publish`.
extern "C" fn host_services_layout() -> &'static TypeLayout {
    <HostServices_Ref as StableAbi>::LAYOUT
}

/// Revision 1's `publish`: the configuration's exchange, 30 s.
extern "C" fn publish_from_plugin(message: RStr<'_>) -> RResult<(), RString> {
    match publish_guarded(message.as_str(), "", Duration::from_secs(30)) {
        Ok(_) => ROk(()),
        Err(failure) => RErr(RString::from(format!("{failure:?}"))),
    }
}

// `PublishFailure_NE` is abi_stable's fixed-size, `repr(C)` storage for a
// non-exhaustive enum; the lint looks only at the `#[non_exhaustive]` enum
// inside it.
#[allow(improper_ctypes_definitions)]
extern "C" fn publish_confirmed_from_plugin(
    record: RStr<'_>,
    exchange: RStr<'_>,
    timeout_ms: u64,
) -> RResult<RString, PublishFailure_NE> {
    use publisher::Failure;
    let timeout = Duration::from_millis(timeout_ms);
    match publish_guarded(record.as_str(), exchange.as_str(), timeout) {
        Ok(id) => ROk(RString::from(id)),
        Err(failure) => {
            let failure = match failure {
                Failure::Timeout(reason) => PublishFailure::Timeout {
                    reason: reason.into(),
                },
                Failure::Unreachable(reason) => PublishFailure::Unreachable {
                    reason: reason.into(),
                },
                Failure::Forbidden(reason) => PublishFailure::Forbidden {
                    reason: reason.into(),
                },
                Failure::Returned(reason) => PublishFailure::Returned {
                    reason: reason.into(),
                },
                Failure::Invalid(reason) => PublishFailure::Invalid {
                    reason: reason.into(),
                },
                Failure::Unavailable(reason) => PublishFailure::Unavailable {
                    reason: reason.into(),
                },
            };
            RErr(PublishFailure_NE::new(failure))
        }
    }
}

/// A panic must not unwind into the plugin.
fn publish_guarded(
    record: &str,
    exchange: &str,
    timeout: Duration,
) -> Result<String, publisher::Failure> {
    catch_unwind(AssertUnwindSafe(|| {
        publisher::service().publish(record, exchange, timeout)
    }))
    .unwrap_or_else(|_| {
        Err(publisher::Failure::Unavailable(
            "the host failed while publishing (please report this bug)".to_owned(),
        ))
    })
}

/// Turns abi_stable's (sometimes thousands of lines long) errors into one
/// line; the full text goes to the debug log.
fn library_error(path: &Path, loaded_as: &Path, error: LibraryError) -> LoadError {
    log::debug!(
        "loading {} (as {}) failed: {error}",
        path.display(),
        loaded_as.display()
    );
    let path = path.to_owned();
    match error {
        LibraryError::OpenError { err, .. } => {
            // dlerror() starts with the path, which the message already has.
            let reason = err.to_string();
            let prefix = format!("{}: ", loaded_as.display());
            LoadError::OpenFailed {
                reason: reason.strip_prefix(&prefix).unwrap_or(&reason).to_owned(),
                path,
            }
        }
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin { path },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::IncompatibleVersion {
            path,
            plugin: actual_version.to_string(),
            host: expected_version.to_string(),
        },
        LibraryError::AbiInstability(details) => LoadError::IncompatibleAbi {
            path,
            mismatch: summarize_abi_mismatch(&details.to_string()),
        },
        LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
            LoadError::IncompatibleAbi {
                path,
                mismatch: "built with a different major version of abi_stable".to_owned(),
            }
        }
        LibraryError::RootModule { err, .. } => LoadError::ModuleFailed {
            path,
            reason: err.to_string().trim().replace('\n', " "),
        },
        other => LoadError::ModuleFailed {
            path,
            reason: other.to_string().trim().replace('\n', " "),
        },
    }
}

/// The essential line of abi_stable's layout report: its last
/// `Error:… Expected:… Found:…` block, as "mismatched type: expected u8,
/// found u32".
fn summarize_abi_mismatch(report: &str) -> String {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    let Some(error_at) = lines.iter().rposition(|line| line.starts_with("Error:")) else {
        return "layouts differ".to_owned();
    };
    let what = lines[error_at].trim_start_matches("Error:").trim();
    let value_after = |label: &str| {
        lines[error_at..]
            .iter()
            .position(|line| line.starts_with(label))
            .and_then(|at| {
                let inline = lines[error_at + at].trim_start_matches(label).trim();
                if inline.is_empty() {
                    lines.get(error_at + at + 1).map(|next| next.to_string())
                } else {
                    Some(inline.to_owned())
                }
            })
    };
    match (value_after("Expected:"), value_after("Found:")) {
        (Some(expected), Some(found)) => format!("{what}: expected {expected}, found {found}"),
        _ => what.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_splits_on_the_last_colon() {
        assert_eq!(
            CallbackSpec::parse("/opt/a:b/libx.so:Saver").unwrap(),
            CallbackSpec {
                library: "/opt/a:b/libx.so".into(),
                consumer: "Saver".into()
            }
        );
        assert!(matches!(
            CallbackSpec::parse("libx.so"),
            Err(LoadError::BadSpec { .. })
        ));
        assert!(matches!(
            CallbackSpec::parse("libx.so:"),
            Err(LoadError::BadSpec { .. })
        ));
    }

    #[test]
    fn python_paths_get_their_own_error() {
        for spec in [
            "fedora_messaging.example:printer",
            "consumer.py:Saver",
            "./x/consumer.py:Saver",
        ] {
            let error = CallbackSpec::parse(spec)
                .unwrap()
                .resolve_library()
                .unwrap_err();
            assert!(
                matches!(error, LoadError::PythonCallback { .. }),
                "{spec}: {error}"
            );
        }
    }

    #[test]
    fn abi_reports_shrink_to_their_last_error() {
        let report = "Compared <this>:\n --- Type Layout ---\n  lots\nError:mismatched type\nExpected:\n    u8\nFound:\n    u32\n";
        assert_eq!(
            summarize_abi_mismatch(report),
            "mismatched type: expected u8, found u32"
        );
        assert_eq!(
            summarize_abi_mismatch("Error:too many fields Expected: 3 Found: 2"),
            "too many fields Expected: 3 Found: 2"
        );
    }

    #[test]
    fn revision_is_major_dot_minor_for_zero_versions() {
        assert_eq!(api_revision(), "0.1");
    }
}
