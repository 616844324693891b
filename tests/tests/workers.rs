//! `workers = N`: N consumer instances side by side, with outcomes, halts
//! and failures keeping their meaning, checked through the broker.

use std::time::Duration;

use fm_e2e::broker::{dead_lettered_queue, queue_with};
use fm_e2e::process::Running;
use fm_e2e::*;
use serde_json::{Value, json};

fn consume(conf: &std::path::Path, extra_args: &[&str]) -> Run {
    run(fedora_messaging()
        .arg("--conf")
        .arg(conf)
        .args(["consume", "--callback", &scripted()])
        .args(extra_args))
}

#[test]
fn workers_handle_messages_side_by_side_even_with_a_small_prefetch() {
    // Four messages that each wait until all four are being handled: only
    // four workers holding a message each get past it. The prefetch of 2
    // must be raised for that.
    let mut messages: Vec<(&str, Value)> = ["r1", "r2", "r3", "r4"]
        .into_iter()
        .map(|id| (id, json!({"do": "ack", "rendezvous": 4})))
        .collect();
    messages.push(("last", json!({"do": "halt"})));
    let (broker, queue, _dir, conf) = queue_with(
        "workers",
        "workers = 4\n[qos]\nprefetch_count = 2",
        &messages,
    );
    let run = consume(&conf, &[]);
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        run.stdout
            .contains("qos.prefetch_count = 2 is below the number of workers; using 4"),
        "{run:#?}"
    );
    assert_eq!(broker.depth(&queue), 0, "{run:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn one_worker_is_one_message_at_a_time() {
    // The same rendezvous of two cannot happen with one worker: the
    // consumer fails after its wait.
    let (broker, queue, _dir, conf) = queue_with(
        "one-worker",
        "",
        &[
            (
                "r1",
                json!({"do": "ack", "rendezvous": 2, "within_ms": 2000}),
            ),
            (
                "r2",
                json!({"do": "ack", "rendezvous": 2, "within_ms": 2000}),
            ),
        ],
    );
    let run = consume(&conf, &["--workers", "1"]);
    assert_eq!(run.code(), 13, "{run:#?}");
    assert!(
        run.stdout
            .contains("only 1 of 2 messages were handled at once"),
        "{run:#?}"
    );
    assert_eq!(broker.depth(&queue), 2, "both go back: {run:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn a_failure_lets_other_workers_finish_and_settles_each_message_once() {
    // One worker takes "slow" and, having started it, acks it after the
    // other fails on "boom". Nothing is started after the failure and all
    // of it goes back with "boom". A message settled twice would close the
    // channel and send "slow" back too.
    let (broker, queue, _dir, conf) = queue_with(
        "workers-fail",
        "workers = 2",
        &[
            ("slow", json!({"do": "ack", "sleep_ms": 1500})),
            ("boom", json!({"do": "fail", "reason": "kaboom"})),
            ("m3", json!({"do": "ack"})),
            ("m4", json!({"do": "ack"})),
            ("m5", json!({"do": "ack"})),
        ],
    );
    let run = consume(&conf, &[]);
    assert_eq!(run.code(), 13, "{run:#?}");
    assert!(run.stdout.contains("failed: kaboom"), "{run:#?}");
    // "slow" was acked if its worker started it before the failure held
    // the workers, and is back in the queue otherwise; the rest never
    // started: each message is in exactly one of the two places.
    let left: Vec<String> = broker.drain(&queue).into_iter().map(|q| q.id).collect();
    let acked = run.stdout.contains("done #1 (slow)");
    for id in ["slow", "boom", "m3", "m4", "m5"] {
        let queued = left.iter().filter(|left| *left == id).count();
        let expected = usize::from(id != "slow" || !acked);
        assert_eq!(
            queued, expected,
            "{id} queued {queued} times: {left:?} {run:#?}"
        );
    }
    assert!(!run.stdout.contains("PRECONDITION_FAILED"), "{run:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn a_halt_stops_every_worker_gracefully() {
    let (broker, queue, _dir, conf) = queue_with(
        "workers-halt",
        "",
        &[
            ("slow", json!({"do": "ack", "sleep_ms": 1000})),
            ("stop", json!({"do": "halt", "code": 3})),
            ("m3", json!({"do": "ack"})),
            ("m4", json!({"do": "ack"})),
        ],
    );
    let run = consume(&conf, &["--workers", "3"]);
    assert_eq!(run.code(), 3, "{run:#?}");
    // What workers had started when the halt came was finished and acked;
    // what none had started stayed queued: each message in exactly one of
    // the two places.
    let left: Vec<String> = broker.drain(&queue).into_iter().map(|q| q.id).collect();
    for id in ["slow", "stop", "m3", "m4"] {
        let handled = run
            .stdout
            .lines()
            .any(|line| line.contains("done #") && line.ends_with(&format!("({id})")));
        let queued = left.iter().filter(|left| *left == id).count();
        assert_eq!(
            usize::from(handled) + queued,
            1,
            "{id}: handled {handled}, queued {queued} times: {run:#?}"
        );
    }
    broker.delete_queue(&queue);
}

#[test]
fn workers_out_of_range_are_usage_errors() {
    let dir = scratch();
    let conf = config_file(dir.path(), "amqp_url = 'amqp://'\nworkers = 0\n");
    let run = run(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--callback",
        &scripted(),
    ]));
    assert_eq!(run.code(), 2, "{run:#?}");
    assert_eq!(
        run.stderr.trim_end(),
        format!(
            "Error: {}:2: workers must be 1 (one message at a time, as fedora-messaging) to 1024, not 0",
            conf.display()
        )
    );
    let run = run_cli(&["consume", "--workers", "2000", "--callback", &scripted()]);
    assert_eq!(run.code(), 2, "{run:#?}");
    assert!(
        run.stderr
            .starts_with("Error: --workers must be 1 (one message at a time, as fedora-messaging) to 1024, not 2000"),
        "{run:#?}"
    );
}

