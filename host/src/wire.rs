//! Messages as the host hands them to consumers, and fedora-messaging's
//! record format (one JSON object a line, as `record` writes and `publish`
//! and `reconsume` read).

use serde_json::{Map, Value};

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
        let value: Value =
            serde_json::from_str(line).map_err(|error| format!("not JSON: {error}"))?;
        RecordMessage::from_json(value)
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
        let body = match record.remove("body") {
            Some(body @ Value::Object(_)) => {
                serde_json::to_vec(&body).map_err(|e| e.to_string())?
            }
            Some(_) => return Err("\"body\" must be a JSON object".to_owned()),
            None => return Err("\"body\" is required".to_owned()),
        };
        let headers = match record.remove("headers") {
            Some(Value::Object(headers)) => headers,
            None => Map::new(),
            Some(_) => return Err("\"headers\" must be a JSON object".to_owned()),
        };
        let severity = check_headers(&headers)?;
        let id = match record.remove("id") {
            Some(Value::String(id)) => id,
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

/// fedora-messaging's header schema: the keys it defines must have their
/// types when present. Returns the severity.
fn check_headers(headers: &Map<String, Value>) -> Result<u8, String> {
    for key in [
        "fedora_messaging_schema",
        "fedora_messaging_schema_package",
        "sent-at",
    ] {
        if let Some(value) = headers.get(key)
            && !value.is_string()
        {
            return Err(format!("header {key:?} must be a string"));
        }
    }
    match headers.get("fedora_messaging_severity") {
        None => Ok(DEFAULT_SEVERITY),
        Some(value) => value
            .as_f64()
            .filter(|level| [10.0, 20.0, 30.0, 40.0].contains(level))
            .map(|level| level as u8)
            .ok_or_else(|| {
                format!(
                    "header \"fedora_messaging_severity\" must be 10, 20, 30 or 40, not {value}"
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"body": {"test_key1": "test_value1"}, "headers": {"fedora_messaging_schema": "base.message", "fedora_messaging_severity": 20, "sent-at": "2018-11-18T10:11:41+00:00"}, "id": "273ed91d-b8b5-487a-9576-95b9fbdf3eec", "queue": "test_queue", "topic": "test_topic"}"#;

    #[test]
    fn fedora_messaging_fixture_parses() {
        let message = RecordMessage::parse(GOOD).unwrap();
        let view = message.view();
        assert_eq!(view.id, "273ed91d-b8b5-487a-9576-95b9fbdf3eec");
        assert_eq!(view.topic, "test_topic");
        assert_eq!(view.queue, "test_queue");
        assert_eq!(view.body, br#"{"test_key1":"test_value1"}"#);
        assert_eq!(view.severity, 20);
        assert_eq!(view.sent_at, Some("2018-11-18T10:11:41+00:00"));
        assert_eq!(view.schema, Some("base.message"));
    }

    #[test]
    fn only_topic_and_body_are_required() {
        let message = RecordMessage::parse(r#"{"topic": "t", "body": {}}"#).unwrap();
        assert_eq!(message.id.len(), 36, "a fresh UUID: {}", message.id);
        assert_eq!((message.severity, message.priority), (20, 0));
        assert_eq!(message.queue, "");
    }

    #[test]
    fn schema_violations_say_what_is_wrong() {
        let cases = [
            ("[]", "must be a JSON object"),
            (r#"{"body": {}}"#, "\"topic\" is required"),
            (r#"{"topic": "t"}"#, "\"body\" is required"),
            (
                r#"{"topic": "t", "body": []}"#,
                "\"body\" must be a JSON object",
            ),
            (r#"{"topic": 1, "body": {}}"#, "\"topic\" must be a string"),
            (
                r#"{"topic": "t", "body": {}, "headers": {"fedora_messaging_severity": 25}}"#,
                "must be 10, 20, 30 or 40",
            ),
            (
                r#"{"topic": "t", "body": {}, "headers": {"sent-at": 5}}"#,
                "\"sent-at\" must be a string",
            ),
            (
                r#"{"topic": "t", "body": {}, "priority": "high"}"#,
                "priority",
            ),
            (r#"{"topic": "t", "body": {}, "queue": 3}"#, "\"queue\""),
            ("{", "not JSON"),
        ];
        for (line, expected) in cases {
            let error = RecordMessage::parse(line).unwrap_err();
            assert!(error.contains(expected), "{line}: {error}");
        }
    }
}
