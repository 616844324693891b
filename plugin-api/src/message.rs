use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::abi::{HeadersSource_TO, RawMessage};

/// A message's severity, from its `fedora_messaging_severity` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Debug = 10,
    Info = 20,
    Warning = 30,
    Error = 40,
}

impl Severity {
    /// The severity fedora-messaging assumes when the header is missing.
    pub const DEFAULT: Severity = Severity::Info;

    /// The severity with this header value, if it is one of 10, 20, 30, 40.
    pub fn from_level(level: u64) -> Option<Severity> {
        match level {
            10 => Some(Severity::Debug),
            20 => Some(Severity::Info),
            30 => Some(Severity::Warning),
            40 => Some(Severity::Error),
            _ => None,
        }
    }

    /// The header value: 10, 20, 30 or 40.
    pub fn level(self) -> u8 {
        self as u8
    }
}

/// The host's headers, whatever lifetime the boundary type carries.
trait HostHeaders {
    fn to_json(&self) -> abi_stable::std_types::RString;
}

impl HostHeaders for HeadersSource_TO<'_, abi_stable::sabi_types::RRef<'_, ()>> {
    fn to_json(&self) -> abi_stable::std_types::RString {
        crate::abi::HeadersSource::to_json(self)
    }
}

enum HeadersOrigin<'a> {
    Host(&'a (dyn HostHeaders + 'a)),
    Given,
}

/// One message, as fedora-messaging's `Message` presents it to a callback.
///
/// The body and headers are decoded on first use and kept, so a consumer
/// that only looks at the topic pays for neither.
pub struct Message<'a> {
    id: Cow<'a, str>,
    topic: Cow<'a, str>,
    queue: Cow<'a, str>,
    raw_body: Cow<'a, [u8]>,
    severity: Severity,
    priority: u8,
    sent_at: Option<Cow<'a, str>>,
    schema: Option<Cow<'a, str>>,
    headers_origin: HeadersOrigin<'a>,
    headers: OnceLock<Map<String, Value>>,
    body: OnceLock<Value>,
}

