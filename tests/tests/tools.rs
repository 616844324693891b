//! `publish`, `record` and `replay` against the real RabbitMQ: a record
//! file published with our `publish` comes back out of our `record` field
//! for field, and `replay` republishes a datagrepper message as it was.

use std::time::Duration;

use fm_e2e::broker::{TestBroker, queue_config};
use fm_e2e::process::Running;
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Messages with what a record file can hold: nested and non-ASCII
/// bodies, a schema, a severity, a priority, filter headers.
fn sample_records(queue: &str) -> Vec<Value> {
    vec![
        json!({"id": "r-1", "topic": format!("{queue}.plain"), "body": {"n": 1}}),
        json!({
            "id": "r-2",
            "topic": format!("{queue}.unicode"),
            "body": {"text": "héllo ✓", "nested": {"list": [1, 2.5, null, true]}},
            "headers": {"fedora_messaging_severity": 30, "fedora_messaging_user_alice": true}
        }),
        json!({
            "id": "r-3",
            "topic": format!("{queue}.prio"),
            "body": {},
            "priority": 4,
            "headers": {
                "fedora_messaging_schema": "bodhi.update.comment.v1",
                "sent-at": "2019-07-30T19:12:22+00:00"
            }
        }),
    ]
}

/// Starts `record` on `queue` and waits until it consumes.
fn start_recording(conf: &std::path::Path, args: &[&str]) -> Running {
    let mut recorder = Running::start(
        fedora_messaging()
            .arg("--conf")
            .arg(conf)
            .arg("record")
            .args(args),
    );
    recorder.wait_for("Consuming messages from queue", WAIT);
    recorder
}

fn read_records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn what_publish_sends_record_writes_back_field_for_field() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("record");
    broker.declare_queue(&queue, FieldTable::default());
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config(&queue, ""));
    let recorded = dir.path().join("recorded.jsonl");
    let records = sample_records(&queue);
    let recorder = start_recording(
        &conf,
        &[
            recorded.to_str().unwrap(),
            "--limit",
            &records.len().to_string(),
        ],
    );

    let input = record_file(dir.path(), &records);
    let published = run(fedora_messaging()
        .arg("--conf")
        .arg(&conf)
        .arg("publish")
        .arg(&input));
    assert_eq!(published.code(), 0, "{published:#?}");
    let echoed: Vec<&str> = published.stdout.lines().collect();
    assert_eq!(
        echoed,
        records
            .iter()
            .map(|r| format!(
                "Publishing message with topic {}",
                r["topic"].as_str().unwrap()
            ))
            .collect::<Vec<_>>()
    );

    let run = recorder.finish();
    assert_eq!(run.code(), 0, "the limit halts with 0: {run:#?}");
    let saved = read_records(&recorded);
    assert_eq!(saved.len(), records.len(), "{saved:#?}");
    for (sent, got) in records.iter().zip(&saved) {
        for field in ["id", "topic", "body"] {
            assert_eq!(got[field], sent[field], "{field} of {sent}");
        }
        assert_eq!(got["queue"], queue.as_str());
        let priority = sent["priority"].as_u64().unwrap_or(0);
        assert_eq!(got["priority"], priority);
        let headers = got["headers"].as_object().unwrap();
        for (key, value) in sent["headers"].as_object().into_iter().flatten() {
            assert_eq!(&headers[key], value, "header {key} of {sent}");
        }
        // What publish adds, as fedora-messaging's publish does.
        assert_eq!(headers["priority"], priority);
        assert!(headers["sent-at"].is_string(), "{got}");
        assert!(headers["fedora_messaging_schema"].is_string(), "{got}");
        assert!(headers["fedora_messaging_severity"].is_u64(), "{got}");
    }
    assert_eq!(broker.depth(&queue), 0, "every recorded message is acked");
    broker.delete_queue(&queue);
}

