//! The Python bridge (`plugins/python`): fedora-messaging Python callbacks
//! run unchanged in this host. The callbacks are the ones fedora-messaging
//! 3.9 ships (`fedora_messaging.example:printer`) or ones written as its
//! users write them (tests/fixtures/python/bridge_callbacks.py), run by the
//! Python of a virtual environment holding fedora-messaging and a real
//! schema package from PyPI.

use std::process::Command;
use std::time::{Duration, Instant};

use fm_e2e::broker::{TestBroker, dead_lettered_queue, queue_tables};
use fm_e2e::nodes::amqp_url;
use fm_e2e::process::Running;
use fm_e2e::python::{
    bridge_config, bridge_host as host, bridge_host_running as host_running, bridge_venv,
    fedora_messaging_py, ids_of, interpreter, log_config, written,
};
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// fedora-messaging's configuration for `queue`, bound to `topics`: the
/// same text serves both implementations.
fn plain_config(queue: &str, topics: &str) -> String {
    let url = amqp_url();
    format!(
        "amqp_url = \"{url}\"\ncallback = \"fedora_messaging.example:printer\"\n\n{}",
        queue_tables(queue, topics)
    )
}

/// What the printer printed: standard output without Python's log lines
/// (`[logger LEVEL] text`, which its default log_config writes there).
fn printed(stdout: &str) -> String {
    stdout
        .lines()
        .filter(|line| {
            let is_log = line.starts_with('[')
                && line.split_once("] ").is_some_and(|(head, _)| {
                    ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
                        .iter()
                        .any(|level| head.ends_with(level))
                });
            !is_log
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
fn the_printer_prints_what_pythons_cli_prints_from_the_same_config_text() {
    let broker = TestBroker::connect();
    let shared = TestBroker::unique_name("bridge-printer");
    let (theirs, ours) = (format!("{shared}-py"), format!("{shared}-rs"));
    for queue in [&theirs, &ours] {
        broker.declare_queue(queue, FieldTable::default());
        broker.bind(queue, "amq.topic", &format!("{shared}.#"));
    }
    let sent_at = "2024-05-01T10:00:00+00:00";
    broker.publish_all(&[
        json!({"id": "p1", "topic": format!("{shared}.plain"), "body": {"n": 1, "list": [1, 2.5, null, true]},
               "headers": {"sent-at": sent_at}}),
        json!({"id": "p2", "topic": format!("{shared}.unicode"), "body": {"text": "héllo ✓ \"q\"\n", "nested": {"a": {}}},
               "headers": {"sent-at": sent_at, "fedora_messaging_severity": 30, "fedora_messaging_user_alice": true}}),
        json!({"id": "last", "topic": format!("{shared}.last"), "body": {},
               "headers": {"sent-at": sent_at}}),
    ]);
    let dir = scratch();

    let python_conf = config_file(dir.path(), &plain_config(&theirs, &format!("{shared}.#")));
    let mut python = Running::start(
        fedora_messaging_py()
            .env("PYTHONUNBUFFERED", "1")
            .arg("--conf")
            .arg(&python_conf)
            .arg("consume"),
    );
    python.wait_for("(message id last)", WAIT);
    python.signal("TERM");
    let python = python.finish();

    // The very same configuration text, but for the queue's name, and no
    // [python] table: `python3` is the environment's, as in a shell where
    // it is activated.
    let our_conf = dir.path().join("ours.toml");
    std::fs::write(&our_conf, plain_config(&ours, &format!("{shared}.#"))).unwrap();
    let path = format!(
        "{}:{}",
        bridge_venv().join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut host = Running::start(host(&our_conf).env("PATH", path));
    host.wait_for("Id: last", WAIT);
    host.signal("TERM");
    let host = host.finish();

    assert_eq!(host.code(), 0, "{host:#?}");
    assert!(printed(&python.stdout).contains("Id: p2"), "{python:#?}");
    assert_eq!(printed(&host.stdout), printed(&python.stdout));
}

/// The lines of `output` fedora-messaging's consumer logs per message,
/// with `queue` shown as `Q`.
fn consumer_lines(output: &str, queue: &str) -> Vec<String> {
    output
        .lines()
        .filter(|line| line.starts_with("[fedora_messaging.twisted.consumer "))
        .map(|line| line.replace(queue, "Q"))
        .collect()
}

/// Python's CLI and this host, each run to its halt over the same
/// messages, and the queues they consumed (which their lines name).
struct BothRuns {
    python: Run,
    host: Run,
    theirs: String,
    ours: String,
}

/// Publishes `bodies` (id, body for `Scripted`) under one topic to two
/// queues, and consumes one with Python's CLI and the other with this host,
/// from the same configuration text plus `extra` (TOML tables; this
/// host's also names the interpreter), each until the callback halts.
fn run_both(prefix: &str, bodies: &[(&str, Value)], extra: &str) -> BothRuns {
    let broker = TestBroker::connect();
    let shared = TestBroker::unique_name(prefix);
    let (theirs, ours) = (format!("{shared}-py"), format!("{shared}-rs"));
    for queue in [&theirs, &ours] {
        broker.declare_queue(queue, FieldTable::default());
        broker.bind(queue, "amq.topic", &format!("{shared}.#"));
    }
    let topic = format!("{shared}.test");
    let messages: Vec<Value> = bodies
        .iter()
        .map(|(id, body)| json!({"id": id, "topic": topic, "body": body}))
        .collect();
    broker.publish_all(&messages);
    let dir = scratch();
    let config = |queue: &str, out: &str| {
        plain_config(queue, &format!("{shared}.#")).replace(
            "fedora_messaging.example:printer",
            "bridge_callbacks:Scripted",
        ) + &format!(
            "\n[consumer_config]\nout = \"{}\"\n{extra}",
            dir.path().join(out).display()
        )
    };
    let python_conf = config_file(dir.path(), &config(&theirs, "theirs.jsonl"));
    let python = run(fedora_messaging_py()
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONPATH", workspace_root().join("tests/fixtures/python"))
        .arg("--conf")
        .arg(&python_conf)
        .arg("consume"));
    let our_conf = dir.path().join("ours.toml");
    let ours_text = config(&ours, "ours.jsonl")
        + &format!(
            "\n[python]\ninterpreter = \"{}\"\n",
            interpreter().display()
        );
    std::fs::write(&our_conf, ours_text).unwrap();
    let host = run(&mut host(&our_conf));
    assert_eq!(python.code(), 0, "{python:#?}");
    assert_eq!(host.code(), 0, "{host:#?}");
    broker.delete_queue(&theirs);
    broker.delete_queue(&ours);
    BothRuns {
        python,
        host,
        theirs,
        ours,
    }
}

#[test]
fn each_outcome_logs_the_lines_pythons_consumer_logs() {
    // Operators' journal alerts match these lines: same logger, level and
    // words, for the same messages and outcomes.
    let both = run_both(
        "bridge-lines",
        &[
            ("m1", json!({"do": "ack"})),
            ("m2", json!({"do": "nack_once"})),
            ("m3", json!({"do": "drop"})),
            ("m4", json!({"do": "halt", "code": 0})),
        ],
        "\n[qos]\nprefetch_size = 0\nprefetch_count = 1\n",
    );
    let expected = consumer_lines(&both.python.stdout, &both.theirs);
    assert!(
        expected
            .iter()
            .any(|line| line.contains("Returning message id m2 to the queue")),
        "{:#?}",
        both.python
    );
    assert_eq!(
        consumer_lines(&both.host.stdout, &both.ours),
        expected,
        "{:#?}",
        both.host
    );
}

#[test]
fn log_config_reaches_pythons_own_loggers_as_in_pythons_cli() {
    // fedora_messaging.message's DEBUG line, under two configurations that
    // set fedora_messaging's level against root's.
    let debug_line = "[fedora_messaging.message DEBUG] Successfully validated message";
    for (root, fedora_messaging, shown) in [("WARNING", "DEBUG", true), ("DEBUG", "WARNING", false)]
    {
        let both = run_both(
            "bridge-log-config",
            &[("l1", json!({"do": "halt", "code": 0}))],
            &log_config(root, &[("fedora_messaging", fedora_messaging)]),
        );
        let label = format!("root {root}, fedora_messaging {fedora_messaging}");
        for run in [&both.python, &both.host] {
            assert_eq!(run.stdout.contains(debug_line), shown, "{label}: {run:#?}");
        }
    }
}

#[test]
fn a_class_callback_keeps_its_state_and_its_exceptions_settle_as_in_fedora_messaging() {
    let (broker, queue, dead, config) = dead_lettered_queue(
        "bridge-outcomes",
        "[qos]\nprefetch_size = 0\nprefetch_count = 1\n",
    );
    let published_to = format!("{queue}-out");
    broker.declare_queue(&published_to, FieldTable::default());
    for (id, body) in [
        ("m1", json!({"do": "ack"})),
        ("m2", json!({"do": "nack_once"})),
        ("m3", json!({"do": "drop"})),
        (
            "m4",
            json!({"do": "publish", "to": format!("{published_to}.new")}),
        ),
        ("m5", json!({"do": "halt", "code": 3, "requeue": true})),
    ] {
        broker.publish(&json!({"id": id, "topic": format!("{queue}.test"), "body": body}));
    }
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(
            &config,
            "bridge_callbacks:Scripted",
            &out,
            "from consumer_config",
        ),
    );
    let run = run(&mut host(&conf));

    assert_eq!(run.code(), 3, "{run:#?}");
    let lines = written(&out);
    assert_eq!(
        ids_of(&lines),
        ["m1", "m2", "m2", "m3", "m4", "m5"],
        "{run:#?}"
    );
    for (number, line) in lines.iter().enumerate() {
        assert_eq!(
            line["seen"],
            number + 1,
            "one instance counts every message"
        );
        assert_eq!(line["label"], "from consumer_config");
        assert_eq!(line["class"], "Message");
        assert_eq!(line["queue"], queue.as_str());
    }
    let left: Vec<String> = broker.drain(&queue).into_iter().map(|m| m.id).collect();
    assert_eq!(
        left,
        ["m5"],
        "HaltConsumer(requeue=True) puts its message back"
    );
    let dropped: Vec<String> = broker.drain(&dead).into_iter().map(|m| m.id).collect();
    assert_eq!(dropped, ["m3"], "Drop rejects without requeue");
    let published = broker.take_all(&published_to);
    assert_eq!(published.len(), 1, "{run:#?}");
    // The bytes fedora-messaging's Message encodes (json.dumps' defaults).
    assert_eq!(
        String::from_utf8_lossy(&published[0].body),
        r#"{"from": "m4", "\u00e9t\u00e9": [1, 2.5], "a": null}"#,
        "{run:#?}"
    );
    let output = run.output();
    let logged = output
        .lines()
        .find(|line| line.contains("message m1 asks for ack (number 1 here)"));
    assert!(
        logged.is_some_and(|line| line.contains("bridge_callbacks.scripted")),
        "Python logging reaches the host's log under the logger's name: {run:#?}"
    );
}

#[test]
fn an_exception_or_a_crash_in_python_is_a_failure_that_returns_the_message() {
    for (what, body, expected) in [
        (
            "an exception",
            json!({"do": "raise"}),
            "RuntimeError: the callback gave up on f1",
        ),
        ("a crash", json!({"do": "crash"}), "exit status 7"),
    ] {
        let (broker, queue, _dead, config) = dead_lettered_queue("bridge-failure", "");
        broker.publish(&json!({"id": "f1", "topic": format!("{queue}.test"), "body": body}));
        let dir = scratch();
        let out = dir.path().join("out.jsonl");
        let conf = config_file(
            dir.path(),
            &bridge_config(&config, "bridge_callbacks:Scripted", &out, what),
        );
        let run = run(&mut host(&conf));
        assert_eq!(run.code(), 13, "{what}: {run:#?}");
        assert!(run.output().contains(expected), "{what}: {run:#?}");
        if what == "an exception" {
            assert!(run.output().contains("Traceback"), "{run:#?}");
        }
        let left: Vec<String> = broker.drain(&queue).into_iter().map(|m| m.id).collect();
        assert_eq!(left, ["f1"], "{what}: the message goes back to the queue");
    }
}

#[test]
fn a_child_forked_by_the_callback_cannot_take_the_answer_from_it() {
    // The child logs records far over a pipe's atomic write while the
    // callback returns: a child writing to the answers' pipe would cut the
    // answer in two, and the queue would stall.
    let (broker, queue, _dead, config) = dead_lettered_queue("bridge-fork", "");
    broker.publish(&json!({"id": "k1", "topic": format!("{queue}.test"),
                          "body": {"do": "fork_and_log", "bytes": 200_000, "records": 5}}));
    broker.publish(&json!({"id": "k2", "topic": format!("{queue}.test"),
                          "body": {"do": "halt", "code": 0}}));
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(&config, "bridge_callbacks:Scripted", &out, "fork"),
    );
    let run = run(&mut host(&conf));
    let output = run.output();
    let brief = || output.chars().take(3000).collect::<String>();
    assert_eq!(run.code(), 0, "{}", brief());
    let lines = written(&out);
    assert_eq!(ids_of(&lines), ["k1", "k2"], "{}", brief());
    assert!(
        lines.iter().any(|line| line["forked"].is_u64()),
        "{lines:?}"
    );
    // What the child logged reached standard error whole.
    let x = "x".repeat(200_000);
    let records = (0..5)
        .filter(|n| {
            output.contains(&format!(
                "[bridge_callbacks.forked WARNING] record {n} {x}\n"
            ))
        })
        .count();
    assert_eq!(records, 5, "{}", brief());
    assert_eq!(broker.depth(&queue), 0, "{}", brief());
    broker.delete_queue(&queue);
}

#[test]
fn a_command_the_callback_runs_cannot_write_into_the_conversation() {
    // With the conversation's descriptors inherited, the command's bytes
    // would run into the answer, which would never be read: a stall.
    let (broker, queue, _dead, config) = dead_lettered_queue("bridge-inherit", "");
    broker.publish(&json!({"id": "w1", "topic": format!("{queue}.test"),
                          "body": {"do": "write_to_inherited_fds"}}));
    broker.publish(&json!({"id": "w2", "topic": format!("{queue}.test"),
                          "body": {"do": "halt", "code": 0}}));
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(&config, "bridge_callbacks:Scripted", &out, "inherit"),
    );
    let run = run(&mut host(&conf));
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(ids_of(&written(&out)), ["w1", "w2"], "{run:#?}");
    assert_eq!(broker.depth(&queue), 0, "{run:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn a_schema_package_gives_its_class_and_a_message_it_refuses_is_dropped() {
    let (broker, queue, dead, config) = dead_lettered_queue("bridge-schema", "");
    let koji = json!({"fedora_messaging_schema": "koji_fedoramessaging.repo.DoneV1"});
    broker.publish_all(&[
        json!({"id": "k1", "topic": format!("{queue}.buildsys.repo.done"), "headers": koji,
               "body": {"repo_id": 4012, "tag": "f41-build", "tag_id": 61, "instance": "primary"}}),
        json!({"id": "k2", "topic": format!("{queue}.buildsys.repo.done"), "headers": koji,
               "body": {"repo_id": "not a number", "tag": "f41-build"}}),
        json!({"id": "k3", "topic": format!("{queue}.end"), "body": {"do": "halt"}}),
    ]);
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(&config, "bridge_callbacks:Scripted", &out, "schema"),
    );
    let run = run(&mut host(&conf));

    assert_eq!(run.code(), 0, "{run:#?}");
    let lines = written(&out);
    assert_eq!(
        ids_of(&lines),
        ["k1", "k3"],
        "k2 never reaches the callback"
    );
    assert_eq!(lines[0]["class"], "DoneV1", "the schema package's class");
    assert_eq!(lines[1]["class"], "Message");
    let dropped: Vec<String> = broker.drain(&dead).into_iter().map(|m| m.id).collect();
    assert_eq!(dropped, ["k2"], "{run:#?}");
    assert!(
        run.output()
            .contains("Message id k2 did not pass validation; ignoring message"),
        "{run:#?}"
    );
    assert_eq!(broker.depth(&queue), 0);
}

#[test]
fn sigterm_waits_for_the_python_callback_in_hand_then_stops_cleanly() {
    let (broker, queue, _dead, config) = dead_lettered_queue("bridge-sigterm", "");
    broker.publish(&json!({"id": "s1", "topic": format!("{queue}.test"),
                          "body": {"do": "sleep", "seconds": 2}}));
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(&config, "bridge_callbacks:Scripted", &out, "sigterm"),
    );
    // The test configuration's log_config writes the log to stdout.
    let mut host = Running::start(&mut host(&conf));
    host.wait_for("message s1 asks for sleep", WAIT);
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(ids_of(&written(&out)), ["s1"]);
    assert_eq!(
        broker.depth(&queue),
        0,
        "the message in hand was acknowledged"
    );
}

