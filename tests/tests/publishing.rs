//! Publishing from a consumer (issue #12): what a plugin publishes goes
//! out as the `publish` command sends it, through the host's connection,
//! confirmed; Python fedora-messaging reads it; it waits through an
//! outage; the broker's refusals and silences come back as distinct
//! errors; `reconsume` prints or writes it instead of sending it.

use std::time::{Duration, Instant};

use fm_e2e::broker::{TestBroker, ensure_user, queue_config, queue_config_at};
use fm_e2e::nodes::{
    MemoryAlarm, fault_node_alone, fault_node_ctl, fault_url, start_fault_node, stop_fault_node,
    version,
};
use fm_e2e::process::Running;
use fm_e2e::proxy::Proxy;
use fm_e2e::python::fedora_messaging_py;
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn record(queue: &str, id: &str, body: Value) -> Value {
    json!({"id": id, "topic": format!("{queue}.test"), "body": body})
}

#[test]
fn what_a_consumer_publishes_from_new_consume_a_thread_and_stop_python_fedora_messaging_reads() {
    let broker = TestBroker::connect();
    let source = TestBroker::unique_name("publishing-source");
    let derived = TestBroker::unique_name("publishing-derived");
    broker.declare_queue(&source, FieldTable::default());
    broker.declare_queue(&derived, FieldTable::default());
    broker.publish(&record(
        &source,
        "m1",
        json!({"do": "publish", "publish": {
            "topic": format!("{derived}.consumed"),
            "body": {"n": 1, "text": "héllo"},
            "severity": 30,
            "usernames": ["alice"],
            "packages": ["kernel"],
            "headers": {"x-custom": "kept"},
        }}),
    ));
    broker.publish(&record(
        &source,
        "m2",
        json!({"do": "publish", "publish": {
            "topic": format!("{derived}.thread"), "body": {"n": 2}, "from_thread": true,
        }}),
    ));
    broker.publish(&record(&source, "end", json!({"do": "halt"})));
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config(
            &source,
            &format!(
                "[consumer_config]\npublish_on_new = {{topic = \"{derived}.new\", body = {{n = 0}}}}\npublish_on_stop = {{topic = \"{derived}.stop\", body = {{n = 3}}}}"
            ),
        ),
    );
    let run = run(&mut scripted_consume(&conf));
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(run.stdout.matches("published ").count(), 4, "{run:#?}");
    assert_eq!(broker.depth(&derived), 4);
    // Python fedora-messaging 3.9 records them: each passed its
    // get_message and its schema checks.
    // Without the file's log_config: Python logs at its default.
    let python_toml = queue_config(&derived, "");
    let python_toml = &python_toml[..python_toml.find("[log_config]").unwrap()];
    let python_conf = config_file(dir.path(), python_toml);
    let recorded = dir.path().join("python.jsonl");
    let python = run_python_record(&python_conf, &recorded, 4);
    assert_eq!(python.code(), 0, "{python:#?}");
    let lines: Vec<Value> = std::fs::read_to_string(&recorded)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let topics: Vec<&str> = lines.iter().map(|m| m["topic"].as_str().unwrap()).collect();
    assert_eq!(
        topics,
        [
            format!("{derived}.new"),
            format!("{derived}.consumed"),
            format!("{derived}.thread"),
            format!("{derived}.stop")
        ]
    );
    let consumed = &lines[1];
    assert_eq!(consumed["body"], json!({"n": 1, "text": "héllo"}));
    let headers = &consumed["headers"];
    assert_eq!(headers["fedora_messaging_severity"], 30, "{headers}");
    assert_eq!(
        headers["fedora_messaging_schema"], "base.message",
        "{headers}"
    );
    assert_eq!(headers["fedora_messaging_user_alice"], true, "{headers}");
    assert_eq!(headers["fedora_messaging_rpm_kernel"], true, "{headers}");
    assert_eq!(headers["x-custom"], "kept", "{headers}");
    assert_eq!(headers["priority"], 0, "{headers}");
    assert!(
        headers["sent-at"]
            .as_str()
            .is_some_and(|at| at.ends_with("+00:00")),
        "{headers}"
    );
    broker.delete_queue(&source);
    broker.delete_queue(&derived);
}

