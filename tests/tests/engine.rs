//! The engine never stuck, never silent (issue #11): a peer that never
//! speaks AMQP, a stalled engine and the systemd watchdog, halts and
//! failures during a broker outage, settlements that hang, a channel
//! closed while jobs wait, and the prefetch of "no limit".
//!
//! Outages go through a TCP proxy of the test's own ([`Proxy`]); the
//! faults the broker cannot be made to cause are the host's test seams
//! (`FM_TEST_*`, see `host/src/engine/seams.rs`).

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use fm_e2e::broker::{TestBroker, queue_config, queue_config_at};
use fm_e2e::nodes::{rabbitmqctl, version};
use fm_e2e::process::Running;
use fm_e2e::proxy::Proxy;
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn record(queue: &str, id: &str, body: Value) -> Value {
    json!({"id": id, "topic": format!("{queue}.test"), "body": body})
}

/// A fresh durable queue on the test broker holding `messages` (id, body).
fn queue_with_messages(prefix: &str, messages: &[(&str, Value)]) -> (TestBroker, String) {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name(prefix);
    broker.declare_queue(&queue, FieldTable::default());
    for (id, body) in messages {
        broker.publish(&record(&queue, id, body.clone()));
    }
    (broker, queue)
}

/// The messages ready and unacknowledged in `queue`, by rabbitmqctl.
fn ready_and_unacked(queue: &str) -> (u32, u32) {
    let listing = rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]);
    listing
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.first() == Some(&queue))
                .then(|| (fields[1].parse().unwrap(), fields[2].parse().unwrap()))
        })
        .unwrap_or_else(|| panic!("no queue {queue} in {listing}"))
}

