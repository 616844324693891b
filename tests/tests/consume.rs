//! `consume` against the real RabbitMQ: every outcome with the queue's
//! state checked through the broker afterwards, bad messages, a consumer
//! that blocks past the heartbeat, signals, and each exit code that can be
//! provoked locally. Each test has its own queue.

use std::time::Duration;

use fm_e2e::broker::{
    Queued, TestBroker, dead_lettered_queue, ensure_user, queue_config, queue_with,
};
use fm_e2e::nodes::{amqp_url, rabbitmqctl, version};
use fm_e2e::process::Running;
use fm_e2e::*;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// A record for `queue` with id `id` whose body tells Scripted what to do.
fn message(queue: &str, id: &str, body: Value) -> Value {
    json!({"id": id, "topic": format!("{queue}.test"), "body": body})
}

fn consume(conf: &std::path::Path, callback: &str) -> Run {
    run(fedora_messaging()
        .arg("--conf")
        .arg(conf)
        .args(["consume", "--callback", callback]))
}

fn ids(queued: &[Queued]) -> Vec<&str> {
    queued.iter().map(|q| q.id.as_str()).collect()
}

#[test]
fn ack_settles_and_halt_zero_is_a_clean_stop() {
    let (broker, queue, _dir, conf) = queue_with(
        "ack",
        "",
        &[("m1", json!({"do": "ack"})), ("m2", json!({"do": "halt"}))],
    );
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.contains("message #2 (m2): halt"), "{run:#?}");
    assert_eq!(broker.depth(&queue), 0);
    broker.delete_queue(&queue);
}

#[test]
fn rust_log_replaces_the_configured_levels() {
    let (broker, queue, _dir, conf) = queue_with(
        "rust-log",
        "",
        &[("m1", json!({"do": "ack"})), ("m2", json!({"do": "halt"}))],
    );
    let run = run(fedora_messaging()
        .env("RUST_LOG", "warn")
        .arg("--conf")
        .arg(&conf)
        .args(["consume", "--callback", &scripted()]));
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(broker.depth(&queue), 0);
    // Neither the host's INFO lines ("Connected to ...") nor the plugin's.
    assert!(!run.output().contains(" INFO]"), "{run:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn an_app_name_too_long_for_the_handshake_is_a_usage_error() {
    let url = amqp_url();
    let dir = scratch();
    let conf = config_file(dir.path(), &format!("amqp_url = \"{url}\"\n"));
    let long = "a".repeat(5000);
    let run = run(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--callback",
        &scripted(),
        "--app-name",
        &long,
    ]));
    assert_eq!(run.code(), 2, "{run:#?}");
    assert!(
        run.stderr.contains("shorten --app-name (5000 bytes)") && run.stderr.lines().count() == 1,
        "{run:#?}"
    );
}

#[test]
fn nack_requeues_and_the_message_comes_back() {
    // Prefetch 1: the requeued message is the next one delivered.
    let (broker, queue, _dir, conf) = queue_with(
        "nack",
        "[qos]\nprefetch_count = 1",
        &[
            ("m1", json!({"do": "nack_once"})),
            ("m2", json!({"do": "halt"})),
        ],
    );
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        run.stdout.contains("message #1 (m1): nack_once"),
        "{run:#?}"
    );
    assert!(
        run.stdout.contains("message #2 (m1): nack_once"),
        "m1 came back: {run:#?}"
    );
    assert!(run.stdout.contains("message #3 (m2): halt"), "{run:#?}");
    assert_eq!(broker.depth(&queue), 0);
    broker.delete_queue(&queue);
}

#[test]
fn drop_rejects_without_requeue_so_the_dead_letter_queue_keeps_it() {
    let (broker, queue, dead, config) = dead_lettered_queue("drop", "");
    broker.publish(&message(&queue, "m1", json!({"do": "drop"})));
    broker.publish(&message(&queue, "m2", json!({"do": "halt"})));
    let dir = scratch();
    let conf = config_file(dir.path(), &config);
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(broker.depth(&queue), 0);
    assert_eq!(ids(&broker.drain(&dead)), ["m1"]);
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}

