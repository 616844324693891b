//! The plugin's side of the boundary, used by `export_consumers!`.
//!
//! Everything generic here is monomorphised inside the plugin, so panics are
//! caught by the plugin's own unwinder before they can reach the host.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::sabi_types::RMut;
use abi_stable::std_types::{RErr, ROk, RResult, RStr, RString, RVec};

use abi_stable::StableAbi;
use abi_stable::abi_stability::abi_checking::check_layout_compatibility;

use crate::abi::{
    ConsumerBox, ConsumerEntry, ConsumerObject, ConsumerObject_TO, HostServices_Ref, InitArgs,
    NextSink, NextSink_TO, Outcome, Outcome_NE, PluginModule, PluginModule_Ref, PublishFailure,
    RawMessage, TimeoutMs,
};
use crate::{Consumer, ConsumerError, Init, Message, PublishError};

/// Builds the root module; `panic_unwinds` is evaluated in the plugin crate.
pub fn plugin_module(
    panic_unwinds: bool,
    consumers: extern "C" fn() -> RVec<ConsumerEntry>,
) -> PluginModule_Ref {
    PluginModule {
        panic_unwinds,
        init,
        consumers,
    }
    .leak_into_prefix()
}

/// The table entry for one consumer type.
pub fn entry<C: Consumer>(name: &'static str) -> ConsumerEntry {
    ConsumerEntry {
        name: RStr::from_str(name),
        new: new_consumer::<C>,
    }
}

static HOST: OnceLock<HostServices_Ref> = OnceLock::new();

/// Set when the host's services are laid out otherwise than this plugin's
/// (a changed field, not an appended one): every consumer of the plugin
/// then refuses to start, with this reason.
static HOST_MISMATCH: OnceLock<String> = OnceLock::new();

extern "C" fn init(services: HostServices_Ref) {
    // Loading one library twice (two of its consumers) initialises it twice;
    // the first set of services stays, they are the same host's.
    if HOST.set(services).is_err() {
        return;
    }
    install_panic_hook();
    // Before any other field is read.
    if let Err(reason) = check_host_services(services) {
        let _ = HOST_MISMATCH.set(reason);
        return;
    }
    if log::set_logger(&HostLogger).is_ok() {
        log::set_max_level(level_filter(services.max_log_level()));
    }
}

/// Hands this library the services of a host of the crate's own: the test
/// harness's ([`crate::testing`]).
#[cfg(feature = "testing")]
pub(crate) fn init_services(services: HostServices_Ref) {
    init(services);
}

/// Compares the host's layout of its services with this plugin's, with
/// abi_stable's checker. A host of revision 1 hands over no layout: its
/// fields are revision 1's, which every later revision keeps.
fn check_host_services(services: HostServices_Ref) -> Result<(), String> {
    let Some(host_layout) = services.layout() else {
        return Ok(());
    };
    let host_layout = host_layout();
    let plugin_layout = <HostServices_Ref as StableAbi>::LAYOUT;
    // abi_stable accepts a prefix type's second layout having more fields
    // than its first, not fewer. Either side may be the newer revision:
    // the layouts agree when one of the two orders passes, which compares
    // the fields both have.
    check_layout_compatibility(host_layout, plugin_layout)
        .or_else(|_| check_layout_compatibility(plugin_layout, host_layout))
        .map_err(|errors| {
            format!(
                "this plugin was built against fm-plugin-api {}, whose host services do not match this host's ({} difference(s)): rebuild the plugin against the host's fm-plugin-api",
                env!("CARGO_PKG_VERSION"),
                errors.errors.len()
            )
        })
}

/// Publishes through the host (revision 2); see [`crate::Publisher`].
pub(crate) fn publish_confirmed(
    record: &str,
    exchange: &str,
    timeout: std::time::Duration,
) -> Result<String, PublishError> {
    let Some(services) = HOST.get() else {
        return Err(PublishError::Unavailable(
            "not running in a fedora-messaging host".to_owned(),
        ));
    };
    if let Some(mismatch) = HOST_MISMATCH.get() {
        return Err(PublishError::Unavailable(mismatch.clone()));
    }
    let Some(publish) = services.publish_confirmed() else {
        return Err(PublishError::Unavailable(
            "this fedora-messaging host is older than plugin interface revision 2 and cannot publish: upgrade the host".to_owned(),
        ));
    };
    let timeout_ms = TimeoutMs::try_from(timeout.as_millis()).unwrap_or(TimeoutMs::MAX);
    match publish(RStr::from_str(record), RStr::from_str(exchange), timeout_ms) {
        ROk(id) => Ok(id.into_string()),
        RErr(failure) => Err(match failure.as_enum() {
            Ok(PublishFailure::Timeout { reason }) => PublishError::Timeout(reason.to_string()),
            Ok(PublishFailure::Unreachable { reason }) => {
                PublishError::Unreachable(reason.to_string())
            }
            Ok(PublishFailure::Forbidden { reason }) => PublishError::Forbidden(reason.to_string()),
            Ok(PublishFailure::Returned { reason }) => PublishError::Returned(reason.to_string()),
            Ok(PublishFailure::Invalid { reason }) => PublishError::Invalid(reason.to_string()),
            Ok(PublishFailure::Unavailable { reason }) => {
                PublishError::Unavailable(reason.to_string())
            }
            Err(_) => PublishError::Unavailable(
                "the host answered with a failure this plugin does not know".to_owned(),
            ),
        }),
    }
}