#[test]
fn what_a_callback_starts_can_be_stopped_and_python_dies_with_its_host() {
    let (broker, queue, _dead, config) = dead_lettered_queue("bridge-orphans", "");
    for (id, body) in [
        ("c1", json!({"do": "spawn"})),
        ("c2", json!({"do": "sleep", "seconds": 300})),
    ] {
        broker.publish(&json!({"id": id, "topic": format!("{queue}.test"), "body": body}));
    }
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(&config, "bridge_callbacks:Scripted", &out, "orphans"),
    );
    let mut host = Running::start(&mut host(&conf));
    host.wait_for("message c2 asks for sleep", WAIT);
    let lines = written(&out);
    let spawned = lines
        .iter()
        .find_map(|line| line["spawned"].as_u64())
        .expect("the spawned child's pid");
    let python = lines[0]["pid"].as_u64().expect("Python's pid");
    // The driver leaves SIGTERM to the host; what a callback runs must not
    // inherit that as an ignored signal.
    let _ = Command::new("kill").arg(spawned.to_string()).status();
    let child_stopped = gone_within(&spawned.to_string(), Duration::from_secs(10));
    // A SIGKILL leaves the host no time to end Python: the kernel must.
    host.signal("KILL");
    let _ = host.finish();
    let python_ended = gone_within(&python.to_string(), Duration::from_secs(10));
    for pid in [spawned, python] {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(
        child_stopped,
        "SIGTERM did not stop {spawned}, started by the callback"
    );
    assert!(
        python_ended,
        "Python ({python}) outlived its SIGKILLed host"
    );
    broker.delete_queue(&queue);
}

