//! The exec plugin (`plugins/exec`): a command per message, its exit
//! status mapped to an outcome, its output logged, a timeout that ends
//! everything it started, and N commands at once with `workers = N`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fm_e2e::broker::{TestBroker, dead_lettered_queue, queue_config};
use fm_e2e::process::Running;
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};

fn plugin_dir() -> PathBuf {
    plugin("fm_exec")
        .parent()
        .expect("a plugin directory")
        .to_path_buf()
}

/// `fedora-messaging` finding the exec plugin by its bare name.
fn host(conf: &Path) -> Command {
    let mut command = fedora_messaging();
    command
        .env("FEDORA_MESSAGING_PLUGIN_PATH", plugin_dir())
        .arg("--conf")
        .arg(conf);
    command
}

/// `reconsume` of `records` through Exec configured with `consumer_config`
/// (TOML lines).
fn reconsume(dir: &Path, consumer_config: &str, records: &[Value]) -> Run {
    let conf = config_file(
        dir,
        &format!("callback = \"libfm_exec.so:Exec\"\n\n[consumer_config]\n{consumer_config}\n"),
    );
    let file = record_file(dir, records);
    run(host(&conf)
        .env("OUT", dir)
        .args(["reconsume", "--file"])
        .arg(&file))
}

fn message(id: &str) -> Value {
    json!({"id": id, "topic": "exec.test", "body": {"n": 1}})
}

/// Exits with the number after the `m` of the message's id.
const EXIT_WITH_ID: &str = r#"command = ["/bin/sh", "-c", "cat > /dev/null; exit \"${FM_ID#m}\""]"#;

#[test]
fn every_exit_status_maps_through_the_table() {
    let dir = scratch();
    let table = format!(
        "{EXIT_WITH_ID}\nexit_codes = {{ 75 = \"nack\", 65 = \"drop\", 3 = \"halt:4\", 4 = \"halt\" }}"
    );
    let mapped = reconsume(
        dir.path(),
        &table,
        &[message("m0"), message("m75"), message("m65"), message("m3")],
    );
    assert_eq!(
        outcome_lines(&mapped),
        ["m0 ack", "m75 nack", "m65 drop", "m3 halt 4"],
        "{mapped:#?}"
    );
    assert_eq!(mapped.code(), 4, "{mapped:#?}");

    let halted = reconsume(dir.path(), &table, &[message("m4"), message("m0")]);
    assert_eq!(outcome_lines(&halted), ["m4 halt 0"], "{halted:#?}");
    assert_eq!(halted.code(), 0);

    // By default anything but 0 is a failure.
    let failed = reconsume(dir.path(), EXIT_WITH_ID, &[message("m0"), message("m9")]);
    assert_eq!(
        outcome_lines(&failed),
        [
            "m0 ack",
            "m9 failed: the command \"/bin/sh\" ended with exit status 9"
        ],
        "{failed:#?}"
    );
    assert_eq!(failed.code(), 13);
}

#[test]
fn the_message_arrives_whole_on_stdin_with_its_environment() {
    let dir = scratch();
    let body = json!({
        "nul": "a\u{0}b",
        "lines": "one\ntwo\r\nthree",
        "quotes": "\"\\'",
        "unicode": "héllo ✓ 😀",
        "big": "x".repeat(300_000),
        "nested": {"list": [1, 2.5, null, true, -7]},
    });
    let record = json!({"id": "b1", "topic": "exec.binary", "queue": "the-queue", "body": body,
                        "headers": {"fedora_messaging_severity": 30}});
    let run = reconsume(
        dir.path(),
        r#"command = ["/bin/sh", "-c", "cat > \"$OUT/$FM_ID.json\"; printf '%s|%s|%s' \"$FM_TOPIC\" \"$FM_ID\" \"$FM_QUEUE\" > \"$OUT/$FM_ID.env\""]"#,
        std::slice::from_ref(&record),
    );
    assert_eq!(outcome_lines(&run), ["b1 ack"], "{run:#?}");
    let received = std::fs::read_to_string(dir.path().join("b1.json")).unwrap();
    assert_eq!(received.lines().count(), 1, "one line of record format");
    let received: Value = serde_json::from_str(&received).unwrap();
    assert_eq!(received["body"], body);
    assert_eq!(received["id"], "b1");
    assert_eq!(received["topic"], "exec.binary");
    assert_eq!(received["headers"]["fedora_messaging_severity"], 30);
    let environment = std::fs::read_to_string(dir.path().join("b1.env")).unwrap();
    assert_eq!(environment, "exec.binary|b1|the-queue");
}