fn run_python_record(conf: &std::path::Path, file: &std::path::Path, limit: u32) -> Run {
    run(fedora_messaging_py().arg("--conf").arg(conf).args([
        "record",
        file.to_str().unwrap(),
        "--limit",
        &limit.to_string(),
    ]))
}

#[test]
fn a_publish_during_an_outage_waits_for_the_connection_and_nothing_is_lost() {
    let broker = TestBroker::connect();
    let source = TestBroker::unique_name("publishing-outage");
    let derived = TestBroker::unique_name("publishing-outage-derived");
    broker.declare_queue(&source, FieldTable::default());
    broker.declare_queue(&derived, FieldTable::default());
    broker.publish(&record(
        &source,
        "m1",
        json!({"do": "publish", "sleep_ms": 1500, "publish": {
            "topic": format!("{derived}.out"), "body": {"n": 1},
        }}),
    ));
    let proxy = Proxy::start(version().address);
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config_at(&proxy.url(), &source, ""));
    let mut consumer = Running::start(&mut scripted_consume(&conf));
    consumer.wait_for("message #1 (m1)", WAIT);
    proxy.cut();
    consumer.wait_for("Lost the connection", WAIT);
    // The consumer publishes while nothing answers; the broker comes back
    // a moment later.
    std::thread::sleep(Duration::from_millis(2500));
    proxy.restore();
    let derived_count = broker.wait_depth_at_least(&derived, 1);
    broker.publish(&record(&source, "end", json!({"do": "halt"})));
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    // m1's first answer came after its channel closed: it ran again, and
    // published again (at-least-once), never fewer.
    let derived_count = derived_count.max(broker.depth(&derived));
    eprintln!("publish during an outage: {derived_count} derived message(s) for 1 consumed");
    assert!(
        (1..=2).contains(&derived_count),
        "{derived_count}: {run:#?}"
    );
    assert_eq!(broker.depth(&source), 0);
    broker.delete_queue(&source);
    broker.delete_queue(&derived);
}

#[test]
fn a_publish_the_broker_forbids_is_forbidden() {
    // May publish nowhere but to its own queues.
    ensure_user(
        "fm-e2e-nopublish",
        "secret",
        Some([".*", "^fm-e2e-.*", ".*"]),
    );
    let broker = TestBroker::connect();
    let source = TestBroker::unique_name("publishing-forbidden");
    broker.declare_queue(&source, FieldTable::default());
    broker.publish(&record(
        &source,
        "m1",
        json!({"do": "publish", "publish": {"topic": "anywhere", "body": {}}}),
    ));
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config(&source, "").replace("guest:guest", "fm-e2e-nopublish:secret"),
    );
    let run = run(&mut scripted_consume(&conf));
    assert_eq!(run.code(), 13, "{run:#?}");
    assert!(
        run.stdout
            .contains("publish failed: Forbidden(\"exchange \\\"amq.topic\\\": 403 ACCESS_REFUSED"),
        "{run:#?}"
    );
    assert_eq!(broker.depth(&source), 1);
    broker.delete_queue(&source);
}

#[test]
fn a_publish_to_a_missing_exchange_is_returned() {
    let broker = TestBroker::connect();
    let source = TestBroker::unique_name("publishing-no-exchange");
    broker.declare_queue(&source, FieldTable::default());
    broker.publish(&record(
        &source,
        "m1",
        json!({"do": "publish", "publish": {"topic": "t", "body": {}, "exchange": "fm-e2e-no-such-exchange"}}),
    ));
    broker.publish(&record(
        &source,
        "m2",
        json!({"do": "publish", "publish": {"topic": "t", "body": {}}}),
    ));
    broker.publish(&record(&source, "end", json!({"do": "halt"})));
    let dir = scratch();
    // m1 fails; the next publishes go through a channel of their own.
    let conf = config_file(dir.path(), &queue_config(&source, ""));
    let run = run(&mut scripted_consume(&conf));
    assert_eq!(run.code(), 13, "{run:#?}");
    assert!(
        run.stdout.contains(
            "publish failed: Returned(\"exchange \\\"fm-e2e-no-such-exchange\\\": 404 NOT_FOUND"
        ),
        "{run:#?}"
    );
    broker.delete_queue(&source);
}

