//! The spans themselves: a message's `process` span, made current on the
//! consumer's thread while the consumer has the message, and a `send` span
//! per message published. Names and attributes follow OpenTelemetry's
//! messaging conventions for RabbitMQ.
//!
//! The settlement is an event on the `process` span, not a span of its
//! own: the host coalesces acks (one `basic.ack` with `multiple` settles
//! many messages), so a settle span per message would time one round trip
//! many times over, and the broker's answer to it is known only for the
//! batch.

use lapin::BasicProperties;
use lapin::types::FieldTable;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, ContextGuard, KeyValue};
use opentelemetry_semantic_conventions::attribute::{
    ERROR_TYPE, MESSAGING_DESTINATION_NAME, MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
    MESSAGING_MESSAGE_ID, MESSAGING_OPERATION_NAME, MESSAGING_OPERATION_TYPE,
    MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY, MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
    MESSAGING_SYSTEM,
};

use super::{Tracing, context};
use crate::outcome::{Outcome, Settle};

/// The host's own attributes, in its own namespace.
const OUTCOME: &str = "fedora_messaging.outcome";
const REQUEUE: &str = "fedora_messaging.requeue";

/// What the `process` span says of one delivery.
pub struct Delivered<'a> {
    pub queue: &'a str,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub message_id: &'a str,
    pub delivery_tag: u64,
    pub headers: Option<&'a FieldTable>,
}

/// A message's `process` span, from the hand-over to the answer.
pub struct ProcessSpan {
    context: Context,
}

impl Tracing {
    /// The `process` span of a message about to be handed to a consumer.
    pub fn process(&self, delivered: &Delivered<'_>) -> ProcessSpan {
        let tracer = &self.tracer;
        let creation = context::extract(delivered.headers);
        // Named and described only once it is known to be recorded: the
        // samplers decide on the trace and the parent alone, and a span
        // that is not recorded then costs no allocation for them.
        let mut span = tracer
            .span_builder("process")
            .with_kind(SpanKind::Consumer)
            .start_with_context(tracer, &creation);
        if span.is_recording() {
            span.update_name(format!("process {}", delivered.queue));
            span.set_attributes([
                KeyValue::new(MESSAGING_SYSTEM, "rabbitmq"),
                KeyValue::new(MESSAGING_OPERATION_TYPE, "process"),
                KeyValue::new(MESSAGING_DESTINATION_NAME, delivered.exchange.to_owned()),
                KeyValue::new(
                    MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                    delivered.routing_key.to_owned(),
                ),
                KeyValue::new(
                    MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
                    delivered.queue.to_owned(),
                ),
                KeyValue::new(MESSAGING_MESSAGE_ID, delivered.message_id.to_owned()),
                KeyValue::new(
                    MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
                    i64::try_from(delivered.delivery_tag).unwrap_or(i64::MAX),
                ),
            ]);
            let remote = creation.span().span_context().clone();
            if remote.is_valid() {
                span.add_link(remote, Vec::new());
            }
        }
        ProcessSpan {
            context: Context::new().with_span(span),
        }
    }
}

impl ProcessSpan {
    /// Makes it the thread's current span until the guard drops: what the
    /// consumer publishes meanwhile is its child.
    pub fn enter(&self) -> ContextGuard {
        self.context.clone().attach()
    }

    /// Ends it for a message the consumer left unstarted: the broker
    /// delivers it again, and its next `process` span is the one that
    /// counts.
    pub fn unstarted(self) {
        let span = self.context.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new(OUTCOME, "unstarted"));
        }
        span.end();
    }

    /// Ends it with the consumer's answer and the settlement it asks for.
    pub fn end(self, outcome: &Outcome) {
        let span = self.context.span();
        if !span.is_recording() {
            span.end();
            return;
        }
        let (name, requeue) = match outcome.disposition().0 {
            Settle::Ack => ("ack", false),
            Settle::Requeue | Settle::RequeueAllUnsettled => ("nack", true),
            Settle::Reject => ("nack", false),
        };
        span.set_attribute(KeyValue::new(OUTCOME, outcome_name(outcome)));
        span.add_event(
            "settle",
            vec![
                KeyValue::new(MESSAGING_OPERATION_TYPE, "settle"),
                KeyValue::new(MESSAGING_OPERATION_NAME, name),
                KeyValue::new(REQUEUE, requeue),
            ],
        );
        if let Outcome::Failed { reason } = outcome {
            span.set_attribute(KeyValue::new(ERROR_TYPE, "consumer_failed"));
            span.set_status(Status::error(reason.clone()));
        }
        span.end();
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Ack => "ack",
        Outcome::Nack => "nack",
        Outcome::Drop => "drop",
        Outcome::Halt { .. } => "halt",
        Outcome::Failed { .. } => "failed",
    }
}

/// A message's `send` span, from the publish to the broker's answer.
pub struct SendSpan {
    context: Context,
}

impl Tracing {
    /// The `send` span of a message about to be published to `exchange`, a
    /// child of the thread's current span (a `process` span while a consumer
    /// handles a message), and `properties` with its trace context.
    pub fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        properties: BasicProperties,
    ) -> (BasicProperties, SendSpan) {
        let tracer = &self.tracer;
        let mut span = tracer
            .span_builder("send")
            .with_kind(SpanKind::Producer)
            .start_with_context(tracer, &Context::current());
        if span.is_recording() {
            span.update_name(if exchange.is_empty() {
                "send (default)".to_owned()
            } else {
                format!("send {exchange}")
            });
            span.set_attributes([
                KeyValue::new(MESSAGING_SYSTEM, "rabbitmq"),
                KeyValue::new(MESSAGING_OPERATION_TYPE, "send"),
                KeyValue::new(MESSAGING_DESTINATION_NAME, exchange.to_owned()),
                KeyValue::new(
                    MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                    routing_key.to_owned(),
                ),
                KeyValue::new(MESSAGING_MESSAGE_ID, message_id.to_owned()),
            ]);
        }
        let sending = Context::new().with_span(span);
        let mut headers = properties.headers().clone().unwrap_or_default();
        context::inject(&sending, &mut headers);
        (
            properties.with_headers(headers),
            SendSpan { context: sending },
        )
    }
}

impl SendSpan {
    /// Ends it: the broker confirmed the message, or `failure` says why
    /// not.
    pub fn end(self, failure: Option<&str>) {
        match failure {
            Some(failure) => self.fail(failure),
            None => self.context.span().end(),
        }
    }

    /// Ends it with `failure`, where it cannot be given up (a later end
    /// changes nothing).
    pub fn fail(&self, failure: &str) {
        let span = self.context.span();
        span.set_attribute(KeyValue::new(ERROR_TYPE, "publish_failed"));
        span.set_status(Status::error(failure.to_owned()));
        span.end();
    }
}

/// The thread's current trace context as `traceparent` and `tracestate`
/// (for a plugin, or a command's environment); `None` outside a span.
pub fn current_context() -> Option<(String, String)> {
    context::as_text(&Context::current())
}
