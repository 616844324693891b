//! `[delivery_limit]` counts only attempts and believes no publisher
//! (issue #25): messages prefetched but never started are not counted when
//! the host stops, gracefully or on a consumer's failure; counts a
//! publisher wrote are ignored (and said so once); and the copy that
//! carries a count reaches the consumed queue and nothing else.

use std::time::{Duration, Instant};

use fm_e2e::broker::{TestBroker, dead_lettered_queue, queue_config};
use fm_e2e::process::Running;
use fm_e2e::*;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// The ids Scripted acked in `output`.
fn acked(output: &str) -> Vec<String> {
    let mut ids: Vec<String> = output
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("message #")?;
            let (_, rest) = rest.split_once(" (")?;
            let (id, action) = rest.split_once("): ")?;
            (action.trim() == "ack").then(|| id.to_owned())
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// A queue whose rejected messages go to a dead-letter queue of its own
/// (so that a message the limit rejects is seen, not lost), holding
/// `messages`, consumed with a prefetch of 10 by one worker, `max = 2` and
/// no dead-letter exchange of the host's.
fn prefetched(prefix: &str, messages: &[(String, Value)]) -> (TestBroker, String, String, String) {
    let (broker, queue, dead, config) = dead_lettered_queue(
        prefix,
        "[qos]\nprefetch_count = 10\n\n[delivery_limit]\nmax = 2\n",
    );
    for (id, body) in messages {
        broker.publish(&json!({"id": id, "topic": format!("{queue}.test"), "body": body}));
    }
    (broker, queue, dead, config)
}

/// After the runs: every message was acked, none was rejected by the limit
/// or dead-lettered, and the queue is empty.
fn all_consumed_none_counted(
    broker: &TestBroker,
    queue: &str,
    dead: &str,
    ids: &[String],
    output: &str,
) {
    let mut expected = ids.to_vec();
    expected.sort();
    assert_eq!(acked(output), expected, "{output}");
    assert!(!output.contains("rejected without requeue"), "{output}");
    assert_eq!(broker.depth(dead), 0, "{output}");
    assert_eq!(broker.depth(queue), 0, "{output}");
}

#[test]
fn ten_graceful_stops_with_messages_prefetched_count_no_attempt() {
    let ids: Vec<String> = (1..=20).map(|n| format!("g{n}")).collect();
    let messages: Vec<(String, Value)> = ids
        .iter()
        .map(|id| (id.clone(), json!({"do": "ack", "sleep_ms": 200})))
        .collect();
    let (broker, queue, dead, config) = prefetched("limit-sigterm", &messages);
    let dir = scratch();
    let conf = config_file(dir.path(), &config);
    let mut command = limited_consume(&conf);
    let mut output = String::new();
    for _ in 0..10 {
        let mut consumer = Running::start(&mut command);
        // A message is being consumed, and the rest of the prefetch waits
        // with the host.
        consumer.wait_for("message #1 ", WAIT);
        consumer.signal("TERM");
        let run = consumer.finish();
        assert_eq!(run.code(), 0, "{run:#?}");
        output.push_str(&run.stdout);
    }
    // The last run consumes the rest.
    let mut consumer = Running::start(&mut command);
    let deadline = Instant::now() + WAIT;
    loop {
        let so_far = consumer.lines_so_far("message #").join("\n");
        if acked(&format!("{output}\n{so_far}")).len() == ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all consumed:\n{output}\n{so_far}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    output.push_str(&run.stdout);
    assert!(
        output.contains("no consumer had started back at the end of their queue"),
        "{output}"
    );
    assert!(!output.contains("came back after"), "{output}");
    all_consumed_none_counted(&broker, &queue, &dead, &ids, &output);
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}

#[test]
fn ten_consumer_failures_with_messages_prefetched_count_no_attempt() {
    let dir = scratch();
    // Each failing message fails once (its first attempt, which counts),
    // and is acked when it comes again: one attempt of two.
    let mut messages = Vec::new();
    for n in 1..=10 {
        let once = dir.path().join(format!("f{n}.failed"));
        messages.push((
            format!("f{n}"),
            json!({"do": "fail", "once_file": once, "sleep_ms": 50}),
        ));
        messages.push((format!("g{n}"), json!({"do": "ack", "sleep_ms": 50})));
    }
    let ids: Vec<String> = messages.iter().map(|(id, _)| id.clone()).collect();
    let (broker, queue, dead, config) = prefetched("limit-failure", &messages);
    let conf = config_file(dir.path(), &config);
    let mut command = limited_consume(&conf);
    let mut output = String::new();
    let mut failures = 0;
    loop {
        assert!(failures <= 10, "{failures} failures:\n{output}");
        let mut consumer = Running::start(&mut command);
        let deadline = Instant::now() + WAIT;
        while !consumer.has_ended() && broker.depth(&queue) > 0 {
            assert!(Instant::now() < deadline, "neither a failure nor the end");
            std::thread::sleep(Duration::from_millis(20));
        }
        if consumer.has_ended() {
            let run = consumer.finish();
            assert_eq!(run.code(), 13, "{run:#?}");
            output.push_str(&run.stdout);
            failures += 1;
            continue;
        }
        // Empty, and what the consumer holds is settled before it stops.
        consumer.signal("TERM");
        let run = consumer.finish();
        assert_eq!(run.code(), 0, "{run:#?}");
        output.push_str(&run.stdout);
        if broker.depth(&queue) == 0 {
            break;
        }
    }
    assert_eq!(failures, 10, "{output}");
    for n in 1..=10 {
        assert_eq!(
            scripted_starts(&output, &format!("f{n}")),
            2,
            "f{n}: {output}"
        );
    }
    // Each failed message's own attempt is counted and carried; nothing
    // else is counted.
    let carried = output
        .lines()
        .filter(|line| line.contains("came back after 1 attempt of at most 2"))
        .count();
    assert_eq!(carried, 10, "{output}");
    all_consumed_none_counted(&broker, &queue, &dead, &ids, &output);
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}

/// Messages carrying counts a publisher wrote, each consumed once and said
/// so once; and a nack loop whose publisher wrote `x-delivery-count: 0`,
/// stopped at the limit all the same.
fn forged_counts(prefix: &str, arguments: FieldTable, config_arguments: &str) {
    const MAX: u32 = 3;
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name(prefix);
    let dead = format!("{queue}-dead");
    broker.declare_queue(&dead, FieldTable::default());
    broker.bind(&dead, "amq.direct", &dead);
    broker.declare_queue(&queue, arguments);
    let long = |n: i64| AMQPValue::LongLongInt(n);
    let text = |text: &str| AMQPValue::LongString(text.into());
    let forged: Vec<(&str, Vec<(&str, AMQPValue)>)> = vec![
        ("fm99", vec![("x-fm-delivery-count", long(99))]),
        ("fm-max", vec![("x-fm-delivery-count", long(i64::MAX))]),
        ("broker99", vec![("x-delivery-count", long(99))]),
        ("acquired99", vec![("x-acquired-count", long(99))]),
        (
            "unsigned",
            vec![
                ("x-fm-delivery-count", long(2)),
                ("x-fm-topic", text(&format!("{queue}.test"))),
                (
                    "x-fm-delivery-seal",
                    text(&format!("v1:{}", "0".repeat(64))),
                ),
            ],
        ),
    ];
    for (id, headers) in &forged {
        let record = json!({"id": id, "topic": format!("{queue}.test"), "body": {"do": "ack"}});
        broker.publish_with_headers(&record, headers);
    }
    let record = json!({"id": "loop", "topic": format!("{queue}.test"), "body": {"do": "nack"}});
    broker.publish_with_headers(&record, &[("x-delivery-count", long(0))]);
    broker.publish(&json!({"id": "last", "topic": format!("{queue}.test"), "body": {"do": "ack"}}));
    let config = queue_config(
        &queue,
        &format!(
            "[delivery_limit]\nmax = {MAX}\ndead_letter_exchange = \"amq.direct\"\ndead_letter_routing_key = \"{dead}\"\n"
        ),
    )
    .replace("arguments = {}", config_arguments);
    let dir = scratch();
    let conf = config_file(dir.path(), &config);
    let mut consumer = Running::start(&mut limited_consume(&conf));
    broker.wait_depth(&dead, 1);
    consumer.wait_for("(last): ack", WAIT);
    broker.wait_depth(&queue, 0);
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    for (id, _) in &forged {
        assert_eq!(scripted_starts(&run.stdout, id), 1, "{id}: {run:#?}");
        let doubts = run
            .stdout
            .lines()
            .filter(|line| {
                line.contains(&format!("Message {id} carries ")) && line.ends_with(": ignored")
            })
            .count();
        assert_eq!(doubts, 1, "{id} said once: {run:#?}");
    }
    assert_eq!(
        scripted_starts(&run.stdout, "loop"),
        MAX as usize,
        "{run:#?}"
    );
    let dead_lettered = broker.take_all(&dead);
    assert_eq!(dead_lettered.len(), 1, "{dead_lettered:?}");
    assert_eq!(dead_lettered[0].id, "loop");
    assert_eq!(
        dead_lettered[0].headers.inner().get("x-fm-delivery-count"),
        Some(&long(i64::from(MAX)))
    );
    assert!(
        !dead_lettered[0]
            .headers
            .inner()
            .contains_key("x-delivery-count"),
        "a stale broker count would stop a limit on the dead-letter queue at once: {:?}",
        dead_lettered[0].headers
    );
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}

#[test]
fn counts_a_publisher_wrote_are_ignored_on_a_classic_queue() {
    forged_counts(
        "limit-forged-classic",
        FieldTable::default(),
        "arguments = {}",
    );
}

#[test]
fn counts_a_publisher_wrote_are_ignored_on_a_quorum_queue() {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    forged_counts(
        "limit-forged-quorum",
        arguments,
        "arguments = {\"x-queue-type\" = \"quorum\"}",
    );
}

#[test]
fn a_copy_reaches_the_consumed_queue_and_nothing_else() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("limit-route");
    // A queue named like a topic the consumed queue is bound to, and one a
    // publisher names in CC.
    let named_like_topic = format!("{queue}.victim");
    let named_in_cc = format!("{queue}-cc");
    broker.declare_queue(&queue, FieldTable::default());
    broker.declare_queue(&named_like_topic, FieldTable::default());
    broker.declare_queue(&named_in_cc, FieldTable::default());
    let cc = AMQPValue::FieldArray(vec![AMQPValue::LongString(named_in_cc.as_str().into())].into());
    broker.publish_with_headers(
        &json!({"id": "cc", "topic": format!("{queue}.test"), "body": {"do": "nack_once"}}),
        &[("CC", cc)],
    );
    broker.publish(&json!({"id": "named", "topic": named_like_topic, "body": {"do": "nack_once"}}));
    broker.publish(&json!({"id": "last", "topic": format!("{queue}.test"), "body": {"do": "ack"}}));
    // What the publishing itself routed there (amq.topic matches their
    // bindings too) is not the host's doing.
    broker.take_all(&named_like_topic);
    broker.take_all(&named_in_cc);
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config(&queue, "[delivery_limit]\nmax = 3\n"),
    );
    let mut consumer = Running::start(&mut limited_consume(&conf));
    consumer.wait_for_count("(cc): ", 2, WAIT);
    consumer.wait_for_count("(named): ", 2, WAIT);
    broker.wait_depth(&queue, 0);
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(scripted_starts(&run.stdout, "cc"), 2, "{run:#?}");
    assert_eq!(scripted_starts(&run.stdout, "named"), 2, "{run:#?}");
    assert_eq!(broker.depth(&named_like_topic), 0, "{run:#?}");
    assert_eq!(broker.depth(&named_in_cc), 0, "{run:#?}");
    for name in [&queue, &named_like_topic, &named_in_cc] {
        broker.delete_queue(name);
    }
}