impl<'a> Message<'a> {
    /// A message with this topic and body and otherwise fedora-messaging's
    /// defaults (no headers, severity INFO, priority 0, empty id and queue).
    /// Meant for a consumer's own unit tests; the host builds the real ones.
    pub fn new(topic: impl Into<Cow<'a, str>>, body: &Value) -> Message<'a> {
        let raw_body = serde_json::to_vec(body).unwrap_or_default();
        let body_cell = OnceLock::new();
        let _ = body_cell.set(body.clone());
        Message {
            id: Cow::Borrowed(""),
            topic: topic.into(),
            queue: Cow::Borrowed(""),
            raw_body: Cow::Owned(raw_body),
            severity: Severity::DEFAULT,
            priority: 0,
            sent_at: None,
            schema: None,
            headers_origin: HeadersOrigin::Given,
            headers: OnceLock::from(Map::new()),
            body: body_cell,
        }
    }

    /// Sets the id (the AMQP `message_id`).
    pub fn with_id(mut self, id: impl Into<Cow<'a, str>>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the queue the message is said to come from.
    pub fn with_queue(mut self, queue: impl Into<Cow<'a, str>>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the headers; severity, `sent-at` and schema are read from them
    /// as the host would.
    pub fn with_headers(mut self, headers: Map<String, Value>) -> Self {
        let text = |key: &str| {
            headers
                .get(key)
                .and_then(Value::as_str)
                .map(|s| Cow::Owned(s.to_owned()))
        };
        self.sent_at = text("sent-at");
        self.schema = text("fedora_messaging_schema");
        self.severity = headers
            .get("fedora_messaging_severity")
            .and_then(Value::as_u64)
            .and_then(Severity::from_level)
            .unwrap_or(Severity::DEFAULT);
        self.headers_origin = HeadersOrigin::Given;
        self.headers = OnceLock::from(headers);
        self
    }

    /// Views a message the host lent across the boundary, without copying.
    pub(crate) fn from_raw<'r: 'a>(raw: &'a RawMessage<'r>) -> Message<'a> {
        #[allow(clippy::useless_conversion)] // u32 in the changed-ABI test build
        let priority = u8::try_from(raw.priority).unwrap_or(u8::MAX);
        Message {
            id: Cow::Borrowed(raw.id.as_str()),
            topic: Cow::Borrowed(raw.topic.as_str()),
            queue: Cow::Borrowed(raw.queue.as_str()),
            raw_body: Cow::Borrowed(raw.body.as_slice()),
            severity: Severity::from_level(raw.severity.into()).unwrap_or(Severity::DEFAULT),
            priority,
            sent_at: raw.sent_at.map(|s| Cow::Borrowed(s.as_str())).into_option(),
            schema: raw.schema.map(|s| Cow::Borrowed(s.as_str())).into_option(),
            headers_origin: HeadersOrigin::Host(&raw.headers),
            headers: OnceLock::new(),
            body: OnceLock::new(),
        }
    }

    /// The message id (AMQP `message_id`), a UUID for messages
    /// fedora-messaging published.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The routing key the message was delivered with, prefix included.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The queue the message was consumed from; empty when unknown (as for
    /// a message replayed from a file that does not say).
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The AMQP headers, as a JSON object.
    pub fn headers(&self) -> &Map<String, Value> {
        self.headers.get_or_init(|| match &self.headers_origin {
            HeadersOrigin::Host(source) => {
                let json = source.to_json();
                // The host's JSON of its AMQP table, floats as Python
                // writes them (NaN, Infinity): the body's parser reads it.
                crate::json::parse_object(json.as_bytes()).unwrap_or_else(|error| {
                    panic!(
                        "message {}: the host's headers do not decode ({error}); rebuild the plugin against the host's fm-plugin-api",
                        self.id
                    )
                })
            }
            HeadersOrigin::Given => Map::new(),
        })
    }

    /// The decoded body, a JSON object, exactly as it was sent: numbers
    /// keep their text (`NaN`, `Infinity` and integers of any size
    /// included; see [`crate::json`] for what is read and how).
    ///
    /// Deserialize it into your own types with `serde_json::from_value`
    /// (an `f64` field reads `NaN` and `Infinity` too), or walk the value.
    /// Embedding it with `json!` or `serde_json::to_value` fails on a body
    /// holding `NaN` or `Infinity` (serde_json's own numbers cannot be
    /// those): clone it into a [`Value`] you build instead.
    ///
    /// The host checks every body with this same parser before a consumer
    /// sees the message, so decoding cannot fail for a message from the
    /// host. Should it fail anyway (a host built against a different
    /// revision of this crate), this panics, which the host reports as a
    /// failure and requeues the message: a consumer never sees a body that
    /// is not the one sent.
    pub fn body(&self) -> &Value {
        self.body.get_or_init(|| match crate::json::parse_object(&self.raw_body) {
            Ok(map) => Value::Object(map),
            Err(error) => panic!(
                "message {}: the host accepted a body this plugin cannot decode ({error}); rebuild the plugin against the host's fm-plugin-api",
                self.id
            ),
        })
    }

    /// The body exactly as it was delivered (UTF-8 JSON).
    pub fn raw_body(&self) -> &[u8] {
        &self.raw_body
    }

    /// The `fedora_messaging_severity` header, INFO when absent.
    pub fn severity(&self) -> Severity {
        self.severity
    }

    /// The AMQP priority, 0 when unset.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The `sent-at` header: when the message was published, as ISO 8601.
    pub fn sent_at(&self) -> Option<&str> {
        self.sent_at.as_deref()
    }

    /// The `fedora_messaging_schema` header: the message's schema name.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// Users this message concerns (`fedora_messaging_user_<name>` headers).
    pub fn usernames(&self) -> Vec<&str> {
        self.filter_list("fedora_messaging_user_")
    }

    /// Groups this message concerns (`fedora_messaging_group_<name>`).
    pub fn groups(&self) -> Vec<&str> {
        self.filter_list("fedora_messaging_group_")
    }

    /// Packages this message concerns (`fedora_messaging_rpm_<name>`).
    pub fn packages(&self) -> Vec<&str> {
        self.filter_list("fedora_messaging_rpm_")
    }

    /// Containers this message concerns (`fedora_messaging_container_<name>`).
    pub fn containers(&self) -> Vec<&str> {
        self.filter_list("fedora_messaging_container_")
    }

    /// Modules this message concerns (`fedora_messaging_module_<name>`).
    pub fn modules(&self) -> Vec<&str> {
        self.filter_list("fedora_messaging_module_")
    }

    /// Flatpaks this message concerns (`fedora_messaging_flatpak_<name>`).
    pub fn flatpaks(&self) -> Vec<&str> {
        self.filter_list("fedora_messaging_flatpak_")
    }

    /// The message in fedora-messaging's record format (what its
    /// `message.dumps` writes and `publish` and `reconsume --file` read):
    /// one line of JSON with sorted keys, ending in a newline.
    pub fn to_record_line(&self) -> String {
        let queue = if self.queue.is_empty() {
            Value::Null
        } else {
            Value::from(self.queue.as_ref())
        };
        // Built by hand, not with json!: that re-reads each number through
        // serde, which refuses the NaN and Infinity a body may hold.
        let record: Map<String, Value> = [
            ("body", self.body().clone()),
            ("headers", Value::Object(self.headers().clone())),
            ("id", Value::from(self.id())),
            ("priority", Value::from(self.priority)),
            ("queue", queue),
            ("topic", Value::from(self.topic())),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        let record = Value::Object(record);
        // json.dumps(record, ensure_ascii=False, sort_keys=True)
        let mut line = to_json_text(&record, PythonSeparators);
        line.push('\n');
        line
    }

    fn filter_list(&self, prefix: &str) -> Vec<&str> {
        self.headers()
            .iter()
            .filter(|(_, value)| value.as_bool() == Some(true))
            .filter_map(|(key, _)| key.strip_prefix(prefix))
            .collect()
    }
}

/// fedora-messaging's `str(message)`: id, topic, then headers and body as
/// JSON with sorted keys, four-space indents and non-ASCII escaped.
impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Id: {}\nTopic: {}\nHeaders: {}\nBody: {}",
            self.id,
            self.topic,
            python_pretty_json(&Value::Object(self.headers().clone())),
            python_pretty_json(self.body()),
        )
    }
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// `json.dumps(value, sort_keys=True, indent=4, separators=(',', ': '))`,
/// which escapes every non-ASCII character.
fn python_pretty_json(value: &Value) -> String {
    let text = to_json_text(
        value,
        serde_json::ser::PrettyFormatter::with_indent(b"    "),
    );
    // Outside strings JSON is ASCII, so escaping every non-ASCII char is
    // exactly Python's ensure_ascii.
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            escaped.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                escaped.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    escaped
}

/// Serializes with sorted keys: serde_json's maps are sorted unless its
/// `preserve_order` feature is on, which this crate never enables.
fn to_json_text(value: &Value, formatter: impl serde_json::ser::Formatter) -> String {
    use serde::Serialize;
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    match value.serialize(&mut serializer) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Python's default separators on one line: `", "` and `": "`.
struct PythonSeparators;

impl serde_json::ser::Formatter for PythonSeparators {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test headers are objects"),
        }
    }

