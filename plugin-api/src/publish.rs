//! Publishing from a consumer: an [`Outgoing`] message is what
//! fedora-messaging's `Message` lets a Python author build, and a
//! [`Publisher`] sends it through the host's own connection and returns
//! once the broker has confirmed it.
//!
//! ```no_run
//! use fm_plugin_api::{Consumer, ConsumerError, Init, Message, Outgoing, Publisher, Severity};
//!
//! pub struct Relay {
//!     publisher: Publisher,
//! }
//!
//! impl Consumer for Relay {
//!     fn new(_init: &Init) -> Result<Self, ConsumerError> {
//!         Ok(Relay { publisher: Publisher::new() })
//!     }
//!
//!     fn consume(&mut self, message: &Message) -> Result<(), ConsumerError> {
//!         let relayed = Outgoing::new(format!("relay.{}", message.topic()), message.body().clone())
//!             .severity(Severity::Warning)
//!             .usernames(["alice"]);
//!         // Confirmed by the broker before this message is acknowledged.
//!         let id = self.publisher.publish(&relayed)?;
//!         log::info!("relayed {} as {id}", message.id());
//!         Ok(())
//!     }
//! }
//! ```

use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::{Severity, guest};

/// A message to publish.
///
/// What fedora-messaging puts on the wire for it: the body as JSON, the
/// message's own headers, then `fedora_messaging_schema` (default
/// `base.message`), `sent-at` (when the host publishes it),
/// `fedora_messaging_severity`, `priority`, and a
/// `fedora_messaging_<kind>_<name>: true` header for each name of the
/// filter lists (usernames, groups, packages, containers, modules,
/// flatpaks), later ones overwriting earlier ones as there. The routing key
/// is the topic, after the configuration's `topic_prefix`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    topic: String,
    body: Value,
    headers: Map<String, Value>,
    severity: Severity,
    priority: Option<u8>,
    filters: Vec<String>,
    schema: String,
    exchange: Option<String>,
}

impl Outgoing {
    /// A message on `topic` whose body is `body` (a JSON object; anything
    /// else is refused when published), severity INFO, schema
    /// `base.message`, for the configuration's `publish_exchange`.
    pub fn new(topic: impl Into<String>, body: Value) -> Outgoing {
        Outgoing {
            topic: topic.into(),
            body,
            headers: Map::new(),
            severity: Severity::DEFAULT,
            priority: None,
            filters: Vec::new(),
            schema: "base.message".to_owned(),
            exchange: None,
        }
    }

    /// Adds a header of the message's own.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Value>) -> Outgoing {
        self.headers.insert(name.into(), value.into());
        self
    }

    pub fn severity(mut self, severity: Severity) -> Outgoing {
        self.severity = severity;
        self
    }

    /// The AMQP priority (default: the configuration's `publish_priority`,
    /// else 0).
    pub fn priority(mut self, priority: u8) -> Outgoing {
        self.priority = Some(priority);
        self
    }

    /// The users the message concerns: `fedora_messaging_user_<name>`.
    pub fn usernames<S: AsRef<str>>(self, names: impl IntoIterator<Item = S>) -> Outgoing {
        self.filter("user", names)
    }

    /// `fedora_messaging_group_<name>`.
    pub fn groups<S: AsRef<str>>(self, names: impl IntoIterator<Item = S>) -> Outgoing {
        self.filter("group", names)
    }

    /// The packages the message concerns: `fedora_messaging_rpm_<name>`.
    pub fn packages<S: AsRef<str>>(self, names: impl IntoIterator<Item = S>) -> Outgoing {
        self.filter("rpm", names)
    }

    /// `fedora_messaging_container_<name>`.
    pub fn containers<S: AsRef<str>>(self, names: impl IntoIterator<Item = S>) -> Outgoing {
        self.filter("container", names)
    }

    /// `fedora_messaging_module_<name>`.
    pub fn modules<S: AsRef<str>>(self, names: impl IntoIterator<Item = S>) -> Outgoing {
        self.filter("module", names)
    }

    /// `fedora_messaging_flatpak_<name>`.
    pub fn flatpaks<S: AsRef<str>>(self, names: impl IntoIterator<Item = S>) -> Outgoing {
        self.filter("flatpak", names)
    }

    /// The schema name (`fedora_messaging_schema`), as a message class's
    /// entry point is named in Python.
    pub fn schema(mut self, name: impl Into<String>) -> Outgoing {
        self.schema = name.into();
        self
    }

    /// The exchange to publish to, instead of the configuration's
    /// `publish_exchange`.
    pub fn exchange(mut self, name: impl Into<String>) -> Outgoing {
        self.exchange = Some(name.into());
        self
    }

    fn filter<S: AsRef<str>>(mut self, kind: &str, names: impl IntoIterator<Item = S>) -> Outgoing {
        self.filters.extend(
            names
                .into_iter()
                .map(|name| format!("fedora_messaging_{kind}_{}", name.as_ref())),
        );
        self
    }

    /// The record (fedora-messaging's record format) the host publishes.
    pub(crate) fn record(&self) -> Value {
        let mut headers = self.headers.clone();
        // The host stamps the time it publishes, as fedora-messaging does.
        headers.remove("sent-at");
        headers.insert(
            "fedora_messaging_schema".to_owned(),
            Value::from(self.schema.as_str()),
        );
        headers.insert(
            "fedora_messaging_severity".to_owned(),
            Value::from(self.severity.level()),
        );
        for filter in &self.filters {
            headers.insert(filter.clone(), Value::Bool(true));
        }
        let mut record = Map::new();
        record.insert("topic".to_owned(), Value::from(self.topic.as_str()));
        record.insert("body".to_owned(), self.body.clone());
        record.insert("headers".to_owned(), Value::Object(headers));
        record.insert(
            "priority".to_owned(),
            self.priority.map_or(Value::Null, Value::from),
        );
        Value::Object(record)
    }
}

