//! Fault injection on a broker node of the tests' own (the fault node, see
//! `fm_e2e::nodes`), never the main test broker:
//! broker restarts, a killed host, connections closed by the broker, and a
//! channel closed by the delivery-acknowledgement timeout. The tests run
//! one at a time, since some restart the node.
//!
//! Each prints its figures (published, delivered, duplicated, lost, time
//! to resume) to stderr; `cargo test --test faults -- --nocapture` shows them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fm_e2e::broker::{TestBroker, queue_config_at};
use fm_e2e::nodes::{
    fault_node_alone, fault_node_ctl, fault_url, start_fault_node, stop_fault_node,
};
use fm_e2e::process::Running;
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const PREFETCH: usize = 10;

fn record(queue: &str, id: &str, body: Value) -> Value {
    json!({"id": id, "topic": format!("{queue}.test"), "body": body})
}

/// A durable queue on the fault node holding `count` messages `m00000`….
fn filled_queue(prefix: &str, count: usize) -> (String, Vec<String>) {
    let broker = TestBroker::connect_to(&fault_url());
    let queue = TestBroker::unique_name(prefix);
    broker.declare_queue(&queue, FieldTable::default());
    let ids: Vec<String> = (0..count).map(|n| format!("m{n:05}")).collect();
    for chunk in ids.chunks(1000) {
        let records: Vec<Value> = chunk
            .iter()
            .map(|id| record(&queue, id, json!({"n": id})))
            .collect();
        broker.publish_all(&records);
    }
    (queue, ids)
}

/// `consume` of `queue` on the fault node with Scripted.
fn scripted_consumer(dir: &Path, queue: &str) -> Running {
    let conf = config_file(dir, &queue_config_at(&fault_url(), queue, ""));
    Running::start(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--callback",
        &scripted(),
    ]))
}

fn saver(dir: &Path, queue: &str) -> (Running, PathBuf) {
    let saved = dir.join("saved.jsonl");
    let conf = config_file(
        dir,
        &queue_config_at(
            &fault_url(),
            queue,
            &format!(
                "[consumer_config]\npath = \"{}\"\n[qos]\nprefetch_count = {PREFETCH}",
                saved.display()
            ),
        ),
    );
    let saver = format!("{}:SaveMessage", plugin("saver").display());
    let running = Running::start(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--callback",
        &saver,
    ]));
    (running, saved)
}

/// Waits until the saved file holds at least `lines` lines (or `distinct`
/// distinct ids, when given); returns the ids.
fn wait_saved(saved: &Path, lines: usize, distinct: Option<usize>) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let ids = saved_ids(saved);
        let enough = match distinct {
            Some(wanted) => ids.iter().collect::<HashSet<_>>().len() >= wanted,
            None => ids.len() >= lines,
        };
        if enough {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "only {} messages saved after {WAIT:?}",
            ids.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Published ids that were never saved.
fn lost<'a>(published: &'a [String], saved: &[String]) -> Vec<&'a String> {
    let saved: HashSet<&String> = saved.iter().collect();
    published.iter().filter(|id| !saved.contains(id)).collect()
}