#[test]
fn messages_prefetched_when_a_channel_breaks_count_no_attempt() {
    // A limit of one: any prefetched message counted for the break would
    // be rejected at once.
    let (broker, queue, dead, config) = dead_lettered_queue(
        "limit-break",
        "[qos]\nprefetch_count = 10\n\n[delivery_limit]\nmax = 1\nretry_delay = 0\n",
    );
    let dir = scratch();
    // The breaker ends once the test saw its channel retired, so that no
    // other message is started on that channel.
    let go = dir.path().join("go");
    let breaker = json!({"do": "ack", "wait_file": go});
    broker.publish(&json!({"id": "breaker", "topic": format!("{queue}.test"), "body": breaker}));
    let mut ids = Vec::new();
    for n in 1..=9 {
        let id = format!("g{n}");
        broker.publish(&json!({"id": id, "topic": format!("{queue}.test"), "body": {"do": "ack", "sleep_ms": 50}}));
        ids.push(id);
    }
    let conf = config_file(dir.path(), &config);
    let mut command = limited_consume(&conf);
    command.env("FM_TEST_BREAK_CHANNEL_ON", "breaker");
    let mut consumer = Running::start(&mut command);
    // The broker's word for the seam's bogus ack: the channel is closed.
    consumer.wait_for("PRECONDITION_FAILED - unknown delivery tag", WAIT);
    std::fs::write(&go, "").unwrap();
    // The breaker was started: its attempt counts, and at max = 1 it is
    // rejected to the queue's own dead-letter queue when it comes again.
    broker.wait_depth(&dead, 1);
    let deadline = Instant::now() + WAIT;
    loop {
        let so_far = consumer.lines_so_far("message #").join("\n");
        if acked(&so_far)
            .iter()
            .filter(|id| id.starts_with('g'))
            .count()
            == ids.len()
        {
            break;
        }
        assert!(Instant::now() < deadline, "not all consumed:\n{so_far}");
        std::thread::sleep(Duration::from_millis(50));
    }
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    let dead_lettered = broker.take_all(&dead);
    assert_eq!(dead_lettered.len(), 1, "{dead_lettered:?}");
    assert_eq!(dead_lettered[0].id, "breaker");
    assert_eq!(broker.depth(&queue), 0, "{run:#?}");
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}