#[test]
fn publishing_through_a_broker_restart_loses_nothing() {
    let _alone = fault_node_alone();
    const COUNT: usize = 200;
    let broker = TestBroker::connect_to(&fault_url());
    let source = TestBroker::unique_name("publishing-restart");
    let derived = TestBroker::unique_name("publishing-restart-derived");
    broker.declare_queue(&source, FieldTable::default());
    broker.declare_queue(&derived, FieldTable::default());
    let ids: Vec<String> = (0..COUNT).map(|n| format!("m{n:05}")).collect();
    for id in &ids {
        broker.publish(&record(
            &source,
            id,
            json!({"do": "publish", "sleep_ms": 20, "publish": {
                "topic": format!("{derived}.of"), "body": {"of": id},
            }}),
        ));
    }
    broker.publish(&record(&source, "end", json!({"do": "halt"})));
    drop(broker);
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config_at(&fault_url(), &source, ""));
    let mut consumer = Running::start(&mut scripted_consume(&conf));
    consumer.wait_for_count("published ", COUNT / 4, WAIT);
    stop_fault_node();
    start_fault_node();
    let broker = TestBroker::connect_to(&fault_url());
    // The last message halts the host: everything before it was consumed.
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(broker.depth(&source), 0);
    let arrived: Vec<String> = broker
        .take_all(&derived)
        .iter()
        .map(|message| {
            let body: Value = serde_json::from_slice(&message.body).unwrap();
            body["of"].as_str().unwrap().to_owned()
        })
        .collect();
    let distinct: std::collections::HashSet<&String> = arrived.iter().collect();
    let lost: Vec<&String> = ids.iter().filter(|id| !distinct.contains(id)).collect();
    let duplicated = arrived.len() - distinct.len();
    eprintln!(
        "publishing through a broker restart: {COUNT} consumed, {} derived arrived, {} lost, {duplicated} duplicated",
        arrived.len(),
        lost.len()
    );
    if !lost.is_empty() {
        let log = target_dir().join("publishing-restart.log");
        std::fs::write(&log, &run.stdout).unwrap();
        panic!("lost {lost:?}; the host's log is in {}", log.display());
    }
    // Only what was in flight when the broker went: the prefetch.
    assert!(duplicated <= 20, "{duplicated} duplicates");
    broker.delete_queue(&source);
    broker.delete_queue(&derived);
}

/// The fault node's max_message_size, lowered until dropped, for
/// channels opened meanwhile.
struct SmallMessagesOnly;

impl SmallMessagesOnly {
    fn set() -> SmallMessagesOnly {
        fault_node_ctl(&[
            "eval",
            "application:set_env(rabbit, max_message_size, 1048576).",
        ]);
        SmallMessagesOnly
    }
}

impl Drop for SmallMessagesOnly {
    fn drop(&mut self) {
        fault_node_ctl(&["eval", "application:unset_env(rabbit, max_message_size)."]);
    }
}

#[test]
fn a_message_over_the_brokers_size_limit_fails_at_once_with_its_reason() {
    // Sent again it would be refused again, until the timeout. 17 MB is
    // over RabbitMQ 4's default limit (16 MiB); 3.x's, 128 MiB, is lowered
    // to 1 MiB here, so that the message is quick to make.
    let _alone = fault_node_alone();
    let broker = TestBroker::connect_to(&fault_url());
    let source = TestBroker::unique_name("publishing-too-big");
    broker.declare_queue(&source, FieldTable::default());
    broker.publish(&record(
        &source,
        "m1",
        json!({"do": "publish", "publish": {
            "topic": "t", "body": {}, "pad_bytes": 17_000_000, "timeout_ms": 60_000,
        }}),
    ));
    // Should the broker take it, the host stops here instead.
    broker.publish(&record(&source, "m2", json!({"do": "halt"})));
    let _small = SmallMessagesOnly::set();
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config_at(&fault_url(), &source, ""));
    let run = run(&mut scripted_consume(&conf));
    assert_eq!(run.code(), 13, "{run:#?}");
    // Sent again until the timeout, it would end as a Timeout.
    let failed = run
        .stdout
        .lines()
        .find(|line| line.contains("publish failed: Returned("))
        .unwrap_or_else(|| panic!("no Returned failure: {run:#?}"));
    assert!(failed.contains("max size"), "the broker's reason: {failed}");
    broker.delete_queue(&source);
}

