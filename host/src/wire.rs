//! Messages as the host hands them to consumers: decoded from AMQP
//! deliveries as fedora-messaging decodes them, or read from its record
//! format (one JSON object a line, as `record` writes and `publish` and
//! `reconsume` read).

use fm_plugin_api::json;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::DecimalValue;
use lapin::types::parsing::MAX_NESTING;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Number, Value};

use std::io::Read;
use std::path::Path;

use crate::exit::{Exit, Fatal};

/// Headers that can be shown to a consumer as a JSON object, converted only
/// when the consumer asks.
pub trait HeadersJson {
    fn headers_json(&self) -> String;
}

impl HeadersJson for Map<String, Value> {
    fn headers_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }
}

impl HeadersJson for Option<FieldTable> {
    fn headers_json(&self) -> String {
        let object = self.as_ref().map(field_table_json).unwrap_or_default();
        serde_json::to_string(&object).unwrap_or_else(|_| "{}".to_owned())
    }
}

fn field_table_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(key, value)| (key.as_str().to_owned(), amqp_json(value)))
        .collect()
}

/// An AMQP field value as JSON, as close as JSON allows to what pika gives
/// a Python callback.
fn amqp_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Float(f) => Value::Number(json::number_from_f64(f64::from(*f))),
        AMQPValue::Double(f) => Value::Number(json::number_from_f64(*f)),
        AMQPValue::DecimalValue(d) => Value::Number(decimal_json(d)),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(amqp_json).collect())
        }
        AMQPValue::Timestamp(t) => Value::from(*t),
        AMQPValue::FieldTable(table) => Value::Object(field_table_json(table)),
        AMQPValue::ByteArray(bytes) => {
            Value::String(String::from_utf8_lossy(bytes.as_slice()).into_owned())
        }
        AMQPValue::Void => Value::Null,
    }
}

/// An AMQP decimal as the exact number it stands for. Its value is a
/// signed 32-bit integer (pika writes `Decimal('-1E+5')` as -100000 with
/// scale 0), though amq-protocol hands it over unsigned.
fn decimal_json(decimal: &DecimalValue) -> Number {
    let value = decimal.value as i32;
    let digits = value.unsigned_abs().to_string();
    let scale = usize::from(decimal.scale);
    let sign = if value < 0 { "-" } else { "" };
    let text = if scale == 0 {
        format!("{sign}{digits}")
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        format!("{sign}{int}.{frac}")
    } else {
        format!("{sign}0.{}{digits}", "0".repeat(scale - digits.len()))
    };
    // The text is a JSON number by construction.
    serde_json::from_str(&text).unwrap_or_else(|_| Number::from(value))
}

/// What checking a delivery established, for building its view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub severity: u8,
    pub priority: u8,
}

/// Checks a delivery as fedora-messaging's `get_message` does: missing
/// headers mean `{}` and missing severity INFO (both logged, as it logs
/// them); the body must be UTF-8 (or ASCII, when the publisher says so)
/// JSON text of an object; the headers fedora-messaging defines must have
/// its types. `Err` carries the reason such a message is rejected.
pub fn check_delivery(properties: &BasicProperties, body: &[u8]) -> Result<Checked, String> {
    if let Some(encoding) = properties.content_encoding() {
        let name = encoding.as_str();
        // Python's codec names: any case, `_` for `-`; compared without
        // building a normalised copy, on every message.
        let is = |wanted: &str| {
            name.len() == wanted.len()
                && name.bytes().zip(wanted.bytes()).all(|(got, want)| {
                    let got = if got == b'_' { b'-' } else { got };
                    got.eq_ignore_ascii_case(&want)
                })
        };
        let ascii = is("ascii") || is("us-ascii");
        if !(ascii || is("utf-8") || is("utf8")) {
            return Err(format!(
                "unsupported content_encoding {name:?} (fedora-messaging publishes utf-8)"
            ));
        }
        if ascii && !body.is_ascii() {
            return Err("the body is not ASCII, as its content_encoding says".to_owned());
        }
    }
    check_json_object(body)?;
    let severity = match properties.headers() {
        Some(headers) => check_amqp_headers(headers)?,
        None => {
            log::error!(
                "Message (id {}) arrived without headers. A publisher is misbehaving!",
                message_id(properties)
            );
            DEFAULT_SEVERITY
        }
    };
    Ok(Checked {
        severity,
        priority: properties.priority().unwrap_or(0),
    })
}

