//! Frames as the broker relays them, at the lapin boundary: any bytes must
//! parse or fail without a panic; a well-formed `basic.deliver` or content
//! header whose strings (routing key, message_id, header names, ...) are
//! any bytes at all must parse, since RabbitMQ passes such bytes on, and a
//! delivery the host checks and accepts must have headers a plugin can
//! decode.
#![no_main]

use amq_protocol::frame::{AMQPFrame, parse_frame};
use amq_protocol::protocol::{AMQPClass, basic};
use arbitrary::Arbitrary;
use fm_host::wire::{self, HeadersJson};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Field {
    Bool(bool),
    I8(i8),
    I32(i32),
    I64(i64),
    F64(f64),
    Decimal(u8, u32),
    Long(Vec<u8>),
    Bytes(Vec<u8>),
    Timestamp(u64),
    Void,
    Table(Vec<(Vec<u8>, Field)>),
    Array(Vec<Field>),
}

#[derive(Debug, Arbitrary)]
struct Header {
    content_type: Option<Vec<u8>>,
    content_encoding: Option<Vec<u8>>,
    headers: Option<Vec<(Vec<u8>, Field)>>,
    priority: Option<u8>,
    message_id: Option<Vec<u8>>,
    app_id: Option<Vec<u8>>,
    body: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
enum Input {
    /// Whatever arrives.
    Raw(Vec<u8>),
    /// A content header, well formed but for its strings.
    Header(Header),
    /// A basic.deliver with any consumer tag, exchange and routing key.
    Deliver(Vec<u8>, u64, bool, Vec<u8>, Vec<u8>),
}

/// At most 255 bytes, as a short string's length octet allows.
fn short(out: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn long(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn table(out: &mut Vec<u8>, entries: &[(Vec<u8>, Field)]) {
    let mut inner = Vec::new();
    for (key, value) in entries {
        short(&mut inner, key);
        field(&mut inner, value);
    }
    long(out, &inner);
}

fn field(out: &mut Vec<u8>, value: &Field) {
    match value {
        Field::Bool(b) => out.extend_from_slice(&[b't', u8::from(*b)]),
        Field::I8(n) => out.extend_from_slice(&[b'b', *n as u8]),
        Field::I32(n) => {
            out.push(b'I');
            out.extend_from_slice(&n.to_be_bytes());
        }
        Field::I64(n) => {
            out.push(b'l');
            out.extend_from_slice(&n.to_be_bytes());
        }
        Field::F64(f) => {
            out.push(b'd');
            out.extend_from_slice(&f.to_be_bytes());
        }
        Field::Decimal(scale, value) => {
            out.extend_from_slice(&[b'D', *scale]);
            out.extend_from_slice(&value.to_be_bytes());
        }
        Field::Long(bytes) => {
            out.push(b'S');
            long(out, bytes);
        }
        Field::Bytes(bytes) => {
            out.push(b'x');
            long(out, bytes);
        }
        Field::Timestamp(t) => {
            out.push(b'T');
            out.extend_from_slice(&t.to_be_bytes());
        }
        Field::Void => out.push(b'V'),
        Field::Table(entries) => {
            out.push(b'F');
            table(out, entries);
        }
        Field::Array(items) => {
            out.push(b'A');
            let mut inner = Vec::new();
            for item in items {
                field(&mut inner, item);
            }
            long(out, &inner);
        }
    }
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind, 0, 1];
    long(&mut out, payload);
    out.push(0xce);
    out
}

fn header_frame(header: &Header) -> Vec<u8> {
    let mut flags = 0u16;
    let mut fields = Vec::new();
    if let Some(v) = &header.content_type {
        flags |= 1 << 15;
        short(&mut fields, v);
    }
    if let Some(v) = &header.content_encoding {
        flags |= 1 << 14;
        short(&mut fields, v);
    }
    if let Some(entries) = &header.headers {
        flags |= 1 << 13;
        table(&mut fields, entries);
    }
    if let Some(priority) = header.priority {
        flags |= 1 << 11;
        fields.push(priority);
    }
    if let Some(v) = &header.message_id {
        flags |= 1 << 7;
        short(&mut fields, v);
    }
    if let Some(v) = &header.app_id {
        flags |= 1 << 3;
        short(&mut fields, v);
    }
    let mut payload = vec![0, 60, 0, 0];
    payload.extend_from_slice(&(header.body.len() as u64).to_be_bytes());
    payload.extend_from_slice(&flags.to_be_bytes());
    payload.extend_from_slice(&fields);
    frame(2, &payload)
}

/// What the patched parser makes of a short string's bytes.
fn lossy_short(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(255)]).into_owned();
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn check(properties: &amq_protocol::protocol::BasicProperties, body: &[u8]) {
    if wire::check_delivery(properties, body).is_ok() {
        let json = properties.headers().headers_json();
        if let Err(error) = fm_plugin_api::json::parse_object(json.as_bytes()) {
            panic!("accepted headers a plugin cannot decode ({error}): {json}");
        }
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Raw(bytes) => {
            if let Ok((_, AMQPFrame::Header(_, header))) = parse_frame(bytes.as_slice()) {
                check(&header.properties, b"{}");
            }
        }
        Input::Header(header) => {
            let bytes = header_frame(&header);
            let parsed = match parse_frame(bytes.as_slice()) {
                Ok((_, AMQPFrame::Header(_, parsed))) => parsed,
                other => panic!("a well-formed content header did not parse: {other:?}"),
            };
            let properties = &parsed.properties;
            if let Some(id) = &header.message_id {
                let got = properties.message_id().as_ref().map(|s| s.as_str());
                assert_eq!(got, Some(lossy_short(id).as_str()));
            }
            check(properties, &header.body);
        }
        Input::Deliver(tag, delivery_tag, redelivered, exchange, routing_key) => {
            let mut payload = vec![0, 60, 0, 60];
            short(&mut payload, &tag);
            payload.extend_from_slice(&delivery_tag.to_be_bytes());
            payload.push(u8::from(redelivered));
            short(&mut payload, &exchange);
            short(&mut payload, &routing_key);
            match parse_frame(frame(1, &payload).as_slice()) {
                Ok((_, AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))))) => {
                    assert_eq!(d.routing_key.as_str(), lossy_short(&routing_key));
                    assert_eq!(d.delivery_tag, delivery_tag);
                }
                other => panic!("a well-formed basic.deliver did not parse: {other:?}"),
            }
        }
    }
});