#[test]
fn a_message_whose_id_or_topic_holds_a_nul_byte_is_dropped_and_consuming_goes_on() {
    // No environment variable can carry a NUL byte: such a message is the
    // message's problem, not a failure that requeues it for ever.
    let (broker, queue, dead, config) = dead_lettered_queue("exec-nul", "");
    for (id, topic) in [
        ("a\u{0}b", format!("{queue}.test")),
        ("t1", format!("{queue}.te\u{0}st")),
        ("m3", format!("{queue}.test")),
    ] {
        broker.publish(&json!({"id": id, "topic": topic, "body": {}}));
    }
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &format!(
            "callback = \"libfm_exec.so:Exec\"\n{config}\n[consumer_config]\n{EXIT_WITH_ID}\nexit_codes = {{ 3 = \"halt\" }}\n"
        ),
    );
    let run = run(host(&conf).arg("consume"));
    assert_eq!(run.code(), 0, "m3 halts, after the others: {run:#?}");
    let log = format!("{}{}", run.stdout, run.stderr);
    assert!(log.contains("its id holds a NUL byte"), "{run:#?}");
    assert!(log.contains("its topic holds a NUL byte"), "{run:#?}");
    let dropped: Vec<String> = broker.take_all(&dead).into_iter().map(|m| m.id).collect();
    assert_eq!(dropped, ["a\u{0}b", "t1"], "{run:#?}");
    assert_eq!(broker.depth(&queue), 0);
    broker.delete_queue(&queue);
    broker.delete_queue(&dead);
}

#[test]
fn a_stop_signalled_to_the_hosts_process_group_lets_the_running_command_finish() {
    // systemd's KillMode=mixed (the unit's) sends SIGTERM to the host
    // alone, a terminal to its whole process group: neither reaches the
    // command, which runs in a group of its own and finishes its message.
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("exec-stop");
    broker.declare_queue(&queue, FieldTable::default());
    broker.publish(&json!({"id": "m1", "topic": format!("{queue}.test"), "body": {}}));
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &format!(
            "callback = \"libfm_exec.so:Exec\"\n{}\n[consumer_config]\ncommand = [\"/bin/sh\", \"-c\", \"cat > /dev/null; echo $FM_ID runs; sleep 2; echo $FM_ID finished\"]\n",
            queue_config(&queue, "")
        ),
    );
    let mut consumer = Running::start(host(&conf).arg("consume").process_group(0));
    consumer.wait_for("m1 runs", Duration::from_secs(30));
    consumer.signal_group("TERM");
    let run = consumer.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.contains("m1 finished"), "{run:#?}");
    assert_eq!(broker.depth(&queue), 0, "the message was acked: {run:#?}");
    broker.delete_queue(&queue);
}

/// A queue holding m1, and a host whose command for it never ends, with
/// `stop_timeout`; the host once the command runs, and the file where the
/// command wrote its pid.
fn a_command_that_never_ends(
    dir: &Path,
    prefix: &str,
    stop_timeout: u32,
) -> (TestBroker, String, Running, PathBuf) {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name(prefix);
    broker.declare_queue(&queue, FieldTable::default());
    broker.publish(&json!({"id": "m1", "topic": format!("{queue}.test"), "body": {}}));
    let conf = config_file(
        dir,
        &format!(
            "callback = \"libfm_exec.so:Exec\"\nstop_timeout = {stop_timeout}\n{}\n[consumer_config]\ntimeout = 0\ncommand = [\"/bin/sh\", \"-c\", \"cat > /dev/null; echo $$ > \\\"$OUT/command.pid\\\"; echo $FM_ID runs; exec sleep 1000\"]\n",
            queue_config(&queue, "")
        ),
    );
    let mut consumer = Running::start(host(&conf).env("OUT", dir).arg("consume"));
    consumer.wait_for("m1 runs", Duration::from_secs(30));
    (broker, queue, consumer, dir.join("command.pid"))
}