#[test]
fn a_publish_a_blocked_broker_never_confirms_times_out() {
    let _alone = fault_node_alone();
    let broker = TestBroker::connect_to(&fault_url());
    let source = TestBroker::unique_name("publishing-blocked");
    // Declared and filled before the alarm blocks publishers.
    broker.declare_queue(&source, FieldTable::default());
    broker.publish(&record(
        &source,
        "m1",
        json!({"do": "publish", "publish": {"topic": "t", "body": {}, "timeout_ms": 2000}}),
    ));
    let _alarm = MemoryAlarm::raise();
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config_at(&fault_url(), &source, ""));
    let started = Instant::now();
    let run = run(&mut scripted_consume(&conf));
    let took = started.elapsed();
    eprintln!(
        "publish to a blocked broker: exit {:?} after {took:?}",
        run.status.code()
    );
    assert_eq!(run.code(), 13, "{run:#?}");
    assert!(run.stdout.contains("publish failed: Timeout("), "{run:#?}");
    drop(_alarm);
    TestBroker::connect_to(&fault_url()).delete_queue(&source);
}

#[test]
fn reconsume_prints_or_writes_what_a_consumer_publishes_and_sends_nothing() {
    let dir = scratch();
    let messages = record_file(
        dir.path(),
        &[
            json!({"id": "m1", "topic": "t", "body": {"do": "publish", "publish": {
                "topic": "derived.x", "body": {"n": 1}, "severity": 40,
            }}}),
        ],
    );
    let printed = run(fedora_messaging()
        .args(["reconsume", "--callback", &scripted(), "--file"])
        .arg(&messages));
    assert_eq!(printed.code(), 0, "{printed:#?}");
    let line = printed
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("published to amq.topic: "))
        .unwrap_or_else(|| panic!("nothing printed: {printed:#?}"));
    let published: Value = serde_json::from_str(line).unwrap();
    assert_eq!(published["topic"], "derived.x");
    assert_eq!(published["headers"]["fedora_messaging_severity"], 40);
    let file = dir.path().join("published.jsonl");
    for _ in 0..2 {
        let written = run(fedora_messaging()
            .args(["reconsume", "--callback", &scripted(), "--publish-to"])
            .arg(&file)
            .arg("--file")
            .arg(&messages));
        assert_eq!(written.code(), 0, "{written:#?}");
        assert!(!written.stdout.contains("published to"), "{written:#?}");
    }
    // Appended, one record line each, which `publish` can send later.
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["body"], json!({"n": 1}));
}

#[test]
fn the_published_count_is_in_ready_and_metrics() {
    // Checked through the unit tests of the counters; here, that a publish
    // is counted once it is confirmed.
    let broker = TestBroker::connect();
    let source = TestBroker::unique_name("publishing-counted");
    broker.declare_queue(&source, FieldTable::default());
    broker.publish(&record(
        &source,
        "m1",
        json!({"do": "publish", "publish": {"topic": "counted", "body": {}}}),
    ));
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config(
            &source,
            &format!("[monitoring]\naddress = \"127.0.0.1\"\nport = {port}"),
        ),
    );
    let mut consumer = Running::start(&mut scripted_consume(&conf));
    consumer.wait_for("published ", WAIT);
    let deadline = Instant::now() + WAIT;
    let ready = loop {
        let answer = http_get(port, "/ready");
        if answer.contains("\"published\":1") {
            break answer;
        }
        assert!(Instant::now() < deadline, "{answer}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let metrics = http_get(port, "/metrics");
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(ready.contains("\"published\":1"), "{ready}");
    assert!(
        metrics.contains("fedora_messaging_published_total 1\n"),
        "{metrics}"
    );
    broker.delete_queue(&source);
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}