    #[test]
    fn display_matches_fedora_messaging() {
        let message = Message::new("org.fedoraproject.test", &json!({"b": [1, {}], "a": "é"}))
            .with_id("abc")
            .with_headers(headers(
                json!({"sent-at": "2019-07-30T19:12:22+00:00", "fedora_messaging_severity": 20}),
            ));
        assert_eq!(
            message.to_string(),
            "Id: abc\nTopic: org.fedoraproject.test\nHeaders: {\n    \"fedora_messaging_severity\": 20,\n    \"sent-at\": \"2019-07-30T19:12:22+00:00\"\n}\nBody: {\n    \"a\": \"\\u00e9\",\n    \"b\": [\n        1,\n        {}\n    ]\n}"
        );
    }

    #[test]
    fn record_line_matches_fedora_messaging_dumps() {
        let message = Message::new("test_topic", &json!({"test_key1": "tést", "n": [1, 2]}))
            .with_id("273ed91d")
            .with_queue("test_queue")
            .with_headers(headers(json!({"fedora_messaging_severity": 20})));
        assert_eq!(
            message.to_record_line(),
            "{\"body\": {\"n\": [1, 2], \"test_key1\": \"tést\"}, \"headers\": {\"fedora_messaging_severity\": 20}, \"id\": \"273ed91d\", \"priority\": 0, \"queue\": \"test_queue\", \"topic\": \"test_topic\"}\n"
        );
    }

    #[test]
    fn record_lines_keep_nan_infinity_and_big_numbers() {
        let raw = br#"{"x": NaN, "y": -Infinity, "n": 123456789012345678901234567890}"#;
        let body = Value::Object(crate::json::parse_object(raw).unwrap());
        let line = Message::new("t", &body).to_record_line();
        assert!(
            line.starts_with(
                r#"{"body": {"n": 123456789012345678901234567890, "x": NaN, "y": -Infinity}, "headers": {}"#
            ),
            "{line}"
        );
    }

    #[test]
    fn astral_characters_escape_as_surrogate_pairs() {
        assert_eq!(python_pretty_json(&json!("😀")), "\"\\ud83d\\ude00\"");
    }

    #[test]
    fn filter_lists_come_from_true_headers() {
        let message = Message::new("t", &json!({})).with_headers(headers(json!({
            "fedora_messaging_user_alice": true,
            "fedora_messaging_user_bob": true,
            "fedora_messaging_user_eve": false,
            "fedora_messaging_rpm_kernel": true,
            "fedora_messaging_group_admins": true,
            "fedora_messaging_severity": 40,
        })));
        assert_eq!(message.usernames(), ["alice", "bob"]);
        assert_eq!(message.packages(), ["kernel"]);
        assert_eq!(message.groups(), ["admins"]);
        assert!(message.flatpaks().is_empty());
        assert_eq!(message.severity(), Severity::Error);
    }
}