/// A stop that gave up on the command: it ended soon, the command with
/// it, and m1 went back to its queue (which is then deleted).
fn stopped_without_the_command(took: Duration, pid_file: &Path, broker: &TestBroker, queue: &str) {
    assert!(took < Duration::from_secs(20), "the stop took {took:?}");
    let pid = std::fs::read_to_string(pid_file).unwrap();
    assert!(
        gone_within(pid.trim(), Duration::from_secs(10)),
        "the command outlived its host"
    );
    assert_eq!(broker.depth(queue), 1, "m1 went back to its queue");
    broker.delete_queue(queue);
}

#[test]
fn a_stop_waits_for_a_command_that_never_ends_only_until_stop_timeout() {
    let dir = scratch();
    let (broker, queue, consumer, pid_file) =
        a_command_that_never_ends(dir.path(), "exec-stop-timeout", 2);
    let stopped = Instant::now();
    consumer.signal("TERM");
    let run = consumer.finish();
    let took = stopped.elapsed();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(
        run.stdout.contains(
            "Stopped waiting for the 1 message(s) still in progress (stop_timeout, 2 s, ran out)"
        ),
        "{run:#?}"
    );
    stopped_without_the_command(took, &pid_file, &broker, &queue);
}

#[test]
fn a_second_signal_ends_a_stops_wait_at_once() {
    let dir = scratch();
    let (broker, queue, mut consumer, pid_file) =
        a_command_that_never_ends(dir.path(), "exec-second-signal", 600);
    consumer.signal("TERM");
    consumer.wait_for(
        "Received signal 15; stopping gracefully",
        Duration::from_secs(30),
    );
    let stopped = Instant::now();
    consumer.signal("INT");
    let run = consumer.finish();
    let took = stopped.elapsed();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.contains("(a second signal came)"), "{run:#?}");
    stopped_without_the_command(took, &pid_file, &broker, &queue);
}

#[test]
fn a_timeout_kills_everything_the_command_started() {
    let dir = scratch();
    let spawner = r#"command = ["/bin/sh", "-c", "sleep 300 & echo $! > \"$OUT/child.pid\"; sleep 300"]
timeout = 1"#;
    let started = Instant::now();
    let run = reconsume(dir.path(), spawner, &[message("t1")]);
    assert_eq!(run.code(), 13, "{run:#?}");
    assert!(
        outcome_lines(&run)[0]
            .starts_with("t1 failed: the command \"/bin/sh\" ended with still running after 1."),
        "{run:#?}"
    );
    assert!(started.elapsed() < Duration::from_secs(60), "{run:#?}");
    let child = std::fs::read_to_string(dir.path().join("child.pid")).unwrap();
    let child = child.trim();
    assert!(
        gone_within(child, Duration::from_secs(10)),
        "the command's child {child} outlived the timeout"
    );

    let nacked = reconsume(
        dir.path(),
        &format!("{spawner}\non_timeout = \"nack\""),
        &[message("t2")],
    );
    assert_eq!(outcome_lines(&nacked), ["t2 nack"], "{nacked:#?}");
}

#[test]
fn what_a_command_leaves_running_ends_with_it() {
    let dir = scratch();
    let started = Instant::now();
    let run = reconsume(
        dir.path(),
        r#"command = ["/bin/sh", "-c", "cat > /dev/null; sleep 300 & echo $! > \"$OUT/left.pid\""]"#,
        &[message("b1")],
    );
    assert_eq!(outcome_lines(&run), ["b1 ack"], "{run:#?}");
    // Its output pipe was held open by the child: the run did not wait
    // for it either.
    assert!(started.elapsed() < Duration::from_secs(60), "{run:#?}");
    let left = std::fs::read_to_string(dir.path().join("left.pid")).unwrap();
    let left = left.trim();
    assert!(
        gone_within(left, Duration::from_secs(10)),
        "{left}, started in the background by the command, outlived it"
    );
}

