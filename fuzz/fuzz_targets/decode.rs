//! Deliveries and record lines of any shape: checking them must never
//! panic, and what passes must convert to JSON headers and back out.
#![no_main]

use arbitrary::Arbitrary;
use fm_host::wire::{self, HeadersJson, RecordMessage};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString, ShortString};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Value {
    Bool(bool),
    I8(i8),
    U8(u8),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal(u8, u32),
    Short(String),
    Long(Vec<u8>),
    Array(Vec<Value>),
    Table(Vec<(String, Value)>),
    Timestamp(u64),
    Void,
}

fn amqp(value: &Value, depth: usize) -> AMQPValue {
    if depth > 8 {
        return AMQPValue::Void;
    }
    match value {
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::I8(n) => AMQPValue::ShortShortInt(*n),
        Value::U8(n) => AMQPValue::ShortShortUInt(*n),
        Value::I32(n) => AMQPValue::LongInt(*n),
        Value::I64(n) => AMQPValue::LongLongInt(*n),
        Value::F32(f) => AMQPValue::Float(*f),
        Value::F64(f) => AMQPValue::Double(*f),
        Value::Decimal(scale, value) => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        Value::Short(s) => match ShortString::try_new(s.as_str()) {
            Ok(short) => AMQPValue::ShortString(short),
            Err(_) => AMQPValue::Void,
        },
        Value::Long(bytes) => AMQPValue::LongString(LongString::from(bytes.clone())),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(|v| amqp(v, depth + 1)).collect::<Vec<_>>(),
        )),
        Value::Table(entries) => AMQPValue::FieldTable(table(entries, depth + 1)),
        Value::Timestamp(t) => AMQPValue::Timestamp(*t),
        Value::Void => AMQPValue::Void,
    }
}

fn table(entries: &[(String, Value)], depth: usize) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        if let Ok(key) = ShortString::try_new(key.as_str()) {
            table.insert(key, amqp(value, depth));
        }
    }
    table
}

#[derive(Debug, Arbitrary)]
struct Input {
    body: Vec<u8>,
    content_encoding: Option<String>,
    headers: Option<Vec<(String, Value)>>,
    priority: Option<u8>,
    record_line: String,
}

fuzz_target!(|input: Input| {
    let _ = wire::check_json_object(&input.body);
    let mut properties = BasicProperties::default();
    if let Some(encoding) = input.content_encoding.as_deref() {
        if let Ok(encoding) = ShortString::try_new(encoding) {
            properties = properties.with_content_encoding(encoding);
        }
    }
    if let Some(priority) = input.priority {
        properties = properties.with_priority(priority);
    }
    if let Some(headers) = &input.headers {
        properties = properties.with_headers(table(headers, 0));
    }
    if wire::check_delivery(&properties, &input.body).is_ok() {
        let json = properties.headers().headers_json();
        assert!(json.starts_with('{'), "{json}");
    }
    if let Ok(record) = RecordMessage::parse(&input.record_line) {
        if let Ok(outgoing) = record.outgoing("prefix.") {
            // What we publish, we accept.
            assert!(wire::check_delivery(&outgoing.properties, &outgoing.body).is_ok());
        }
    }
});