/// Waits until `queue` holds `expected` (ready, unacknowledged) messages:
/// the broker returns what a closed connection held a moment after.
fn wait_ready_and_unacked(queue: &str, expected: (u32, u32)) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = ready_and_unacked(queue);
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: {now:?}, not {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many times Scripted started each message id.
fn consumptions(output: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in output.lines() {
        let Some((_, after)) = line.split_once("message #") else {
            continue;
        };
        let Some(id) = after
            .split_once(" (")
            .and_then(|(_, rest)| rest.split_once(')'))
            .map(|(id, _)| id)
        else {
            continue;
        };
        *counts.entry(id.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// A peer that accepts TCP and never says a word, as a hung node or a
/// half-open load balancer does. Each accepted socket is handed to
/// `accepted`.
fn silent_peer() -> (u16, std::sync::mpsc::Receiver<std::net::TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sender, accepted) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for socket in listener.incoming().flatten() {
            if sender.send(socket).is_err() {
                break;
            }
        }
    });
    (port, accepted)
}

#[test]
fn a_peer_that_never_speaks_amqp_times_out_backs_off_and_a_stop_is_prompt() {
    let dir = scratch();
    // With the URL's stack_timeout, each attempt gives up after 1 s, is
    // logged, and the next waits by the backoff.
    let (port, accepted) = silent_peer();
    let conf = config_file(
        dir.path(),
        &queue_config_at(
            &format!("amqp://127.0.0.1:{port}/?stack_timeout=1"),
            "silent",
            "",
        ),
    );
    let mut consumer = Running::start(&mut scripted_consume(&conf));
    consumer.wait_for("Connecting to amqp://guest@127.0.0.1", WAIT);
    let first = accepted.recv_timeout(WAIT).expect("no connection attempt");
    let timed_out = consumer.wait_for("(attempt 1): no open AMQP connection within 1.0 s", WAIT);
    assert!(timed_out.contains("retrying in"), "{timed_out}");
    // The given-up attempt's socket is closed, not left to lapin's thread.
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 64];
    let mut read = 0;
    loop {
        match (&first).read(&mut byte) {
            // The AMQP protocol header the client sent first.
            Ok(size) if size > 0 => read += size,
            Ok(_) => break,
            Err(error) => panic!("the abandoned socket stayed open ({read} bytes read): {error}"),
        }
    }
    consumer.wait_for("(attempt 2): no open AMQP connection", WAIT);
    consumer.signal("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");

    // With pika's default timeouts (15 s), a stop during the attempt ends
    // the process at once.
    let (port, accepted) = silent_peer();
    let conf = config_file(
        dir.path(),
        &queue_config_at(&format!("amqp://127.0.0.1:{port}/"), "silent", ""),
    );
    let mut consumer = Running::start(&mut scripted_consume(&conf));
    consumer.wait_for("(attempt 1)", WAIT);
    let _held = accepted.recv_timeout(WAIT).expect("no connection attempt");
    let asked = Instant::now();
    consumer.signal("TERM");
    let run = consumer.finish();
    let took = asked.elapsed();
    eprintln!("silent peer: SIGTERM during the handshake exited after {took:?}");
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {run:#?}");
    assert!(run.stdout.contains("stopping gracefully"), "{run:#?}");
}

#[test]
fn the_watchdog_goes_quiet_when_the_engine_stalls() {
    let (broker, queue) = queue_with_messages(
        "stall",
        &[
            ("m1", json!({"do": "ack", "sleep_ms": 1000})),
            ("stall", json!({"do": "ack"})),
        ],
    );
    let dir = scratch();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let conf = config_file(dir.path(), &queue_config(&queue, ""));
    let mut command = scripted_consume(&conf);
    command
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env("FM_TEST_STALL_ENGINE_ON", "stall");
    let mut consumer = Running::start(&mut command);
    let mut buffer = [0u8; 4096];
    // Pings (every 0.2 s) until the engine stalls, then none, while the
    // process lives on: what systemd's WatchdogSec= kills and, with
    // Restart=on-failure, restarts.
    consumer.wait_for("the engine stalls on message stall", WAIT);
    let mut before = 0;
    while let Ok(size) = socket.recv(&mut buffer) {
        before += usize::from(&buffer[..size] == b"WATCHDOG=1");
    }
    let quiet = Instant::now();
    let mut after = 0;
    while quiet.elapsed() < Duration::from_secs(2) {
        if let Ok(size) = socket.recv(&mut buffer) {
            after += usize::from(&buffer[..size] == b"WATCHDOG=1");
        }
    }
    let alive = std::path::Path::new(&format!("/proc/{}", consumer.pid())).exists();
    consumer.signal("KILL");
    let _ = consumer.finish();
    eprintln!("stalled engine: {before} pings before, {after} in the 2 s after");
    assert!(before >= 3, "{before} pings while the engine turned");
    assert_eq!(after, 0, "the watchdog was pinged by a stalled engine");
    assert!(alive, "the process should still run, stalled");
    let unit = std::fs::read_to_string(workspace_root().join("fm-consumer@.service")).unwrap();
    assert!(unit.lines().any(|line| line == "Restart=on-failure"));
    broker.delete_queue(&queue);
}

/// A consumer answers `body` (after 2 s) while the broker is unreachable:
/// the process exits with `code` soon after the answer, without waiting
/// for the broker, and the message is back in its queue.
///
/// The cut closes the socket (a FIN, as from a dying peer). lapin learns
/// of a half-closed socket either at once or only at its next write, so
/// the host may learn that the connection is gone before the answer, or
/// from the answer's settlement: both must end the same way.
fn answer_during_an_outage(body: Value, code: i32) {
    let (broker, queue) = queue_with_messages("outage", &[("m1", body)]);
    let proxy = Proxy::start(version().address);
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config_at(&proxy.url(), &queue, ""));
    let mut consumer = Running::start(&mut scripted_consume(&conf));
    consumer.wait_for("message #1 (m1)", WAIT);
    let cut = Instant::now();
    proxy.cut();
    let run = consumer.finish();
    let took = cut.elapsed();
    eprintln!("answer {code} during an outage: exited {took:?} after the cut");
    assert_eq!(run.code(), code, "{run:#?}");
    // 2 s of consumer, and no reconnecting in between.
    assert!(took < Duration::from_secs(6), "took {took:?}: {run:#?}");
    let learnt_first = run.stdout.contains("Lost the connection")
        && run.stdout.contains("Message m1 was answered")
        && run.stdout.contains("the broker delivers it again");
    let learnt_at_settling = run.stdout.lines().any(|line| {
        line.contains("Could not settle message m1")
            && line.contains("the broker will deliver it again")
    });
    assert!(learnt_first || learnt_at_settling, "{run:#?}");
    // The broker took the message back when the connection died.
    wait_ready_and_unacked(&queue, (1, 0));
    broker.delete_queue(&queue);
}

#[test]
fn a_halt_during_a_broker_outage_exits_without_the_broker() {
    answer_during_an_outage(json!({"do": "halt", "code": 7, "sleep_ms": 2000}), 7);
}

#[test]
fn a_failure_during_a_broker_outage_exits_without_the_broker() {
    answer_during_an_outage(json!({"do": "fail", "sleep_ms": 2000}), 13);
}