#[test]
fn halt_acks_then_stops_with_its_code_and_prefetched_messages_go_back() {
    let (broker, queue, _dir, conf) = queue_with(
        "halt",
        "",
        &[
            ("m1", json!({"do": "halt", "code": 3})),
            ("m2", json!({"do": "ack"})),
        ],
    );
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 3, "{run:#?}");
    assert!(
        run.stdout
            .contains("Consumer halted with non-zero exit code (3)"),
        "{run:#?}"
    );
    assert!(
        !run.stdout.contains("(m2)"),
        "m2 was never consumed: {run:#?}"
    );
    assert!(
        run.stdout.contains("stopping after 1 messages"),
        "stop ran: {run:#?}"
    );
    // m1 was acknowledged; m2 had been prefetched, so it comes back marked
    // redelivered.
    assert_eq!(
        broker.drain(&queue),
        [Queued {
            id: "m2".into(),
            redelivered: true
        }]
    );
    broker.delete_queue(&queue);
}

#[test]
fn halt_and_requeue_returns_the_message_then_stops() {
    let (broker, queue, _dir, conf) = queue_with(
        "halt-requeue",
        "",
        &[
            ("m1", json!({"do": "halt_requeue", "code": 4})),
            ("m2", json!({"do": "ack"})),
        ],
    );
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 4, "{run:#?}");
    let left = broker.drain(&queue);
    assert_eq!(ids(&left), ["m1", "m2"]);
    assert!(left.iter().all(|q| q.redelivered), "{left:?}");
    broker.delete_queue(&queue);
}

#[test]
fn a_failure_returns_it_and_every_prefetched_message_and_exits_13() {
    let (broker, queue, _dir, conf) = queue_with(
        "fail",
        "",
        &[
            ("m1", json!({"do": "ack"})),
            ("m2", json!({"do": "fail", "reason": "database gone"})),
            ("m3", json!({"do": "ack"})),
            ("m4", json!({"do": "ack"})),
        ],
    );
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 13, "{run:#?}");
    assert!(
        run.stdout.contains(
            "Unexpected error occurred in consumer Scripted on message m2: failed: database gone"
        ),
        "{run:#?}"
    );
    assert!(
        !run.stdout.contains("stopping after"),
        "no stop after a failure: {run:#?}"
    );
    let left = broker.drain(&queue);
    assert_eq!(ids(&left), ["m2", "m3", "m4"]);
    assert!(left.iter().all(|q| q.redelivered), "{left:?}");
    broker.delete_queue(&queue);
}

#[test]
fn a_panic_is_a_failure_and_the_message_goes_back() {
    let (broker, queue, _dir, conf) = queue_with(
        "panic",
        "",
        &[("m1", json!({"do": "panic", "reason": "boom"}))],
    );
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 13, "{run:#?}");
    assert!(
        run.stdout
            .contains("panicked at plugins/test-consumers/src/lib.rs:"),
        "{run:#?}"
    );
    assert_eq!(
        broker.drain(&queue),
        [Queued {
            id: "m1".into(),
            redelivered: true
        }]
    );
    broker.delete_queue(&queue);
}

