//! The types that cross between the host and a plugin library.
//!
//! Plugin authors never touch these: `export_consumers!` builds the plugin's
//! side and the host wraps its side in safe types. They are public only
//! because both sides are compiled from this crate.
//!
//! Everything here is an abi_stable type, so the host checks, when it loads a
//! library, that both sides agree on every layout reachable from
//! [`PluginModule`] (the one exception, [`HostServices`], is explained on its
//! definition). The compatibility rules that follow from this are in the
//! crate's documentation.

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::{RMut, VersionStrings},
    std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec},
    type_layout::TypeLayout,
};

/// The name the host reports in version errors.
pub const PLUGIN_KIND: &str = "fedora-messaging consumer plugin";

/// The root module: the one thing a plugin library exports.
///
/// Never add a field within a minor version of this crate: the host checks
/// that the library has at least the fields it knows, so a new field would
/// make every plugin built before it unloadable.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModule_Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// Whether the plugin was compiled with `panic = "unwind"`: only then
    /// can its own code catch a panic before it reaches the boundary.
    pub panic_unwinds: bool,

    /// Called once after loading, before any consumer is built.
    ///
    /// Opaque to the layout check on purpose: the host adds services over
    /// time, and a plugin built before them must still load (see
    /// [`HostServices`]). The signature itself never changes.
    #[sabi(unsafe_opaque_field)]
    pub init: extern "C" fn(services: HostServices_Ref),

    /// The consumers this library exports, by name.
    #[sabi(last_prefix_field)]
    pub consumers: extern "C" fn() -> RVec<ConsumerEntry>,
}

impl RootModule for PluginModule_Ref {
    declare_root_module_statics! {PluginModule_Ref}
    const BASE_NAME: &'static str = "fm_plugin";
    const NAME: &'static str = PLUGIN_KIND;
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// What the host offers plugins, handed over once by [`PluginModule::init`].
///
/// A prefix type that only ever grows at the end: a plugin built against an
/// older revision reads the fields it knows and never the newer ones; a
/// plugin built against a newer revision finds the fields an older host
/// lacks absent (`None`) and reports that the service is not available.
///
/// Revision 1: `max_log_level`, `log`, `publish` (reserved, answered
/// "not available"). Revision 2: `layout`, `publish_confirmed`; `publish`
/// publishes. Revision 3: `configuration`. Revision 4: `take_next`,
/// `draining_fd`, `leave_unstarted`. Revision 5: `trace_context`,
/// `span_attribute`, `span_event`. From revision 2 on, the plugin checks `layout` against its
/// own before reading any other field, so a host whose fields changed
/// (rather than grew) is refused instead of misread. The next revision
/// appends its fields after the last one here, and its plugins treat each
/// one a host lacks as a service that is not available.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostServices_Ref)))]
#[sabi(missing_field(option))]
pub struct HostServices {
    /// The most verbose level the host's logger lets through, as
    /// `log::LevelFilter as u8` (0 = off, 5 = trace).
    pub max_log_level: u8,

    /// Logs one record through the host's logger. `level` is
    /// `log::Level as u8` (1 = error, 5 = trace).
    #[sabi(last_prefix_field)]
    pub log: extern "C" fn(level: u8, target: RStr<'_>, message: RStr<'_>),