/// The settlement of `m2`, which asks the host to stop, never completes:
/// after 5 s the connection is presumed dead, the process still exits with
/// `code`, and every message but `m1` is back in the queue.
fn settle_hangs_on(body: Value, code: i32) {
    let mut messages = vec![("m1", json!({"do": "ack"})), ("m2", body)];
    let rest: Vec<String> = (3..=6).map(|n| format!("m{n}")).collect();
    messages.extend(rest.iter().map(|id| (id.as_str(), json!({"do": "ack"}))));
    let (broker, queue) = queue_with_messages("hung-settle", &messages);
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config(&queue, ""));
    let mut command = scripted_consume(&conf);
    command.env("FM_TEST_HANG_SETTLE_OF", "m2");
    let run = run(&mut command);
    assert_eq!(run.code(), code, "{run:#?}");
    assert!(
        run.stdout
            .contains("settling a message: no answer from the broker within 5s"),
        "{run:#?}"
    );
    assert!(!run.stdout.contains("message #3"), "{run:#?}");
    wait_ready_and_unacked(&queue, (5, 0));
    let left: Vec<String> = broker.drain(&queue).into_iter().map(|m| m.id).collect();
    assert_eq!(left, ["m2", "m3", "m4", "m5", "m6"]);
    broker.delete_queue(&queue);
}

#[test]
fn a_halt_whose_settlement_hangs_still_exits_with_its_code() {
    settle_hangs_on(json!({"do": "halt", "code": 5}), 5);
}

#[test]
fn a_failure_whose_settlement_hangs_still_exits_thirteen() {
    settle_hangs_on(json!({"do": "fail"}), 13);
}

#[test]
fn a_channel_closed_while_messages_wait_runs_no_message_twice_because_of_it() {
    // The one worker takes `slow`, whose delivery makes the broker close
    // the channel while `slow` runs and q1…q6 and `last` wait in lapin's
    // buffer. `slow` was running, so its answer cannot be settled and it
    // runs again; the waiting ones must not start on the dead channel.
    let mut messages = vec![("slow", json!({"do": "ack", "sleep_ms": 300}))];
    let waiting: Vec<String> = (1..=6).map(|n| format!("q{n}")).collect();
    messages.extend(waiting.iter().map(|id| (id.as_str(), json!({"do": "ack"}))));
    messages.push(("last", json!({"do": "halt"})));
    let (broker, queue) = queue_with_messages("channel-closed", &messages);
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config(&queue, ""));
    let mut command = scripted_consume(&conf);
    command.env("FM_TEST_BREAK_CHANNEL_ON", "slow");
    let run = run(&mut command);
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        run.stdout.contains("opening a new channel for queue"),
        "{run:#?}"
    );
    let counts = consumptions(&run.stdout);
    eprintln!("channel closed with messages waiting: consumptions {counts:?}");
    for id in waiting.iter().map(String::as_str).chain(["last"]) {
        assert_eq!(counts.get(id), Some(&1), "{id} in {counts:?}\n{run:#?}");
    }
    // `slow` normally ran while the channel closed: its answer could not
    // be settled (whether the engine, the ledger or lapin noticed first),
    // it was said so, and it ran again. Had the broker closed the channel
    // before its worker started it, it ran once.
    match counts.get("slow") {
        Some(2) => assert!(
            run.stdout
                .contains("Message slow was answered (ack) after the channel it came on closed")
                || run
                    .stdout
                    .contains("Could not settle message slow (Ack): its channel has closed")
                || run
                    .stdout
                    .contains("Could not acknowledge 1 message(s) of queue"),
            "{run:#?}"
        ),
        Some(1) => {}
        other => panic!("slow ran {other:?} times: {run:#?}"),
    }
    // Each message counted once: the answer that could not be settled is
    // not counted.
    assert!(
        run.stdout.contains("Message counts: ") && run.stdout.contains(" 8 processed,"),
        "{run:#?}"
    );
    assert_eq!(broker.depth(&queue), 0);
    broker.delete_queue(&queue);
}

#[test]
fn a_prefetch_of_no_limit_is_bounded() {
    let (broker, queue) = queue_with_messages("prefetch-zero", &[]);
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config(&queue, "[qos]\nprefetch_count = 0"),
    );
    let mut consumer = Running::start(&mut scripted_consume(&conf));
    consumer.wait_for("qos.prefetch_count = 0 (no limit)", WAIT);
    consumer.wait_for("Consuming messages from queue", WAIT);
    let channels = rabbitmqctl(&[
        "list_consumers",
        "-q",
        "--no-table-headers",
        "queue_name",
        "prefetch_count",
    ]);
    let prefetch = channels
        .lines()
        .find(|line| {
            line.starts_with(&format!("{queue}\t"))
                || line.split_whitespace().next() == Some(&queue)
        })
        .and_then(|line| line.split_whitespace().nth(1).map(str::to_owned));
    broker.publish(&record(&queue, "end", json!({"do": "halt"})));
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(prefetch.as_deref(), Some("1000"), "{channels}");
    broker.delete_queue(&queue);
}

