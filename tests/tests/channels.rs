//! A channel's failure is that channel's business (issue #24): when the
//! broker closes one queue's channel, that queue alone gets a new channel,
//! and the other queues' consumers go on, settling what they hold on the
//! channels they got it from: nothing of theirs runs twice.

use std::time::Duration;

use fm_e2e::broker::{TestBroker, queue_tables};
use fm_e2e::nodes::amqp_url;
use fm_e2e::process::Running;
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn record(queue: &str, id: &str, body: serde_json::Value) -> serde_json::Value {
    json!({"id": id, "topic": format!("{queue}.test"), "body": body})
}

/// How many times Scripted started `id`.
fn starts(output: &str, id: &str) -> usize {
    output.matches(&format!(" ({id}): ")).count()
}

#[test]
fn one_broken_channel_interrupts_no_other_queue() {
    let url = amqp_url();
    let broker = TestBroker::connect();
    let steady = TestBroker::unique_name("steady");
    let breaking = TestBroker::unique_name("breaking");
    for queue in [&steady, &breaking] {
        broker.declare_queue(queue, FieldTable::default());
    }
    // b1 runs for 3 s on one worker while the other takes `breaker` from
    // the other queue, whose delivery makes the broker close that queue's
    // channel.
    broker.publish(&record(
        &steady,
        "b1",
        json!({"do": "ack", "sleep_ms": 3000}),
    ));
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &format!(
            "amqp_url = \"{url}\"\nworkers = 2\n{}{}\n[log_config.root]\nlevel = \"INFO\"\n",
            queue_tables(&steady, &format!("{steady}.#")),
            queue_tables(&breaking, &format!("{breaking}.#")),
        ),
    );
    let mut command = scripted_consume(&conf);
    command.env("FM_TEST_BREAK_CHANNEL_ON", "breaker");
    let mut consumer = Running::start(&mut command);
    consumer.wait_for("(b1): ack", WAIT);
    broker.publish(&record(&breaking, "breaker", json!({"do": "ack"})));
    // Its first answer cannot be settled on the closed channel: it comes
    // again on the new one.
    consumer.wait_for_count("(breaker): ack", 2, WAIT);
    for id in ["b2", "b3"] {
        broker.publish(&record(&steady, id, json!({"do": "ack"})));
    }
    consumer.wait_for("(b3): ack", WAIT);
    broker.publish(&record(&steady, "end", json!({"do": "halt"})));
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    let counts: Vec<(&str, usize)> = ["b1", "b2", "b3", "end", "breaker"]
        .iter()
        .map(|id| (*id, starts(&run.stdout, id)))
        .collect();
    eprintln!("one broken channel: starts per message {counts:?}");
    for (id, count) in &counts[..4] {
        assert_eq!(*count, 1, "{id} ran {count} times: {run:#?}");
    }
    assert_eq!(counts[4].1, 2, "{run:#?}");
    assert!(
        run.stdout
            .contains(&format!("opening a new channel for queue {breaking:?}")),
        "{run:#?}"
    );

    for queue in [&steady, &breaking] {
        assert_eq!(broker.depth(queue), 0, "{queue}: {run:#?}");
        broker.delete_queue(queue);
    }
}