#[test]
fn a_publish_timeout_too_long_for_the_clock_is_no_crash() {
    let (broker, queue, _dead, config) = dead_lettered_queue("bridge-long-timeout", "");
    let derived = TestBroker::unique_name("bridge-long-timeout-to");
    broker.declare_queue(&derived, FieldTable::default());
    broker.bind(&derived, "amq.topic", &derived);
    for (id, body) in [
        (
            "p1",
            json!({"do": "publish", "to": derived, "timeout": 1e300}),
        ),
        ("h1", json!({"do": "halt"})),
    ] {
        broker.publish(&json!({"id": id, "topic": format!("{queue}.test"), "body": body}));
    }
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(&config, "bridge_callbacks:Scripted", &out, "long-timeout"),
    );
    let mut host = Running::start(&mut host(&conf));
    let started = Instant::now();
    while broker.depth(&derived) < 1 {
        assert!(
            started.elapsed() < WAIT,
            "the publish never arrived: {:?}",
            host.lines_so_far("")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = host.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    broker.delete_queue(&queue);
    broker.delete_queue(&derived);
}

#[test]
fn a_stop_waits_for_a_callback_that_never_returns_only_until_stop_timeout() {
    let (broker, queue, _dead, config) = dead_lettered_queue("bridge-stop-timeout", "");
    broker.publish(&json!({"id": "s1", "topic": format!("{queue}.test"),
                          "body": {"do": "sleep", "seconds": 1000}}));
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        // soft_timeout, another host-only key: Python must not see either.
        &bridge_config(
            &format!("stop_timeout = 2\nsoft_timeout = 3600\n{config}"),
            "bridge_callbacks:Scripted",
            &out,
            "stop-timeout",
        ),
    );
    let mut host = Running::start(&mut host(&conf));
    host.wait_for("message s1 asks for sleep", WAIT);
    let python = written(&out)[0]["pid"].as_u64().expect("Python's pid");
    let stopped = Instant::now();
    host.signal("TERM");
    let run = host.finish();
    let took = stopped.elapsed();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        run.output().contains("stop_timeout, 2 s, ran out"),
        "{run:#?}"
    );
    assert!(took < Duration::from_secs(20), "the stop took {took:?}");
    assert!(
        gone_within(&python.to_string(), Duration::from_secs(10)),
        "Python outlived its host"
    );
    assert_eq!(broker.depth(&queue), 1, "s1 went back to its queue");
    broker.delete_queue(&queue);
}