/// The delivery's `message_id`, empty when it has none.
pub fn message_id(properties: &BasicProperties) -> &str {
    properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str())
        .unwrap_or("")
}

/// A checked delivery as consumers see it.
pub fn delivery_view<'a>(
    delivery: &'a Delivery,
    queue: &'a str,
    checked: Checked,
) -> MessageView<'a> {
    view_of(
        &delivery.properties,
        &delivery.data,
        delivery.routing_key.as_str(),
        queue,
        checked,
    )
}

/// A checked message as consumers see it, from its parts.
pub fn view_of<'a>(
    properties: &'a BasicProperties,
    body: &'a [u8],
    topic: &'a str,
    queue: &'a str,
    checked: Checked,
) -> MessageView<'a> {
    let headers = properties.headers();
    let text = |key: &str| {
        headers
            .as_ref()
            .and_then(|table| table.inner().get(key))
            .and_then(amqp_str)
    };
    MessageView {
        id: message_id(properties),
        topic,
        queue,
        body,
        severity: checked.severity,
        priority: checked.priority,
        sent_at: text("sent-at"),
        schema: text("fedora_messaging_schema"),
        headers,
    }
}

fn amqp_str(value: &AMQPValue) -> Option<&str> {
    match value {
        AMQPValue::ShortString(s) => Some(s.as_str()),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        _ => None,
    }
}

