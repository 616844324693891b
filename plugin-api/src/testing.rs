//! Testing a consumer inside `cargo test` as the host runs it (feature
//! `testing`).
//!
//! [`Harness`] builds the consumer through the same exported entry the
//! host calls and hands it messages across the same boundary, so a panic
//! becomes a failure carrying its message and location, `new`'s errors read
//! as the host shows them, and every outcome is the one the host would
//! settle. It keeps what the consumer logged and published meanwhile.
//! Messages come from record-format lines (what `fedora-messaging record`
//! writes), the configuration from TOML as a user writes it:
//!
//! ```
//! # use fm_plugin_api::{export_consumers, Consumer, ConsumerError, Init, Message};
//! # pub struct Watch { word: String }
//! # impl Consumer for Watch {
//! #     fn new(init: &Init) -> Result<Self, ConsumerError> {
//! #         #[derive(serde::Deserialize)] struct Conf { word: String }
//! #         Ok(Watch { word: init.config::<Conf>()?.word })
//! #     }
//! #     fn consume(&mut self, message: &Message) -> Result<(), ConsumerError> {
//! #         if message.body().to_string().contains(&self.word) { log::warn!("{} mentions it", message.id()); }
//! #         Ok(())
//! #     }
//! # }
//! use fm_plugin_api::testing::{Harness, Outcome, message_from_record};
//!
//! let mut watch = Harness::start::<Watch>("Watch", r#"word = "kernel""#).unwrap();
//! let message = message_from_record(
//!     r#"{"id": "m1", "topic": "org.fedoraproject.prod.bodhi.update.comment", "body": {"text": "kernel"}}"#,
//! ).unwrap();
//! assert_eq!(watch.consume(&message), Outcome::Ack);
//! assert_eq!(watch.logs()[0].text, "m1 mentions it");
//! ```

use std::cell::RefCell;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use abi_stable::StableAbi;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::sabi_types::{RMut, RRef};
use abi_stable::std_types::{ROk, RResult, RSlice, RStr, RString};
use abi_stable::type_layout::TypeLayout;
use serde_json::{Map, Value};

use crate::abi::{
    self, ConsumerBox, HeadersSource, HeadersSource_TO, HostServices, HostServices_Ref, InitArgs,
    NextSink_TO, PublishFailure_NE, RawMessage, TimeoutMs,
};
use crate::{Consumer, Message, guest};

/// What the consumer made of a message, as the host settles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    Nack,
    Drop,
    Halt {
        exit_code: i32,
        requeue: bool,
    },
    /// A failure, a panic included (`panicked at FILE:LINE:COL: …`).
    Failed {
        reason: String,
    },
}

/// One line the consumer logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: log::Level,
    /// The module path the line was logged from (`my_plugin::db`).
    pub target: String,
    pub text: String,
}

/// One message the consumer published, as the host would have been given
/// it: a record-format object, and the exchange (empty: the configured
/// one).
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub record: Value,
    pub exchange: String,
}

/// A message from one line of fedora-messaging's record format.
pub fn message_from_record(line: &str) -> Result<Message<'static>, String> {
    let record: Value =
        serde_json::from_str(line).map_err(|error| format!("not a record line: {error}"))?;
    let text = |key: &str| {
        record
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let body = record
        .get("body")
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    if !body.is_object() {
        return Err("the record's body is not a JSON object".to_owned());
    }
    let headers = match record.get("headers") {
        Some(Value::Object(headers)) => headers.clone(),
        _ => Map::new(),
    };
    let priority = record
        .get("priority")
        .and_then(Value::as_u64)
        .and_then(|p| u8::try_from(p).ok())
        .unwrap_or(0);
    Ok(Message::new(text("topic"), &body)
        .with_id(text("id"))
        .with_queue(text("queue"))
        .with_priority(priority)
        .with_headers(headers))
}

/// The messages of a record file, one a line (blank lines skipped).
pub fn messages_from_file(path: impl AsRef<Path>) -> Result<Vec<Message<'static>>, String> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            message_from_record(line)
                .map_err(|error| format!("{}:{}: {error}", path.display(), number + 1))
        })
        .collect()
}