#[test]
fn broker_restarts_mid_stream_lose_nothing() {
    let _alone = fault_node_alone();
    // Enough that the host still has messages to take once the second
    // restart has taken effect, on a broker that delivers fast (RabbitMQ
    // 4's classic queues: 10,000 were all consumed during a 2 s stop).
    let (queue, published) = filled_queue("restart", 30_000);
    let dir = scratch();
    let (mut consumer, saved) = saver(dir.path(), &queue);
    consumer.wait_for_count("Consuming messages from queue", 1, WAIT);

    let mut resume_times = Vec::new();
    let mut threshold = 500;
    for restart in 1..=2 {
        wait_saved(&saved, threshold, None);
        stop_fault_node();
        let at_stop = saved_ids(&saved).len();
        assert!(
            at_stop < published.len(),
            "consumption ended before restart {restart} took effect: the test proves nothing"
        );
        start_fault_node();
        let back = Instant::now();
        consumer.wait_for_count("Consuming messages from queue", restart + 1, WAIT);
        resume_times.push(back.elapsed());
        threshold = at_stop + 500;
    }
    let ids = wait_saved(&saved, 0, Some(published.len()));

    // Still consuming: a message published now is saved too.
    TestBroker::connect_to(&fault_url()).publish(&record(&queue, "after", json!({})));
    let ids_after = wait_saved(&saved, 0, Some(published.len() + 1));
    assert!(ids_after.iter().any(|id| id == "after"));

    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    let distinct: HashSet<&String> = ids.iter().collect();
    let lost: Vec<&String> = published
        .iter()
        .filter(|id| !distinct.contains(id))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    let duplicated = duplicates(&ids);
    eprintln!(
        "broker restarts: published {}, delivered {}, duplicated {duplicated}, lost {}, consuming again {:?} after each broker start",
        published.len(),
        ids.len(),
        lost.len(),
        resume_times
    );
    assert!(duplicated <= 2 * PREFETCH, "{duplicated} duplicates");
    // The liveness bound: the longest backoff (with its jitter), plus the
    // time to connect and declare.
    let bound = fm_host::broker::Backoff::CAP.mul_f64(1.2) + Duration::from_secs(5);
    for resumed in resume_times {
        assert!(
            resumed < bound,
            "resumed after {resumed:?}, bound {bound:?}"
        );
    }
    assert!(run.stdout.contains("Lost the connection"), "{run:#?}");
    TestBroker::connect_to(&fault_url()).delete_queue(&queue);
}

#[test]
fn a_host_killed_mid_stream_and_restarted_loses_nothing() {
    let _alone = fault_node_alone();
    let (queue, published) = filled_queue("sigkill", 3_000);
    let dir = scratch();
    let (mut first, saved) = saver(dir.path(), &queue);
    first.wait_for_count("Consuming messages from queue", 1, WAIT);
    wait_saved(&saved, 300, None);
    first.signal("KILL");
    let killed = first.finish();
    assert!(
        killed.status.code().is_none(),
        "killed by a signal: {killed:#?}"
    );
    let at_kill = saved_ids(&saved).len();
    assert!(
        at_kill < published.len(),
        "the kill came too late to prove anything"
    );

    let (second, _) = saver(dir.path(), &queue);
    let ids = wait_saved(&saved, 0, Some(published.len()));
    second.signal("TERM");
    let run = second.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    let lost = lost(&published, &ids).len();
    let duplicated = duplicates(&ids);
    eprintln!(
        "SIGKILL: published {}, saved before the kill {at_kill}, delivered {}, duplicated {duplicated}, lost {lost}",
        published.len(),
        ids.len()
    );
    assert_eq!(lost, 0);
    assert!(duplicated <= PREFETCH, "{duplicated} duplicates");
    TestBroker::connect_to(&fault_url()).delete_queue(&queue);
}

#[test]
fn connections_closed_by_the_broker_are_reopened() {
    let _alone = fault_node_alone();
    let (queue, _) = filled_queue("closed", 0);
    let dir = scratch();
    let mut consumer = scripted_consumer(dir.path(), &queue);
    consumer.wait_for_count("Consuming messages from queue", 1, WAIT);
    let closed = Instant::now();
    fault_node_ctl(&["close_all_connections", "fault test"]);
    consumer.wait_for_count("Consuming messages from queue", 2, WAIT);
    let resumed = closed.elapsed();
    TestBroker::connect_to(&fault_url()).publish(&record(&queue, "m1", json!({"do": "halt"})));
    let run = consumer.finish();
    eprintln!("closed connection: consuming again after {resumed:?}");
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.contains("Lost the connection"), "{run:#?}");
    assert!(run.stdout.contains("message #1 (m1): halt"), "{run:#?}");
    TestBroker::connect_to(&fault_url()).delete_queue(&queue);
}

