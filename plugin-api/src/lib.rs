//! Write a fedora-messaging consumer in Rust and ship it as a shared object.
//!
//! The `fedora-messaging` host owns everything around a message: the broker
//! connection, queues and bindings, acknowledgements, logging, signals and
//! reconnection. A plugin supplies only what happens when a message arrives:
//! a type implementing [`Consumer`], exported by name with
//! [`export_consumers!`] from a crate built as a `cdylib`.
//!
//! ```
//! use fm_plugin_api::{export_consumers, Consumer, ConsumerError, Init, Message};
//!
//! pub struct CountMessages {
//!     seen: u64,
//!     stop_after: u64,
//! }
//!
//! impl Consumer for CountMessages {
//!     // Called once, like a Python class callback's `__init__`.
//!     fn new(init: &Init) -> Result<Self, ConsumerError> {
//!         #[derive(serde::Deserialize)]
//!         struct Conf { stop_after: u64 }
//!         let conf: Conf = init.config()?; // the [consumer_config] table
//!         Ok(CountMessages { seen: 0, stop_after: conf.stop_after })
//!     }
//!
//!     // Called for every message, one at a time.
//!     fn consume(&mut self, message: &Message) -> Result<(), ConsumerError> {
//!         self.seen += 1;
//!         log::info!("{} on {}", message.id(), message.topic());
//!         if self.seen == self.stop_after {
//!             return Err(ConsumerError::halt(0)); // ack this one, then stop
//!         }
//!         Ok(()) // ack
//!     }
//! }
//!
//! export_consumers!(CountMessages);
//! ```
//!
//! The plugin's `Cargo.toml` needs `crate-type = ["cdylib", "rlib"]` (the
//! `rlib` lets its unit tests call the consumer directly, with
//! [`Message::new`]) and must keep the default `panic = "unwind"`: the host
//! refuses a plugin built with `panic = "abort"`, whose panics it could not
//! turn into failures. It runs as
//! `fedora-messaging consume --callback=path/to/libname.so:CountMessages`.
//!
//! # What happens to a message
//!
//! [`Consumer::consume`]'s result decides, as in fedora-messaging: `Ok(())`
//! acknowledges; the variants of [`ConsumerError`] nack, drop, halt or fail
//! (see its table). A panic is a failure carrying the panic message; it
//! never brings the host down. `log` macros go to the host's log.
//!
//! # Publishing
//!
//! A consumer publishes as a Python callback calls `api.publish`: build an
//! [`Outgoing`] (topic, body, headers, severity, priority, the filter lists
//! that become `fedora_messaging_<kind>_<name>` headers, schema name,
//! exchange) and hand it to a [`Publisher`] (`Copy`, `Send`, `Sync`; usable
//! from `new`, `consume`, `stop` and threads of your own). It goes through
//! the host's own connection and returns the message id once the broker
//! confirmed it, or a [`PublishError`] saying which of timeout, broker
//! unreachable, forbidden, returned, invalid or unavailable it was. Whatever
//! a consumer publishes while handling a message is confirmed before that
//! message is acknowledged. Under `reconsume`, published messages are
//! printed (or written with `--publish-to FILE`), never sent, so a
//! publishing consumer can be tried without a broker.
//!
//! # Compatibility between plugins and hosts
//!
//! The host checks, when it loads a plugin, that both were built against
//! compatible revisions of this crate, and refuses the plugin with a message
//! naming the revision to rebuild against if not. The rules:
//!
//! - Same `0.MINOR` (e.g. a plugin built with 0.1.0 and a host with 0.1.4):
//!   the plugin loads. Patch releases never change a type that crosses the
//!   boundary; they may only append services the host offers plugins (such as
//!   publishing), which older plugins never read and which newer plugins find
//!   missing in older hosts ([`publish`] then answers that it is unavailable).
//! - A different `0.MINOR` (or, after 1.0, `MAJOR`): rebuild the plugin.
//!   Minor releases are where the consumer interface, the message layout or
//!   the plugin's exported table change.
//! - Any Rust compiler version on either side: the boundary uses only
//!   abi_stable's stable layouts, never Rust's own ABI.
//!
//! Interface revisions so far: revision 1 (0.1.0) is the consumer
//! interface, logging and a reserved `publish`; revision 2 (0.1.1) appends
//! publishing to the host services, and the host's layout of those
//! services, which a plugin checks against its own before reading them;
//! revision 3 (0.1.2) appends the host's configuration
//! ([`HostConfiguration`]), which a plugin finds unavailable in an older
//! host; revision 4 (0.1.3) appends [`ahead`], taking the next message
//! while the current one is consumed, which an older host never offers;
//! revision 5 (0.1.4) appends [`trace`], the trace context of the message
//! being consumed and attributes and events on its span, which an older
//! host does not give (no context; the rest does nothing).
//! A revision-1 plugin runs unchanged in a revision-2 host (its `publish`
//! now publishes); a revision-2 plugin loads in a revision-1 host, where
//! [`Publisher::publish`] answers [`PublishError::Unavailable`]. A plugin
//! whose host services differ from the host's (a field changed rather than
//! appended, which the rules forbid) refuses to build its consumers, asking
//! for a rebuild. The next revision must append its fields after the last
//! one, never change one, and have its plugins treat a field an older host
//! lacks as a service that is not available.
//!
//! The host's tests build plugins and the host of revision 1, taken from
//! the repository's history, and run them with the current ones
//! (`tests/tests/compat.rs`); each later revision adds the one before it.