#[test]
fn messages_fedora_messaging_refuses_are_dead_lettered_and_consuming_goes_on() {
    let (broker, queue, dead, config) = dead_lettered_queue("bad", "");
    let key = format!("{queue}.test");
    let props = |id: &str| {
        BasicProperties::default()
            .with_message_id(id.into())
            .with_content_encoding("utf-8".into())
            .with_headers(FieldTable::default())
    };
    broker.publish_raw(&key, props("not-utf8"), b"{\"a\": \"\xff\"}");
    broker.publish_raw(&key, props("not-json"), b"{not json");
    broker.publish_raw(&key, props("not-object"), b"[1, 2]");
    let mut bad_severity = FieldTable::default();
    bad_severity.insert("fedora_messaging_severity".into(), AMQPValue::LongInt(25));
    broker.publish_raw(
        &key,
        props("bad-severity").with_headers(bad_severity),
        b"{}",
    );
    // No headers and no content_encoding: fedora-messaging accepts it with
    // severity INFO, logging that the publisher misbehaves.
    broker.publish_raw(
        &key,
        BasicProperties::default().with_message_id("bare".into()),
        br#"{"do": "ack"}"#,
    );
    broker.publish(&message(&queue, "last", json!({"do": "halt"})));

    let dir = scratch();
    let run = consume(&config_file(dir.path(), &config), &scripted());
    assert_eq!(run.code(), 0, "{run:#?}");
    for (id, reason) in [
        ("not-utf8", "the body is not UTF-8"),
        ("not-json", "the body is not a JSON object"),
        (
            "not-object",
            "the body is not a JSON object: expected an object",
        ),
        ("bad-severity", "must be 10, 20, 30 or 40"),
    ] {
        let line = run
            .stdout
            .lines()
            .find(|line| line.contains(&format!("Message id {id} did not pass validation")))
            .unwrap_or_else(|| panic!("no log line for {id}: {run:#?}"));
        assert!(line.contains(reason), "{line}");
        assert!(
            !run.stdout.contains(&format!("({id})")),
            "the consumer never saw {id}"
        );
    }
    assert!(
        run.stdout
            .contains("Message (id bare) arrived without headers"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("message #1 (bare): ack"), "{run:#?}");
    assert!(run.stdout.contains("message #2 (last): halt"), "{run:#?}");
    assert_eq!(broker.depth(&queue), 0);
    assert_eq!(
        ids(&broker.drain(&dead)),
        ["not-utf8", "not-json", "not-object", "bad-severity"]
    );
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}

/// Issue #10: a header table nested 15,000 deep overflowed the stack of
/// lapin's reading thread and aborted the host, so systemd restarted it
/// into the same message. The patched parser reads such a table only 64
/// levels deep, and the host dead-letters what it could not read whole.
#[test]
fn a_header_table_nested_15000_deep_is_dead_lettered_not_a_crash() {
    let (broker, queue, dead, config) = dead_lettered_queue("deep-headers", "");
    let published = run(fm_e2e::python::python()
        .arg(workspace_root().join("tests/fixtures/differential.py"))
        .args([
            "deep-headers",
            amqp_url(),
            &format!("{queue}.test"),
            "15000",
        ]));
    assert_eq!(published.code(), 0, "{published:#?}");
    broker.publish(&message(&queue, "last", json!({"do": "halt"})));
    let dir = scratch();
    let conf = config_file(dir.path(), &config);
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        run.stdout.contains(
            "Message id deep did not pass validation; ignoring message: the headers are nested more than 64 levels deep"
        ),
        "{run:#?}"
    );
    assert!(run.stdout.contains("message #1 (last): halt"), "{run:#?}");
    assert_eq!(ids(&broker.drain(&dead)), ["deep"]);
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}

#[test]
fn a_consumer_blocking_past_the_heartbeat_keeps_the_connection() {
    let url = amqp_url();
    // A 2 s heartbeat: a broker that heard nothing for two intervals would
    // close the connection while the consumer sleeps 7 s.
    let (broker, queue, _dir, conf) = queue_with(
        "heartbeat",
        "",
        &[
            ("m1", json!({"do": "ack", "sleep_ms": 7000})),
            ("m2", json!({"do": "halt"})),
        ],
    );
    let config = std::fs::read_to_string(&conf)
        .unwrap()
        .replace(amqp_url(), &format!("{url}?heartbeat=2"));
    std::fs::write(&conf, config).unwrap();
    let mut consumer = Running::start(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--callback",
        &scripted(),
        "--app-name",
        &queue,
    ]));
    consumer.wait_for("message #1 (m1)", WAIT);
    // The broker's view of the connection: the 2 s heartbeat is in force.
    let connections = rabbitmqctl(&["list_connections", "timeout", "client_properties"]);
    let ours = connections
        .lines()
        .find(|line| line.contains(&queue))
        .unwrap_or_else(|| panic!("no connection of ours: {connections}"));
    assert!(ours.starts_with("2\t"), "heartbeat timeout: {ours}");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.contains("done #1 (m1)"), "{run:#?}");
    assert!(!run.stdout.contains("Lost the connection"), "{run:#?}");
    assert!(!run.stdout.contains("Could not settle"), "{run:#?}");
    assert!(
        run.stdout.contains("message #2 (m2)"),
        "m1 was acked, not redelivered: {run:#?}"
    );
    assert_eq!(broker.depth(&queue), 0);
    broker.delete_queue(&queue);
}

