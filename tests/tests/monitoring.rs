//! `[monitoring]`: fedora-messaging's /live and /ready, and /metrics,
//! asked over real HTTP while the host consumes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use fm_e2e::broker::{TestBroker, queue_config};
use fm_e2e::nodes::version;
use fm_e2e::process::Running;
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};

/// `consume` of `queue` with Scripted and monitoring on a free port of
/// 127.0.0.1, and the address it serves on; `top` adds top-level keys.
fn monitored_consumer(dir: &std::path::Path, queue: &str, top: &str) -> (Running, String) {
    let conf = config_file(
        dir,
        &queue_config(
            queue,
            &format!("{top}[monitoring]\naddress = \"127.0.0.1\"\nport = 0"),
        ),
    );
    let mut consumer = Running::start(
        fedora_messaging()
            .arg("--conf")
            .arg(&conf)
            .args(["consume", "--callback"])
            .arg(scripted()),
    );
    let line = consumer.wait_for("Monitoring on http://", Duration::from_secs(30));
    let address = line.rsplit("http://").next().unwrap().to_owned();
    (consumer, address)
}

/// `/ready` once `until` holds for it; fails the test after `timeout`.
fn ready_when(address: &str, timeout: Duration, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = http_get(address, "/ready");
        assert_eq!(status, "HTTP/1.1 200 OK");
        let ready: Value = serde_json::from_str(&body).unwrap();
        if until(&ready) {
            return ready;
        }
        assert!(
            Instant::now() < deadline,
            "/ready never got there within {timeout:?}: {ready}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn health_and_metrics_while_consuming() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("monitoring");
    broker.declare_queue(&queue, FieldTable::default());
    let dir = scratch();
    let go = dir.path().join("go");
    for (id, body) in [
        ("m1", json!({"do": "ack"})),
        ("m2", json!({"do": "drop"})),
        ("m3", json!({"do": "ack", "wait_file": go})),
    ] {
        broker.publish(&json!({"id": id, "topic": format!("{queue}.t"), "body": body}));
    }
    let (mut consumer, address) = monitored_consumer(dir.path(), &queue, "");
    // m3 stays in the consumer's hands until the go file exists; m1 and m2
    // are answered, and settled once the engine next wakes: wait for the
    // counters to say so, and for the broker's first answer about the
    // queue's depth (asked beside consuming, not before it).
    consumer.wait_for("message #3 (m3)", Duration::from_secs(30));
    let mut ready = ready_when(&address, Duration::from_secs(30), |ready| {
        ready["consumed"]["dropped"] == 1
            && ready["consumed"]["processed"] == 1
            && ready["queues_ready"][&queue].is_u64()
    });
    let oldest = ready["oldest_in_progress"].take();
    // The depth the broker last gave, from 3 (asked before the consumer
    // took any) down to 0.
    let queues_ready = ready["queues_ready"].take();
    assert!(
        queues_ready[&queue]
            .as_u64()
            .is_some_and(|ready| ready <= 3),
        "{queues_ready}"
    );
    assert_eq!(oldest["id"], "m3", "{oldest}");
    assert_eq!(oldest["topic"], format!("{queue}.t"), "{oldest}");
    assert!(oldest["seconds"].as_f64().is_some(), "{oldest}");

    let (status, body) = http_get(&address, "/live");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "{\"status\": \"OK\"}\n");

    assert_eq!(
        ready,
        json!({
            "consuming": true,
            "node": version().address,
            "blocked": null,
            "published": 0,
            "consumed": {"received": 3, "processed": 1, "dropped": 1, "rejected": 0, "failed": 0},
            "in_progress": 1,
            "oldest_in_progress": null,
            "queues_ready": null
        })
    );

    let (status, metrics) = http_get(&address, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let node_line = format!(
        "fedora_messaging_broker_node{{node=\"{}\"}} 1\n",
        version().address
    );
    for expected in [
        "fedora_messaging_consuming 1\n",
        node_line.as_str(),
        "fedora_messaging_received_total 3\n",
        "fedora_messaging_consumed_total{result=\"dropped\"} 1\n",
        "fedora_messaging_consume_duration_seconds_count{outcome=\"ack\"} 1\n",
        "fedora_messaging_consume_duration_seconds_count{outcome=\"drop\"} 1\n",
        "fedora_messaging_reconnects_total 0\n",
        "fedora_messaging_messages_in_progress 1\n",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected:?} missing from:\n{metrics}"
        );
    }
    assert_eq!(http_get(&address, "/nowhere").0, "HTTP/1.1 404 Not Found");

    std::fs::write(&go, b"").expect("the go file");
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    broker.delete_queue(&queue);
}

/// The value of the metric line that starts with `name `.
fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