fn run_cli(args: &[&str]) -> Run {
    let dir = scratch();
    let conf = config_file(dir.path(), "amqp_url = 'amqp://'\n");
    run(fedora_messaging().arg("--conf").arg(&conf).args(args))
}

#[test]
fn many_messages_through_several_workers_are_each_settled_once() {
    // Acks coalesced over runs of finished messages, interleaved with nacks
    // and rejects from three workers: every message must end where its
    // outcome says, none lost to an ack that covered it too early, none
    // redelivered by a channel closed over a tag settled twice.
    let (broker, queue, dead, config) =
        dead_lettered_queue("workers-many", "[qos]\nprefetch_count = 50");
    let action = |n: usize| match n {
        n if n % 7 == 0 => "drop",
        n if n % 5 == 0 => "nack_once",
        _ => "ack",
    };
    let ids: Vec<String> = (1..=300).map(|n| format!("w{n:03}")).collect();
    for (n, id) in ids.iter().enumerate() {
        broker
            .publish(&json!({"id": id, "topic": format!("{queue}.t"), "body": {"do": action(n)}}));
    }
    let dir = scratch();
    let conf = config_file(dir.path(), &config);
    let handlings = |n: usize| if action(n) == "nack_once" { 2 } else { 1 };
    let expected: usize = (0..ids.len()).map(handlings).sum();
    let mut consumer = Running::start(fedora_messaging().arg("--conf").arg(&conf).args([
        "consume",
        "--workers",
        "3",
        "--callback",
        &scripted(),
    ]));
    consumer.wait_for_count("] done #", expected, Duration::from_secs(60));
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(broker.depth(&queue), 0, "{run:#?}");
    let mut dead_ids: Vec<String> = broker.drain(&dead).into_iter().map(|q| q.id).collect();
    dead_ids.sort();
    let dropped: Vec<String> = ids
        .iter()
        .enumerate()
        .filter(|(n, _)| action(*n) == "drop")
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(dead_ids, dropped);
    for (n, id) in ids.iter().enumerate() {
        let times = run
            .stdout
            .lines()
            .filter(|line| line.contains("] done #") && line.ends_with(&format!("({id})")))
            .count();
        assert_eq!(
            times,
            handlings(n),
            "{id} ({}) handled {times} times",
            action(n)
        );
    }
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}
