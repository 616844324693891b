//! Files and messages pass between this host and the Python
//! fedora-messaging (from PyPI, in a virtual environment) unchanged: what
//! Python's `record` writes, our `publish` sends and our `record` writes
//! back byte for byte; Python's `loads` reads our files field for field;
//! and what Python's `publish` sends, our `record` receives whole.

use std::path::Path;

use fm_e2e::broker::{TestBroker, queue_config};
use fm_e2e::python::{fedora_messaging_py, python};
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::{Value, json};

/// Messages with what a record file can hold: nested and non-ASCII
/// bodies, floats, a severity, a priority, filter headers, a known
/// `sent-at`.
fn sample_records(queue: &str) -> Vec<Value> {
    vec![
        json!({"id": "py-1", "topic": format!("{queue}.plain"), "body": {"n": 1}}),
        json!({
            "id": "py-2",
            "topic": format!("{queue}.unicode"),
            "body": {"text": "héllo ✓ \"quoted\"\n", "nested": {"list": [1, 2.5, null, true, -7]}},
            "headers": {"fedora_messaging_severity": 30, "fedora_messaging_user_alice": true}
        }),
        json!({
            "id": "py-3",
            "topic": format!("{queue}.prio"),
            "body": {},
            "priority": 4,
            "headers": {"sent-at": "2019-07-30T19:12:22+00:00", "fedora_messaging_rpm_kernel": true}
        }),
    ]
}

/// A configuration both implementations read, without the test
/// configuration's `log_config`: both log at their default.
fn shared_config(dir: &Path, queue: &str) -> std::path::PathBuf {
    let toml = queue_config(queue, "");
    let toml = &toml[..toml.find("[log_config]").unwrap()];
    config_file(dir, toml)
}

fn check(run: &Run, what: &str) {
    assert_eq!(run.code(), 0, "{what}: {run:#?}");
}

/// What Python's `loads` makes of each line of `files`.
fn python_loads(files: &[&Path]) -> Vec<Value> {
    let run = run(python()
        .arg(workspace_root().join("tests/fixtures/message_fields.py"))
        .args(files));
    check(&run, "fedora_messaging.message.loads");
    run.stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn ours(conf: &Path, args: &[&str]) -> Run {
    run(fedora_messaging().arg("--conf").arg(conf).args(args))
}

fn theirs(conf: &Path, args: &[&str]) -> Run {
    run(fedora_messaging_py().arg("--conf").arg(conf).args(args))
}

#[test]
fn record_files_round_trip_between_python_and_us() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("python");
    broker.declare_queue(&queue, FieldTable::default());
    let dir = scratch();
    let conf = shared_config(dir.path(), &queue);
    let records = sample_records(&queue);
    let count = records.len().to_string();
    let input = record_file(dir.path(), &records);
    let p = |name: &str| dir.path().join(name);

    // Ours publishes, Python records.
    check(
        &ours(&conf, &["publish", input.to_str().unwrap()]),
        "our publish",
    );
    let python_recorded = p("python-recorded.jsonl");
    check(
        &theirs(
            &conf,
            &[
                "record",
                python_recorded.to_str().unwrap(),
                "--limit",
                &count,
            ],
        ),
        "Python's record",
    );

    // Python's file goes through our publish and our record unchanged.
    check(
        &ours(&conf, &["publish", python_recorded.to_str().unwrap()]),
        "our publish of Python's file",
    );
    let we_recorded = p("we-recorded.jsonl");
    check(
        &ours(
            &conf,
            &["record", we_recorded.to_str().unwrap(), "--limit", &count],
        ),
        "our record",
    );
    let python_text = std::fs::read_to_string(&python_recorded).unwrap();
    let our_text = std::fs::read_to_string(&we_recorded).unwrap();
    assert_eq!(python_text.lines().count(), records.len(), "{python_text}");
    for (theirs, ours) in python_text.lines().zip(our_text.lines()) {
        assert_eq!(ours, theirs, "our record line differs from Python's");
    }
    assert_eq!(our_text, python_text);

    // Our publish sent the headers Python's publish would have sent (its
    // loads of the input is what it publishes); sent-at is the time of
    // publishing where the input has none.
    let python_would_send = python_loads(&[&input]);
    for (line, want) in python_text.lines().zip(&python_would_send) {
        let received: Value = serde_json::from_str(line).unwrap();
        let mut got = received["headers"].as_object().unwrap().clone();
        let mut want = want["headers"].as_object().unwrap().clone();
        if want["sent-at"] != got["sent-at"] {
            got.remove("sent-at");
            want.remove("sent-at");
        }
        assert_eq!(got, want, "headers Python received from our publish");
    }

    // Python's loads reads our file as it reads its own, and both say what
    // the input said.
    let loaded = python_loads(&[&python_recorded, &we_recorded]);
    let (from_python, from_us) = loaded.split_at(records.len());
    assert_eq!(from_us, from_python);
    for (sent, got) in records.iter().zip(from_us) {
        for field in ["id", "topic", "body"] {
            assert_eq!(got[field], sent[field], "{field} of {sent}");
        }
        assert_eq!(got["queue"], queue.as_str());
        assert_eq!(got["priority"], sent["priority"].as_u64().unwrap_or(0));
        let severity = sent["headers"]["fedora_messaging_severity"]
            .as_u64()
            .unwrap_or(20);
        assert_eq!(got["severity"], severity);
        for (key, value) in sent["headers"].as_object().into_iter().flatten() {
            assert_eq!(&got["headers"][key], value, "header {key} of {sent}");
        }
        assert_eq!(got["headers"]["fedora_messaging_schema"], "base.message");
        assert_eq!(
            got["headers"]["fedora_messaging_schema_package"],
            "fedora_messaging"
        );
    }
    assert_eq!(broker.depth(&queue), 0);
    broker.delete_queue(&queue);
}