#![allow(non_local_definitions, non_camel_case_types)]

#[doc(hidden)]
pub mod abi;
pub mod ahead;
mod error;
mod guest;
pub mod json;
mod message;
mod publish;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;

/// The target prefix of log records a plugin forwards from another logging
/// system that already chose what to emit (the Python bridge's records,
/// filtered by Python's own `log_config`): the host shows
/// `FORWARDED_LOG_TARGET::a::b` as the logger `a.b` and lets through every
/// record up to the most verbose level its configuration names. An older
/// host filters and shows them as any other target.
pub const FORWARDED_LOG_TARGET: &str = "fm_forwarded";

pub use error::ConsumerError;
pub use message::{Message, Severity};
pub use publish::{Outgoing, PublishError, Publisher};

/// A message consumer: what a fedora-messaging callback class is in Python.
///
/// The host builds one instance with [`new`](Consumer::new) before
/// consuming starts, then calls [`consume`](Consumer::consume) for each
/// message, one at a time, on a thread of its own (a consumer may block).
pub trait Consumer: Send + Sized + 'static {
    /// Builds the consumer from its configuration. An error stops the host
    /// before it consumes anything (exit 1), showing the error's reason.
    fn new(init: &Init<'_>) -> Result<Self, ConsumerError>;

    /// Handles one message: `Ok(())` acknowledges it; see [`ConsumerError`]
    /// for everything else.
    fn consume(&mut self, message: &Message<'_>) -> Result<(), ConsumerError>;

    /// Called once when the host stops gracefully (a halt, SIGTERM, the end
    /// of a replay), after the last message. Not called after a failure.
    fn stop(&mut self) {}
}

/// What a consumer is built from: its configuration, and the name the user
/// selected it by.
pub struct Init<'a> {
    name: &'a str,
    config_json: &'a str,
}

impl<'a> Init<'a> {
    /// An `Init` carrying this `consumer_config`, for a consumer's own tests.
    pub fn for_tests(name: &'a str, config_json: &'a str) -> Init<'a> {
        Init { name, config_json }
    }

    /// The `[consumer_config]` table of the configuration file, deserialized
    /// into `T`. The error starts with the key path of what did not match,
    /// `consumer_config.packages: invalid type: …`, by which the host finds
    /// the line of the file to name.
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConsumerError> {
        let mut json = serde_json::Deserializer::from_str(self.config_json);
        serde_path_to_error::deserialize(&mut json).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            // The position is in the JSON the host made of the table, which
            // the user never sees.
            let position = format!(" at line {} column {}", inner.line(), inner.column());
            let text = inner.to_string();
            let reason = text.strip_suffix(&position).unwrap_or(&text);
            let key = if path == "." {
                "consumer_config".to_owned()
            } else {
                format!("consumer_config.{path}")
            };
            ConsumerError::failed(format!("{key}: {reason}"))
        })
    }

    /// The `[consumer_config]` table as a JSON object.
    pub fn config_value(&self) -> serde_json::Value {
        serde_json::from_str(self.config_json).unwrap_or_default()
    }

    /// The name after the `:` of `--callback`.
    pub fn consumer_name(&self) -> &str {
        self.name
    }
}

