//! W3C trace context in a message's headers: read from what a publisher
//! wrote (untrusted: only text values, of bounded length, that
//! OpenTelemetry's W3C propagator accepts), and written into what the host
//! publishes, replacing whatever context the record carried.

use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The headers W3C trace context travels in (as OpenTelemetry's
/// instrumentations of pika and other clients write them).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The longest header value read: a `traceparent` is 55 characters, and
/// W3C bounds a `tracestate` at 32 entries of at most 256 characters.
const LONGEST: usize = 8192;

struct Reading<'a>(Option<&'a FieldTable>);

impl Extractor for Reading<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0?.inner().get(key)?;
        let text = match value {
            AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok()?,
            AMQPValue::ShortString(text) => text.as_str(),
            _ => return None,
        };
        (text.len() <= LONGEST).then_some(text)
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|table| table.inner().keys().map(|key| key.as_str()).collect())
            .unwrap_or_default()
    }
}

/// The trace context a message's `headers` carry: a context holding the
/// publisher's span as a remote parent, or an empty one.
pub fn extract(headers: Option<&FieldTable>) -> Context {
    TraceContextPropagator::new().extract(&Reading(headers))
}

struct Writing<'a>(&'a mut FieldTable);

impl Injector for Writing<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes an empty `tracestate` when there is none.
        if value.is_empty() {
            return;
        }
        self.0
            .insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
}

/// `headers` with `context`'s span as `traceparent` (and `tracestate`),
/// and no other trace context.
pub fn inject(context: &Context, headers: &mut FieldTable) {
    let mut kept = FieldTable::default();
    for (key, value) in headers.inner() {
        if key.as_str() != TRACEPARENT && key.as_str() != TRACESTATE {
            kept.insert(key.clone(), value.clone());
        }
    }
    TraceContextPropagator::new().inject_context(context, &mut Writing(&mut kept));
    *headers = kept;
}

/// `traceparent` and `tracestate` for `context`, as text, for a command's
/// environment or a plugin; `None` when it holds no valid span.
pub fn as_text(context: &Context) -> Option<(String, String)> {
    let mut headers = FieldTable::default();
    inject(context, &mut headers);
    let reading = Reading(Some(&headers));
    let parent = reading.get(TRACEPARENT)?.to_owned();
    let state = reading.get(TRACESTATE).unwrap_or("").to_owned();
    Some((parent, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        for (key, value) in pairs {
            table.insert((*key).into(), value.clone());
        }
        table
    }

    fn text(value: &str) -> AMQPValue {
        AMQPValue::LongString(value.into())
    }

    #[test]
    fn a_publishers_traceparent_is_the_remote_parent() {
        let table = headers(&[(TRACEPARENT, text(PARENT)), (TRACESTATE, text("vendor=x"))]);
        let context = extract(Some(&table));
        let span = context.span();
        let parent = span.span_context();
        assert!(parent.is_valid() && parent.is_remote() && parent.is_sampled());
        assert_eq!(
            parent.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(parent.trace_state().header(), "vendor=x");
    }

    #[test]
    fn forged_or_malformed_context_is_no_context() {
        let long = format!("{PARENT}{}", "-0".repeat(LONGEST));
        for value in [
            text("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
            text("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"),
            text("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"),
            text("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            text("00-0af7651916cd43dd8448eb211c80319c\0-b7ad6b7169203331-01"),
            text(&long),
            text(""),
            AMQPValue::LongLongInt(7),
            AMQPValue::ByteArray(PARENT.as_bytes().to_vec().into()),
        ] {
            let table = headers(&[(TRACEPARENT, value.clone())]);
            let context = extract(Some(&table));
            assert!(!context.span().span_context().is_valid(), "{value:?}");
        }
        assert!(!extract(None).span().span_context().is_valid());
    }

    #[test]
    fn injecting_replaces_a_carried_context_and_keeps_the_other_headers() {
        let remote = extract(Some(&headers(&[(TRACEPARENT, text(PARENT))])));
        let mut table = headers(&[
            (
                TRACEPARENT,
                text("00-11111111111111111111111111111111-2222222222222222-01"),
            ),
            (TRACESTATE, text("stale=1")),
            ("fedora_messaging_schema", text("base.message")),
        ]);
        inject(&remote, &mut table);
        assert_eq!(table.inner().get(TRACEPARENT), Some(&text(PARENT)));
        assert_eq!(table.inner().get(TRACESTATE), None);
        assert_eq!(
            table.inner().get("fedora_messaging_schema"),
            Some(&text("base.message"))
        );
        assert_eq!(as_text(&remote), Some((PARENT.to_owned(), String::new())));
        assert_eq!(as_text(&Context::new()), None);
    }
}
