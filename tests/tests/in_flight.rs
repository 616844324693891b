//! Exact to the last answer (issue #24): what is in flight is counted once,
//! by a token that lives until the message's answer has been acted on, so
//! draining never ends with an answer unread; a panic on a consumer thread
//! is a failure; a consumer that cannot be built lets the others finish;
//! and the release binary has no test seams.
//!
//! Each race is made certain, not likely: two workers meet in a
//! rendezvous (so both messages are started), the first answers at once,
//! and its settlement is slowed or hung by a test seam while the second
//! answers a second later.

use std::time::{Duration, Instant};

use fm_e2e::broker::{TestBroker, queue_with};
use fm_e2e::process::Running;
use fm_e2e::*;
use serde_json::{Value, json};

/// Longer than any of these runs takes when the host is right; a host
/// that never finishes draining fails here instead of at the harness's
/// 150 s.
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `command` to its end, failing the test if that takes longer than
/// [`DEADLINE`].
fn run_within(command: &mut std::process::Command) -> Run {
    let mut running = Running::start(command);
    let started = Instant::now();
    while !running.has_ended() {
        if started.elapsed() > DEADLINE {
            running.signal("KILL");
            let run = running.finish();
            panic!("the host did not end within {DEADLINE:?}: {run:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    running.finish()
}

/// Two workers start `m1` (which halts with 3 at once) and `m2` (which
/// answers with `second` a second later) side by side; `seam` slows or
/// hangs `m1`'s settlement, so `m2`'s answer reaches the engine while it
/// is inside that settlement. The run, and the ids left in the queue.
fn second_answer_during_a_settlement(seam: &str, second: Value) -> (Run, Vec<String>) {
    let mut second = second;
    second["rendezvous"] = json!(2);
    second["sleep_ms"] = json!(1000);
    let (broker, queue, _dir, conf) = queue_with(
        "in-flight",
        "workers = 2",
        &[
            ("m1", json!({"do": "halt", "code": 3, "rendezvous": 2})),
            ("m2", second),
        ],
    );
    let mut command = scripted_consume(&conf);
    command.env(seam, "m1");
    let run = run_within(&mut command);
    let left = leftover(&broker, &queue);
    (run, left)
}

/// The ids in `queue`, once the broker has taken back what the host's
/// connection held; the queue is deleted.
fn leftover(broker: &TestBroker, queue: &str) -> Vec<String> {
    let mut left: Vec<String> = broker.drain(queue).into_iter().map(|m| m.id).collect();
    left.sort();
    broker.delete_queue(queue);
    left
}

#[test]
fn a_failure_while_a_halts_settlement_hangs_exits_13() {
    // The reviewer's recipe: the halt's settlement hangs (the connection
    // is then presumed dead, so both messages come back), and the failure
    // a second later must still rank over the halt.
    let (run, left) =
        second_answer_during_a_settlement("FM_TEST_HANG_SETTLE_OF", json!({"do": "fail"}));
    assert_eq!(run.code(), 13, "{run:#?}");
    assert!(
        run.stdout
            .contains("Unexpected error occurred in consumer Scripted on message m2"),
        "{run:#?}"
    );
    assert_eq!(left, ["m1", "m2"], "{run:#?}");
}

#[test]
fn a_failure_while_a_halt_is_being_settled_exits_13() {
    let (run, left) =
        second_answer_during_a_settlement("FM_TEST_SLOW_SETTLE_OF", json!({"do": "fail"}));
    assert_eq!(run.code(), 13, "{run:#?}");
    // m1's halt was acked; m2 failed and went back.
    assert_eq!(left, ["m2"], "{run:#?}");
}

#[test]
fn a_drop_while_a_halt_is_being_settled_is_rejected_not_requeued() {
    let (run, left) =
        second_answer_during_a_settlement("FM_TEST_SLOW_SETTLE_OF", json!({"do": "drop"}));
    assert_eq!(run.code(), 3, "{run:#?}");
    assert!(
        left.is_empty(),
        "m2 was dropped, yet {left:?} are queued: {run:#?}"
    );
}

#[test]
fn a_halt_without_requeue_while_another_halt_is_being_settled_does_not_come_back() {
    let (run, left) = second_answer_during_a_settlement(
        "FM_TEST_SLOW_SETTLE_OF",
        json!({"do": "halt", "code": 5}),
    );
    // The first halt's code wins; the second's message was acked.
    assert_eq!(run.code(), 3, "{run:#?}");
    assert!(left.is_empty(), "{left:?} came back: {run:#?}");
}

#[test]
fn a_panic_on_a_consumer_thread_is_a_failure_and_draining_ends() {
    let (broker, queue, _dir, conf) = queue_with(
        "thread-panic",
        "",
        &[
            ("m1", json!({"do": "ack"})),
            ("m2", json!({"do": "ack"})),
            ("m3", json!({"do": "ack"})),
        ],
    );
    let mut command = scripted_consume(&conf);
    command.env("FM_TEST_PANIC_ON", "m2");
    let run = run_within(&mut command);
    assert_eq!(run.code(), 13, "{run:#?}");
    assert!(
        run.stderr
            .contains("test seam: a consumer thread panics on message m2"),
        "{run:#?}"
    );
    assert!(
        run.stdout.contains("A consumer thread panicked"),
        "{run:#?}"
    );
    assert!(!run.stdout.contains("message #2"), "{run:#?}");
    assert_eq!(leftover(&broker, &queue), ["m2", "m3"], "{run:#?}");
}

#[test]
fn a_consumer_that_cannot_be_built_stops_the_host_before_anything_is_consumed() {
    // Instance 2's `new` fails: consuming never began, so no message was
    // delivered (issue #27: every consumer is built before basic.consume).
    let (broker, queue, _dir, conf) = queue_with(
        "build-fails",
        "workers = 2\n[consumer_config]\nfail_instance = 2",
        &[
            ("m1", json!({"do": "ack", "sleep_ms": 1000})),
            ("m2", json!({"do": "ack"})),
        ],
    );
    let run = run_within(&mut scripted_consume(&conf));
    assert_eq!(run.code(), 1, "{run:#?}");
    assert!(
        run.stderr
            .contains("instance 2 was told to fail (fail_instance)"),
        "{run:#?}"
    );
    assert!(!run.stdout.contains("Consuming messages"), "{run:#?}");
    // The instance that was built stops gracefully.
    assert!(run.stdout.contains("stopping after 0 messages"), "{run:#?}");
    let left = broker.take_all(&queue);
    let ids: Vec<&str> = left.iter().map(|taken| taken.id.as_str()).collect();
    assert_eq!(ids, ["m1", "m2"], "{run:#?}");
    assert!(left.iter().all(|taken| !taken.redelivered), "{run:#?}");
    broker.delete_queue(&queue);
}

/// The host built for release, as the packages build it: without the
/// tests' `test-seams` feature.
fn release_host() -> std::path::PathBuf {
    let status = cargo()
        .args(["build", "--quiet", "--release", "-p", "fm-host"])
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "cargo build --release -p fm-host: {status}"
    );
    target_dir().join("release").join("fedora-messaging")
}

#[test]
fn the_release_binary_ignores_every_test_seam() {
    let ids = ["stall", "hang", "slow", "break", "panic"];
    let mut messages: Vec<(&str, Value)> =
        ids.iter().map(|id| (*id, json!({"do": "ack"}))).collect();
    messages.push(("end", json!({"do": "halt"})));
    let (broker, queue, dir, conf) = queue_with("no-seams", "", &messages);
    let mut command = std::process::Command::new(release_host());
    command
        .env_remove("FEDORA_MESSAGING_CONF")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .current_dir(dir.path())
        .arg("--conf")
        .arg(&conf)
        .args(["consume", "--callback"])
        .arg(scripted())
        .env("FM_TEST_STALL_ENGINE_ON", "stall")
        .env("FM_TEST_HANG_SETTLE_OF", "hang")
        .env("FM_TEST_SLOW_SETTLE_OF", "slow")
        .env("FM_TEST_BREAK_CHANNEL_ON", "break")
        .env("FM_TEST_PANIC_ON", "panic");
    let run = run_within(&mut command);
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(!run.output().contains("test seam"), "{run:#?}");
    assert!(!run.output().contains("opening a new channel"), "{run:#?}");
    for (number, id) in ids.iter().chain(&["end"]).enumerate() {
        let line = format!("message #{} ({id})", number + 1);
        assert!(run.stdout.contains(&line), "no {line:?}: {run:#?}");
    }
    assert!(leftover(&broker, &queue).is_empty(), "{run:#?}");
}

#[test]
fn a_consumer_whose_build_hangs_does_not_keep_a_stop_from_ending() {
    // Instance 2 never finishes `new` (an import that hangs), so consuming
    // never begins. A stop waits for the threads a bounded time (30 s,
    // once: not once more when the connection is gone), then exits.
    let (broker, queue, _dir, conf) = queue_with(
        "build-hangs",
        "workers = 2\n[consumer_config]\nhang_instance = 2",
        &[("m1", json!({"do": "ack"}))],
    );
    let mut consumer = Running::start(&mut scripted_consume(&conf));
    consumer.wait_for("instance 2 hangs in new", DEADLINE);
    let stopped = Instant::now();
    consumer.signal("TERM");
    while !consumer.has_ended() {
        assert!(
            stopped.elapsed() < Duration::from_secs(45),
            "the stop did not end within 45 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = stopped.elapsed();
    let run = consumer.finish();
    eprintln!("a stop with a consumer still being built took {took:?}");
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        run.stdout
            .contains("A consumer thread did not end within 30s"),
        "{run:#?}"
    );
    assert!(!run.stdout.contains("Consuming messages"), "{run:#?}");
    assert_eq!(leftover(&broker, &queue), ["m1"], "{run:#?}");
}