#[test]
fn a_panic_in_a_consumers_drop_keeps_the_halt_code() {
    let (broker, queue) = queue_with_messages(
        "drop-panic",
        &[(
            "m1",
            json!({"do": "halt", "code": 4, "panic_on_drop": true}),
        )],
    );
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config(&queue, ""));
    let run = run(&mut scripted_consume(&conf));
    assert_eq!(run.code(), 4, "{run:#?}");
    assert!(run.output().contains("panicked"), "{run:#?}");
    assert_eq!(broker.depth(&queue), 0);
    broker.delete_queue(&queue);
}

#[test]
fn publish_to_a_peer_that_never_speaks_gives_up_at_its_30_s_deadline() {
    let (port, _accepted) = silent_peer();
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &format!("amqp_url = \"amqp://127.0.0.1:{port}/\"\n"),
    );
    let input = record_file(dir.path(), &[json!({"topic": "t", "body": {}})]);
    // (Built before the clock starts: the first call builds the binary.)
    let mut publish = fedora_messaging();
    publish.arg("--conf").arg(&conf).arg("publish").arg(&input);
    let started = Instant::now();
    let run = run(&mut publish);
    let took = started.elapsed();
    eprintln!(
        "publish to a silent peer: exit {:?} after {took:?}",
        run.status.code()
    );
    assert_eq!(run.code(), 111, "{run:#?}");
    assert!(
        (Duration::from_secs(29)..Duration::from_secs(40)).contains(&took),
        "took {took:?}: {run:#?}"
    );
    assert!(run.stderr.contains("within 30 s"), "{run:#?}");
}

#[test]
fn a_stop_behind_a_slow_broker_keeps_the_watchdog_fed_and_ends_in_time() {
    // 100 messages prefetched, the first running for a second, when every
    // request to the broker starts taking 3 s: the stop's cancels, the
    // last acks and the close each take most of their 5 s bound, one
    // after the other. The watchdog (2 s here) must hear the engine
    // throughout, and the process end well within the unit's stop timeout.
    let messages: Vec<(String, Value)> = (1..=100)
        .map(|n| (format!("m{n}"), json!({"do": "ack", "sleep_ms": 1000})))
        .collect();
    let borrowed: Vec<(&str, Value)> = messages
        .iter()
        .map(|(id, body)| (id.as_str(), body.clone()))
        .collect();
    let (broker, queue) = queue_with_messages("slow-stop", &borrowed);
    let proxy = Proxy::start(version().address);
    let dir = scratch();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let conf = config_file(
        dir.path(),
        &queue_config_at(&proxy.url(), &queue, "[qos]\nprefetch_count = 100"),
    );
    let mut command = scripted_consume(&conf);
    command
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000");
    let mut consumer = Running::start(&mut command);
    consumer.wait_for("message #1 (m1)", WAIT);
    proxy.slow_down(Duration::from_millis(1500));
    let stopped = Instant::now();
    consumer.signal("TERM");
    let mut pings = vec![stopped];
    let mut buffer = [0u8; 4096];
    while !consumer.has_ended() {
        assert!(stopped.elapsed() < Duration::from_secs(90), "no end");
        if let Ok(size) = socket.recv(&mut buffer)
            && &buffer[..size] == b"WATCHDOG=1"
        {
            pings.push(Instant::now());
        }
    }
    let ended = Instant::now();
    pings.push(ended);
    let run = consumer.finish();
    let longest = pings
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    eprintln!(
        "stop behind a slow broker: ended {:?} after SIGTERM, {} pings, longest gap {longest:?}",
        ended - stopped,
        pings.len() - 2
    );
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        longest < Duration::from_secs(2),
        "the watchdog went {longest:?} without a ping: {run:#?}"
    );
    // The unit leaves TimeoutStopSec at systemd's 90 s.
    assert!(ended - stopped < Duration::from_secs(60), "{run:#?}");
    drop(proxy);
    // Whatever was not settled went back when the connection closed.
    let deadline = Instant::now() + WAIT;
    while broker.depth(&queue) < 99 {
        assert!(Instant::now() < deadline, "{run:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    broker.delete_queue(&queue);
}