#[test]
fn sigterm_finishes_the_message_in_progress_then_exits_0() {
    let (broker, queue, _dir, conf) = queue_with(
        "sigterm",
        "",
        &[
            ("m1", json!({"do": "ack", "sleep_ms": 2000})),
            ("m2", json!({"do": "ack"})),
        ],
    );
    let mut consumer = Running::start(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--callback",
        &scripted(),
    ]));
    consumer.wait_for("message #1 (m1)", WAIT);
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.contains("done #1 (m1)"), "{run:#?}");
    assert!(!run.stdout.contains("(m2)"), "{run:#?}");
    assert!(run.stdout.contains("stopping after 1 messages"), "{run:#?}");
    // m1 was finished and acknowledged; m2 goes back.
    assert_eq!(
        broker.drain(&queue),
        [Queued {
            id: "m2".into(),
            redelivered: true
        }]
    );
    broker.delete_queue(&queue);
}

#[test]
fn save_message_writes_exactly_what_was_published_in_order() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("saver");
    broker.declare_queue(&queue, FieldTable::default());
    let published: Vec<String> = (0..50).map(|n| format!("save-{n:02}")).collect();
    for id in &published {
        broker.publish(&message(&queue, id, json!({"n": id, "text": "é"})));
    }
    let dir = scratch();
    let saved = dir.path().join("saved/messages.jsonl");
    let conf = config_file(
        dir.path(),
        &queue_config(
            &queue,
            &format!(
                "[consumer_config]\npath = \"{}\"\n[qos]\nprefetch_count = 25",
                saved.display()
            ),
        ),
    );
    let saver = format!("{}:SaveMessage", plugin("saver").display());
    let mut consumer = Running::start(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--callback",
        &saver,
    ]));
    consumer.wait_for("Consuming messages from queue", WAIT);
    // The queue empties only once every message has been acknowledged,
    // and a message is acknowledged only after it was written.
    let deadline = std::time::Instant::now() + WAIT;
    while broker.depth(&queue) > 0
        || rabbitmqctl(&["list_queues", "name", "messages_unacknowledged"])
            .lines()
            .any(|l| l.starts_with(&queue) && !l.ends_with("\t0"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue did not drain"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    let lines: Vec<Value> = std::fs::read_to_string(&saved)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let saved_ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(saved_ids, published);
    assert_eq!(lines[0]["queue"], json!(queue));
    assert_eq!(lines[0]["topic"], json!(format!("{queue}.test")));
    assert_eq!(lines[0]["body"], json!({"n": "save-00", "text": "é"}));
    assert_eq!(lines[0]["headers"]["fedora_messaging_severity"], json!(20));
    broker.delete_queue(&queue);
}

#[test]
fn a_server_named_queue_from_the_default_config_with_routing_key_overrides() {
    let broker = TestBroker::connect();
    let key = TestBroker::unique_name("server-named");
    let dir = scratch();
    // pika's defaults: guest/guest, and vhost "/" for an empty path (lapin
    // alone would ask for vhost ""); port 5672 too, unless the broker under
    // test listens elsewhere.
    let host = version().address.trim_end_matches(":5672");
    let conf = config_file(
        dir.path(),
        &format!("amqp_url = \"amqp://{host}\"\n[log_config.root]\nlevel = \"INFO\"\n"),
    );
    let mut consumer = Running::start(
        fedora_messaging()
            .arg("--conf")
            .arg(&conf)
            .args(["consume", "--callback", &scripted(), "--app-name", &key])
            .args([
                "--routing-key",
                &format!("{key}.one"),
                "--routing-key",
                &format!("{key}.two"),
            ]),
    );
    let line = consumer.wait_for("Consuming messages from queue \"amq.gen-", WAIT);
    let listed = rabbitmqctl(&["list_connections", "client_properties"]);
    assert!(
        listed.contains(&key),
        "--app-name is the `app` client property: {listed}"
    );
    assert!(listed.contains("Fedora Messaging (Rust host)"), "{listed}");
    broker.publish(&json!({"id": "a", "topic": format!("{key}.one"), "body": {"do": "ack"}}));
    broker
        .publish(&json!({"id": "skipped", "topic": format!("{key}.three"), "body": {"do": "ack"}}));
    broker.publish(&json!({"id": "b", "topic": format!("{key}.two"), "body": {"do": "halt"}}));
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.contains("message #1 (a)"), "{run:#?}");
    assert!(run.stdout.contains("message #2 (b)"), "{run:#?}");
    assert!(!run.stdout.contains("(skipped)"), "{line}\n{run:#?}");
}