#[test]
fn what_python_publishes_we_record_whole() {
    let broker = TestBroker::connect();
    let queue = TestBroker::unique_name("python-pub");
    broker.declare_queue(&queue, FieldTable::default());
    let dir = scratch();
    let conf = shared_config(dir.path(), &queue);
    let records = sample_records(&queue);
    let input = record_file(dir.path(), &records);
    let published = theirs(&conf, &["publish", input.to_str().unwrap()]);
    check(&published, "Python's publish");
    let recorded = dir.path().join("recorded.jsonl");
    check(
        &ours(
            &conf,
            &[
                "record",
                recorded.to_str().unwrap(),
                "--limit",
                &records.len().to_string(),
            ],
        ),
        "our record",
    );
    let ours = python_loads(&[&recorded]);
    // Python's own view of what it published: its loads of the input.
    let expected = python_loads(&[&input]);
    assert_eq!(ours.len(), expected.len());
    for (got, want) in ours.iter().zip(&expected) {
        for field in ["id", "topic", "body", "priority", "severity"] {
            assert_eq!(got[field], want[field], "{field} of {want}");
        }
        assert_eq!(got["queue"], queue.as_str());
        let mut got_headers = got["headers"].clone();
        let mut want_headers = want["headers"].clone();
        // sent-at is the time of publishing where the file has none.
        got_headers.as_object_mut().unwrap().remove("sent-at");
        want_headers.as_object_mut().unwrap().remove("sent-at");
        assert_eq!(got_headers, want_headers, "headers of {want}");
    }
    broker.delete_queue(&queue);
}

#[test]
fn the_python_library_reads_our_example_config() {
    let example = workspace_root().join("config.toml.example");
    let run = run(python().arg("-c").arg(
        "import sys\n\
         from fedora_messaging import config\n\
         conf = config.LazyConfig()\n\
         conf.load_config(sys.argv[1])\n\
         print(conf['callback'], conf['qos']['prefetch_count'], conf['bindings'][0]['routing_keys'])\n",
    ).arg(&example));
    check(&run, "fedora_messaging.config loading config.toml.example");
    assert_eq!(run.stdout, "libprinter.so:Printer 10 ['#']\n");
}
