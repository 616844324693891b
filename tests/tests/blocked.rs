//! A memory alarm on the fault node (never the main test broker): the
//! broker blocks every connection that publishes. The host publishes on a
//! connection of its own, so consuming and acknowledging go on while the
//! block lasts; what must publish waits and goes out once it lifts;
//! nothing is lost, and the host does not reconnect. The block is said in
//! the log, `/ready` and `/metrics`.
//!
//! The main test prints its figures; `cargo test --test blocked --
//! --nocapture` shows them.

use std::time::{Duration, Instant};

use fm_e2e::alerts::{assert_alerts, scrape};
use fm_e2e::broker::{TestBroker, queue_config_at};
use fm_e2e::nodes::{MemoryAlarm, fault_node_alone, fault_node_ctl, fault_url};
use fm_e2e::process::Running;
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
/// Messages that only ask for an ack, consumed while the block lasts.
const PLAIN: usize = 100;

fn record(queue: &str, id: &str, body: Value) -> Value {
    json!({"id": id, "topic": format!("{queue}.test"), "body": body})
}

/// Polls `port`'s `path` until its answer contains `wanted`.
fn wait_for_answer(port: u16, path: &str, wanted: &str) -> String {
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, answer) = http_get(&address, path);
        if answer.contains(wanted) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never said {wanted:?}: {answer}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many messages `queue` on the fault node holds, ready or unacked.