#[test]
fn one_consumer_instance_sees_one_message_at_a_time_across_queues() {
    let broker = TestBroker::connect();
    let first = TestBroker::unique_name("multi-a");
    let second = TestBroker::unique_name("multi-b");
    for queue in [&first, &second] {
        broker.declare_queue(queue, FieldTable::default());
    }
    for n in 0..3 {
        broker.publish(&message(
            &first,
            &format!("a{n}"),
            json!({"do": "ack", "sleep_ms": 150}),
        ));
        broker.publish(&message(
            &second,
            &format!("b{n}"),
            json!({"do": "ack", "sleep_ms": 150}),
        ));
    }
    let dir = scratch();
    let config = format!(
        "{}\n[queues.\"{second}\"]\ndurable = true\nauto_delete = false\nexclusive = false\narguments = {{}}\n\n[[bindings]]\nqueue = \"{second}\"\nexchange = \"amq.topic\"\nrouting_keys = [\"{second}.#\"]\n",
        queue_config(&first, "")
    );
    let mut consumer = Running::start(
        fedora_messaging()
            .arg("--conf")
            .arg(config_file(dir.path(), &config))
            .args(["consume", "--callback", &scripted()]),
    );
    consumer.wait_for("done #6", WAIT);
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    // Strictly alternating start and end lines: never two at once.
    let events: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| line.contains("] message #") || line.contains("] done #"))
        .collect();
    assert_eq!(events.len(), 12, "{run:#?}");
    for pair in events.chunks(2) {
        let started = pair[0]
            .split("message #")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        assert!(pair[1].contains(&format!("done #{started} ")), "{pair:?}");
    }
    for queue in [&first, &second] {
        assert_eq!(broker.depth(queue), 0);
        broker.delete_queue(queue);
    }
}

#[test]
fn a_broker_that_refuses_tcp_at_start_is_retried() {
    let dir = scratch();
    // Nothing listens on this port.
    let conf = config_file(
        dir.path(),
        "amqp_url = \"amqp://127.0.0.1:5999/\"\n[log_config.root]\nlevel = \"INFO\"\n",
    );
    let mut consumer = Running::start(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--callback",
        &scripted(),
    ]));
    consumer.wait_for(
        "Connecting to amqp://guest@127.0.0.1:5999 vhost \"/\" (attempt 1)",
        WAIT,
    );
    let first = consumer.wait_for("(attempt 1): ", WAIT);
    let second = consumer.wait_for("(attempt 2): ", WAIT);
    // About 1 s, then about 2 s (±20 % jitter).
    let delay = |line: &str| -> f64 {
        line.rsplit("retrying in ")
            .next()
            .unwrap()
            .trim_end_matches(" s")
            .parse()
            .unwrap()
    };
    assert!((0.8..=1.2).contains(&delay(&first)), "{first}");
    assert!((1.6..=2.4).contains(&delay(&second)), "{second}");
    consumer.signal("INT");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
}

