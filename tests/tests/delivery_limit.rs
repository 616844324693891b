//! `[delivery_limit]` (issue #12): no message loops forever. A message
//! whose consumer always answers Nack, on a classic and on a quorum queue,
//! and one that crashes the host each time (restarted by a supervisor loop,
//! as systemd's `Restart=on-failure` would), end in the dead-letter queue
//! after `max` deliveries while the messages behind them are consumed.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use fm_e2e::broker::{Taken, TestBroker, queue_config};
use fm_e2e::process::Running;
use fm_e2e::*;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const MAX: u32 = 3;

/// A queue (with `arguments` on the broker and `config_arguments` in the
/// configuration) holding `messages`, and a dead-letter queue bound to
/// `amq.direct`, which `[delivery_limit]` names. Returns the broker, the
/// queue, the dead-letter queue and the configuration's text.
fn limited_queue(
    prefix: &str,
    arguments: FieldTable,
    config_arguments: &str,
    extra: &str,
    messages: &[(&str, Value)],
) -> (TestBroker, String, String, String) {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name(prefix);
    let dead = format!("{queue}-dead");
    broker.declare_queue(&dead, FieldTable::default());
    broker.bind(&dead, "amq.direct", &dead);
    broker.declare_queue(&queue, arguments);
    for (id, body) in messages {
        broker.publish(&json!({"id": id, "topic": format!("{queue}.test"), "body": body}));
    }
    let config = queue_config(
        &queue,
        &format!(
            "{extra}\n[delivery_limit]\nmax = {MAX}\ndead_letter_exchange = \"amq.direct\"\ndead_letter_routing_key = \"{dead}\"\n"
        ),
    )
    .replace("arguments = {}", config_arguments);
    (broker, queue, dead, config)
}

/// The dead-lettered message: `id`, its body as published, the count and
/// the reason, the original headers kept.
fn check_dead_lettered(taken: &[Taken], id: &str) {
    assert_eq!(taken.len(), 1, "{taken:?}");
    let message = &taken[0];
    assert_eq!(message.id, id);
    let body: Value = serde_json::from_slice(&message.body).unwrap();
    assert!(body["do"].is_string(), "{body}");
    let headers = message.headers.inner();
    let count = headers.get("x-fm-delivery-count");
    assert_eq!(
        count,
        Some(&AMQPValue::LongLongInt(i64::from(MAX))),
        "{headers:?}"
    );
    let Some(AMQPValue::LongString(reason)) = headers.get("x-fm-dead-letter-reason") else {
        panic!("no reason in {headers:?}");
    };
    assert!(
        reason
            .to_string()
            .contains(&format!("delivered {MAX} times")),
        "{reason}"
    );
    assert!(
        headers.contains_key("fedora_messaging_schema"),
        "{headers:?}"
    );
}

/// A consumer that answers Nack to `loop` for ever: after MAX deliveries
/// `loop` is in the dead-letter queue, the good messages behind it were
/// consumed once each, and the host is still consuming.
fn nack_loop(prefix: &str, arguments: FieldTable, config_arguments: &str) {
    let messages = [
        ("loop", json!({"do": "nack"})),
        ("g1", json!({"do": "ack"})),
        ("g2", json!({"do": "ack"})),
        ("g3", json!({"do": "ack"})),
    ];
    let (broker, queue, dead, config) =
        limited_queue(prefix, arguments, config_arguments, "", &messages);
    let dir = scratch();
    let conf = config_file(dir.path(), &config);
    // (Made before the clock starts: the first one builds the binary.)
    let mut command = limited_consume(&conf);
    let started = Instant::now();
    let mut consumer = Running::start(&mut command);
    broker.wait_depth(&dead, 1);
    let took = started.elapsed();
    consumer.wait_for("message #", WAIT);
    broker.wait_depth(&queue, 0);
    consumer.wait_for("(g3): ack", WAIT);
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    let loops = scripted_starts(&run.stdout, "loop");
    eprintln!(
        "nack loop ({prefix}): {loops} deliveries to the consumer, dead-lettered after {took:?}"
    );
    assert_eq!(loops, MAX as usize, "{run:#?}");
    for good in ["g1", "g2", "g3"] {
        assert_eq!(scripted_starts(&run.stdout, good), 1, "{good}: {run:#?}");
    }
    assert!(
        run.stdout.contains(&format!(
            "Message loop (topic {queue}.test) was delivered {MAX} times, [delivery_limit] max: sent to dead-letter exchange \"amq.direct\""
        )),
        "{run:#?}"
    );
    assert!(run.stdout.contains("1 over the delivery limit"), "{run:#?}");
    check_dead_lettered(&broker.take_all(&dead), "loop");
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}

