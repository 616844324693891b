//! `[monitoring]`: fedora-messaging's health endpoints, and Prometheus
//! metrics.
//!
//! - `GET /live` → `{"status": "OK"}`
//! - `GET /ready` → `{"consuming": bool, "published": N, "consumed":
//!   {"received", "processed", "dropped", "rejected", "failed"}}`
//! - `GET /metrics` → the same counters, the reconnect count and, per
//!   outcome, a histogram of how long the consumer took.
//!
//! A few requests a minute from a probe need no HTTP framework: one thread
//! answers them in turn, reading only the request line.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::outcome::Outcome;

/// Upper bounds, in seconds, of the consume-duration histogram buckets.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0, 60.0,
];

/// The outcome labels, in the order of [`Stats::durations`].
const OUTCOMES: [&str; 5] = ["ack", "nack", "drop", "halt", "failed"];

/// What the host counts while it consumes; shared with the server thread.
#[derive(Default)]
pub struct Stats {
    consuming: AtomicBool,
    received: AtomicU64,
    processed: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    reconnects: AtomicU64,
    durations: [Histogram; 5],
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Stats {
    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    /// A checked message is about to be handed to the consumer.
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// `N received, N processed, N dropped, N rejected, N failed`, once a
    /// message was received.
    pub fn summary(&self) -> Option<String> {
        let received = self.received.load(Ordering::Relaxed);
        (received > 0).then(|| {
            format!(
                "{received} received, {} processed, {} dropped, {} rejected, {} failed",
                self.processed.load(Ordering::Relaxed),
                self.dropped.load(Ordering::Relaxed),
                self.rejected.load(Ordering::Relaxed),
                self.failed.load(Ordering::Relaxed),
            )
        })
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
        let histogram = &self.durations[label];
        let seconds = took.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&histogram.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        histogram.count.fetch_add(1, Ordering::Relaxed);
        histogram
            .sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn ready_json(&self) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        serde_json::json!({
            "consuming": self.consuming.load(Ordering::Relaxed),
            "published": 0,
            "consumed": {
                "received": get(&self.received),
                "processed": get(&self.processed),
                "dropped": get(&self.dropped),
                "rejected": get(&self.rejected),
                "failed": get(&self.failed),
            },
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
        out.push_str("# HELP fedora_messaging_reconnects_total Connections lost and made again.\n");
        out.push_str("# TYPE fedora_messaging_reconnects_total counter\n");
        out.push_str(&format!(
            "fedora_messaging_reconnects_total {}\n",
            get(&self.reconnects)
        ));
        out.push_str("# HELP fedora_messaging_consume_duration_seconds Time the consumer took, by outcome.\n");
        out.push_str("# TYPE fedora_messaging_consume_duration_seconds histogram\n");
        for (label, histogram) in OUTCOMES.iter().zip(&self.durations) {
            for (bound, bucket) in BUCKETS.iter().zip(&histogram.buckets) {
                out.push_str(&format!(
                    "fedora_messaging_consume_duration_seconds_bucket{{outcome=\"{label}\",le=\"{bound}\"}} {}\n",
                    get(bucket)
                ));
            }
            let count = get(&histogram.count);
            out.push_str(&format!(
                "fedora_messaging_consume_duration_seconds_bucket{{outcome=\"{label}\",le=\"+Inf\"}} {count}\n"
            ));
            out.push_str(&format!(
                "fedora_messaging_consume_duration_seconds_sum{{outcome=\"{label}\"}} {}\n",
                get(&histogram.sum_micros) as f64 / 1e6
            ));
            out.push_str(&format!(
                "fedora_messaging_consume_duration_seconds_count{{outcome=\"{label}\"}} {count}\n"
            ));
        }
        out
    }
}

/// Listens on `address:port` (an empty address: every interface, as
/// fedora-messaging) and answers on a thread of its own.
pub fn serve(address: &str, port: u16, stats: Arc<Stats>) -> std::io::Result<()> {
    let host = if address.is_empty() {
        "0.0.0.0"
    } else {
        address
    };
    let listener = TcpListener::bind((host, port))?;
    log::info!("Monitoring on http://{}", listener.local_addr()?);
    std::thread::Builder::new()
        .name("monitoring".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(error) = answer(stream, &stats) {
                    log::debug!("monitoring request: {error}");
                }
            }
        })?;
    Ok(())
}

fn answer(stream: TcpStream, stats: &Stats) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // The headers are read and ignored, so the client sees a clean close.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/live") => (
            "200 OK",
            "application/json",
            "{\"status\": \"OK\"}\n".to_owned(),
        ),
        ("GET", "/ready") => (
            "200 OK",
            "application/json",
            format!("{}\n", stats.ready_json()),
        ),
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", stats.prometheus()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
