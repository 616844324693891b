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
fn body_shapes() {
    assert_eq!(check_json_object(br#"{"a": [1, {"b": null}]}"#), Ok(()));
    for (body, expected) in [
        (&b"\xff{}"[..], "not UTF-8"),
        (b"{", "not a JSON object"),
        (b"[1]", "expected an object"),
        (b"\"text\"", "expected an object"),
        (b"{} trailing", "extra data"),
    ] {
        let error = check_json_object(body).unwrap_err();
        assert!(error.contains(expected), "{body:?}: {error}");
    }
}

#[test]
fn header_numbers_are_the_numbers_sent() {
    let decimal = |scale, value: i32| {
        amqp_json(&AMQPValue::DecimalValue(DecimalValue {
            scale,
            value: value as u32,
        }))
        .to_string()
    };
    assert_eq!(decimal(0, -100_000), "-100000");
    assert_eq!(decimal(2, -12_345), "-123.45");
    assert_eq!(decimal(3, 5), "0.005");
    assert_eq!(decimal(0, i32::MIN), "-2147483648");
    assert_eq!(amqp_json(&AMQPValue::Double(f64::NAN)).to_string(), "NaN");
    assert_eq!(
        amqp_json(&AMQPValue::Float(f32::NEG_INFINITY)).to_string(),
        "-Infinity"
    );
    let mut table = FieldTable::default();
    table.insert("x".into(), AMQPValue::Double(f64::INFINITY));
    let json = Some(table).headers_json();
    assert_eq!(json, r#"{"x":Infinity}"#);
    assert!(json::parse_object(json.as_bytes()).is_ok());
}

#[test]
fn headers_nested_beyond_what_the_amqp_parser_reads_are_refused() {
    let nested = |depth: usize| {
        let mut table = FieldTable::default();
        for _ in 1..depth {
            let mut outer = FieldTable::default();
            outer.insert("t".into(), AMQPValue::FieldTable(table));
            table = outer;
        }
        table
    };
    let body = b"{}";
    let at_limit = properties(Some(nested(MAX_NESTING)));
    assert!(check_delivery(&at_limit, body).is_ok());
    let json = at_limit.headers().headers_json();
    assert!(json::parse_object(json.as_bytes()).is_ok());
    let beyond = properties(Some(nested(MAX_NESTING + 1)));
    let error = check_delivery(&beyond, body).unwrap_err();
    assert!(error.contains("nested"), "{error}");
}

fn properties(headers: Option<FieldTable>) -> BasicProperties {
    let properties = BasicProperties::default().with_message_id("m".into());
    match headers {
        Some(headers) => properties.with_headers(headers),
        None => properties,
    }
}

/// Every AMQP type a severity may come in reads as its JSON form
/// would: integers of any width and floats by value, nothing else.
#[test]
fn a_severity_reads_alike_whatever_its_amqp_type() {
    for (value, expected) in [
        (AMQPValue::ShortShortInt(10), Some(10.0)),
        (AMQPValue::ShortShortUInt(20), Some(20.0)),
        (AMQPValue::ShortInt(-30), Some(-30.0)),
        (AMQPValue::ShortUInt(40), Some(40.0)),
        (AMQPValue::LongInt(i32::MIN), Some(f64::from(i32::MIN))),
        (AMQPValue::LongUInt(u32::MAX), Some(f64::from(u32::MAX))),
        (AMQPValue::LongLongInt(20), Some(20.0)),
        (AMQPValue::Double(30.0), Some(30.0)),
        (AMQPValue::Boolean(true), None),
        (AMQPValue::LongString("20".into()), None),
    ] {
        let through_json = match amqp_json(&value) {
            Value::Number(n) => n.as_f64(),
            _ => None,
        };
        assert_eq!(amqp_number(&value), expected, "{value:?}");
        assert_eq!(amqp_number(&value), through_json, "{value:?}");
    }
}

#[test]
fn deliveries_are_checked_like_fedora_messaging() {
    let mut headers = FieldTable::default();
    headers.insert("fedora_messaging_severity".into(), AMQPValue::LongInt(30));
    headers.insert(
        "sent-at".into(),
        AMQPValue::LongString("2019-07-30T19:12:22+00:00".into()),
    );
    assert_eq!(
        check_delivery(&properties(Some(headers.clone())).with_priority(4), b"{}"),
        Ok(Checked {
            severity: 30,
            priority: 4
        })
    );
    assert_eq!(
        check_delivery(&properties(None), b"{}"),
        Ok(Checked {
            severity: 20,
            priority: 0
        })
    );
    headers.insert("fedora_messaging_severity".into(), AMQPValue::LongInt(25));
    assert!(
        check_delivery(&properties(Some(headers.clone())), b"{}")
            .unwrap_err()
            .contains("10, 20, 30 or 40")
    );
    headers.insert(
        "fedora_messaging_severity".into(),
        AMQPValue::ShortShortUInt(40),
    );
    headers.insert("sent-at".into(), AMQPValue::LongInt(5));
    assert!(
        check_delivery(&properties(Some(headers)), b"{}")
            .unwrap_err()
            .contains("\"sent-at\" must be a string")
    );
    let latin1 = properties(None).with_content_encoding("latin-1".into());
    assert!(
        check_delivery(&latin1, b"{}")
            .unwrap_err()
            .contains("unsupported content_encoding")
    );
    for name in [
        "utf-8", "UTF-8", "utf_8", "utf8", "Ascii", "US_ASCII", "us-ascii",
    ] {
        let encoded = properties(None).with_content_encoding(name.into());
        assert!(check_delivery(&encoded, b"{}").is_ok(), "{name}");
    }
    for name in ["utf-16", "utf", "ascii8", ""] {
        let encoded = properties(None).with_content_encoding(name.into());
        assert!(check_delivery(&encoded, b"{}").is_err(), "{name}");
    }
    let ascii = properties(None).with_content_encoding("US_ASCII".into());
    assert!(
        check_delivery(&ascii, "{\"a\": \"é\"}".as_bytes())
            .unwrap_err()
            .contains("not ASCII")
    );
}

#[test]
fn a_schema_of_its_own_is_kept_without_a_package() {
    let record = RecordMessage::parse(
        r#"{"topic": "t", "body": {}, "headers": {"fedora_messaging_schema": "bodhi.update.comment.v1"}}"#,
    )
    .unwrap();
    let outgoing = record.outgoing("").unwrap();
    let json: Value = serde_json::from_str(&outgoing.properties.headers().headers_json()).unwrap();
    assert_eq!(json["fedora_messaging_schema"], "bodhi.update.comment.v1");
    assert!(
        json.get("fedora_messaging_schema_package").is_none(),
        "{json}"
    );
}

#[test]
fn records_publish_with_fedora_messaging_properties() {
    let record = RecordMessage::parse(GOOD).unwrap();
    let outgoing = record.outgoing("org.fedoraproject.").unwrap();
    assert_eq!(outgoing.routing_key, "org.fedoraproject.test_topic");
    let p = &outgoing.properties;
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(p.content_encoding().as_ref().unwrap().as_str(), "utf-8");
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(message_id(p), "273ed91d-b8b5-487a-9576-95b9fbdf3eec");
    assert_eq!(*p.priority(), Some(0));
    // What a consumer decodes is what the record said.
    let json: Value = serde_json::from_str(&p.headers().headers_json()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "fedora_messaging_schema": "base.message",
            "fedora_messaging_schema_package": "fedora_messaging",
            "fedora_messaging_severity": 20,
            "sent-at": "2018-11-18T10:11:41+00:00",
            "priority": 0
        })
    );
    assert_eq!(
        check_delivery(p, &outgoing.body),
        Ok(Checked {
            severity: 20,
            priority: 0
        })
    );
    let fresh = RecordMessage::parse(r#"{"topic": "t", "body": {}}"#)
        .unwrap()
        .outgoing("")
        .unwrap();
    assert_eq!(fresh.routing_key, "t");
    let sent_at = fresh.properties.headers().as_ref().unwrap().inner()["sent-at"].clone();
    assert!(matches!(sent_at, AMQPValue::LongString(s) if s.as_bytes().ends_with(b"+00:00")));
}

#[test]
fn amqp_headers_become_json() {
    let mut nested = FieldTable::default();
    nested.insert("x".into(), AMQPValue::Boolean(true));
    let mut headers = FieldTable::default();
    headers.insert("s".into(), AMQPValue::LongString("text".into()));
    headers.insert("n".into(), AMQPValue::LongLongInt(-3));
    headers.insert("t".into(), AMQPValue::FieldTable(nested));
    headers.insert("v".into(), AMQPValue::Void);
    let json: Value = serde_json::from_str(&Some(headers).headers_json()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"s": "text", "n": -3, "t": {"x": true}, "v": null})
    );
    assert_eq!(None::<FieldTable>.headers_json(), "{}");
}