#[test]
fn a_message_held_past_soft_timeout_is_named_once_and_shown_in_ready_and_metrics() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("monitoring-soft");
    broker.declare_queue(&queue, FieldTable::default());
    let dir = scratch();
    let go = dir.path().join("go");
    broker.publish(&json!({"id": "stuck", "topic": format!("{queue}.t"),
                          "body": {"do": "ack", "wait_file": go}}));
    let (mut consumer, address) = monitored_consumer(dir.path(), &queue, "soft_timeout = 1\n");
    let warning = consumer.wait_for("longer than soft_timeout", Duration::from_secs(30));
    assert!(
        warning.contains(&format!(
            "Message id stuck on topic {queue}.t has been in the consumer for"
        )) && warning.contains("longer than soft_timeout (1 s)"),
        "{warning}"
    );
    let ready = ready_when(&address, Duration::from_secs(30), |ready| {
        ready["in_progress"] == 1
    });
    assert_eq!(ready["oldest_in_progress"]["id"], "stuck", "{ready}");
    assert!(
        ready["oldest_in_progress"]["seconds"].as_f64() > Some(1.0),
        "{ready}"
    );
    let (_, metrics) = http_get(&address, "/metrics");
    assert_eq!(
        metric(&metrics, "fedora_messaging_messages_in_progress"),
        1.0
    );
    assert!(metric(&metrics, "fedora_messaging_oldest_in_progress_seconds") > 1.0);

    std::fs::write(&go, b"").expect("the go file");
    let ready = ready_when(&address, Duration::from_secs(30), |ready| {
        ready["consumed"]["processed"] == 1
    });
    assert_eq!(ready["in_progress"], 0, "{ready}");
    assert_eq!(ready["oldest_in_progress"], Value::Null, "{ready}");
    let (_, metrics) = http_get(&address, "/metrics");
    assert_eq!(
        metric(&metrics, "fedora_messaging_oldest_in_progress_seconds"),
        0.0
    );
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    let output = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(
        output.matches("longer than soft_timeout").count(),
        1,
        "named once: {output}"
    );
    broker.delete_queue(&queue);
}

/// The host's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Writes `head`, then `filler` over and over, until the server closes
/// the connection; returns how many bytes it took. Fails the test if the
/// server is still reading after `limit` bytes.
fn write_until_closed(address: &str, head: &[u8], filler: &[u8], limit: usize) -> usize {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut sent = 0;
    if stream.write_all(head).is_err() {
        return 0;
    }
    sent += head.len();
    let chunk = filler.repeat((64 * 1024) / filler.len().max(1));
    while sent < limit {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => return sent,
        }
    }
    panic!("the server read {sent} bytes of one request and still wants more");
}

/// Hostile clients on the monitoring port: 500 connections that send
/// nothing or dribble a request, a request line that never ends, a header
/// block that never ends. `/live` still answers at once, memory stays
/// put, and consuming goes on.
#[test]
fn monitoring_holds_against_slow_idle_and_endless_clients() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("monitoring-abuse");
    broker.declare_queue(&queue, FieldTable::default());
    let dir = scratch();
    let (mut consumer, address) = monitored_consumer(dir.path(), &queue, "");
    let publish = |first: usize, count: usize| {
        for n in first..first + count {
            broker.publish(&json!({"id": format!("a{n}"), "topic": format!("{queue}.t"), "body": {"do": "ack"}}));
        }
    };
    let calm = Instant::now();
    publish(0, 200);
    consumer.wait_for_count(": ack", 200, Duration::from_secs(60));
    let calm = calm.elapsed();
    let rss_before = rss_kib(consumer.pid());

    // 250 idle connections and 250 that send a byte of a request head
    // every 200 ms, for as long as the server keeps them.
    let mut idle = Vec::new();
    let mut slow = Vec::new();
    for n in 0..500 {
        let stream = TcpStream::connect(&address).expect("connect");
        if n % 2 == 0 {
            idle.push(stream);
        } else {
            slow.push(stream);
        }
    }
    let stop_dribbling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dribbler = {
        let stop = stop_dribbling.clone();
        std::thread::spawn(move || {
            let head = b"GET /live HTTP/1.1\r\nX-Slow: ";
            let mut at = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let byte = [head.get(at).copied().unwrap_or(b'a')];
                for stream in &mut slow {
                    let _ = stream.write(&byte);
                }
                at += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let endless_line = std::thread::spawn({
        let address = address.clone();
        move || write_until_closed(&address, b"GET /live", b"a", 64 << 20)
    });
    let endless_headers = std::thread::spawn({
        let address = address.clone();
        move || {
            write_until_closed(
                &address,
                b"GET /live HTTP/1.1\r\n",
                b"X-Header: value\r\n",
                64 << 20,
            )
        }
    });

    // Consuming goes on meanwhile, and /live answers at once.
    let under_attack = Instant::now();
    publish(200, 200);
    consumer.wait_for_count(": ack", 400, Duration::from_secs(60));
    let under_attack = under_attack.elapsed();
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let asked = Instant::now();
        let (status, body) = http_get(&address, "/live");
        latencies.push(asked.elapsed());
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", "{\"status\": \"OK\"}\n")
        );
    }
    let line_bytes = endless_line.join().unwrap();
    let header_bytes = endless_headers.join().unwrap();
    let rss_after = rss_kib(consumer.pid());
    latencies.sort();
    let slowest = *latencies.last().unwrap();
    println!(
        "/live with 500 idle or slow connections open: median {:?}, slowest {slowest:?}; \
         an endless request line was cut after {line_bytes} bytes sent, an endless header \
         block after {header_bytes}; RSS {rss_before} KiB before, {rss_after} KiB after; \
         publishing and consuming 200 messages took {calm:?} before, {under_attack:?} during",
        latencies[latencies.len() / 2]
    );
    assert!(slowest < Duration::from_secs(1), "{latencies:?}");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // The server lets go of connections that never complete a request.
    for stream in idle.iter_mut().take(5) {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .expect("the server closes an idle connection");
    }
    stop_dribbling.store(true, std::sync::atomic::Ordering::Relaxed);
    dribbler.join().unwrap();

    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    broker.delete_queue(&queue);
}