    /// Publishes one message given as a JSON object in fedora-messaging's
    /// record format, to the configuration's `publish_exchange`, waiting
    /// up to 30 s for the broker's confirm. Revision-1 hosts answer that
    /// publishing is not available.
    pub publish: extern "C" fn(message: RStr<'_>) -> RResult<(), RString>,

    /// Revision 2: the layout of [`HostServices_Ref`] as the host was built.
    #[sabi(unsafe_opaque_field)]
    pub layout: extern "C" fn() -> &'static TypeLayout,

    /// Revision 2: publishes one message in fedora-messaging's record
    /// format (a JSON object) to `exchange` (empty: the configuration's
    /// `publish_exchange`), and returns its id once the broker confirmed
    /// it, waiting at most `timeout_ms` (also for a connection, during an
    /// outage).
    pub publish_confirmed: extern "C" fn(
        record: RStr<'_>,
        exchange: RStr<'_>,
        timeout_ms: TimeoutMs,
    ) -> RResult<RString, PublishFailure_NE>,

    /// Revision 3: the configuration the host runs with, as a JSON object:
    /// `file`, the path of the configuration file it read (null when it
    /// runs on the defaults); `callback`, the callback it was given
    /// (`--callback-file`, `--callback`, or the file's `callback`, as
    /// written; null when none); `table`, the file's top-level table.
    pub configuration: extern "C" fn() -> RString,

    /// Revision 4: called from inside [`ConsumerObject::consume`], on the
    /// thread that called it. When the message this consumer instance is to
    /// be given next has already arrived (and the host is not draining),
    /// lends it to `next` and returns true: the host's next `consume` on
    /// this instance is then that message, whatever happens meanwhile.
    /// False otherwise, and on any other thread.
    pub take_next: extern "C" fn(next: NextSink_TO<'_, RMut<'_, ()>>) -> bool,

    /// Revision 4: a descriptor that becomes readable once the host is
    /// draining (a halt, a failure or a stop): from then on no message may
    /// be started. -1 when the host cannot give one.
    pub draining_fd: extern "C" fn() -> i32,

    /// Revision 4: called from inside [`ConsumerObject::consume`], on the
    /// thread that called it, for a message taken with `take_next` that
    /// the consumer did not begin because the host drains: the host then
    /// leaves it unsettled, whatever `consume` returns (a failure, for a
    /// host that cannot). Taken as a failure when the host is not
    /// draining. (Not a variant of [`Outcome`]: hosts refuse plugins whose
    /// enums have fewer variants than theirs.)
    pub leave_unstarted: extern "C" fn(),

    /// Revision 5: the W3C trace context of the message being consumed on
    /// the calling thread (its `process` span), as `traceparent`, a
    /// newline, and `tracestate`; empty when traces are off or no message
    /// is being consumed there.
    pub trace_context: extern "C" fn() -> RString,

    /// Revision 5: sets a string attribute on the `process` span of the
    /// message being consumed on the calling thread; nothing when traces
    /// are off.
    pub span_attribute: extern "C" fn(key: RStr<'_>, value: RStr<'_>),

    /// Revision 5: adds an event named `name` to that span, with
    /// `attributes`, a JSON object whose string, number and boolean
    /// members become the event's attributes; nothing when traces are
    /// off.
    pub span_event: extern "C" fn(name: RStr<'_>, attributes: RStr<'_>),
}

/// Where [`HostServices::take_next`] lends the next message.
#[sabi_trait]
pub trait NextSink {
    /// The message the consumer will be given next, lent for this call.
    #[sabi(last_prefix_field)]
    fn offer(&mut self, message: &RawMessage<'_>);
}

/// Milliseconds, in `publish_confirmed`; another type only in a test
/// fixture that stands for a host whose services changed.
#[cfg(not(feature = "test-changed-host-services"))]
pub type TimeoutMs = u64;
#[cfg(feature = "test-changed-host-services")]
pub type TimeoutMs = u32;

/// Why a publish failed (revision 2).
///
/// Non-exhaustive across the boundary: a plugin that meets a variant it
/// does not know (from a newer host) reports the publish unavailable.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
#[sabi(kind(WithNonExhaustive(size = [usize; 6], traits(Debug, Clone, PartialEq))))]
#[non_exhaustive]
pub enum PublishFailure {
    /// The broker did not confirm within the timeout.
    Timeout { reason: RString },
    /// No connection to the broker came up within the timeout.
    Unreachable { reason: RString },
    /// The broker refused the user (403 ACCESS_REFUSED).
    Forbidden { reason: RString },
    /// The broker did not take the message: no such exchange, or a nack.
    Returned { reason: RString },
    /// The message is not one fedora-messaging would publish.
    Invalid { reason: RString },
    /// Publishing is not available where the consumer runs.
    Unavailable { reason: RString },
}

/// One named consumer in a plugin library.
#[repr(C)]
#[derive(StableAbi)]
pub struct ConsumerEntry {
    /// The name users put after the `:` in `--callback`.
    pub name: RStr<'static>,
    /// Builds one instance; an error carries the reason.
    pub new: extern "C" fn(init: &InitArgs<'_>) -> RResult<ConsumerBox, RString>,
}

/// What a consumer is built from.
#[repr(C)]
#[derive(StableAbi)]
pub struct InitArgs<'a> {
    /// The name the consumer was selected by.
    pub name: RStr<'a>,
    /// The `consumer_config` table of the configuration, as a JSON object.
    pub config_json: RStr<'a>,
}

/// A consumer instance as the host sees it.
#[sabi_trait]
pub trait ConsumerObject: Send {
    /// Handles one message. Never unwinds: the plugin side catches panics.
    fn consume(&mut self, message: &RawMessage<'_>) -> Outcome_NE;

    /// Called once when the host stops consuming gracefully.
    #[sabi(last_prefix_field)]
    fn stop(&mut self);
}

/// An owned consumer instance, as returned by [`ConsumerEntry::new`].
pub type ConsumerBox = ConsumerObject_TO<'static, RBox<()>>;

/// One message, lent to the plugin for the duration of one call.
///
/// The body is the delivery's own bytes; the host has checked that it is a
/// JSON object and that the headers have the types fedora-messaging
/// requires, so the plugin side can decode without reporting errors.
#[repr(C)]
#[derive(StableAbi)]
pub struct RawMessage<'a> {
    pub id: RStr<'a>,
    pub topic: RStr<'a>,
    /// The queue the message came from; empty when unknown.
    pub queue: RStr<'a>,
    /// UTF-8 JSON text of an object.
    pub body: RSlice<'a, u8>,
    /// 10, 20, 30 or 40.
    pub severity: u8,
    #[cfg(not(feature = "test-changed-abi"))]
    pub priority: u8,
    #[cfg(feature = "test-changed-abi")]
    pub priority: u32,
    pub sent_at: ROption<RStr<'a>>,
    pub schema: ROption<RStr<'a>>,
    /// The headers, converted to JSON only if the plugin asks for them.
    pub headers: HeadersSource_TO<'a, abi_stable::sabi_types::RRef<'a, ()>>,
}

/// The host's headers, converted on demand.
#[sabi_trait]
pub trait HeadersSource {
    /// The headers as a JSON object.
    #[sabi(last_prefix_field)]
    fn to_json(&self) -> RString;
}

/// What a consumer made of one message.
///
/// Non-exhaustive across the boundary: a host that meets a variant it does
/// not know (from a plugin built against a newer revision) treats it as a
/// failure instead of misreading it.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
#[sabi(kind(WithNonExhaustive(size = [usize; 6], traits(Debug, Clone, PartialEq))))]
#[non_exhaustive]
pub enum Outcome {
    Ack,
    Nack,
    Drop,
    Halt { exit_code: i32, requeue: bool },
    Failed { reason: RString },
}
