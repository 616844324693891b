//! `[monitoring]`: fedora-messaging's health endpoints, and Prometheus
//! metrics.
//!
//! - `GET /live` → `{"status": "OK"}`
//! - `GET /ready` → `{"consuming": bool, "node": "host:port" or null,
//!   "blocked": the broker's reason or null, "published": N, "consumed":
//!   {"received", "processed", "dropped", "rejected", "failed"},
//!   "in_progress": N, "oldest_in_progress": {"id", "topic", "seconds"} or
//!   null, "queues_ready": {"queue": N}}`
//! - `GET /metrics` → the same counters, whether the host is connected and
//!   to which broker node, whether the broker blocks the connection, the
//!   reconnect count, the messages ready in each consumed queue, the
//!   messages in progress and the age of the oldest, and, per outcome, a
//!   histogram of how long the consumer took.
//!
//! `contrib/prometheus/fedora-messaging.rules.yml` turns these into alerts
//! (a silent stall, a stuck callback, …) and `contrib/grafana` into a
//! dashboard; the end-to-end tests check both against this output.
//!
//! The server ([`serve`]) runs on a thread of its own and holds against
//! abuse: slow, idle or endless requests cannot delay another client's
//! answer, grow memory, or touch the consumer.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_executor::LocalExecutor;
use async_io::Async;
use bytes::Bytes;
use futures_lite::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use smol_hyper::rt::{FuturesIo, SmolTimer};

use crate::in_progress::{InProgress, roughly};
use crate::outcome::Outcome;
use crate::untrusted::Untrusted;

/// Upper bounds, in seconds, of the consume-duration histogram buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0, 60.0,
];

/// The outcome labels, in the order of [`Stats::durations`].
const OUTCOMES: [&str; 5] = ["ack", "nack", "drop", "halt", "failed"];

/// A value only ever replaced whole: a panic elsewhere cannot leave it
/// torn, so a poisoned lock is used as it is.
fn replaced_whole<T>(value: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    value
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the host counts while it consumes; shared with the server thread.
#[derive(Default)]
pub struct Stats {
    consuming: AtomicBool,
    /// The broker node connected to (`host:port`), if any.
    node: Mutex<Option<String>>,
    /// Why the broker blocks the connection (a memory or disk alarm), while
    /// it does.
    blocked: Mutex<Option<String>>,
    received: AtomicU64,
    processed: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
    /// Messages not consumed again: over `[delivery_limit]`.
    over_limit: AtomicU64,
    /// Dead letters kept in their queue now: the dead-letter exchange
    /// routed them nowhere.
    dead_letters_kept: AtomicU64,
    /// Messages consumers published, confirmed by the broker.
    published: AtomicU64,
    durations: [Histogram; 5],
    publish_durations: Histogram,
    /// When the first message was received, and how many nanoseconds
    /// after it the latest settlement was taken: the span in which the
    /// host consumed, which `fm-bench` measures throughput over.
    first_received: OnceLock<Instant>,
    last_settled_nanos: AtomicU64,
    in_progress: InProgress,
    /// Messages ready in each consumed queue, as the broker last said
    /// (`engine::depth`); empty between connections.
    queues_ready: Mutex<BTreeMap<String, u32>>,
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The series of histogram `name`, each with `labels` (`a="b",` or
    /// empty) before `le`.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            out.push_str(&format!(
                "{name}_bucket{{{labels}le=\"{bound}\"}} {}\n",
                get(bucket)
            ));
        }
        let count = get(&self.count);
        out.push_str(&format!("{name}_bucket{{{labels}le=\"+Inf\"}} {count}\n"));
        let labels = labels.trim_end_matches(',');
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        out.push_str(&format!(
            "{name}_sum{braced} {}\n",
            get(&self.sum_micros) as f64 / 1e6
        ));
        out.push_str(&format!("{name}_count{braced} {count}\n"));
    }
}

/// How long the oldest message in progress must have been in hand for
/// `STATUS=` to name it.
const STATUS_NAMES_AFTER: Duration = Duration::from_secs(10);

impl Stats {
    /// What the consumer threads have in hand.
    pub fn in_progress(&self) -> &InProgress {
        &self.in_progress
    }

    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    /// The node the host is connected to, or `None` between connections.
    pub fn set_node(&self, node: Option<String>) {
        *self.node() = node;
    }

    fn node(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        replaced_whole(&self.node)
    }

    /// The broker says `ready` messages wait in `queue`.
    pub fn set_queue_ready(&self, queue: &str, ready: u32) {
        replaced_whole(&self.queues_ready).insert(queue.to_owned(), ready);
    }