#[test]
fn a_publish_bound_at_import_goes_through_the_host_and_is_counted() {
    // With [monitoring], fedora-messaging's own publish would also start
    // its Twisted service on the host's port.
    let (broker, queue, _dead, config) = dead_lettered_queue("bridge-bound-publish", "");
    let derived = TestBroker::unique_name("bridge-bound-publish-to");
    broker.declare_queue(&derived, FieldTable::default());
    broker.bind(&derived, "amq.topic", &derived);
    broker.publish(&json!({"id": "p1", "topic": format!("{queue}.test"), "body": {"to": derived}}));
    let port = free_port();
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(
            &format!("{config}\n[monitoring]\naddress = \"127.0.0.1\"\nport = {port}\n"),
            "bridge_publish_early:republish",
            &out,
            "bound-publish",
        ),
    );
    let mut host = Running::start(&mut host(&conf));
    host.wait_for("Monitoring on http://", WAIT);
    let started = Instant::now();
    let ready = loop {
        let (_, ready) = http_get(&format!("127.0.0.1:{port}"), "/ready");
        if ready.contains("\"published\":1") || started.elapsed() > WAIT {
            break ready;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    host.signal("TERM");
    let run = host.finish();
    assert!(ready.contains("\"published\":1"), "{ready}\n{run:#?}");
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(broker.depth(&derived), 1, "{run:#?}");
    broker.delete_queue(&queue);
    broker.delete_queue(&derived);
}

#[test]
fn a_callback_whose_import_hangs_stops_the_host_after_start_timeout() {
    let (broker, queue, _dead, config) = dead_lettered_queue("bridge-import-hangs", "");
    broker.publish(&json!({"id": "h1", "topic": format!("{queue}.test"), "body": {}}));
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(&config, "bridge_import_hangs:never", &out, "hangs")
            .replace("[python]\n", "[python]\nstart_timeout = 2\n"),
    );
    let started = Instant::now();
    let run = run(&mut host(&conf));
    let took = started.elapsed();
    assert_eq!(run.code(), 1, "{run:#?}");
    assert!(
        run.output().contains(
            "bridge_import_hangs:never was not ready within 2 s ([python] start_timeout)"
        ),
        "{run:#?}"
    );
    assert!(took < Duration::from_secs(60), "the host took {took:?}");
    // Consuming waits for the consumers: h1 was never delivered.
    assert!(!run.output().contains("Consuming messages"), "{run:#?}");
    let left = broker.take_all(&queue);
    assert_eq!(left.len(), 1, "h1 is still in its queue: {run:#?}");
    assert!(!left[0].redelivered, "h1 was delivered: {run:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn a_python_callback_that_cannot_be_imported_stops_the_host_at_once() {
    let url = amqp_url();
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(
            &format!("amqp_url = \"{url}\"\n"),
            "no_such_module:Consumer",
            &out,
            "",
        ),
    );
    let run = run(&mut host(&conf));
    assert_eq!(run.code(), 1, "{run:#?}");
    assert!(
        run.output().contains("the Python callback no_such_module:Consumer cannot start: ModuleNotFoundError: No module named 'no_such_module'"),
        "{run:#?}"
    );
    // Which Python ran, and its version.
    assert!(
        run.output().contains(&format!(
            "{:?}, Python 3.",
            interpreter().display().to_string()
        )),
        "{run:#?}"
    );
}