/// The host's configuration (revision 3); see [`crate::HostConfiguration`].
pub(crate) fn host_configuration() -> Result<String, String> {
    let Some(services) = HOST.get() else {
        return Err("not running in a fedora-messaging host".to_owned());
    };
    if let Some(mismatch) = HOST_MISMATCH.get() {
        return Err(mismatch.clone());
    }
    match services.configuration() {
        Some(configuration) => Ok(configuration().into_string()),
        None => Err(
            "this fedora-messaging host is older than plugin interface revision 3 and does not tell plugins its configuration: upgrade the host".to_owned(),
        ),
    }
}

/// Takes the message this consumer instance gets next (revision 4); see
/// [`crate::ahead::take_next`].
pub(crate) fn take_next(offer: &mut dyn FnMut(&Message<'_>)) -> bool {
    struct Sink<'a>(&'a mut dyn FnMut(&Message<'_>));
    impl NextSink for Sink<'_> {
        fn offer(&mut self, raw: &RawMessage<'_>) {
            // Taken all the same: the host hands it to `consume` next.
            if let Err(payload) = guarded(|| (self.0)(&Message::from_raw(raw))) {
                log::error!(
                    "consumer panicked while taking the next message: {}",
                    panic_reason(payload)
                );
            }
        }
    }
    let Some(take_next) = usable_services().and_then(|services| services.take_next()) else {
        return false;
    };
    let mut sink = Sink(offer);
    take_next(NextSink_TO::from_ptr(RMut::new(&mut sink), TD_Opaque))
}

/// The host's draining descriptor (revision 4); see
/// [`crate::ahead::draining_fd`].
pub(crate) fn draining_fd() -> Option<i32> {
    let draining_fd = usable_services()?.draining_fd()?;
    Some(draining_fd()).filter(|fd| *fd >= 0)
}

/// Tells the host the message in hand was not begun (revision 4).
fn leave_unstarted() {
    if let Some(leave_unstarted) = usable_services().and_then(|services| services.leave_unstarted())
    {
        leave_unstarted();
    }
}

/// The trace context of the message being consumed (revision 5); see
/// [`crate::trace::context`].
pub(crate) fn trace_context() -> Option<String> {
    let trace_context = usable_services()?.trace_context()?;
    Some(trace_context().into_string()).filter(|context| !context.is_empty())
}

/// Sets an attribute of the message's `process` span (revision 5).
pub(crate) fn span_attribute(key: &str, value: &str) {
    if let Some(span_attribute) = usable_services().and_then(|services| services.span_attribute()) {
        span_attribute(key.into(), value.into());
    }
}

/// Adds an event to the message's `process` span (revision 5).
pub(crate) fn span_event(name: &str, attributes: &str) {
    if let Some(span_event) = usable_services().and_then(|services| services.span_event()) {
        span_event(name.into(), attributes.into());
    }
}

/// The host's services, when there is a host whose services this plugin
/// reads.
fn usable_services() -> Option<HostServices_Ref> {
    HOST.get()
        .copied()
        .filter(|_| HOST_MISMATCH.get().is_none())
}

extern "C" fn new_consumer<C: Consumer>(args: &InitArgs<'_>) -> RResult<ConsumerBox, RString> {
    if let Some(mismatch) = HOST_MISMATCH.get() {
        return RErr(RString::from(mismatch.as_str()));
    }
    let init = Init {
        name: args.name.as_str(),
        config_json: args.config_json.as_str(),
    };
    match guarded(|| C::new(&init)) {
        Ok(Ok(consumer)) => ROk(ConsumerObject_TO::from_value(
            Guarded(ManuallyDrop::new(consumer)),
            TD_Opaque,
        )),
        Ok(Err(error)) => RErr(RString::from(new_error_reason(error))),
        Err(payload) => RErr(RString::from(panic_reason(payload))),
    }
}

fn new_error_reason(error: ConsumerError) -> String {
    match error {
        ConsumerError::Failed { reason } => reason,
        other => format!("`new` returned {other}, which only `consume` can return"),
    }
}

/// A consumer whose panics become failures, in `new`, `consume`, `stop`
/// and its `Drop` alike: none may unwind into the host (abi_stable would
/// end the process).
struct Guarded<C>(ManuallyDrop<C>);

impl<C> Drop for Guarded<C> {
    fn drop(&mut self) {
        // SAFETY: the consumer is dropped here, once, and never used after.
        let dropped = guarded(|| unsafe { ManuallyDrop::drop(&mut self.0) });
        if let Err(payload) = dropped {
            log::error!(
                "consumer panicked while being dropped: {}",
                panic_reason(payload)
            );
        }
    }
}

/// Runs `call`, catching its panic; our panic hook records where it
/// happened instead of printing it.
fn guarded<T>(call: impl FnOnce() -> T) -> Result<T, Box<dyn Any + Send>> {
    let outer = IN_GUARDED_CALL.with(|flag| flag.replace(true));
    let result = catch_unwind(AssertUnwindSafe(call));
    IN_GUARDED_CALL.with(|flag| flag.set(outer));
    result
}

impl<C: Consumer> ConsumerObject for Guarded<C> {
    fn consume(&mut self, raw: &RawMessage<'_>) -> Outcome_NE {
        let message = Message::from_raw(raw);
        let outcome = match guarded(|| self.0.consume(&message)) {
            Ok(Ok(())) => Outcome::Ack,
            Ok(Err(ConsumerError::Nack)) => Outcome::Nack,
            Ok(Err(ConsumerError::Drop)) => Outcome::Drop,
            Ok(Err(ConsumerError::Halt { exit_code, requeue })) => {
                Outcome::Halt { exit_code, requeue }
            }
            Ok(Err(ConsumerError::Failed { reason })) => Outcome::Failed {
                reason: reason.into(),
            },
            Ok(Err(ConsumerError::Unstarted)) => {
                leave_unstarted();
                Outcome::Failed {
                    reason: "the consumer left the message unstarted".into(),
                }
            }
            Err(payload) => Outcome::Failed {
                reason: panic_reason(payload).into(),
            },
        };
        Outcome_NE::new(outcome)
    }

    fn stop(&mut self) {
        if let Err(payload) = guarded(|| self.0.stop()) {
            log::error!(
                "consumer panicked while stopping: {}",
                panic_reason(payload)
            );
        }
    }
}

thread_local! {
    /// Where the last panic on this thread happened, recorded by our hook.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Whether this thread is in a call to the consumer that [`guarded`]
    /// catches.
    static IN_GUARDED_CALL: Cell<bool> = const { Cell::new(false) };
}

/// Replaces the default hook (which prints to stderr) of this plugin's own
/// copy of std. A panic in a call to the consumer is reported once, as the
/// message's failure; one on a thread of the plugin's own goes to the
/// host's log, which the default hook's stderr might not reach.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        if IN_GUARDED_CALL.with(Cell::get) {
            PANIC_LOCATION.with(|cell| *cell.borrow_mut() = location);
        } else {
            let thread = std::thread::current();
            log::error!(
                "thread {} of the plugin panicked at {}: {}",
                thread.name().unwrap_or("<unnamed>"),
                location.as_deref().unwrap_or("an unknown place"),
                payload_text(info.payload())
            );
        }
    }));
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// The panic's message and location; the payload is dropped here, and a
/// payload whose own `Drop` panics is contained too (that second payload
/// is leaked rather than dropped).
fn panic_reason(payload: Box<dyn Any + Send>) -> String {
    let message = payload_text(payload.as_ref());
    let location = PANIC_LOCATION.with(|cell| cell.borrow_mut().take());
    if let Err(second) = guarded(move || drop(payload)) {
        std::mem::forget(second);
        PANIC_LOCATION.with(|cell| cell.borrow_mut().take());
    }
    match location {
        Some(location) => format!("panicked at {location}: {message}"),
        None => format!("panicked: {message}"),
    }
}

/// Forwards this plugin's `log` records to the host's logger.
struct HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if let Some(host) = HOST.get() {
            let message = record.args().to_string();
            host.log()(
                record.level() as u8,
                RStr::from_str(record.target()),
                RStr::from_str(&message),
            );
        }
    }

    fn flush(&self) {}
}

fn level_filter(value: u8) -> log::LevelFilter {
    log::LevelFilter::iter()
        .find(|level| *level as u8 == value)
        .unwrap_or(log::LevelFilter::Info)
}