    /// The consumed queues' depths are no longer known (their channels
    /// are gone).
    pub fn forget_queues_ready(&self) {
        replaced_whole(&self.queues_ready).clear();
    }

    /// The broker's reason for blocking the connection, or `None` once it
    /// no longer does (or the connection is gone).
    pub fn set_blocked(&self, reason: Option<String>) {
        *replaced_whole(&self.blocked) = reason;
    }

    /// A checked message is about to be handed to the consumer.
    pub fn received(&self) {
        self.first_received.get_or_init(Instant::now);
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// The broker has taken a batch of settlements.
    pub fn settled(&self) {
        if let Some(first) = self.first_received.get() {
            let nanos = u64::try_from(first.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.last_settled_nanos.fetch_max(nanos, Ordering::Relaxed);
        }
    }

    /// `Consumed N message(s); first delivery to last settle: S s`, once
    /// a message was settled.
    pub fn span(&self) -> Option<String> {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let settled =
            get(&self.processed) + get(&self.dropped) + get(&self.rejected) + get(&self.failed);
        self.first_received.get().filter(|_| settled > 0)?;
        let seconds = Duration::from_nanos(get(&self.last_settled_nanos)).as_secs_f64();
        Some(format!(
            "Consumed {settled} message(s); first delivery to last settle: {seconds:.3} s"
        ))
    }

    /// `N received, N processed, N dropped, N rejected, N failed`, once a
    /// message was received, and `, N over the delivery limit` once one
    /// was.
    pub fn summary(&self) -> Option<String> {
        let received = self.received.load(Ordering::Relaxed);
        (received > 0).then(|| {
            let mut summary = format!(
                "{received} received, {} processed, {} dropped, {} rejected, {} failed",
                self.processed.load(Ordering::Relaxed),
                self.dropped.load(Ordering::Relaxed),
                self.rejected.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed),
            );
            let over_limit = self.over_limit.load(Ordering::Relaxed);
            if over_limit > 0 {
                summary.push_str(&format!(", {over_limit} over the delivery limit"));
            }
            // A stuck callback shows: the counts alone just stop moving.
            if let Some(oldest) = self.in_progress.snapshot(Instant::now()).oldest
                && oldest.age >= STATUS_NAMES_AFTER
            {
                summary.push_str(&format!(
                    "; consuming {} for {}",
                    Untrusted(&oldest.id),
                    roughly(oldest.age)
                ));
            }
            summary
        })
    }

    /// A consumer published a message and the broker confirmed it,
    /// `took` after the consumer asked.
    pub fn published(&self, took: Duration) {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.publish_durations.observe(took);
    }

    /// A message went over `[delivery_limit]` and was not consumed again.
    pub fn over_limit(&self) {
        self.over_limit.fetch_add(1, Ordering::Relaxed);
    }

    /// How many dead letters are kept in their queue, waiting for the
    /// dead-letter exchange to route them.
    pub fn set_dead_letters_kept(&self, kept: usize) {
        self.dead_letters_kept
            .store(u64::try_from(kept).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an answer as fedora-messaging counts it, and how long the
    /// consumer took to give it.
    pub fn answered(&self, outcome: &Outcome, took: Duration) {
        let (counter, label) = match outcome {
            Outcome::Ack => (&self.processed, 0),
            Outcome::Nack => (&self.rejected, 1),
            Outcome::Drop => (&self.dropped, 2),
            Outcome::Halt { requeue: false, .. } => (&self.processed, 3),
            Outcome::Halt { requeue: true, .. } => (&self.rejected, 3),
            Outcome::Failed { .. } => (&self.failed, 4),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.durations[label].observe(took);
    }

    fn ready_json(&self) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let in_progress = self.in_progress.snapshot(Instant::now());
        let oldest = in_progress.oldest.map(|oldest| {
            serde_json::json!({
                "id": oldest.id,
                "topic": oldest.topic,
                "seconds": oldest.age.as_secs_f64(),
            })
        });
        serde_json::json!({
            "consuming": self.consuming.load(Ordering::Relaxed),
            "node": *self.node(),
            "blocked": *replaced_whole(&self.blocked),
            "published": get(&self.published),
            "consumed": {
                "received": get(&self.received),
                "processed": get(&self.processed),
                "dropped": get(&self.dropped),
                "rejected": get(&self.rejected),
                "failed": get(&self.failed),
            },
            "in_progress": in_progress.count,
            "oldest_in_progress": oldest,
            "queues_ready": *replaced_whole(&self.queues_ready),
        })
        .to_string()
    }

    fn prometheus(&self) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut out = String::new();
        out.push_str("# HELP fedora_messaging_consuming Whether the host is consuming.\n");
        out.push_str("# TYPE fedora_messaging_consuming gauge\n");
        out.push_str(&format!(
            "fedora_messaging_consuming {}\n",
            u8::from(self.consuming.load(Ordering::Relaxed))
        ));
        out.push_str(
            "# HELP fedora_messaging_connected Whether the host is connected to a broker node.\n",
        );
        out.push_str("# TYPE fedora_messaging_connected gauge\n");
        out.push_str(&format!(
            "fedora_messaging_connected {}\n",
            u8::from(self.node().is_some())
        ));
        out.push_str("# HELP fedora_messaging_broker_node The broker node the host is connected to (none between connections).\n");
        out.push_str("# TYPE fedora_messaging_broker_node gauge\n");
        if let Some(node) = &*self.node() {
            out.push_str(&format!(
                "fedora_messaging_broker_node{{node=\"{}\"}} 1\n",
                label_value(node)
            ));
        }
        out.push_str("# HELP fedora_messaging_queue_messages_ready Messages ready in a consumed queue, as the broker last said (asked every 30 s).\n");
        out.push_str("# TYPE fedora_messaging_queue_messages_ready gauge\n");
        for (queue, ready) in &*replaced_whole(&self.queues_ready) {
            out.push_str(&format!(
                "fedora_messaging_queue_messages_ready{{queue=\"{}\"}} {ready}\n",
                label_value(queue)
            ));
        }
        out.push_str("# HELP fedora_messaging_connection_blocked Whether the broker blocks the connection (a memory or disk alarm).\n");
        out.push_str("# TYPE fedora_messaging_connection_blocked gauge\n");
        out.push_str(&format!(
            "fedora_messaging_connection_blocked {}\n",
            u8::from(replaced_whole(&self.blocked).is_some())
        ));
        out.push_str("# HELP fedora_messaging_received_total Messages handed to the consumer.\n");
        out.push_str("# TYPE fedora_messaging_received_total counter\n");
        out.push_str(&format!(
            "fedora_messaging_received_total {}\n",
            get(&self.received)
        ));
        out.push_str("# HELP fedora_messaging_consumed_total Messages settled, by fedora-messaging's counter.\n");
        out.push_str("# TYPE fedora_messaging_consumed_total counter\n");
        for (name, counter) in [
            ("processed", &self.processed),
            ("dropped", &self.dropped),
            ("rejected", &self.rejected),
            ("failed", &self.failed),
        ] {
            out.push_str(&format!(
                "fedora_messaging_consumed_total{{result=\"{name}\"}} {}\n",
                get(counter)
            ));
        }
        out.push_str("# HELP fedora_messaging_published_total Messages consumers published, confirmed by the broker.\n");
        out.push_str("# TYPE fedora_messaging_published_total counter\n");
        out.push_str(&format!(
            "fedora_messaging_published_total {}\n",
            self.published.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP fedora_messaging_over_delivery_limit_total Messages dead-lettered by [delivery_limit] instead of consumed again.\n");
        out.push_str("# TYPE fedora_messaging_over_delivery_limit_total counter\n");
        out.push_str(&format!(
            "fedora_messaging_over_delivery_limit_total {}\n",
            self.over_limit.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP fedora_messaging_dead_letters_kept Messages over [delivery_limit] kept in their queue: the dead-letter exchange routed them nowhere.\n");
        out.push_str("# TYPE fedora_messaging_dead_letters_kept gauge\n");
        out.push_str(&format!(
            "fedora_messaging_dead_letters_kept {}\n",
            self.dead_letters_kept.load(Ordering::Relaxed)
        ));
        out.push_str("# HELP fedora_messaging_reconnects_total Connections lost and made again.\n");
        out.push_str("# TYPE fedora_messaging_reconnects_total counter\n");
        out.push_str(&format!(
            "fedora_messaging_reconnects_total {}\n",
            get(&self.reconnects)
        ));
        let in_progress = self.in_progress.snapshot(Instant::now());
        out.push_str("# HELP fedora_messaging_messages_in_progress Messages handed to a consumer and not yet answered.\n");
        out.push_str("# TYPE fedora_messaging_messages_in_progress gauge\n");
        out.push_str(&format!(
            "fedora_messaging_messages_in_progress {}\n",
            in_progress.count
        ));
        out.push_str("# HELP fedora_messaging_oldest_in_progress_seconds How long the oldest message in progress has been in the consumer's hands (0 when none is).\n");
        out.push_str("# TYPE fedora_messaging_oldest_in_progress_seconds gauge\n");
        out.push_str(&format!(
            "fedora_messaging_oldest_in_progress_seconds {:.3}\n",
            in_progress
                .oldest
                .map_or(0.0, |oldest| oldest.age.as_secs_f64())
        ));
        let spans = crate::traces::export::counts();
        out.push_str(
            "# HELP fedora_messaging_spans_exported_total Trace spans the collector took.\n",
        );
        out.push_str("# TYPE fedora_messaging_spans_exported_total counter\n");
        out.push_str(&format!(
            "fedora_messaging_spans_exported_total {}\n",
            get(&spans.exported)
        ));
        out.push_str("# HELP fedora_messaging_spans_lost_total Trace spans lost: the export queue was full (or closed, at exit), or the collector did not take them.\n");
        out.push_str("# TYPE fedora_messaging_spans_lost_total counter\n");
        for (reason, count) in [
            ("queue_full", &spans.lost_queue_full),
            ("export_failed", &spans.lost_export_failed),
        ] {
            out.push_str(&format!(
                "fedora_messaging_spans_lost_total{{reason=\"{reason}\"}} {}\n",
                get(count)
            ));
        }
        out.push_str("# HELP fedora_messaging_consume_duration_seconds Time the consumer took, by outcome.\n");
        out.push_str("# TYPE fedora_messaging_consume_duration_seconds histogram\n");
        for (label, histogram) in OUTCOMES.iter().zip(&self.durations) {
            histogram.write(
                &mut out,
                "fedora_messaging_consume_duration_seconds",
                &format!("outcome=\"{label}\","),
            );
        }
        out.push_str("# HELP fedora_messaging_publish_duration_seconds Time from a consumer's publish to the broker's confirm, for confirmed messages.\n");
        out.push_str("# TYPE fedora_messaging_publish_duration_seconds histogram\n");
        self.publish_durations
            .write(&mut out, "fedora_messaging_publish_duration_seconds", "");
        out
    }
}

/// `value` as a label value of the text format: backslash, double quote
/// and line feed escaped.
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// How long a connection may take to send its request head; a client that
/// dribbles bytes, or sends nothing, is cut off then.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may last in all, response included (a client that
/// never reads its response).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The most bytes of a request head held for one connection (hyper's
/// smallest allowed limit is 8 KiB); a longer request line or header block
/// is answered 431 and closed.
const MAX_HEAD: usize = 16 * 1024;

/// The most connections served at once; beyond it a new one is closed at
/// once. With [`HEAD_TIMEOUT`], holding them all takes hundreds of new
/// connections a second.
const MAX_CONNECTIONS: usize = 4096;

/// Listens on `address:port` (an empty address: every interface, as
/// fedora-messaging) and answers on a thread of its own, so no client can
/// slow the consumer: each connection is a task of the thread's executor,
/// bounded in time ([`HEAD_TIMEOUT`], [`CONNECTION_TIMEOUT`]) and memory
/// ([`MAX_HEAD`]), and there are at most [`MAX_CONNECTIONS`] of them.
pub fn serve(address: &str, port: u16, stats: Arc<Stats>) -> std::io::Result<()> {
    let host = if address.is_empty() {
        "0.0.0.0"
    } else {
        address
    };
    let listener = Async::new(TcpListener::bind((host, port))?)?;
    log::info!("Monitoring on http://{}", listener.get_ref().local_addr()?);
    let limit = connection_limit();
    std::thread::Builder::new()
        .name("monitoring".into())
        .spawn(move || {
            let executor = LocalExecutor::new();
            async_io::block_on(executor.run(accept(&executor, listener, stats, limit)));
        })?;
    Ok(())
}

/// [`MAX_CONNECTIONS`], or fewer when the process may not open that many
/// files. The soft limit is raised to the hard one first (as Go's runtime
/// does): this process waits on sockets with epoll, never `select`, so
/// the historical 1024 has no reason here.
fn connection_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return MAX_CONNECTIONS / 8;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    // Half the files stay for the broker connection, the plugin's own and
    // the log.
    usize::try_from(limit.rlim_cur / 2)
        .unwrap_or(MAX_CONNECTIONS)
        .min(MAX_CONNECTIONS)
}

async fn accept(
    executor: &LocalExecutor<'_>,
    listener: Async<TcpListener>,
    stats: Arc<Stats>,
    limit: usize,
) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of files, most likely: wait for connections to end
                // rather than spin on the error.
                log::debug!("monitoring: cannot accept a connection: {error}");
                async_io::Timer::after(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.get() >= limit {
            log::debug!("monitoring: {limit} connections open; closing a new one");
            continue;
        }
        open.set(open.get() + 1);
        let open = open.clone();
        let stats = stats.clone();
        executor
            .spawn(async move {
                let served = answer(stream, stats).or(async {
                    async_io::Timer::after(CONNECTION_TIMEOUT).await;
                    Err("the connection lasted too long".into())
                });
                if let Err(error) = served.await {
                    log::debug!("monitoring request: {error}");
                }
                open.set(open.get() - 1);
            })
            .detach();
    }
}

/// Serves one request on `stream`, then closes it.
async fn answer(
    stream: Async<TcpStream>,
    stats: Arc<Stats>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = respond(&stats, request.method(), request.uri().path());
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(SmolTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .serve_connection(FuturesIo::new(stream), service)
        .await?;
    Ok(())
}

fn respond(stats: &Stats, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET, "/live") => (
            StatusCode::OK,
            "application/json",
            "{\"status\": \"OK\"}\n".to_owned(),
        ),
        (&Method::GET, "/ready") => (
            StatusCode::OK,
            "application/json",
            format!("{}\n", stats.ready_json()),
        ),
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            stats.prometheus(),
        ),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_over_the_delivery_limit_are_counted_and_shown_once_there_are_some() {
        let stats = Stats::default();
        stats.received();
        assert_eq!(
            stats.summary().as_deref(),
            Some("1 received, 0 processed, 0 dropped, 0 rejected, 0 failed")
        );
        assert!(
            stats
                .prometheus()
                .contains("fedora_messaging_over_delivery_limit_total 0\n")
        );
        stats.over_limit();
        stats.over_limit();
        assert_eq!(
            stats.summary().as_deref(),
            Some(
                "1 received, 0 processed, 0 dropped, 0 rejected, 0 failed, 2 over the delivery limit"
            )
        );
        assert!(
            stats
                .prometheus()
                .contains("fedora_messaging_over_delivery_limit_total 2\n")
        );
    }

    #[test]
    fn outcomes_are_counted_as_fedora_messaging_counts_them() {
        let stats = Stats::default();
        for outcome in [
            Outcome::Ack,
            Outcome::Nack,
            Outcome::Drop,
            Outcome::Halt {
                exit_code: 0,
                requeue: true,
            },
            Outcome::Failed { reason: "x".into() },
        ] {
            stats.received();
            stats.answered(&outcome, Duration::from_millis(2));
        }
        let ready: serde_json::Value = serde_json::from_str(&stats.ready_json()).unwrap();
        assert_eq!(
            ready["consumed"],
            serde_json::json!({"received": 5, "processed": 1, "dropped": 1, "rejected": 2, "failed": 1})
        );
        let metrics = stats.prometheus();
        assert!(
            metrics.contains(
                "fedora_messaging_consume_duration_seconds_bucket{outcome=\"ack\",le=\"0.001\"} 0\n"
            ),
            "{metrics}"
        );
        assert!(metrics.contains("fedora_messaging_consume_duration_seconds_bucket{outcome=\"ack\",le=\"0.0025\"} 1\n"), "{metrics}");
        assert!(
            metrics
                .contains("fedora_messaging_consume_duration_seconds_count{outcome=\"halt\"} 1\n"),
            "{metrics}"
        );
    }

    #[test]
    fn queue_depths_are_shown_per_queue_escaped_until_forgotten() {
        let stats = Stats::default();
        stats.set_node(Some("localhost:5672".to_owned()));
        stats.set_queue_ready("plain", 3);
        stats.set_queue_ready("odd \"name\"\\\n", 0);
        let metrics = stats.prometheus();
        assert!(
            metrics.contains("fedora_messaging_connected 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("fedora_messaging_queue_messages_ready{queue=\"plain\"} 3\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains(
                "fedora_messaging_queue_messages_ready{queue=\"odd \\\"name\\\"\\\\\\n\"} 0\n"
            ),
            "{metrics}"
        );
        assert!(
            stats.ready_json().contains("\"queues_ready\":{\"odd"),
            "{}",
            stats.ready_json()
        );
        stats.forget_queues_ready();
        stats.set_node(None);
        let metrics = stats.prometheus();
        assert!(
            !metrics.contains("fedora_messaging_queue_messages_ready{"),
            "{metrics}"
        );
        assert!(
            metrics.contains("fedora_messaging_connected 0\n"),
            "{metrics}"
        );
    }
}