fn held_by_broker(queue: &str) -> usize {
    let listing = fault_node_ctl(&["-q", "list_queues", "name", "messages"]);
    listing
        .lines()
        .find_map(|line| {
            let (name, count) = line.split_once('\t')?;
            (name == queue).then(|| count.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no queue {queue} in {listing}"))
}

#[test]
fn while_the_broker_blocks_publishing_consuming_and_acks_go_on_and_nothing_is_lost() {
    let _alone = fault_node_alone();
    let broker = TestBroker::connect_to(&fault_url());
    let queue = TestBroker::unique_name("blocked");
    let derived = TestBroker::unique_name("blocked-derived");
    let dead = format!("{queue}-dead");
    for name in [&queue, &derived, &dead] {
        broker.declare_queue(name, FieldTable::default());
    }
    broker.bind(&derived, "amq.topic", &format!("{derived}.#"));
    broker.bind(&dead, "amq.direct", &dead);
    // One message whose consumer publishes (it waits out the block), one
    // that loops until [delivery_limit] dead-letters it, and plain ones.
    broker.publish(&record(
        &queue,
        "p1",
        json!({"do": "publish", "publish": {
            "topic": format!("{derived}.of"), "body": {"of": "p1"}, "timeout_ms": 120_000,
        }}),
    ));
    broker.publish(&record(&queue, "loop", json!({"do": "nack"})));
    let plain: Vec<Value> = (0..PLAIN)
        .map(|n| record(&queue, &format!("a{n:03}"), json!({"do": "ack"})))
        .collect();
    broker.publish_all(&plain);
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config_at(
            &fault_url(),
            &queue,
            &format!(
                "workers = 4\n[qos]\nprefetch_count = 10\n[delivery_limit]\nmax = 3\ndead_letter_exchange = \"amq.direct\"\ndead_letter_routing_key = \"{dead}\"\n"
            ),
        ),
    );
    let alarm = MemoryAlarm::raise();
    let blocked_at = Instant::now();
    let mut consumer = Running::start(&mut limited_consume(&conf));
    consumer.wait_for("The broker blocked the publishing connection", WAIT);
    // The plain messages are consumed, and the broker takes their acks:
    // what it still holds is p1 (its consumer waiting to publish) and the
    // dead letter it cannot send.
    consumer.wait_for_count("): ack", PLAIN, WAIT);
    let deadline = Instant::now() + WAIT;
    while held_by_broker(&queue) > 2 {
        assert!(
            Instant::now() < deadline,
            "the broker did not take the acks while blocked: it holds {} messages",
            held_by_broker(&queue)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    consumer.wait_for(
        "did not take message loop (not sent: the broker blocks publishing",
        WAIT,
    );
    let consumed_while_blocked = consumer.lines_so_far("): ack").len();
    let lifted_at = Instant::now();
    let blocked_for = lifted_at - blocked_at;
    drop(alarm);
    consumer.wait_for("The broker lifted its block of the connection", WAIT);
    broker.wait_depth(&derived, 1);
    broker.wait_depth(&dead, 1);
    let recovered = lifted_at.elapsed();
    let deadline = Instant::now() + WAIT;
    while held_by_broker(&queue) > 0 {
        assert!(Instant::now() < deadline, "the queue did not empty");
        std::thread::sleep(Duration::from_millis(50));
    }
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    let reconnects = run.stdout.matches("Lost the connection").count();
    eprintln!(
        "blocked: {consumed_while_blocked} of {PLAIN} plain messages consumed and acked while blocked ({blocked_for:?}); \
         {reconnects} reconnects; the consumer's publish and the dead letter out {recovered:?} after the block lifted"
    );
    assert_eq!(reconnects, 0, "{run:#?}");
    assert_eq!(run.stdout.matches("Connected to").count(), 1, "{run:#?}");
    let dead_letters = broker.take_all(&dead);
    assert_eq!(dead_letters.len(), 1, "{dead_letters:?}");
    assert_eq!(dead_letters[0].id, "loop");
    let published = broker.take_all(&derived);
    assert_eq!(published.len(), 1, "{published:?}");
    for name in [&queue, &derived, &dead] {
        broker.delete_queue(name);
    }
}

#[test]
fn a_blocked_connection_is_said_in_the_log_ready_and_metrics_until_the_block_lifts() {
    let _alone = fault_node_alone();
    let broker = TestBroker::connect_to(&fault_url());
    let source = TestBroker::unique_name("publishing-blocked-seen");
    broker.declare_queue(&source, FieldTable::default());
    broker.publish(&record(
        &source,
        "m1",
        json!({"do": "publish", "publish": {"topic": "t", "body": {}, "timeout_ms": 60000}}),
    ));
    broker.publish(&record(&source, "m2", json!({"do": "halt"})));
    let port = free_port();
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config_at(
            &fault_url(),
            &source,
            &format!("[monitoring]\naddress = \"127.0.0.1\"\nport = {port}"),
        ),
    );
    let alarm = MemoryAlarm::raise();
    let mut consumer = Running::start(&mut scripted_consume(&conf));
    let line = consumer.wait_for("The broker blocked the publishing connection", WAIT);
    assert!(line.contains("memory"), "the broker's reason: {line}");
    let ready = wait_for_answer(port, "/ready", "\"blocked\":\"");
    assert!(ready.contains("low on memory"), "{ready}");
    wait_for_answer(port, "/metrics", "fedora_messaging_connection_blocked 1\n");
    // The alert rules on this state: the block, and m1's callback, whose
    // publish waits for it to lift, as stuck once that lasts 10 minutes.
    let address = format!("127.0.0.1:{port}");
    let first = scrape(&address);
    let second = loop {
        let second = scrape(&address);
        if second.at.duration_since(first.at) >= Duration::from_secs(1) {
            break second;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        second
            .text
            .contains("fedora_messaging_connection_blocked 1\n"),
        "{}",
        second.text
    );
    assert_alerts(
        "blocked",
        &first,
        &second,
        &[
            "FedoraMessagingConnectionBlocked",
            "FedoraMessagingStuckCallback",
        ],
    );
    drop(alarm);
    consumer.wait_for("The broker lifted its block of the connection", WAIT);
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.contains("published "), "{run:#?}");
    assert!(!run.stdout.contains("Lost the connection"), "{run:#?}");
    broker.delete_queue(&source);
}
