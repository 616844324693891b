//! The trace of the message being consumed (interface revision 5): its
//! W3C trace context, to continue the trace in the consumer's own calls
//! (an HTTP request's `traceparent` header, a command's `TRACEPARENT`),
//! and attributes and events on the host's `process` span for it.
//!
//! Everything here is about the message being consumed on the calling
//! thread, from inside [`Consumer::consume`](crate::Consumer::consume).
//! With traces off, on another thread, or in a host older than revision
//! 5, [`context`] is `None` and the rest does nothing: a consumer written
//! against it runs unchanged everywhere.

use crate::guest;

/// W3C trace context, as the `traceparent` and `tracestate` headers (or
/// `TRACEPARENT` and `TRACESTATE` in an environment) carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    /// Empty when there is none.
    pub tracestate: String,
}

/// The trace context of the message's `process` span; `None` when traces
/// are off, outside `consume`, and in a host older than revision 5.
pub fn context() -> Option<TraceContext> {
    let text = guest::trace_context()?;
    let (traceparent, tracestate) = text.split_once('\n').unwrap_or((&text, ""));
    Some(TraceContext {
        traceparent: traceparent.to_owned(),
        tracestate: tracestate.to_owned(),
    })
}

/// Sets the string attribute `key` on the message's `process` span.
pub fn set_attribute(key: &str, value: &str) {
    guest::span_attribute(key, value);
}

/// Adds an event named `name` to the message's `process` span, with the
/// string, number and boolean members of `attributes` (a JSON object;
/// `{}` for none) as its attributes.
pub fn add_event(name: &str, attributes: &serde_json::Value) {
    guest::span_event(name, &attributes.to_string());
}