#[test]
fn a_nack_loop_on_a_classic_queue_ends_in_the_dead_letter_queue() {
    nack_loop("nack-loop-classic", FieldTable::default(), "arguments = {}");
}

#[test]
fn a_nack_loop_on_a_quorum_queue_ends_in_the_dead_letter_queue() {
    let (arguments, config_arguments) = quorum();
    nack_loop("nack-loop-quorum", arguments, config_arguments);
}

/// A message that crashes the host each time it is consumed, on a queue
/// (`arguments`) consumed by `hosts` hosts side by side, each restarted
/// when it dies (as systemd's `Restart=on-failure` would): dead-lettered
/// after MAX crashes, whichever host met it, while the messages behind it
/// are consumed once each.
fn crash_loop(prefix: &str, arguments: FieldTable, config_arguments: &str, hosts: usize) {
    let messages = [
        ("g1", json!({"do": "ack"})),
        ("crash", json!({"do": "abort"})),
        ("g2", json!({"do": "ack"})),
        ("g3", json!({"do": "ack"})),
    ];
    // A prefetch of 1: a crash counts against every message the host
    // holds, and only the crashing one should be held then.
    let (broker, queue, dead, config) = limited_queue(
        prefix,
        arguments,
        config_arguments,
        "[qos]\nprefetch_count = 1",
        &messages,
    );
    let dir = scratch();
    let conf = config_file(dir.path(), &config);
    let mut command = limited_consume(&conf);
    let started = Instant::now();
    let mut crashes = 0;
    let mut output = String::new();
    let mut running: Vec<Running> = (0..hosts).map(|_| Running::start(&mut command)).collect();
    // The supervisor: start a host again each time it dies, until the
    // crashing message is dead-lettered.
    let deadline = Instant::now() + WAIT * (MAX + 1);
    while broker.depth(&dead) == 0 {
        assert!(crashes <= MAX, "{crashes} crashes:\n{output}");
        assert!(Instant::now() < deadline, "no dead letter:\n{output}");
        for slot in running.iter_mut() {
            if slot.has_ended() {
                let ended = std::mem::replace(slot, Running::start(&mut command));
                let run = ended.finish();
                assert_eq!(run.status.signal(), Some(6), "not an abort: {run:#?}");
                output.push_str(&run.stdout);
                crashes += 1;
                eprintln!("crash {crashes} after {:?}", started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    broker.wait_depth(&queue, 0);
    for mut consumer in running {
        // The last crash may not have been seen yet: it happened before the
        // dead letter, which another host sent once the broker knew.
        if consumer.has_ended() {
            let run = consumer.finish();
            assert_eq!(run.status.signal(), Some(6), "not an abort: {run:#?}");
            output.push_str(&run.stdout);
            crashes += 1;
            continue;
        }
        consumer.signal("TERM");
        let run = consumer.finish();
        assert_eq!(run.code(), 0, "{run:#?}");
        output.push_str(&run.stdout);
    }
    eprintln!("crash loop ({prefix}): {crashes} crashes, dead-lettered after {took:?}");
    assert_eq!(crashes, MAX, "{output}");
    assert_eq!(scripted_starts(&output, "crash"), MAX as usize, "{output}");
    for good in ["g1", "g2", "g3"] {
        assert_eq!(scripted_starts(&output, good), 1, "{good}: {output}");
    }
    assert!(output.contains("was delivered 3 times"), "{output}");
    check_dead_lettered(&broker.take_all(&dead), "crash");
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}

fn quorum() -> (FieldTable, &'static str) {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    (arguments, "arguments = {\"x-queue-type\" = \"quorum\"}")
}

#[test]
fn a_message_that_crashes_the_host_is_dead_lettered_after_the_limit() {
    crash_loop("crash-loop", FieldTable::default(), "arguments = {}", 1);
}

#[test]
fn a_crash_loop_on_a_quorum_queue_is_dead_lettered_after_the_limit() {
    let (arguments, config_arguments) = quorum();
    crash_loop("crash-loop-quorum", arguments, config_arguments, 1);
}

#[test]
fn a_crash_loop_across_two_hosts_is_dead_lettered_after_the_limit() {
    crash_loop("crash-loop-two", FieldTable::default(), "arguments = {}", 2);
    let (arguments, config_arguments) = quorum();
    crash_loop("crash-loop-two-quorum", arguments, config_arguments, 2);
}

#[test]
fn a_dead_letter_exchange_that_does_not_exist_is_exit_10() {
    let dir = scratch();
    let queue = TestBroker::unique_name("limit-no-dlx");
    let config = queue_config(
        &queue,
        "[delivery_limit]\nmax = 2\ndead_letter_exchange = \"fm-e2e-no-such-exchange\"\n",
    );
    let conf = config_file(dir.path(), &config);
    let run = run(&mut limited_consume(&conf));
    assert_eq!(run.code(), 10, "{run:#?}");
    assert!(
        run.stderr.contains(
            "[delivery_limit] dead_letter_exchange \"fm-e2e-no-such-exchange\" cannot be used"
        ),
        "{run:#?}"
    );
    TestBroker::connect().delete_queue(&queue);
}

#[test]
fn without_a_dead_letter_exchange_it_is_rejected_to_the_queues_own() {
    // The queue's own x-dead-letter-exchange keeps what is rejected.
    let (broker, queue, dead, config) =
        fm_e2e::broker::dead_lettered_queue("limit-reject", "[delivery_limit]\nmax = 1\n");
    broker
        .publish(&json!({"id": "loop", "topic": format!("{queue}.test"), "body": {"do": "nack"}}));
    broker.publish(&json!({"id": "g1", "topic": format!("{queue}.test"), "body": {"do": "ack"}}));
    let dir = scratch();
    let conf = config_file(dir.path(), &config);
    let mut consumer = Running::start(&mut limited_consume(&conf));
    broker.wait_depth(&dead, 1);
    consumer.wait_for("(g1): ack", WAIT);
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(scripted_starts(&run.stdout, "loop"), 1, "{run:#?}");
    assert!(
        run.stdout.contains(&format!(
            "Message loop (topic {queue}.test) was delivered once, [delivery_limit] max, and no dead_letter_exchange is set: rejected without requeue"
        )),
        "{run:#?}"
    );
    let dead_lettered = broker.take_all(&dead);
    assert_eq!(dead_lettered.len(), 1);
    assert_eq!(dead_lettered[0].id, "loop");
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}

#[test]
fn a_user_who_may_not_publish_the_copies_is_exit_15() {
    // Everything but publishing to the default exchange, which carries a
    // classic queue's counts.
    fm_e2e::broker::ensure_user("fm-e2e-nowrite", "secret", Some([".*", "^fm-e2e-.*", ".*"]));
    let (broker, queue, dir, conf) = fm_e2e::broker::queue_with(
        "limit-nowrite",
        "[delivery_limit]\nmax = 3\n",
        &[("loop", json!({"do": "nack"}))],
    );
    let config = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("guest:guest", "fm-e2e-nowrite:secret");
    let conf = config_file(dir.path(), &config);
    let run = run(&mut limited_consume(&conf));
    assert_eq!(run.code(), 15, "{run:#?}");
    assert!(
        run.stderr.contains(
            "the broker does not let this user publish to exchange \"\": 403 ACCESS_REFUSED"
        ) && run.stderr.contains("or remove [delivery_limit]"),
        "{run:#?}"
    );
    // Nothing lost: the message is back in its queue.
    broker.wait_depth(&queue, 1);
    broker.delete_queue(&queue);
}

#[test]
fn a_limit_without_a_secret_is_exit_2_and_says_how_to_make_one() {
    let dir = scratch();
    let queue = TestBroker::unique_name("limit-no-secret");
    let conf = config_file(
        dir.path(),
        &queue_config(&queue, "[delivery_limit]\nmax = 2\n"),
    );
    let run = run(&mut scripted_consume(&conf));
    assert_eq!(run.code(), 2, "{run:#?}");
    assert!(
        run.stderr
            .contains("[delivery_limit] needs a secret to seal its delivery counts")
            && run.stderr.contains("head -c 32 /dev/urandom"),
        "{run:#?}"
    );
    let short = dir.path().join("short.secret");
    std::fs::write(&short, "too short").unwrap();
    let conf = config_file(
        dir.path(),
        &queue_config(
            &queue,
            &format!(
                "[delivery_limit]\nmax = 2\nsecret_file = \"{}\"\n",
                short.display()
            ),
        ),
    );
    let run = fm_e2e::run(&mut scripted_consume(&conf));
    assert_eq!(run.code(), 2, "{run:#?}");
    assert!(
        run.stderr.contains("has 9 bytes, fewer than 16"),
        "{run:#?}"
    );
}

#[test]
fn a_dead_letter_routed_nowhere_is_kept_until_a_binding_appears() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("limit-unbound");
    // Declared, and not bound to the dead-letter exchange yet.
    let dead = format!("{queue}-dead");
    broker.declare_queue(&dead, FieldTable::default());
    broker.declare_queue(&queue, FieldTable::default());
    for (id, action) in [("loop", "nack"), ("g1", "ack")] {
        broker
            .publish(&json!({"id": id, "topic": format!("{queue}.test"), "body": {"do": action}}));
    }
    let config = queue_config(
        &queue,
        &format!(
            "[delivery_limit]\nmax = 2\ndead_letter_exchange = \"amq.direct\"\ndead_letter_routing_key = \"{dead}\"\n"
        ),
    );
    let dir = scratch();
    let conf = config_file(dir.path(), &config);
    let mut consumer = Running::start(&mut limited_consume(&conf));
    consumer.wait_for(
        "Dead-letter exchange \"amq.direct\" did not take message loop (routed nowhere, once)",
        WAIT,
    );
    // Kept, and the queue flows behind it.
    consumer.wait_for("(g1): ack", WAIT);
    consumer.wait_for(
        "Dead-letter exchange \"amq.direct\" did not take message loop (routed nowhere, 2 times)",
        WAIT,
    );
    assert_eq!(broker.depth(&dead), 0);
    broker.bind(&dead, "amq.direct", &dead);
    broker.wait_depth(&dead, 1);
    broker.wait_depth(&queue, 0);
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(scripted_starts(&run.stdout, "loop"), 2, "{run:#?}");
    assert_eq!(broker.take_all(&dead)[0].id, "loop");
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}

#[test]
fn a_full_queue_that_refuses_the_copy_still_drains() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("limit-full");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(2));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    broker.declare_queue(&queue, arguments);
    let record =
        |id: &str, body: Value| json!({"id": id, "topic": format!("{queue}.test"), "body": body});
    // Nacked once, a second into its first attempt: by then the queue is
    // full behind it, and it refuses the copy that carries the count.
    broker.publish(&record(
        "first",
        json!({"do": "nack_once", "sleep_once_ms": 1000}),
    ));
    broker.publish(&record("g1", json!({"do": "ack"})));
    let config = queue_config(
        &queue,
        "[qos]\nprefetch_count = 1\n\n[delivery_limit]\nmax = 3\n",
    )
    .replace(
        "arguments = {}",
        "arguments = {\"x-max-length\" = 2, \"x-overflow\" = \"reject-publish\"}",
    );
    let dir = scratch();
    let conf = config_file(dir.path(), &config);
    let mut consumer = Running::start(&mut limited_consume(&conf));
    consumer.wait_for("(first): nack_once", WAIT);
    broker.publish(&record("g2", json!({"do": "ack"})));
    // The messages behind it are consumed.
    consumer.wait_for("(g1): ack", WAIT);
    consumer.wait_for("(g2): ack", WAIT);
    broker.wait_depth(&queue, 0);
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        run.stdout.contains("refused the copy of message first"),
        "{run:#?}"
    );
    assert_eq!(scripted_starts(&run.stdout, "first"), 2, "{run:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn a_nack_loop_is_slowed_while_the_messages_behind_it_flow() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("limit-backoff");
    let dead = format!("{queue}-dead");
    broker.declare_queue(&dead, FieldTable::default());
    broker.bind(&dead, "amq.direct", &dead);
    broker.declare_queue(&queue, FieldTable::default());
    let record =
        |id: &str, body: Value| json!({"id": id, "topic": format!("{queue}.test"), "body": body});
    broker.publish(&record("loop", json!({"do": "nack"})));
    for good in ["g1", "g2", "g3"] {
        broker.publish(&record(good, json!({"do": "ack"})));
    }
    let config = queue_config(
        &queue,
        &format!(
            "[delivery_limit]\nmax = 4\nretry_delay = 0.5\nmax_retry_delay = 30\ndead_letter_exchange = \"amq.direct\"\ndead_letter_routing_key = \"{dead}\"\n"
        ),
    );
    let dir = scratch();
    let conf = config_file(dir.path(), &config);
    let mut consumer = Running::start(&mut limited_consume(&conf));
    let mut attempts = Vec::new();
    for count in 1..=4 {
        consumer.wait_for_count("(loop): nack", count, WAIT);
        attempts.push(Instant::now());
    }
    broker.wait_depth(&dead, 1);
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    let gaps: Vec<Duration> = attempts.windows(2).map(|pair| pair[1] - pair[0]).collect();
    eprintln!("nack loop with retry_delay = 0.5: attempts {gaps:?} apart");
    // Lower bounds only (the wait is the point), less 200 ms for the
    // pipe: a line read late makes the next gap look shorter.
    for (gap, wait) in gaps.iter().zip([0.5, 1.0, 2.0]) {
        assert!(
            gap.as_secs_f64() >= wait - 0.2,
            "{gaps:?} are not spaced by 0.5, 1 and 2 s: {run:#?}"
        );
    }
    // The messages behind it were consumed during the first wait.
    let position = |needle: &str| run.stdout.find(needle).unwrap_or(usize::MAX);
    let second_attempt = run
        .stdout
        .match_indices("(loop): nack")
        .nth(1)
        .map_or(0, |(at, _)| at);
    assert!(position("(g3): ack") < second_attempt, "{run:#?}");
    assert_eq!(scripted_starts(&run.stdout, "loop"), 4, "{run:#?}");
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}

#[test]
fn a_dead_letter_exchange_that_routes_back_makes_no_loop() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("limit-cycle");
    broker.declare_queue(&queue, FieldTable::default());
    let record =
        |id: &str, body: Value| json!({"id": id, "topic": format!("{queue}.test"), "body": body});
    broker.publish(&record("loop", json!({"do": "nack"})));
    // amq.topic with the message's own topic: straight back to the queue.
    let config = queue_config(
        &queue,
        "[delivery_limit]\nmax = 2\nretry_delay = 0\ndead_letter_exchange = \"amq.topic\"\n",
    );
    let dir = scratch();
    let conf = config_file(dir.path(), &config);
    let mut consumer = Running::start(&mut limited_consume(&conf));
    consumer.wait_for("Message loop came back to queue", WAIT);
    // Consuming goes on, and the loop is not consumed again meanwhile.
    broker.publish(&record("after", json!({"do": "ack"})));
    consumer.wait_for("(after): ack", WAIT);
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(scripted_starts(&run.stdout, "loop"), 2, "{run:#?}");
    // Kept: back in its queue once the host let it go.
    let left = broker.take_all(&queue);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].id, "loop");
    broker.delete_queue(&queue);
}