/// The `[consumer_config]` table, written as in the configuration file
/// (its lines, without the `[consumer_config]` header), as the JSON the
/// host hands to `new`.
pub fn consumer_config_json(toml_text: &str) -> Result<String, String> {
    let table: toml::Table = toml::from_str(toml_text)
        .map_err(|error| format!("invalid consumer_config TOML: {error}"))?;
    serde_json::to_string(&table).map_err(|error| error.to_string())
}

/// A consumer built and run through its exported entry, as the host does.
pub struct Harness {
    consumer: Option<ConsumerBox>,
    captured: Captured,
}

#[derive(Default)]
struct Captured {
    logs: Vec<LogLine>,
    published: Vec<Published>,
    span_attributes: Vec<(String, String)>,
    span_events: Vec<(String, Value)>,
}

/// The trace context the test host gives a consumer during
/// [`Harness::consume`] ([`crate::trace::context`]), as a host exporting
/// traces does; outside it, none.
pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

thread_local! {
    /// What the harness calling into its consumer on this thread keeps.
    static CAPTURING: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// What was logged or published on threads no harness call was running on
/// (threads the consumer started itself).
static ELSEWHERE: Mutex<Option<Captured>> = Mutex::new(None);

impl Harness {
    /// Builds consumer `C` under `name` with `consumer_config` (TOML, as
    /// in the file); the error is the reason the host would show.
    pub fn start<C: Consumer>(
        name: &'static str,
        consumer_config: &str,
    ) -> Result<Harness, String> {
        install_host();
        let config_json = consumer_config_json(consumer_config)?;
        let entry = guest::entry::<C>(name);
        let args = InitArgs {
            name: RStr::from_str(name),
            config_json: RStr::from_str(&config_json),
        };
        let mut harness = Harness {
            consumer: None,
            captured: Captured::default(),
        };
        let built = harness.capturing(|| (entry.new)(&args));
        match built {
            RResult::ROk(consumer) => {
                harness.consumer = Some(consumer);
                Ok(harness)
            }
            RResult::RErr(reason) => Err(reason.into_string()),
        }
    }

    /// Hands `message` to the consumer and returns its outcome.
    pub fn consume(&mut self, message: &Message<'_>) -> Outcome {
        let headers = HeadersJson(Value::Object(message.headers().clone()).to_string());
        let raw = RawMessage {
            id: RStr::from_str(message.id()),
            topic: RStr::from_str(message.topic()),
            queue: RStr::from_str(message.queue()),
            body: RSlice::from_slice(message.raw_body()),
            severity: message.severity().level(),
            #[allow(clippy::useless_conversion)] // u32 in the changed-ABI test build
            priority: message.priority().into(),
            sent_at: message.sent_at().map(RStr::from_str).into(),
            schema: message.schema().map(RStr::from_str).into(),
            headers: HeadersSource_TO::from_ptr(RRef::new(&headers), TD_Opaque),
        };
        let Some(mut consumer) = self.consumer.take() else {
            return Outcome::Failed {
                reason: "the consumer has stopped".to_owned(),
            };
        };
        let answer = self.capturing(|| consumer.consume(&raw));
        self.consumer = Some(consumer);
        match answer.as_enum() {
            Ok(abi::Outcome::Ack) => Outcome::Ack,
            Ok(abi::Outcome::Nack) => Outcome::Nack,
            Ok(abi::Outcome::Drop) => Outcome::Drop,
            Ok(abi::Outcome::Halt { exit_code, requeue }) => Outcome::Halt {
                exit_code: *exit_code,
                requeue: *requeue,
            },
            Ok(abi::Outcome::Failed { reason }) => Outcome::Failed {
                reason: reason.to_string(),
            },
            Err(_) => Outcome::Failed {
                reason: "an outcome this revision does not know".to_owned(),
            },
        }
    }

    /// Calls the consumer's `stop`, as the host does when it stops
    /// gracefully, and drops it.
    pub fn stop(&mut self) {
        if let Some(mut consumer) = self.consumer.take() {
            self.capturing(|| {
                consumer.stop();
                drop(consumer);
            });
        }
    }

    /// The lines the consumer logged during this harness's calls, taken.
    pub fn logs(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.captured.logs)
    }

    /// What the consumer published during this harness's calls, taken.
    pub fn published(&mut self) -> Vec<Published> {
        std::mem::take(&mut self.captured.published)
    }

    /// The attributes the consumer set on its message's span
    /// ([`crate::trace::set_attribute`]) during this harness's calls,
    /// taken.
    pub fn span_attributes(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.captured.span_attributes)
    }

    /// The events the consumer added to its message's span
    /// ([`crate::trace::add_event`]), with their attributes, taken.
    pub fn span_events(&mut self) -> Vec<(String, Value)> {
        std::mem::take(&mut self.captured.span_events)
    }

    /// Lines logged on the consumer's own threads (by any harness), taken.
    pub fn logs_from_other_threads() -> Vec<LogLine> {
        elsewhere(|captured| std::mem::take(&mut captured.logs))
    }

    fn capturing<T>(&mut self, call: impl FnOnce() -> T) -> T {
        CAPTURING.with(|cell| *cell.borrow_mut() = Some(std::mem::take(&mut self.captured)));
        let result = call();
        self.captured = CAPTURING
            .with(|cell| cell.borrow_mut().take())
            .unwrap_or_default();
        result
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop();
    }
}