fn amqp_number(value: &AMQPValue) -> Option<f64> {
    // The integers, which is what publishers send, directly: through JSON
    // they were written out as text and parsed back, on every message.
    match value {
        AMQPValue::ShortShortInt(n) => Some(f64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(f64::from(*n)),
        AMQPValue::ShortInt(n) => Some(f64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(f64::from(*n)),
        AMQPValue::LongInt(n) => Some(f64::from(*n)),
        AMQPValue::LongUInt(n) => Some(f64::from(*n)),
        other => match amqp_json(other) {
            Value::Number(n) => n.as_f64(),
            _ => None,
        },
    }
}

/// The AMQP counterpart of [`check_headers`].
fn check_amqp_headers(headers: &FieldTable) -> Result<u8, String> {
    // The AMQP parser reads tables nested deeper than this as empty (the
    // stack it would take otherwise): such headers are not what was sent.
    if nested_deeper_than(headers, MAX_NESTING) {
        return Err(format!(
            "the headers are nested more than {MAX_NESTING} levels deep"
        ));
    }
    // One pass over the (few) headers rather than a lookup per key: this
    // runs for every message. A string header's fault is still reported
    // before the severity's, and the keys come sorted, which is the order
    // of STRING_HEADERS: the same fault is reported first as key by key.
    let mut severity = None;
    for (key, value) in headers.inner() {
        let key = key.as_str();
        if key == SEVERITY_HEADER {
            severity = Some(value);
        } else if STRING_HEADERS.contains(&key) && amqp_str(value).is_none() {
            return Err(format!("header {key:?} must be a string"));
        }
    }
    match severity {
        None => Ok(DEFAULT_SEVERITY),
        Some(value) => severity_level(amqp_number(value))
            .ok_or_else(|| format!("{} not {:?}", severity_error(), amqp_json(value))),
    }
}

/// Whether tables and arrays in `table` (itself one level) nest deeper than
/// `limit`. Descends no further than `limit`.
fn nested_deeper_than(table: &FieldTable, limit: usize) -> bool {
    fn value_deeper(value: &AMQPValue, limit: usize) -> bool {
        match value {
            AMQPValue::FieldTable(table) => nested_deeper_than(table, limit),
            AMQPValue::FieldArray(items) => {
                limit == 0 || items.as_slice().iter().any(|v| value_deeper(v, limit - 1))
            }
            _ => false,
        }
    }
    limit == 0 || table.inner().values().any(|v| value_deeper(v, limit - 1))
}

/// Checks that `body` is UTF-8 JSON text of an object, without building
/// it: only the plugin that asks for the body builds a tree, with this same
/// parser ([`fm_plugin_api::json`]), so what passes here reaches it whole.
pub fn check_json_object(body: &[u8]) -> Result<(), String> {
    json::check_object(body).map_err(|error| match error.reason {
        "not UTF-8" => format!("the body is not UTF-8 (byte {})", error.offset),
        _ => format!("the body is not a JSON object: {error}"),
    })
}

/// A decoded, validated message, borrowed from wherever it was read.
pub struct MessageView<'a> {
    pub id: &'a str,
    pub topic: &'a str,
    /// Empty when unknown.
    pub queue: &'a str,
    /// UTF-8 JSON text of an object.
    pub body: &'a [u8],
    /// 10, 20, 30 or 40.
    pub severity: u8,
    pub priority: u8,
    pub sent_at: Option<&'a str>,
    pub schema: Option<&'a str>,
    pub headers: &'a dyn HeadersJson,
}

/// A message ready to publish as fedora-messaging publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

impl RecordMessage {
    /// The message as fedora-messaging's `publish` sends a loaded record:
    /// `application/json`, `utf-8`, persistent, its id as `message_id`, its
    /// priority (0 when unset) as property and `priority` header, the
    /// record's headers with `fedora_messaging_schema` (`base.message` when
    /// absent, and then `fedora_messaging_schema_package`
    /// `fedora_messaging`), `fedora_messaging_severity` and `sent-at` (now,
    /// when absent), and the topic prefixed with `topic_prefix` (which must
    /// still fit a routing key).
    ///
    /// Unlike fedora-messaging, which replaces a schema name whose Python
    /// class it does not have with `base.message`, the record's schema name
    /// is kept: the consumers downstream may well have the class.
    pub fn outgoing(&self, topic_prefix: &str) -> Result<Outgoing, String> {
        let published = self.as_published(topic_prefix)?;
        let mut table = FieldTable::default();
        for (key, value) in &published.headers {
            table.insert(key.as_str().into(), json_amqp(value));
        }
        Ok(Outgoing {
            routing_key: published.topic,
            properties: BasicProperties::default()
                .with_content_type("application/json".into())
                .with_content_encoding("utf-8".into())
                .with_delivery_mode(2)
                .with_message_id(published.id.as_str().into())
                .with_priority(published.priority)
                .with_headers(table),
            body: published.body,
        })
    }

    /// The record as [`RecordMessage::outgoing`] sends it: fedora-messaging's
    /// headers added, the topic prefixed with `topic_prefix`.
    pub fn as_published(&self, topic_prefix: &str) -> Result<RecordMessage, String> {
        let mut headers = self.headers.clone();
        let schema = headers
            .entry("fedora_messaging_schema")
            .or_insert_with(|| Value::from(BASE_SCHEMA));
        if schema == BASE_SCHEMA {
            headers
                .entry("fedora_messaging_schema_package")
                .or_insert_with(|| Value::from("fedora_messaging"));
        }
        headers.entry("sent-at").or_insert_with(|| {
            Value::from(
                jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%S+00:00")
                    .to_string(),
            )
        });
        headers.insert(SEVERITY_HEADER.to_owned(), Value::from(self.severity));
        headers.insert("priority".to_owned(), Value::from(self.priority));
        let topic = if topic_prefix.is_empty() {
            self.topic.clone()
        } else {
            format!("{}.{}", topic_prefix.trim_end_matches('.'), self.topic)
        };
        check_short("the topic with topic_prefix", &topic)?;
        Ok(RecordMessage {
            id: self.id.clone(),
            topic,
            queue: self.queue.clone(),
            body: self.body.clone(),
            headers,
            severity: self.severity,
            priority: self.priority,
        })
    }
}

/// JSON as an AMQP field value, typed as pika types Python values.
fn json_amqp(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => match i32::try_from(i) {
                Ok(small) => AMQPValue::LongInt(small),
                Err(_) => AMQPValue::LongLongInt(i),
            },
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => AMQPValue::Void,
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(items) => {
            AMQPValue::FieldArray(items.iter().map(json_amqp).collect::<Vec<_>>().into())
        }
        Value::Object(map) => {
            let mut table = FieldTable::default();
            for (key, value) in map {
                table.insert(key.as_str().into(), json_amqp(value));
            }
            AMQPValue::FieldTable(table)
        }
    }
}