// Exit codes -------------------------------------------------------------

#[test]
fn exit_10_when_a_passive_declare_finds_no_queue() {
    let dir = scratch();
    let queue = TestBroker::unique_name("missing");
    let conf = config_file(dir.path(), &queue_config(&queue, "passive_declares = true"));
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 10, "{run:#?}");
    assert!(
        run.stderr.contains(&format!("Unable to declare the queue \"{queue}\" on the AMQP broker: the broker responded with 404 NOT_FOUND"))
            && run.stderr.contains("passive_declares is on"),
        "{run:#?}"
    );
}

#[test]
fn exit_10_when_queue_name_clashes_with_an_existing_durable_queue() {
    let (broker, queue, _dir, conf) = queue_with("clash", "", &[]);
    let run = run(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--callback",
        &scripted(),
        "--queue-name",
        &queue,
    ]));
    assert_eq!(run.code(), 10, "{run:#?}");
    // RabbitMQ checks exclusivity first: 405 RESOURCE_LOCKED.
    assert!(
        run.stderr
            .contains("the broker responded with 405 RESOURCE_LOCKED"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("the queue exists with other settings"),
        "{run:#?}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn exit_10_when_the_exchange_does_not_exist() {
    let (broker, queue, _dir, conf) = queue_with("no-exchange", "", &[]);
    let run = run(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--callback",
        &scripted(),
        "--exchange",
        "fm-e2e-no-such-exchange",
    ]));
    assert_eq!(run.code(), 10, "{run:#?}");
    assert!(
        run.stderr
            .contains("404 NOT_FOUND - no exchange 'fm-e2e-no-such-exchange'"),
        "{run:#?}"
    );
    broker.delete_queue(&queue);
}

#[test]
fn exit_14_on_bad_credentials() {
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &format!("amqp_url = \"amqp://guest:wrong@{}/\"\n", version().address),
    );
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 14, "{run:#?}");
    assert!(run.stderr.contains("refused the connection"), "{run:#?}");
    assert!(run.stderr.contains("ACCESS_REFUSED"), "{run:#?}");
}

/// `amqp_urls` naming the test broker three times (three nodes to the
/// host): as guest with a wrong password, as a user whose connection limit
/// is 0, and then `last` (if any), consuming `queue`.
fn refusing_nodes(queue: &str, last: Option<&str>) -> String {
    static LIMITED_USER: std::sync::Once = std::sync::Once::new();
    LIMITED_USER.call_once(|| {
        ensure_user("fm-e2e-limited", "secret", Some([".*", ".*", ".*"]));
        rabbitmqctl(&[
            "set_user_limits",
            "fm-e2e-limited",
            r#"{"max-connections": 0}"#,
        ]);
    });
    let address = version().address;
    let mut urls = vec![
        format!("\"amqp://guest:wrong@{address}/%2F\""),
        format!("\"amqp://fm-e2e-limited:secret@{address}/%2F\""),
    ];
    urls.extend(last.map(|url| format!("{url:?}")));
    queue_config(queue, "").replace(
        &format!("amqp_url = \"{}\"", amqp_url()),
        &format!("amqp_urls = [{}]", urls.join(", ")),
    )
}

#[test]
fn a_node_that_refuses_is_passed_over_for_the_next_of_amqp_urls() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("refusing-nodes");
    broker.declare_queue(&queue, FieldTable::default());
    broker.publish(&json!({"id": "m1", "topic": format!("{queue}.test"), "body": {"do": "halt"}}));
    let dir = scratch();
    let conf = config_file(dir.path(), &refusing_nodes(&queue, Some(amqp_url())));
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.contains("message #1 (m1)"), "{run:#?}");
    let log = format!("{}{}", run.stdout, run.stderr);
    assert!(log.contains("ACCESS_REFUSED"), "{run:#?}");
    assert!(log.contains("connection limit"), "{run:#?}");
    assert!(log.contains("(node 3 of 3)"), "{run:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn exit_14_only_when_every_node_of_amqp_urls_refuses_naming_each_reason() {
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &refusing_nodes(&TestBroker::unique_name("all-refuse"), None),
    );
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 14, "{run:#?}");
    let line = run
        .stderr
        .lines()
        .find(|line| line.contains("every node of amqp_urls refused"))
        .unwrap_or_else(|| panic!("no line for the whole round: {run:#?}"));
    assert!(line.contains("ACCESS_REFUSED"), "{line}");
    assert!(line.contains("connection limit"), "{line}");
    assert!(
        line.contains("(node 1 of 2)") && line.contains("(node 2 of 2)"),
        "{line}"
    );
}

