//! The Python bridge: a fedora-messaging Python callback runs unchanged in
//! this host, which keeps its connection, settling, limits and metrics.
//!
//! The host loads this plugin (`libfm_python.so`, consumer `Python`) when
//! the callback is a Python one (`package.module:callable`, or
//! `--callback-file=file.py:name`). Each consumer instance, one per
//! worker, starts a Python process from the configuration's
//! `[python] interpreter` (default `python3`; a virtual environment's
//! `bin/python` brings that environment's packages) running `driver.py`,
//! which imports the callback once and runs it for each message as
//! fedora-messaging 3.9 does.
//!
//! Why a process and not an interpreter embedded in this library: the
//! interpreter and its virtual environment are simply the ones named, with
//! no libpython fixed at build time; C extensions load as in any Python
//! (an embedded libpython opened without `RTLD_GLOBAL` cannot load them);
//! Python's signal handlers cannot take SIGTERM from the host; a crash in
//! Python ends that process, which is one failed message, not the host;
//! and `workers = N` runs N interpreters in parallel instead of sharing one
//! GIL. The price is the pipes, kept off Python's path: the next message
//! is written to Python before the current one is answered.
//!
//! The conversation is in length-prefixed frames ([`frames`]): the plugin
//! sends each message on the child's fd 3; Python's main thread answers on
//! fd 4 with `ready` or `start failed` once, then `done` per message, with
//! the log records and publish requests it makes meanwhile, which the
//! consumer's thread serves as it waits; Python's other threads send
//! theirs on fd 5, which a thread of the plugin serves at any time.
//! Publish replies go back on fd 3. While Python handles one message, the
//! next one, if the host has it already, is sent too
//! ([`fm_plugin_api::ahead`]), so that Python never waits for the host
//! between two; the host's draining descriptor, at fd 6, tells Python not
//! to begin it once the host drains.

mod frames;
mod serve;
mod worker;

use fm_plugin_api::{Consumer, ConsumerError, HostConfiguration, Init, Message, export_consumers};

use crate::worker::{Settings, Worker};

/// Runs the configured Python callback; see the crate documentation.
pub struct Python {
    worker: Worker,
}

impl Consumer for Python {
    fn new(_init: &Init<'_>) -> Result<Self, ConsumerError> {
        let host = HostConfiguration::get()?;
        let settings = Settings::from_host(&host).map_err(ConsumerError::failed)?;
        let worker = Worker::start(&settings).map_err(ConsumerError::failed)?;
        Ok(Python { worker })
    }

    fn consume(&mut self, message: &Message<'_>) -> Result<(), ConsumerError> {
        self.worker.run(message)
    }

    fn stop(&mut self) {
        self.worker.finish();
    }
}

export_consumers!(Python);

/// How a callback is given: a module to import, or a file to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackKind {
    Module,
    File,
}

/// Whether `spec` names a Python callback rather than a plugin library,
/// and of which kind: `x.py:name` is a file, `package.module:name` (no
/// `/`, no `.so`) a module.
pub fn python_callback(spec: &str) -> Option<CallbackKind> {
    let (location, name) = spec.trim().rsplit_once(':')?;
    if location.is_empty() || name.is_empty() {
        return None;
    }
    if location.ends_with(".py") {
        return Some(CallbackKind::File);
    }
    let module_path = !location.contains('/')
        && !location.contains(".so")
        && location
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.');
    module_path.then_some(CallbackKind::Module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_python_callbacks_from_plugin_libraries() {
        for (spec, kind) in [
            (
                "fedora_messaging.example:printer",
                Some(CallbackKind::Module),
            ),
            ("mypkg:Consumer", Some(CallbackKind::Module)),
            ("consumer.py:Saver", Some(CallbackKind::File)),
            ("/srv/x/consumer.py:Saver", Some(CallbackKind::File)),
            ("libfm_python.so:Python", None),
            ("/usr/lib64/fedora-messaging/libfm_python.so:Python", None),
            ("libsaver.so.1:SaveMessage", None),
            ("printer", None),
            (":x", None),
        ] {
            assert_eq!(python_callback(spec), kind, "{spec}");
        }
    }
}