/// The longest AMQP short string (queue, exchange and header names,
/// routing keys, message ids), in bytes.
pub const SHORT_STRING_MAX: usize = 255;

/// Checks that `text` fits an AMQP short string; `what` names it.
pub fn check_short(what: &str, text: &str) -> Result<(), String> {
    if text.len() > SHORT_STRING_MAX {
        Err(format!(
            "{what} is {} bytes long; AMQP allows at most {SHORT_STRING_MAX}",
            text.len()
        ))
    } else {
        Ok(())
    }
}

/// [`check_short`] on every key of `map` and of the objects inside it.
fn check_json_keys(what: &str, map: &Map<String, Value>) -> Result<(), String> {
    for (key, value) in map {
        check_short(&format!("the {what} key {key:.40?}…"), key)?;
        let nested = match value {
            Value::Object(inner) => vec![inner],
            Value::Array(items) => items.iter().filter_map(Value::as_object).collect(),
            _ => Vec::new(),
        };
        for inner in nested {
            check_json_keys(what, inner)?;
        }
    }
    Ok(())
}

/// fedora-messaging's severity when the header is missing (INFO).
pub const DEFAULT_SEVERITY: u8 = 20;

/// One message of a record file (or of a datagrepper answer, which has the
/// same shape), checked against fedora-messaging's schema for it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordMessage {
    pub id: String,
    pub topic: String,
    pub queue: String,
    pub body: Vec<u8>,
    pub headers: Map<String, Value>,
    pub severity: u8,
    pub priority: u8,
}

impl RecordMessage {
    /// Parses one record line.
    pub fn parse(line: &str) -> Result<RecordMessage, String> {
        let value = json::parse_object(line.as_bytes())
            .map_err(|error| format!("not a JSON object: {error}"))?;
        RecordMessage::from_json(Value::Object(value))
    }