#[test]
fn queues_that_rabbitmq_4_treats_badly_are_warned_of_at_start() {
    let broker = TestBroker::connect();
    let quorum = TestBroker::unique_name("quorum-unlimited");
    let transient = TestBroker::unique_name("transient");
    let dir = scratch();
    let table = |queue: &str, settings: &str| {
        format!(
            "[queues.\"{queue}\"]\n{settings}\n\n[[bindings]]\nqueue = \"{queue}\"\nexchange = \"amq.topic\"\nrouting_keys = [\"{queue}.#\"]\n"
        )
    };
    let conf = config_file(
        dir.path(),
        &format!(
            "amqp_url = \"{}\"\n{}{}",
            amqp_url(),
            table(
                &quorum,
                "durable = true\nauto_delete = false\nexclusive = false\narguments = {\"x-queue-type\" = \"quorum\"}"
            ),
            table(
                &transient,
                "durable = false\nauto_delete = true\nexclusive = false\narguments = {}"
            ),
        ),
    );
    let mut consumer = Running::start(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--callback",
        &scripted(),
    ]));
    let warned = consumer.wait_for("is a quorum queue with neither", WAIT);
    assert!(
        warned.contains(&quorum) && warned.contains("20 deliveries"),
        "{warned}"
    );
    let warned = consumer.wait_for("has durable = false and exclusive = false", WAIT);
    assert!(
        warned.contains(&transient) && warned.contains("transient_nonexcl_queues"),
        "{warned}"
    );
    // The host works all the same, with both queues.
    consumer.wait_for_count("Consuming messages from queue", 2, WAIT);
    broker.publish(&json!({"id": "m1", "topic": format!("{quorum}.test"), "body": {"do": "halt"}}));
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    broker.delete_queue(&quorum);
}

#[test]
fn exit_14_without_access_to_the_vhost() {
    ensure_user("fm-e2e-novhost", "secret", None);
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &format!(
            "amqp_url = \"amqp://fm-e2e-novhost:secret@{}/%2F\"\n",
            version().address
        ),
    );
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 14, "{run:#?}");
    assert!(run.stderr.contains("NOT_ALLOWED"), "{run:#?}");
}

#[test]
fn exit_15_without_read_permission_on_the_queue() {
    ensure_user(
        "fm-e2e-noread",
        "secret",
        Some([".*", ".*", "^amq\\.topic$"]),
    );
    let (broker, queue, _dir, conf) = queue_with("noread", "", &[]);
    let config = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("guest:guest", "fm-e2e-noread:secret");
    std::fs::write(&conf, config).unwrap();
    let run = consume(&conf, &scripted());
    assert_eq!(run.code(), 15, "{run:#?}");
    assert!(run.stderr.contains("403 ACCESS_REFUSED"), "{run:#?}");
    assert!(run.stderr.contains("needs read permission"), "{run:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn exit_12_when_the_queue_is_deleted_under_the_consumer() {
    let (broker, queue, _dir, conf) = queue_with("cancel", "", &[]);
    let mut consumer = Running::start(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--callback",
        &scripted(),
    ]));
    consumer.wait_for("Consuming messages from queue", WAIT);
    broker.delete_queue(&queue);
    let run = consumer.finish();
    assert_eq!(run.code(), 12, "{run:#?}");
    assert!(
        run.stdout.contains("was canceled by the AMQP broker"),
        "{run:#?}"
    );
}