/// Publishes through the host. `Copy`, `Send` and `Sync`: keep one in the
/// consumer, hand copies to threads of your own; it works from
/// [`Consumer::new`](crate::Consumer::new), `consume` and `stop` alike.
///
/// Under `fedora-messaging consume`, [`publish`](Publisher::publish) returns
/// once the broker has confirmed the message, so whatever a consumer
/// publishes while handling a message is confirmed before that message is
/// acknowledged: should the host die in between, the message is delivered
/// again and published again (at-least-once, for what a consumer publishes
/// too). During a broker outage it waits for the connection to come back,
/// up to its timeout. Under `reconsume`, messages are printed, or written
/// to `--publish-to`'s file, never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publisher {
    timeout: Duration,
}

impl Default for Publisher {
    fn default() -> Self {
        Publisher::new()
    }
}

impl Publisher {
    /// fedora-messaging's default publish timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// A publisher with the default timeout.
    pub fn new() -> Publisher {
        Publisher::with_timeout(Publisher::DEFAULT_TIMEOUT)
    }

    /// A publisher that waits at most `timeout` for each publish.
    pub fn with_timeout(timeout: Duration) -> Publisher {
        Publisher { timeout }
    }

    /// Publishes `message`; its id, once the broker confirmed it.
    pub fn publish(&self, message: &Outgoing) -> Result<String, PublishError> {
        guest::publish_confirmed(
            &message.record().to_string(),
            message.exchange.as_deref().unwrap_or(""),
            self.timeout,
        )
    }

    /// Publishes a message given in fedora-messaging's record format (one
    /// line of what `fedora_messaging.message.dumps` writes), to `exchange`
    /// (`None`: the configuration's `publish_exchange`); its id, once the
    /// broker confirmed it. For bridges that receive messages built
    /// elsewhere; a Rust consumer builds an [`Outgoing`].
    pub fn publish_record(
        &self,
        record: &str,
        exchange: Option<&str>,
    ) -> Result<String, PublishError> {
        guest::publish_confirmed(record, exchange.unwrap_or(""), self.timeout)
    }
}

/// Why a publish failed. Each says what the host or the broker said; `?`
/// in `consume` turns it into a failure of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The broker did not confirm the message within the timeout
    /// (fedora-messaging's `PublishTimeout`).
    Timeout(String),
    /// No connection to the broker came up within the timeout.
    Unreachable(String),
    /// The broker refused the user (403), fedora-messaging's
    /// `PublishForbidden`.
    Forbidden(String),
    /// The broker did not take the message: no such exchange, or a nack
    /// (fedora-messaging's `PublishReturned`).
    Returned(String),
    /// The message is not one fedora-messaging would publish (a body that
    /// is not an object, a topic too long for AMQP, …).
    Invalid(String),
    /// Publishing is not available: a host older than this interface
    /// revision, a command that does not publish, or no host at all (a
    /// unit test).
    Unavailable(String),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, reason) = match self {
            PublishError::Timeout(reason) => ("publish timed out", reason),
            PublishError::Unreachable(reason) => ("broker unreachable", reason),
            PublishError::Forbidden(reason) => ("publish forbidden", reason),
            PublishError::Returned(reason) => ("publish returned", reason),
            PublishError::Invalid(reason) => ("invalid message", reason),
            PublishError::Unavailable(reason) => ("publishing unavailable", reason),
        };
        write!(f, "{what}: {reason}")
    }
}

impl std::error::Error for PublishError {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_record_carries_fedora_messagings_headers_later_ones_winning() {
        let message = Outgoing::new("t.x", json!({"a": 1}))
            .header("fedora_messaging_schema", "overwritten")
            .header("sent-at", "stamped by the host")
            .header("custom", 7)
            .severity(Severity::Error)
            .priority(3)
            .usernames(["alice", "bob"])
            .packages(["kernel"])
            .groups(["admins"])
            .containers(["c"])
            .modules(["m"])
            .flatpaks(["f"])
            .schema("bodhi.update.comment.v1");
        assert_eq!(
            message.record(),
            json!({
                "topic": "t.x",
                "body": {"a": 1},
                "priority": 3,
                "headers": {
                    "custom": 7,
                    "fedora_messaging_schema": "bodhi.update.comment.v1",
                    "fedora_messaging_severity": 40,
                    "fedora_messaging_user_alice": true,
                    "fedora_messaging_user_bob": true,
                    "fedora_messaging_rpm_kernel": true,
                    "fedora_messaging_group_admins": true,
                    "fedora_messaging_container_c": true,
                    "fedora_messaging_module_m": true,
                    "fedora_messaging_flatpak_f": true,
                }
            })
        );
    }

    #[test]
    fn outside_a_host_publishing_is_unavailable() {
        let error = Publisher::new()
            .publish(&Outgoing::new("t", json!({})))
            .unwrap_err();
        assert!(matches!(error, PublishError::Unavailable(_)), "{error}");
    }
}
