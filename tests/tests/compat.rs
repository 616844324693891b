//! Plugins built against an earlier revision of the plugin interface load
//! and run unchanged in this host, with no rebuild; and this revision's
//! plugins load in older hosts, where the services those lack answer that
//! they are unavailable. The older plugins and hosts are built from this
//! repository's history ([`REVISION_1`] to [`REVISION_4`]) into
//! `target/revision-N/`; their source is never kept in the tree.

use std::path::Path;
use std::process::Command;

use fm_e2e::broker::{dead_lettered_queue, queue_with};
use fm_e2e::python::{bridge_config, ids_of, written};
use fm_e2e::*;
use serde_json::{Value, json};

fn reconsume_with(callback: &str, records: &[Value]) -> Run {
    let dir = scratch();
    let file = record_file(dir.path(), records);
    run(fedora_messaging()
        .args(["reconsume", "--callback", callback, "--file"])
        .arg(&file))
}

#[test]
fn a_revision_1_printer_prints_what_this_revisions_printer_prints() {
    let records = [
        json!({"id": "m1", "topic": "hi", "body": {"msg": "Hello world", "n": [1, 2.5, null]},
               "headers": {"fedora_messaging_schema": "base.message", "sent-at": "2019-07-30T19:12:22+00:00"}}),
        json!({"id": "m2", "topic": "org.fedoraproject.prod.x", "body": {"é": "ünïcode"}}),
    ];
    let old = reconsume_with(
        &format!("{}:Printer", REVISION_1.plugin("printer").display()),
        &records,
    );
    let new = reconsume_with(
        &format!("{}:Printer", plugin("printer").display()),
        &records,
    );
    assert_eq!(old.code(), 0, "{old:#?}");
    assert_eq!(old.stdout, new.stdout);
    assert!(
        old.stdout.contains("Topic: org.fedoraproject.prod.x"),
        "{old:#?}"
    );
}

#[test]
fn a_revision_1_consumer_answers_every_outcome_through_the_broker() {
    let (broker, queue, _dir, conf) = queue_with(
        "revision-1",
        "",
        &[
            ("m1", json!({"do": "ack"})),
            ("m2", json!({"do": "nack_once"})),
            ("m3", json!({"do": "drop"})),
            ("m4", json!({"do": "panic", "reason": "caught"})),
        ],
    );
    let scripted = format!("{}:Scripted", REVISION_1.plugin("test_consumers").display());
    let run =
        run(fedora_messaging()
            .arg("--conf")
            .arg(&conf)
            .args(["consume", "--callback", &scripted]));
    // The panic is a failure: logged, the message back in the queue, 13.
    assert_eq!(run.code(), 13, "{run:#?}");
    for line in [
        "message #1 (m1): ack",
        "message #2 (m2): nack_once",
        "message #3 (m3): drop",
        "message #4 (m4): panic",
        "caught",
    ] {
        assert!(run.output().contains(line), "{line:?} missing: {run:#?}");
    }
    // m2 was nacked and m4 failed: both are back in the queue.
    let mut left: Vec<String> = broker.drain(&queue).into_iter().map(|m| m.id).collect();
    left.sort();
    assert_eq!(left, ["m2", "m4"]);
    broker.delete_queue(&queue);
}

#[test]
fn this_revisions_plugin_in_a_revision_1_host_loads_and_finds_publishing_unavailable() {
    let dir = scratch();
    let file = record_file(
        dir.path(),
        &[
            json!({"id": "m1", "topic": "t", "body": {"do": "ack"}}),
            json!({"id": "m2", "topic": "t", "body": {"do": "publish", "publish": {"topic": "x", "body": {}}}}),
        ],
    );
    let run = run(REVISION_1
        .fedora_messaging()
        .args(["reconsume", "--callback", &scripted(), "--file"])
        .arg(&file));
    assert_eq!(run.code(), 13, "{run:#?}");
    assert!(run.stdout.contains("m1 ack"), "{run:#?}");
    assert!(
        run.output().contains(
            "publish failed: Unavailable(\"this fedora-messaging host is older than plugin interface revision 2 and cannot publish: upgrade the host\")"
        ),
        "{run:#?}"
    );
}

#[test]
fn a_revision_2_plugin_publishes_in_this_host() {
    let dir = scratch();
    let file = record_file(
        dir.path(),
        &[
            json!({"id": "m1", "topic": "t", "body": {"do": "publish", "publish": {"topic": "from.revision.2", "body": {"n": 2}}}}),
        ],
    );
    let published = dir.path().join("published.jsonl");
    let scripted = format!("{}:Scripted", REVISION_2.plugin("test_consumers").display());
    let run = run(fedora_messaging()
        .args(["reconsume", "--callback", &scripted, "--publish-to"])
        .arg(&published)
        .arg("--file")
        .arg(&file));
    assert_eq!(run.code(), 0, "{run:#?}");
    assert!(run.stdout.contains("m1 ack"), "{run:#?}");
    let written = std::fs::read_to_string(&published).unwrap_or_default();
    assert!(
        written.contains("\"topic\": \"from.revision.2\""),
        "{written}"
    );
}