fn elsewhere<T>(use_it: impl FnOnce(&mut Captured) -> T) -> T {
    let mut guard = ELSEWHERE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    use_it(guard.get_or_insert_with(Captured::default))
}

/// Keeps `record` with this thread's harness, or with the other threads'.
fn capture(keep: impl FnOnce(&mut Captured)) {
    let kept = CAPTURING.with(|cell| match cell.borrow_mut().as_mut() {
        Some(captured) => {
            keep(captured);
            None
        }
        None => Some(keep),
    });
    if let Some(keep) = kept {
        elsewhere(keep);
    }
}

struct HeadersJson(String);

impl HeadersSource for HeadersJson {
    fn to_json(&self) -> RString {
        self.0.as_str().into()
    }
}

/// This library's consumers get the test host's services, once per test
/// process, as a host hands them over when it loads the library.
fn install_host() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let services = HostServices {
            max_log_level: log::LevelFilter::Trace as u8,
            log: log_line,
            publish: publish_unconfirmed,
            layout: services_layout,
            publish_confirmed,
            configuration,
            take_next,
            draining_fd,
            leave_unstarted,
            trace_context,
            span_attribute,
            span_event,
        }
        .leak_into_prefix();
        guest::init_services(services);
    });
}

extern "C" fn log_line(level: u8, target: RStr<'_>, message: RStr<'_>) {
    let level = log::Level::iter()
        .find(|l| *l as u8 == level)
        .unwrap_or(log::Level::Error);
    let line = LogLine {
        level,
        target: target.to_string(),
        text: message.to_string(),
    };
    capture(|captured| captured.logs.push(line));
}

/// [`TRACEPARENT`] while a harness call runs on this thread, as a host
/// gives the context of the message in hand.
extern "C" fn trace_context() -> RString {
    let in_a_call = CAPTURING.with(|cell| cell.borrow().is_some());
    if in_a_call {
        format!("{TRACEPARENT}\n").into()
    } else {
        RString::new()
    }
}

extern "C" fn span_attribute(key: RStr<'_>, value: RStr<'_>) {
    let pair = (key.to_string(), value.to_string());
    let _ = CAPTURING.with(|cell| {
        cell.borrow_mut()
            .as_mut()
            .map(|c| c.span_attributes.push(pair))
    });
}

extern "C" fn span_event(name: RStr<'_>, attributes: RStr<'_>) {
    let attributes = serde_json::from_str(attributes.as_str()).unwrap_or(Value::Null);
    let event = (name.to_string(), attributes);
    let _ = CAPTURING.with(|cell| {
        cell.borrow_mut()
            .as_mut()
            .map(|c| c.span_events.push(event))
    });
}

extern "C" fn publish_unconfirmed(record: RStr<'_>) -> RResult<(), RString> {
    keep_published(record.as_str(), "");
    ROk(())
}

#[allow(improper_ctypes_definitions)] // as in the host: see `PublishFailure_NE`
extern "C" fn publish_confirmed(
    record: RStr<'_>,
    exchange: RStr<'_>,
    _timeout_ms: TimeoutMs,
) -> RResult<RString, PublishFailure_NE> {
    let id = keep_published(record.as_str(), exchange.as_str());
    ROk(id.into())
}