#[test]
fn output_lines_reach_the_log_cut_to_size() {
    // The line budget is shared by both streams, whose readers race: each
    // message writes to one stream only, so what is logged is certain.
    let dir = scratch();
    let run = reconsume(
        dir.path(),
        r#"command = ["/bin/sh", "-c", "cat > /dev/null; case \"$FM_ID\" in o2) echo 'hello err' >&2 ;; *) echo 'hello out'; head -c 10000 /dev/zero | tr '\\0' x; echo; echo a; echo b; echo c; echo d ;; esac"]
max_line_bytes = 100
max_lines = 4"#,
        &[message("o1"), message("o2")],
    );
    assert_eq!(outcome_lines(&run), ["o1 ack", "o2 ack"], "{run:#?}");
    let log = run.output();
    assert!(log.contains("message o1 stdout: hello out"), "{log}");
    assert!(log.contains("message o2 stderr: hello err"), "{log}");
    assert!(
        log.contains(&format!(
            "message o1 stdout: {}… (9900 more bytes)",
            "x".repeat(100)
        )),
        "{log}"
    );
    assert!(log.contains("message o1 stdout: b"), "{log}");
    assert!(!log.contains("message o1 stdout: c"), "{log}");
    assert!(
        log.contains("message o1 stdout: 2 more line(s) not logged (max_lines)"),
        "{log}"
    );
}

#[test]
fn a_program_that_is_not_there_stops_the_host_before_it_consumes() {
    let dir = scratch();
    let run = reconsume(
        dir.path(),
        r#"command = ["no-such-program-for-fm-exec", "--flag"]"#,
        &[message("n1")],
    );
    assert_eq!(run.code(), 1, "{run:#?}");
    assert!(
        run.stderr.contains("consumer_config: the command's program \"no-such-program-for-fm-exec\" is not in PATH: install it or give its full path"),
        "{run:#?}"
    );
    assert!(outcome_lines(&run).is_empty());
}

#[test]
fn a_thousand_messages_through_four_workers_none_lost_none_doubled() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("exec-workers");
    broker.declare_queue(&queue, FieldTable::default());
    let records: Vec<Value> = (0..1000)
        .map(|n| json!({"id": format!("w{n}"), "topic": format!("{queue}.test"), "body": {"n": n}}))
        .collect();
    broker.publish_all(&records);
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        &queue_config(
            &queue,
            "callback = \"libfm_exec.so:Exec\"\nworkers = 4\n[consumer_config]\ncommand = [\"/bin/sh\", \"-c\", \"cat > /dev/null; echo \\\"done $FM_ID\\\"\"]\n",
        ),
    );
    // The test configuration's log_config writes the log to stdout.
    let mut host = Running::start(host(&conf).arg("consume"));
    host.wait_for_count("stdout: done w", 1000, Duration::from_secs(240));
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    let mut ids: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|line| line.split_once("stdout: done ").map(|(_, id)| id))
        .collect();
    assert_eq!(ids.len(), 1000, "no message ran twice");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1000, "every message ran");
    assert_eq!(broker.depth(&queue), 0);
}

#[test]
fn a_consumer_config_mistake_names_the_file_the_line_and_the_key() {
    let dir = scratch();
    let conf = config_file(
        dir.path(),
        "callback = \"libfm_exec.so:Exec\"\n\n[consumer_config]\ncommand = [\"/bin/true\"]\nexit_codes = { 3 = \"halt\", 4 = [\"nack\"] }\n",
    );
    let file = record_file(dir.path(), &[message("c1")]);
    let run = run(host(&conf).args(["reconsume", "--file"]).arg(&file));
    assert_eq!(run.code(), 1, "{run:#?}");
    assert_eq!(
        run.stderr.trim_end(),
        format!(
            "Error: consumer Exec could not start: {}:5: consumer_config.exit_codes.4: invalid type: sequence, expected a string",
            conf.display()
        )
    );
}