#[test]
fn one_file_serves_pythons_cli_and_this_host_with_the_host_keys_beside_it() {
    // The rollout: koji.toml is the file fedora-messaging's CLI runs;
    // koji.host.toml beside it holds what only this host reads.
    let (broker, queue, _dead, config) = dead_lettered_queue("bridge-host-file", "");
    broker.publish(&json!({"id": "h1", "topic": format!("{queue}.test"), "body": {"do": "halt"}}));
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let shared = format!(
        "callback = \"bridge_callbacks:Scripted\"\n{config}\n[consumer_config]\nout = \"{}\"\nlabel = \"host file\"\n",
        out.display()
    );
    let conf = dir.path().join("koji.toml");
    std::fs::write(&conf, &shared).unwrap();
    std::fs::write(
        dir.path().join("koji.host.toml"),
        format!(
            "Workers = 2\nstop_timeout = 30\n\n[python]\ninterpreter = \"{}\"\n",
            interpreter().display()
        ),
    )
    .unwrap();
    let run = run(&mut host(&conf));
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(ids_of(&written(&out)), ["h1"], "{run:#?}");
    assert_eq!(
        run.output()
            .matches("Python callback bridge_callbacks:Scripted ready")
            .count(),
        2,
        "two workers, from the host file: {run:#?}"
    );

    // A key fedora-messaging knows does not belong there, nor one set in
    // both files.
    for (host_keys, complaint) in [
        (
            "amqp_url = \"amqp://elsewhere/\"\n",
            "put it in the shared configuration file",
        ),
        (
            "callback = \"x:y\"\n",
            "put it in the shared configuration file",
        ),
    ] {
        std::fs::write(dir.path().join("koji.host.toml"), host_keys).unwrap();
        let refused = fm_e2e::run(&mut host(&conf));
        assert_eq!(refused.code(), 2, "{refused:#?}");
        assert!(
            refused.stderr.contains("koji.host.toml") && refused.stderr.contains(complaint),
            "{refused:#?}"
        );
    }
    std::fs::write(dir.path().join("koji.host.toml"), "workers = 2\n").unwrap();
    std::fs::write(&conf, format!("workers = 1\n{shared}")).unwrap();
    let refused = fm_e2e::run(&mut host(&conf));
    assert_eq!(refused.code(), 2, "{refused:#?}");
    assert!(refused.stderr.contains("keep one"), "{refused:#?}");
    broker.delete_queue(&queue);
}

