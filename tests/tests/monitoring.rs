//! `[monitoring]`: fedora-messaging's /live and /ready, and /metrics,
//! asked over real HTTP while the host consumes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use fm_e2e::broker::{TestBroker, queue_config};
use fm_e2e::process::Running;
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};

/// `GET path` on `address`; returns the status line and the body.
fn get(address: &str, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the monitoring port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[test]
fn health_and_metrics_while_consuming() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("monitoring");
    broker.declare_queue(&queue, FieldTable::default());
    for (id, body) in [
        ("m1", json!({"do": "ack"})),
        ("m2", json!({"do": "drop"})),
        ("m3", json!({"do": "ack", "sleep_ms": 3000})),
    ] {
        broker.publish(&json!({"id": id, "topic": format!("{queue}.t"), "body": body}));
    }
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config(&queue, "[monitoring]\naddress = \"127.0.0.1\"\nport = 0"),
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
    // m1 and m2 are settled, m3 is in the consumer's hands.
    consumer.wait_for("message #3 (m3)", Duration::from_secs(30));

    let (status, body) = get(&address, "/live");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "{\"status\": \"OK\"}\n");

    let (status, body) = get(&address, "/ready");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        ready,
        json!({
            "consuming": true,
            "published": 0,
            "consumed": {"received": 3, "processed": 1, "dropped": 1, "rejected": 0, "failed": 0}
        })
    );

    let (status, metrics) = get(&address, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for expected in [
        "fedora_messaging_consuming 1\n",
        "fedora_messaging_received_total 3\n",
        "fedora_messaging_consumed_total{result=\"dropped\"} 1\n",
        "fedora_messaging_consume_duration_seconds_count{outcome=\"ack\"} 1\n",
        "fedora_messaging_consume_duration_seconds_count{outcome=\"drop\"} 1\n",
        "fedora_messaging_reconnects_total 0\n",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected:?} missing from:\n{metrics}"
        );
    }
    assert_eq!(get(&address, "/nowhere").0, "HTTP/1.1 404 Not Found");

    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    broker.delete_queue(&queue);
}
