//! OpenTelemetry traces of every message's path: a `process` span for each
//! message handed to a consumer, a `send` span for each message the host
//! publishes (for a consumer, or for `publish` and `replay`), W3C trace
//! context read from and written to the messages' headers
//! ([`context`]), and export over OTLP/HTTP ([`export`]).
//!
//! Off unless configured ([`settings`]): then each hook is one load of a
//! global and a branch. On, export never waits on the collector: spans
//! are queued (bounded) and batched on a thread of their own, and every
//! span lost (the queue full, the collector down or slow) is counted for
//! `/metrics`.
//!
//! A message's `process` span takes the publisher's span, from its
//! `traceparent`, as parent, so one trace shows the message from its
//! publisher through each consumer; it also links to it, as OpenTelemetry's
//! messaging conventions ask. What a consumer publishes while it handles a
//! message is a child of that message's `process` span, and carries its
//! own `send` span's `traceparent` on.

pub mod context;
pub mod export;
pub mod settings;
mod spans;

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

pub use settings::{Settings, TracingTable};
pub use spans::{Delivered, ProcessSpan, SendSpan};

/// How long the host's exit may wait for the last spans to be exported.
const LAST_EXPORT: Duration = Duration::from_secs(5);

/// What makes spans: the process's, once traces are on ([`start`]), or
/// one of a benchmark's own ([`Tracing::new`]).
pub struct Tracing {
    tracer: SdkTracer,
}

/// The process's tracing, once traces are on.
static TRACING: OnceLock<Tracing> = OnceLock::new();

/// The `process` span of a message about to be handed to a consumer;
/// `None` when traces are off.
pub fn process(delivered: &Delivered<'_>) -> Option<ProcessSpan> {
    TRACING.get().map(|tracing| tracing.process(delivered))
}

/// The `send` span of a message about to be published, and `properties`
/// with its trace context ([`Tracing::send`]); `None`, and the properties
/// unchanged, when traces are off.
pub fn send(
    exchange: &str,
    routing_key: &str,
    message_id: &str,
    properties: lapin::BasicProperties,
) -> (lapin::BasicProperties, Option<SendSpan>) {
    match TRACING.get() {
        Some(tracing) => {
            let (properties, span) = tracing.send(exchange, routing_key, message_id, properties);
            (properties, Some(span))
        }
        None => (properties, None),
    }
}

/// The thread's current trace context as `traceparent` and `tracestate`;
/// `None` when traces are off or no span is current.
pub fn current_context() -> Option<(String, String)> {
    TRACING.get()?;
    spans::current_context()
}

/// The longest attribute key, value or event name a plugin may set;
/// longer ones are cut (at a character boundary).
const LONGEST_FROM_PLUGIN: usize = 4096;
/// The most attributes a plugin's event carries.
const MOST_EVENT_ATTRIBUTES: usize = 64;

fn bounded(text: &str) -> String {
    let mut end = text.len().min(LONGEST_FROM_PLUGIN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Sets a string attribute on the thread's current span (a consumer's
/// `process` span), for a plugin; nothing when traces are off.
pub fn set_current_attribute(key: &str, value: &str) {
    if TRACING.get().is_some() {
        opentelemetry::Context::current()
            .span()
            .set_attribute(opentelemetry::KeyValue::new(bounded(key), bounded(value)));
    }
}

/// Adds an event to the thread's current span, for a plugin: its
/// attributes are the string, number and boolean members of the JSON
/// object `attributes` (anything else is left out).
pub fn add_current_event(name: &str, attributes: &str) {
    use opentelemetry::KeyValue;
    if TRACING.get().is_none() {
        return;
    }
    let members = match serde_json::from_str::<serde_json::Value>(attributes) {
        Ok(serde_json::Value::Object(members)) => members,
        _ => serde_json::Map::new(),
    };
    let attributes: Vec<KeyValue> = members
        .iter()
        .filter_map(|(key, value)| {
            let key = bounded(key);
            Some(match value {
                serde_json::Value::String(text) => KeyValue::new(key, bounded(text)),
                serde_json::Value::Bool(flag) => KeyValue::new(key, *flag),
                serde_json::Value::Number(number) => match number.as_i64() {
                    Some(integer) => KeyValue::new(key, integer),
                    None => KeyValue::new(key, number.as_f64()?),
                },
                _ => return None,
            })
        })
        .take(MOST_EVENT_ATTRIBUTES)
        .collect();
    opentelemetry::Context::current()
        .span()
        .add_event(bounded(name), attributes);
}

impl Tracing {
    /// Spans sampled as `sampling` says, handed to `processor` as they
    /// end, from a provider the caller keeps (its drop ends them).
    pub fn new(
        sampling: settings::Sampling,
        service_name: &str,
        processor: impl opentelemetry_sdk::trace::SpanProcessor + 'static,
    ) -> (Tracing, SdkTracerProvider) {
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler(sampling))
            .with_resource(resource(service_name))
            .build();
        let tracer = provider.tracer("fedora-messaging");
        (Tracing { tracer }, provider)
    }
}

/// While it lives, traces are exported; dropping it exports what is
/// left, within [`LAST_EXPORT`].
pub struct Exporting {
    provider: SdkTracerProvider,
}

impl Drop for Exporting {
    fn drop(&mut self) {
        let _ = self.provider.shutdown_with_timeout(LAST_EXPORT);
    }
}

/// What `[tracing]` and this process's OpenTelemetry variables ask for
/// ([`settings::settings`]).
pub fn configured(table: Option<&TracingTable>) -> Result<Option<Settings>, String> {
    settings::settings(table, |name| std::env::var(name).ok())
}

/// Starts exporting traces if `[tracing]` or OpenTelemetry's variables
/// say so; the error names the key or variable at fault.
pub fn start_configured(table: Option<&TracingTable>) -> Result<Option<Exporting>, String> {
    match configured(table)? {
        Some(settings) => start(&settings),
        None => Ok(None),
    }
}

/// Starts exporting traces as `settings` say; `None` if traces were
/// started already in this process.
pub fn start(settings: &Settings) -> Result<Option<Exporting>, String> {
    let processor = export::batching(&settings.traces_url, &resource(&settings.service_name))?;
    let (tracing, provider) = Tracing::new(settings.sampling, &settings.service_name, processor);
    if TRACING.set(tracing).is_err() {
        return Ok(None);
    }
    log::info!(
        "Exporting traces to {} as service {:?}",
        settings.traces_url,
        settings.service_name
    );
    Ok(Some(Exporting { provider }))
}

/// What the spans are of: `service_name`, and what
/// `OTEL_RESOURCE_ATTRIBUTES` adds.
fn resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_owned())
        .build()
}

fn sampler(sampling: settings::Sampling) -> Sampler {
    use settings::{Root, Sampling};
    let root = |root: Root| match root {
        Root::AlwaysOn => Sampler::AlwaysOn,
        Root::AlwaysOff => Sampler::AlwaysOff,
        Root::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
    };
    match sampling {
        Sampling::AlwaysOn => Sampler::AlwaysOn,
        Sampling::AlwaysOff => Sampler::AlwaysOff,
        Sampling::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
        Sampling::ParentBased(inner) => Sampler::ParentBased(Box::new(root(inner))),
    }
}