/// The configuration the host runs with, for plugins that bring other
/// runtimes in (such as the Python bridge, which hands the same file to
/// Python). Interface revision 3; an older host answers with an error
/// saying so.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfiguration {
    /// The configuration file the host read; `None` when it runs on the
    /// defaults because `/etc/fedora-messaging/config.toml` does not exist.
    pub file: Option<std::path::PathBuf>,
    /// The callback as the user gave it (`--callback-file`, `--callback`
    /// or the file's `callback`).
    pub callback: Option<String>,
    /// The file's top-level table, as JSON.
    pub table: serde_json::Map<String, serde_json::Value>,
}

impl HostConfiguration {
    /// Asks the host; call it from [`Consumer::new`] or later.
    pub fn get() -> Result<HostConfiguration, ConsumerError> {
        #[derive(serde::Deserialize)]
        struct Wire {
            file: Option<std::path::PathBuf>,
            callback: Option<String>,
            #[serde(default)]
            table: serde_json::Map<String, serde_json::Value>,
        }
        let text = guest::host_configuration().map_err(ConsumerError::failed)?;
        let wire: Wire = serde_json::from_str(&text).map_err(|error| {
            ConsumerError::failed(format!(
                "the host described its configuration in a form this plugin does not read: {error}"
            ))
        })?;
        Ok(HostConfiguration {
            file: wire.file,
            callback: wire.callback,
            table: wire.table,
        })
    }
}

/// Publishes a message on `topic` with `body` through the host's
/// connection, with the defaults of [`Outgoing`] and [`Publisher`]; a
/// failure of the message when it cannot. [`Publisher::publish`] returns
/// the id and tells the failures apart.
pub fn publish(topic: &str, body: &serde_json::Value) -> Result<(), ConsumerError> {
    Publisher::new()
        .publish(&Outgoing::new(topic, body.clone()))
        .map(drop)
        .map_err(|error| ConsumerError::failed(error.to_string()))
}

/// Exports consumer types from a plugin library, by their type names.
///
/// Use it once per library, listing every consumer the library offers:
/// `export_consumers!(SaveMessage);` or `export_consumers!(A, B, C);`.
#[macro_export]
macro_rules! export_consumers {
    ($($consumer:ident),+ $(,)?) => {
        // The symbol abi_stable's loader looks for (its "root module
        // loader"); spelled out here so plugins need no abi_stable
        // dependency of their own.
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        #[unsafe(no_mangle)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::LibHeader = {
            extern "C" fn consumers() -> $crate::__private::RVec<$crate::__private::ConsumerEntry> {
                $crate::__private::RVec::from(::std::vec![
                    $($crate::__private::entry::<$consumer>(::std::stringify!($consumer))),+
                ])
            }
            fn root_module() -> $crate::__private::PluginModule_Ref {
                // Evaluated in the plugin crate: its own panic strategy.
                $crate::__private::plugin_module(::std::cfg!(panic = "unwind"), consumers)
            }
            extern "C" fn load_root_module() -> $crate::__private::RootModuleResult {
                $crate::__private::__call_root_module_loader(root_module)
            }
            // SAFETY: `load_root_module` returns the `PluginModule_Ref` named here.
            unsafe {
                $crate::__private::LibHeader::from_constructor::<$crate::__private::PluginModule_Ref>(
                    load_root_module,
                    $crate::__private::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::abi::{ConsumerEntry, PluginModule_Ref};
    pub use crate::guest::{entry, plugin_module};
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
    };
    pub use abi_stable::std_types::RVec;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_macro_uses_the_symbol_abi_stable_loads() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn a_consumer_config_that_does_not_fit_is_named_by_its_key_path() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Conf {
            packages: Vec<String>,
            build: Option<Build>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Build {
            tags: Vec<u32>,
        }
        for (json, expected) in [
            (
                r#"{"packages": "kernel"}"#,
                "consumer_config.packages: invalid type: string \"kernel\", expected a sequence",
            ),
            (
                r#"{"packages": [], "build": {"tags": [1, "x"]}}"#,
                "consumer_config.build.tags[1]: invalid type: string \"x\", expected u32",
            ),
            (
                r#"{"packages": [], "pakages": 1}"#,
                "consumer_config.pakages: unknown field `pakages`, expected `packages` or `build`",
            ),
            (r#"{}"#, "consumer_config: missing field `packages`"),
        ] {
            let error = Init::for_tests("C", json).config::<Conf>().unwrap_err();
            assert_eq!(error, ConsumerError::failed(expected), "{json}");
        }
    }
}