#[test]
fn check_imports_the_callback_and_says_what_consume_would_run_without_the_broker() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("bridge-check");
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(
            &fm_e2e::broker::queue_config(&queue, ""),
            "bridge_callbacks:Scripted",
            &out,
            "check",
        ),
    );
    let mut check = host_running(&conf, "check");
    let run = run(&mut check);
    assert_eq!(run.code(), 0, "{run:#?}");
    let output = run.output();
    for expected in [
        "Python callback bridge_callbacks:Scripted ready: Python 3.",
        "fedora-messaging 3.9.1",
        "schema packages: ",
        "koji-fedoramessaging-messages 1.3.0",
        &format!("Queue: {queue} (durable true, declared), bound to: amq.topic \"{queue}.#\""),
        "OK: consume would start",
    ] {
        assert!(output.contains(expected), "{expected:?} in {run:#?}");
    }
    assert!(!broker.queue_exists(&queue), "check declared {queue}");

    let broken = config_file(
        dir.path(),
        &bridge_config(
            &fm_e2e::broker::queue_config(&queue, ""),
            "no_such_module:Consumer",
            &out,
            "",
        ),
    );
    let mut check = host_running(&broken, "check");
    let run = fm_e2e::run(&mut check);
    assert_eq!(run.code(), 1, "{run:#?}");
    assert!(
        run.stderr.contains("No module named 'no_such_module'"),
        "{run:#?}"
    );
}

#[test]
fn the_bridge_named_explicitly_runs_the_files_python_callback() {
    let (broker, queue, _dead, config) = dead_lettered_queue("bridge-explicit", "");
    broker.publish(&json!({"id": "e1", "topic": format!("{queue}.test"), "body": {"do": "halt"}}));
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(&config, "bridge_callbacks:Scripted", &out, "explicit"),
    );
    let run = run(host(&conf)
        .arg("--callback")
        .arg(format!("{}:Python", plugin("fm_python").display())));
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(ids_of(&written(&out)), ["e1"]);
    assert_eq!(written(&out)[0]["label"], "explicit");
}