    /// Checks a record against fedora-messaging's serialized-message schema:
    /// `topic` (string) and `body` (object) required, `headers` (object with
    /// typed fedora-messaging keys), `id` (string), `queue` (string or
    /// null), `priority` (integer or null) optional. A missing id gets a
    /// fresh UUID, as fedora-messaging's `load_message` gives it.
    pub fn from_json(value: Value) -> Result<RecordMessage, String> {
        let Value::Object(mut record) = value else {
            return Err("a message must be a JSON object".to_owned());
        };
        let topic = match record.remove("topic") {
            Some(Value::String(topic)) => topic,
            Some(_) => return Err("\"topic\" must be a string".to_owned()),
            None => return Err("\"topic\" is required".to_owned()),
        };
        let body = match (record.remove("encoded_body"), record.remove("body")) {
            // The body's bytes as the sender encoded them (the Python
            // bridge sends what fedora-messaging's `Message` encodes):
            // published as they are, once checked to be a JSON object.
            (Some(Value::String(encoded)), None) => {
                json::parse_object(encoded.as_bytes())
                    .map_err(|error| format!("\"encoded_body\" must be a JSON object: {error}"))?;
                encoded.into_bytes()
            }
            (Some(_), None) => return Err("\"encoded_body\" must be a string".to_owned()),
            (Some(_), Some(_)) => {
                return Err("a message has \"body\" or \"encoded_body\", not both".to_owned());
            }
            (None, Some(body @ Value::Object(_))) => {
                serde_json::to_vec(&body).map_err(|e| e.to_string())?
            }
            (None, Some(_)) => return Err("\"body\" must be a JSON object".to_owned()),
            (None, None) => return Err("\"body\" is required".to_owned()),
        };
        let headers = match record.remove("headers") {
            Some(Value::Object(headers)) => headers,
            None => Map::new(),
            Some(_) => return Err("\"headers\" must be a JSON object".to_owned()),
        };
        let severity = check_headers(&headers)?;
        check_json_keys("header", &headers)?;
        check_short("\"topic\"", &topic)?;
        let id = match record.remove("id") {
            Some(Value::String(id)) => {
                check_short("\"id\"", &id)?;
                id
            }
            None => uuid::Uuid::new_v4().to_string(),
            Some(_) => return Err("\"id\" must be a string".to_owned()),
        };
        let queue = match record.remove("queue") {
            Some(Value::String(queue)) => queue,
            None | Some(Value::Null) => String::new(),
            Some(_) => return Err("\"queue\" must be a string or null".to_owned()),
        };
        let priority = match record.remove("priority") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or("\"priority\" must be an integer from 0 to 255")?,
            Some(_) => return Err("\"priority\" must be an integer or null".to_owned()),
        };
        Ok(RecordMessage {
            id,
            topic,
            queue,
            body,
            headers,
            severity,
            priority,
        })
    }

    /// The message as consumers see it.
    pub fn view(&self) -> MessageView<'_> {
        let text = |key: &str| self.headers.get(key).and_then(Value::as_str);
        MessageView {
            id: &self.id,
            topic: &self.topic,
            queue: &self.queue,
            body: &self.body,
            severity: self.severity,
            priority: self.priority,
            sent_at: text("sent-at"),
            schema: text("fedora_messaging_schema"),
            headers: &self.headers,
        }
    }
}

/// The schema name of fedora-messaging's own `Message` class.
const BASE_SCHEMA: &str = "base.message";

/// The headers fedora-messaging's schema types as strings.
const STRING_HEADERS: [&str; 3] = [
    "fedora_messaging_schema",
    "fedora_messaging_schema_package",
    "sent-at",
];
const SEVERITY_HEADER: &str = "fedora_messaging_severity";

fn severity_level(value: Option<f64>) -> Option<u8> {
    value
        .filter(|level| [10.0, 20.0, 30.0, 40.0].contains(level))
        .map(|level| level as u8)
}

fn severity_error() -> String {
    format!("header {SEVERITY_HEADER:?} must be 10, 20, 30 or 40,")
}

/// fedora-messaging's header schema: the keys it defines must have their
/// types when present. Returns the severity.
fn check_headers(headers: &Map<String, Value>) -> Result<u8, String> {
    for key in STRING_HEADERS {
        if let Some(value) = headers.get(key)
            && !value.is_string()
        {
            return Err(format!("header {key:?} must be a string"));
        }
    }
    match headers.get(SEVERITY_HEADER) {
        None => Ok(DEFAULT_SEVERITY),
        Some(value) => severity_level(value.as_f64())
            .ok_or_else(|| format!("{} not {value}", severity_error())),
    }
}

/// Reads a whole record file (`-`: standard input) before anything is
/// done with it, so that a malformed line (an error naming it, exit 2)
/// stops a replay or a publish before it starts. Blank lines are skipped.
pub fn read_record_file(path: &Path) -> Result<Vec<RecordMessage>, Fatal> {
    let mut text = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(drop)
    } else {
        std::fs::read_to_string(path).map(|content| text = content)
    };
    read.map_err(|error| {
        Fatal::new(
            Exit::Usage,
            format!("cannot read --file {}: {error}", path.display()),
        )
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            RecordMessage::parse(line).map_err(|reason| {
                Fatal::new(
                    Exit::Usage,
                    format!(
                        "{}:{}: not a message in fedora-messaging's record format: {reason}",
                        path.display(),
                        index + 1
                    ),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