#[test]
fn recording_to_standard_output_keeps_the_logs_off_it() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("record-stdout");
    broker.declare_queue(&queue, FieldTable::default());
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config(&queue, ""));
    let mut recorder = Running::start_watching_stderr(
        fedora_messaging()
            .arg("--conf")
            .arg(&conf)
            .args(["record", "-", "--limit", "2"]),
    );
    recorder.wait_for("Consuming messages from queue", WAIT);
    for id in ["s-1", "s-2", "s-3"] {
        broker.publish(&json!({"id": id, "topic": format!("{queue}.t"), "body": {"id": id}}));
    }
    let run = recorder.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    let ids: Vec<Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["id"].clone())
        .collect();
    assert_eq!(ids, [json!("s-1"), json!("s-2")], "{run:#?}");
    assert!(
        run.stderr.contains("Consuming messages from queue"),
        "{run:#?}"
    );
    assert_eq!(
        broker.depth(&queue),
        1,
        "the message after the limit stays queued"
    );
    broker.delete_queue(&queue);
}

#[test]
fn an_unwritable_record_file_is_a_usage_error() {
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config("unused", ""));
    let target = dir.path().join("missing-dir/out.jsonl");
    let run = run(fedora_messaging()
        .arg("--conf")
        .arg(&conf)
        .arg("record")
        .arg(&target));
    assert_eq!(run.code(), 2, "{run:#?}");
    assert_eq!(
        run.stderr.trim_end(),
        format!(
            "Error: cannot write the record file {}: No such file or directory (os error 2)",
            target.display()
        )
    );
}

#[test]
fn a_bad_line_publishes_nothing_and_names_its_number() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("publish-bad");
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config(&queue, ""));
    let input = dir.path().join("bad.jsonl");
    std::fs::write(
        &input,
        format!("{{\"topic\": \"{queue}.t\", \"body\": {{}}}}\n{{\"topic\": 5, \"body\": {{}}}}\n"),
    )
    .unwrap();
    let run = run(fedora_messaging()
        .arg("--conf")
        .arg(&conf)
        .arg("publish")
        .arg(&input));
    assert_eq!(run.code(), 2, "{run:#?}");
    assert!(
        run.stderr
            .starts_with(&format!("Error: {}:2: ", input.display())),
        "{run:#?}"
    );
    assert_eq!(run.stdout, "", "nothing was published: {run:#?}");
    drop(broker);
}

#[test]
fn publishing_to_a_missing_exchange_is_121() {
    let dir = scratch();
    let conf = config_file(dir.path(), &queue_config("unused", ""));
    let input = record_file(dir.path(), &[json!({"topic": "t", "body": {}})]);
    let run = run(fedora_messaging()
        .arg("--conf")
        .arg(&conf)
        .args(["publish", "--exchange", "fm-e2e-no-such-exchange"])
        .arg(&input));
    assert_eq!(run.code(), 121, "{run:#?}");
    assert!(run.stderr.contains("no exchange"), "{run:#?}");
}

#[test]
fn replay_publishes_the_datagrepper_message_as_it_was() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("replay");
    broker.declare_queue(&queue, FieldTable::default());
    let dir = scratch();
    // A topic_prefix that replay must not apply.
    let conf = config_file(
        dir.path(),
        &queue_config(&queue, "topic_prefix = \"should.not.appear\""),
    );
    let answer_text =
        std::fs::read_to_string(workspace_root().join("tests/fixtures/datagrepper-answer.json"))
            .unwrap();
    let answer: Value = serde_json::from_str(&answer_text).unwrap();
    let topic = answer["topic"].as_str().unwrap();
    let id = answer["id"].as_str().unwrap();
    let recorded = dir.path().join("replayed.jsonl");
    let recorder = start_recording(
        &conf,
        &[
            recorded.to_str().unwrap(),
            "--limit",
            "1",
            "--routing-key",
            topic,
        ],
    );
    let (url, server) = serve_once("200 OK", answer_text.clone());
    let replayed = run(fedora_messaging().arg("--conf").arg(&conf).args([
        "replay",
        id,
        "--datagrepper-url",
        &url,
    ]));
    assert_eq!(
        server.join().unwrap(),
        format!("GET /datagrepper/v2/id?id={id}&is_raw=true HTTP/1.1")
    );
    assert_eq!(replayed.code(), 0, "{replayed:#?}");
    assert_eq!(
        replayed.stdout,
        format!("Message with ID {id} has been successfully replayed.\n")
    );
    let run = recorder.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    let saved = read_records(&recorded);
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0]["topic"], topic);
    assert_eq!(saved[0]["id"], id);
    assert_eq!(saved[0]["body"], answer["body"]);
    assert_eq!(saved[0]["headers"], answer["headers"]);
    broker.delete_queue(&queue);
}