/// Keeps a published record; its id (the record's, or a made-up one).
fn keep_published(record: &str, exchange: &str) -> String {
    let record: Value = serde_json::from_str(record).unwrap_or(Value::Null);
    let id = record.get("id").and_then(Value::as_str).map_or_else(
        || format!("published-{}", std::process::id()),
        str::to_owned,
    );
    let published = Published {
        record,
        exchange: exchange.to_owned(),
    };
    capture(|captured| captured.published.push(published));
    id
}

extern "C" fn services_layout() -> &'static TypeLayout {
    <HostServices_Ref as StableAbi>::LAYOUT
}

extern "C" fn configuration() -> RString {
    r#"{"file":null,"callback":null,"table":{}}"#.into()
}

/// The harness hands its messages one at a time: none is taken ahead.
extern "C" fn take_next(_next: NextSink_TO<'_, RMut<'_, ()>>) -> bool {
    false
}

/// The harness never drains.
extern "C" fn draining_fd() -> i32 {
    -1
}

/// The harness never drains, so a message left unstarted stays the
/// failure the consumer returns with it.
extern "C" fn leave_unstarted() {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConsumerError, Init, Outgoing, Publisher};

    struct Picky;

    impl Consumer for Picky {
        fn new(init: &Init<'_>) -> Result<Self, ConsumerError> {
            #[derive(serde::Deserialize)]
            #[allow(dead_code)]
            struct Conf {
                limit: u32,
            }
            init.config::<Conf>()?;
            Ok(Picky)
        }

        fn consume(&mut self, message: &Message<'_>) -> Result<(), ConsumerError> {
            match message.topic() {
                "panic" => panic!("no {} here", message.id()),
                "publish" => {
                    Publisher::new()
                        .publish(&Outgoing::new(
                            "out",
                            serde_json::json!({"from": message.id()}),
                        ))
                        .map_err(|error| ConsumerError::failed(error.to_string()))?;
                    Ok(())
                }
                "nack" => Err(ConsumerError::Nack),
                "halt" => Err(ConsumerError::halt_and_requeue(3)),
                "traced" => {
                    let context = crate::trace::context()
                        .ok_or_else(|| ConsumerError::failed("no trace context"))?;
                    crate::trace::set_attribute("picky.parent", &context.traceparent);
                    crate::trace::add_event("picked", &serde_json::json!({"n": 1}));
                    Ok(())
                }
                _ => Ok(()),
            }
        }
    }

    fn message(topic: &str) -> Message<'static> {
        message_from_record(&format!(
            r#"{{"id": "m-{topic}", "topic": "{topic}", "body": {{}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn outcomes_panics_and_publishes_as_under_the_host() {
        let mut picky = Harness::start::<Picky>("Picky", "limit = 3").unwrap();
        assert_eq!(picky.consume(&message("ok")), Outcome::Ack);
        assert_eq!(picky.consume(&message("nack")), Outcome::Nack);
        assert_eq!(
            picky.consume(&message("halt")),
            Outcome::Halt {
                exit_code: 3,
                requeue: true
            }
        );
        match picky.consume(&message("panic")) {
            Outcome::Failed { reason } => {
                assert!(reason.starts_with("panicked at "), "{reason}");
                assert!(reason.ends_with(": no m-panic here"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(picky.consume(&message("publish")), Outcome::Ack);
        let published = picky.published();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].record["topic"], "out");
        assert_eq!(published[0].record["body"]["from"], "m-publish");
    }

    #[test]
    fn the_trace_context_and_what_the_consumer_adds_to_its_span() {
        let mut picky = Harness::start::<Picky>("Picky", "limit = 3").unwrap();
        assert_eq!(picky.consume(&message("traced")), Outcome::Ack);
        assert_eq!(
            picky.span_attributes(),
            [("picky.parent".to_owned(), TRACEPARENT.to_owned())]
        );
        assert_eq!(
            picky.span_events(),
            [("picked".to_owned(), serde_json::json!({"n": 1}))]
        );
        // Outside a consume call there is no message, and no context.
        assert_eq!(crate::trace::context(), None);
    }

    #[test]
    fn new_fails_as_the_host_shows_it() {
        let error = Harness::start::<Picky>("Picky", "limit = \"many\"")
            .err()
            .unwrap();
        assert_eq!(
            error,
            "consumer_config.limit: invalid type: string \"many\", expected u32"
        );
        assert!(Harness::start::<Picky>("Picky", "limit = ").is_err());
    }
}
