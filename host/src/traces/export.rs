//! Export over OTLP/HTTP, never in the consumer's way: a finished span is
//! put in a bounded queue (or counted lost when it is full), and a thread
//! of its own sends the queue in batches with OpenTelemetry's OTLP
//! exporter, over ureq (already the host's HTTP client, and blocking, as
//! that thread may be). A batch the collector does not take is counted
//! lost, with a warning at most once a minute: spans can be lost,
//! messages never.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

/// The most finished spans waiting to be sent; beyond it a span is lost.
const QUEUE: usize = 4096;
/// The most spans in one request.
const BATCH: usize = 512;
/// How long a span may wait for its batch to fill.
const DELAY: Duration = Duration::from_secs(1);
/// How long one request may take.
const REQUEST_BOUND: Duration = Duration::from_secs(10);
/// The most of a collector's answer read.
const LONGEST_ANSWER: u64 = 1024 * 1024;
/// How often a warning says spans are being lost.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// How many spans were sent, and how many lost and why: read by
/// `/metrics`.
#[derive(Debug, Default)]
pub struct Counts {
    pub exported: AtomicU64,
    pub lost_queue_full: AtomicU64,
    pub lost_export_failed: AtomicU64,
}

/// This process's counts.
pub fn counts() -> &'static Counts {
    static COUNTS: Counts = Counts {
        exported: AtomicU64::new(0),
        lost_queue_full: AtomicU64::new(0),
        lost_export_failed: AtomicU64::new(0),
    };
    &COUNTS
}

/// The span processor that queues and batches spans for `traces_url`.
pub fn batching(traces_url: &str, resource: &Resource) -> Result<Batching, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_BOUND))
        .http_status_as_error(false)
        .build()
        .into();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Ureq { agent })
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url)
        .with_timeout(REQUEST_BOUND)
        .build()
        .map_err(|error| format!("cannot export traces to {traces_url}: {error}"))?;
    // The exporter sends the resource (the service's name) with each
    // batch; the provider cannot hand it over, as the exporter lives on
    // the sending thread.
    exporter.set_resource(resource);
    let shared = Arc::new(Shared::default());
    let sending = {
        let shared = shared.clone();
        let url = traces_url.to_owned();
        std::thread::Builder::new()
            .name("fm-traces".to_owned())
            .spawn(move || send_batches(&shared, &exporter, &url))
            .map_err(|error| format!("cannot start the trace exporter's thread: {error}"))?
    };
    drop(sending);
    Ok(Batching { shared })
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the sending thread: a batch is full, a flush or the end is
    /// asked for.
    work: Condvar,
    /// Wakes who waits for a flush or the end.
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    spans: VecDeque<SpanData>,
    /// Flushes asked for, and carried out.
    flushes_asked: u64,
    flushes_done: u64,
    ending: bool,
    ended: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Spans only: a panic elsewhere leaves nothing half-changed that
        // matters.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Queues finished spans for the sending thread.
#[derive(Debug)]
pub struct Batching {
    shared: Arc<Shared>,
}

impl SpanProcessor for Batching {
    fn on_start(&self, _span: &mut Span, _context: &Context) {}

    fn on_end(&self, span: SpanData) {
        let mut state = self.shared.state();
        if state.ending || state.spans.len() >= QUEUE {
            counts().lost_queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.spans.push_back(span);
        if state.spans.len() >= BATCH {
            self.shared.work.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let mut state = self.shared.state();
        state.flushes_asked += 1;
        let asked = state.flushes_asked;
        self.shared.work.notify_one();
        let (state, waited) = self
            .shared
            .done
            .wait_timeout_while(state, REQUEST_BOUND * 2, |state| {
                state.flushes_done < asked && !state.ended
            })
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        drop(state);
        if waited.timed_out() {
            Err(OTelSdkError::Timeout(REQUEST_BOUND * 2))
        } else {
            Ok(())
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let mut state = self.shared.state();
        state.ending = true;
        self.shared.work.notify_one();
        let (mut state, waited) = self
            .shared
            .done
            .wait_timeout_while(state, timeout, |state| !state.ended)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if waited.timed_out() {
            // What is still queued will not be sent before the exit.
            let left = state.spans.len() as u64;
            state.spans.clear();
            counts()
                .lost_export_failed
                .fetch_add(left, Ordering::Relaxed);
            return Err(OTelSdkError::Timeout(timeout));
        }
        Ok(())
    }
}

/// The sending thread: a batch once it is full, a flush or the end is
/// asked for, or its first span has waited [`DELAY`].
fn send_batches(shared: &Shared, exporter: &opentelemetry_otlp::SpanExporter, url: &str) {
    let mut last_warning: Option<Instant> = None;
    loop {
        let (batch, flushing, ending) = {
            let state = shared.state();
            let (mut state, _) = shared
                .work
                .wait_timeout_while(state, DELAY, |state| {
                    state.spans.len() < BATCH
                        && state.flushes_done == state.flushes_asked
                        && !state.ending
                })
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let take = state.spans.len().min(BATCH);
            let batch: Vec<SpanData> = state.spans.drain(..take).collect();
            let flushing = state.flushes_asked;
            (batch, flushing, state.ending)
        };
        if !batch.is_empty() {
            let spans = batch.len() as u64;
            match futures_lite::future::block_on(exporter.export(batch)) {
                Ok(()) => {
                    counts().exported.fetch_add(spans, Ordering::Relaxed);
                }
                Err(error) => {
                    counts()
                        .lost_export_failed
                        .fetch_add(spans, Ordering::Relaxed);
                    if last_warning.is_none_or(|then| then.elapsed() >= WARN_EVERY) {
                        last_warning = Some(Instant::now());
                        log::warn!(
                            "Could not export {spans} span(s) to {url}: {error}; they are lost (messages are not), and the losses are counted in fedora_messaging_spans_lost_total"
                        );
                    }
                }
            }
        }
        let mut state = shared.state();
        if state.spans.is_empty() {
            state.flushes_done = flushing;
            if ending {
                state.ended = true;
                shared.done.notify_all();
                return;
            }
            shared.done.notify_all();
        }
    }
}

/// A processor that drops every span: what a benchmark measures spans
/// against, without the queue.
#[derive(Debug)]
pub struct Discard;

impl SpanProcessor for Discard {
    fn on_start(&self, _span: &mut Span, _context: &Context) {}

    fn on_end(&self, span: SpanData) {
        std::hint::black_box(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// OTLP/HTTP's client: ureq, blocking the sending thread.
#[derive(Debug)]
struct Ureq {
    agent: ureq::Agent,
}

impl HttpClient for Ureq {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: ureq::http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<ureq::http::Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let request = ureq::http::Request::from_parts(parts, body.to_vec());
            let response = self.agent.run(request)?;
            let (parts, mut body) = response.into_parts();
            let answer = body.with_config().limit(LONGEST_ANSWER).read_to_vec()?;
            Ok(ureq::http::Response::from_parts(parts, Bytes::from(answer)))
        })
    }
}