/// Issue #10: a connection that broke as soon as consuming began (a
/// message the client could not parse) was made again at once, 170 times
/// a second. Every reconnection waits, and the wait grows while the
/// connections keep dying young.
#[test]
fn connections_that_die_young_are_remade_after_growing_waits() {
    let _alone = fault_node_alone();
    let (queue, _) = filled_queue("die-young", 0);
    let dir = scratch();
    let mut consumer = scripted_consumer(dir.path(), &queue);
    let mut waited = Vec::new();
    for session in 1..=4 {
        consumer.wait_for_count("Consuming messages from queue", session, WAIT);
        let closed = Instant::now();
        fault_node_ctl(&["close_all_connections", "fault test"]);
        consumer.wait_for_count("Consuming messages from queue", session + 1, WAIT);
        waited.push(closed.elapsed());
    }
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    let announced: Vec<f64> = run
        .stdout
        .lines()
        .filter(|line| line.contains("Lost the connection"))
        .filter_map(|line| {
            let (_, after) = line.split_once("reconnecting in ")?;
            after.split_once(" s")?.0.parse().ok()
        })
        .collect();
    eprintln!(
        "connections closed as soon as they consumed: waits announced {announced:?} s, consuming again after {waited:?}"
    );
    assert_eq!(announced.len(), 4, "{run:#?}");
    for (n, (announced, waited)) in announced.iter().zip(&waited).enumerate() {
        let base = f64::from(1u32 << n).min(10.0);
        assert!(
            (0.8 * base..=1.2 * base).contains(announced),
            "wait {n} announced {announced} s, expected about {base} s: {run:#?}"
        );
        assert!(
            waited.as_secs_f64() >= 0.8 * announced,
            "consuming again after {waited:?}, before the {announced} s wait"
        );
    }
    TestBroker::connect_to(&fault_url()).delete_queue(&queue);
}

#[test]
fn a_channel_closed_by_the_acknowledgement_timeout_is_reopened() {
    let _alone = fault_node_alone();
    let broker = TestBroker::connect_to(&fault_url());
    let queue = TestBroker::unique_name("ack-timeout");
    broker.declare_queue(&queue, FieldTable::default());
    // Longer than the 5 s timeout plus RabbitMQ's one-minute check.
    broker.publish(&record(
        &queue,
        "slow",
        json!({"do": "ack", "sleep_once_ms": 80_000}),
    ));
    broker.publish(&record(&queue, "last", json!({"do": "halt"})));
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config_at(&fault_url(), &queue, ""));
    let scripted = scripted();
    let started = Instant::now();
    let run =
        run(fedora_messaging()
            .arg("--conf")
            .arg(&conf)
            .args(["consume", "--callback", &scripted]));
    eprintln!(
        "acknowledgement timeout: recovered and finished in {:?}",
        started.elapsed()
    );
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        run.stdout.contains("opening a new channel for queue"),
        "{run:#?}"
    );
    // The first delivery's settle had no channel left; the broker delivered
    // the message again and this time it was acknowledged.
    assert!(run.stdout.contains("message #1 (slow)"), "{run:#?}");
    assert!(run.stdout.contains("message #2 (slow)"), "{run:#?}");
    assert!(run.stdout.contains("message #3 (last): halt"), "{run:#?}");
    assert_eq!(broker.depth(&queue), 0);
    broker.delete_queue(&queue);
}

#[test]
fn a_passive_redeclare_of_a_queue_not_back_yet_is_retried() {
    let _alone = fault_node_alone();
    // A queue that does not survive the broker's restart, consumed with
    // passive declares: after the restart it is missing until someone
    // declares it again, and the host must wait for that, not die.
    let queue = TestBroker::unique_name("passive");
    let declare = || TestBroker::connect_to(&fault_url()).declare_transient_queue(&queue);
    declare();
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config_at(&fault_url(), &queue, "passive_declares = true")
            .replace("durable = true", "durable = false"),
    );
    let scripted = scripted();
    let mut consumer = Running::start(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--callback",
        &scripted,
    ]));
    consumer.wait_for_count("Consuming messages from queue", 1, WAIT);
    stop_fault_node();
    start_fault_node();
    consumer.wait_for_count("404 NOT_FOUND", 2, WAIT);
    declare();
    consumer.wait_for_count("Consuming messages from queue", 2, WAIT);
    TestBroker::connect_to(&fault_url()).publish(&record(&queue, "m1", json!({"do": "halt"})));
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.contains("passive_declares is on"), "{run:#?}");
    assert!(run.stdout.contains("; retrying in "), "{run:#?}");
    assert!(run.stdout.contains("message #1 (m1): halt"), "{run:#?}");
    TestBroker::connect_to(&fault_url()).delete_queue(&queue);
}