#[test]
fn names_longer_than_amqp_allows_are_refused_not_panicked_on() {
    let long = "k".repeat(256);
    for line in [
        format!(r#"{{"topic": "{long}", "body": {{}}}}"#),
        format!(r#"{{"topic": "t", "id": "{long}", "body": {{}}}}"#),
        format!(r#"{{"topic": "t", "body": {{}}, "headers": {{"{long}": 1}}}}"#),
        format!(r#"{{"topic": "t", "body": {{}}, "headers": {{"a": [{{"{long}": 1}}]}}}}"#),
    ] {
        let error = RecordMessage::parse(&line).unwrap_err();
        assert!(error.contains("AMQP allows at most 255"), "{error}");
    }
    let topic = "t".repeat(250);
    let record = RecordMessage::parse(&format!(r#"{{"topic": "{topic}", "body": {{}}}}"#)).unwrap();
    assert!(
        record
            .outgoing("org.fedoraproject")
            .unwrap_err()
            .contains("topic_prefix")
    );
}

#[test]
fn schema_violations_say_what_is_wrong() {
    let cases = [
        ("[]", "not a JSON object"),
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
        ("{", "not a JSON object"),
    ];
    for (line, expected) in cases {
        let error = RecordMessage::parse(line).unwrap_err();
        assert!(error.contains(expected), "{line}: {error}");
    }
}

#[test]
fn an_encoded_body_is_published_byte_for_byte_once_checked() {
    // What Python's json.dumps writes: spaces after separators, non-ASCII
    // escaped, keys in the order they were given.
    let encoded = r#"{"z": 1, "a": [1, 2], "name": "\u00e9"}"#;
    let line = serde_json::json!({"topic": "t", "encoded_body": encoded}).to_string();
    let message = RecordMessage::parse(&line).unwrap();
    assert_eq!(message.body, encoded.as_bytes());
    for (record, complaint) in [
        (
            serde_json::json!({"topic": "t", "encoded_body": "[1]"}),
            "must be a JSON object",
        ),
        (
            serde_json::json!({"topic": "t", "encoded_body": {}}),
            "must be a string",
        ),
        (
            serde_json::json!({"topic": "t", "encoded_body": "{}", "body": {}}),
            "not both",
        ),
    ] {
        let error = RecordMessage::parse(&record.to_string()).unwrap_err();
        assert!(error.contains(complaint), "{record}: {error}");
    }
}