#[test]
fn revision_3_plugins_load_in_a_revision_2_host_where_the_configuration_is_unavailable() {
    let dir = scratch();
    let file = record_file(
        dir.path(),
        &[json!({"id": "m1", "topic": "t", "body": {"hello": "revision 2"}})],
    );
    // A plugin of this revision that does not ask for the configuration
    // runs as in this host: the layouts of the host services agree on the
    // fields both have.
    let printed = run(REVISION_2
        .fedora_messaging()
        .args(["reconsume", "--callback"])
        .arg(format!("{}:Printer", plugin("printer").display()))
        .arg("--file")
        .arg(&file));
    assert_eq!(printed.code(), 0, "{printed:#?}");
    assert!(
        printed.stdout.contains("\"hello\": \"revision 2\""),
        "{printed:#?}"
    );
    // The Python bridge asks for it, and is told to upgrade the host.
    let bridged = run(REVISION_2
        .fedora_messaging()
        .args(["reconsume", "--callback"])
        .arg(format!("{}:Python", plugin("fm_python").display()))
        .arg("--file")
        .arg(&file));
    assert_eq!(bridged.code(), 1, "{bridged:#?}");
    assert!(
        bridged.stderr.contains(
            "this fedora-messaging host is older than plugin interface revision 3 and does not tell plugins its configuration: upgrade the host"
        ),
        "{bridged:#?}"
    );
}

/// Runs `host` consuming, through the Python bridge found in
/// `bridge_dir`, three messages of which the second halts with 3: the
/// first two are consumed, the third stays in the queue.
fn halts_on_the_second_through_the_bridge(mut host: Command, bridge_dir: &Path, label: &str) {
    let (broker, queue, _dead, config) = dead_lettered_queue(label, "");
    for (id, body) in [
        ("r1", json!({})),
        ("r2", json!({"do": "halt", "code": 3})),
        ("r3", json!({})),
    ] {
        broker.publish(&json!({"id": id, "topic": format!("{queue}.test"), "body": body}));
    }
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(&config, "bridge_callbacks:Scripted", &out, label),
    );
    let run = run(host
        .env("FEDORA_MESSAGING_PLUGIN_PATH", bridge_dir)
        .env("PYTHONPATH", workspace_root().join("tests/fixtures/python"))
        .arg("--conf")
        .arg(&conf)
        .arg("consume"));
    assert_eq!(run.code(), 3, "{run:#?}");
    assert_eq!(ids_of(&written(&out)), ["r1", "r2"], "{run:#?}");
    assert_eq!(broker.depth(&queue), 1, "r3 is back in the queue");
    broker.delete_queue(&queue);
}

#[test]
fn this_revisions_python_bridge_runs_in_a_revision_3_host_one_message_at_a_time() {
    // That host offers no next message and no draining descriptor
    // (revision 4): the bridge sends each message once the last is answered.
    let bridge = plugin("fm_python");
    halts_on_the_second_through_the_bridge(
        REVISION_3.fedora_messaging(),
        bridge.parent().expect("a plugin directory"),
        "compat-bridge-4-in-3",
    );
}

#[test]
fn a_revision_3_python_bridge_runs_in_this_host() {
    let bridge = REVISION_3.plugin("fm_python");
    halts_on_the_second_through_the_bridge(
        fedora_messaging(),
        bridge.parent().expect("a plugin directory"),
        "compat-bridge-3-in-4",
    );
}

/// `reconsume` of one message through Exec from `exec_dir`, whose command
/// writes what it finds in `TRACEPARENT` to a file: what it wrote.
fn exec_traceparent(mut host: Command, exec_dir: &Path) -> String {
    let dir = scratch();
    let seen = dir.path().join("traceparent");
    let conf = config_file(
        dir.path(),
        &format!(
            "callback = \"libfm_exec.so:Exec\"\n\n[consumer_config]\ncommand = [\"/bin/sh\", \"-c\", \"cat > /dev/null; printf '%s' \\\"${{TRACEPARENT:-none}}\\\" > {}\"]\n",
            seen.display()
        ),
    );
    let file = record_file(
        dir.path(),
        &[json!({"id": "t1", "topic": "exec.test", "body": {}})],
    );
    let run = run(host
        .env("FEDORA_MESSAGING_PLUGIN_PATH", exec_dir)
        .arg("--conf")
        .arg(&conf)
        .args(["reconsume", "--file"])
        .arg(&file));
    assert_eq!(run.code(), 0, "{run:#?}");
    std::fs::read_to_string(&seen).unwrap_or_else(|error| panic!("{error}: {run:#?}"))
}

#[test]
fn this_revisions_exec_runs_in_a_revision_4_host_which_gives_no_trace_context() {
    let exec = plugin("fm_exec");
    let seen = exec_traceparent(
        REVISION_4.fedora_messaging(),
        exec.parent().expect("a plugin directory"),
    );
    assert_eq!(seen, "none");
}

#[test]
fn a_revision_4_exec_consumes_in_this_host_with_traces_on() {
    let (broker, queue, dir, conf) = queue_with("compat-exec-4-in-5", "", &[("t1", json!({}))]);
    let seen = dir.path().join("traceparent");
    let config = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        format!(
            "callback = \"libfm_exec.so:Exec\"\n{config}\n[consumer_config]\ncommand = [\"/bin/sh\", \"-c\", \"cat > /dev/null; printf '%s' \\\"${{TRACEPARENT:-none}}\\\" > {}\"]\n",
            seen.display()
        ),
    )
    .unwrap();
    // Spans go nowhere (nothing listens there): that costs no message.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let exec = REVISION_4.plugin("fm_exec");
    let mut host = fm_e2e::process::Running::start(
        fedora_messaging()
            .env(
                "FEDORA_MESSAGING_PLUGIN_PATH",
                exec.parent().expect("a plugin directory"),
            )
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &nowhere)
            .arg("--conf")
            .arg(&conf)
            .arg("consume"),
    );
    host.wait_for("(message id t1)", std::time::Duration::from_secs(60));
    host.wait_for(
        "Successfully consumed message",
        std::time::Duration::from_secs(60),
    );
    host.signal("TERM");
    let run = host.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    // That plugin does not ask for the trace context.
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), "none");
    assert_eq!(broker.depth(&queue), 0);
    broker.delete_queue(&queue);
}
