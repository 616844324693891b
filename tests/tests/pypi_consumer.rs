//! A consumer published on PyPI, run unchanged through the Python bridge
//! and under Python fedora-messaging 3.9's own CLI, message for message:
//! robosignatory 0.8.2, whose XML signer binds `publish` at import (`from
//! fedora_messaging.api import publish`) and publishes an answer to each
//! request it refuses. Both run from one virtual environment, as a
//! deployment migrating to this host does, with the same configuration
//! text; their log lines, outcomes, exit codes and published bytes must
//! be the same.

use std::time::Duration;

use fm_e2e::broker::{TestBroker, queue_tables};
use fm_e2e::nodes::amqp_url;
use fm_e2e::process::Running;
use fm_e2e::python::{log_config, robosignatory_venv};
use fm_e2e::*;
use lapin::types::FieldTable;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// robosignatory's configuration for the queue `name`, which receives
/// `name.#`: the XML signer with the `echo` signing helper, the others
/// off.
fn config(name: &str) -> String {
    let url = amqp_url();
    let tables = queue_tables(name, &format!("{name}.#"));
    format!(
        "amqp_url = \"{url}\"\ncallback = \"robosignatory.consumer:Consumer\"\n\n{tables}\n\
         [consumer_config.signing]\nbackend = \"echo\"\n\n[consumer_config.xml]\nkey = \"testkey\"\n{}",
        // robosignatory's loggers at INFO too, as its deployments run it.
        log_config(
            "WARNING",
            &[("fedora_messaging", "INFO"), ("robosignatory", "INFO")]
        )
    )
}

/// The lines robosignatory and fedora-messaging's consumer log, with
/// `name` shown as `Q`.
fn consumer_lines(output: &str, name: &str) -> Vec<String> {
    output
        .lines()
        .filter(|line| {
            line.starts_with("[robosignatory")
                || line.starts_with("[fedora_messaging.twisted.consumer ")
        })
        .map(|line| {
            let line = line.replace(name, "Q");
            // The answer's id is fresh in each run.
            match line.split_once(".finished (message id ") {
                Some((head, _)) => format!("{head}.finished (message id ID)"),
                None => line,
            }
        })
        .collect()
}

/// Runs `command`, consuming the queue `name`, until it consumed the last
/// message and the answer it published (which its queue receives too,
/// after the last), then stops it as systemd does.
fn until_last(command: &mut std::process::Command, name: &str) -> Run {
    let mut running = Running::start(command);
    running.wait_for(
        &format!("Successfully consumed message from topic {name}.robosignatory.xml-sign.finished"),
        WAIT,
    );
    running.signal("TERM");
    running.finish()
}

fn publish_to(broker: &TestBroker, name: &str) {
    broker.publish_all(&[
        json!({"id": "x1", "topic": format!("{name}.robosignatory.xml-sign"), "body": {"not": "a string"}}),
        json!({"id": "x2", "topic": format!("{name}.other"), "body": {}}),
        json!({"id": "last", "topic": format!("{name}.last"), "body": {}}),
    ]);
}

#[test]
fn robosignatory_runs_through_the_bridge_as_under_pythons_cli() {
    let venv = robosignatory_venv();
    let broker = TestBroker::connect();
    let shared = TestBroker::unique_name("pypi-robosignatory");
    let (theirs, ours) = (format!("{shared}-py"), format!("{shared}-rs"));
    let mut answers = Vec::new();
    for name in [&theirs, &ours] {
        broker.declare_queue(name, FieldTable::default());
        let answered = format!("{name}-answers");
        broker.declare_queue(&answered, FieldTable::default());
        broker.bind(
            &answered,
            "amq.topic",
            &format!("{name}.robosignatory.xml-sign.finished"),
        );
        answers.push(answered);
        publish_to(&broker, name);
    }
    let dir = scratch();
    let write = |file: &str, text: String| {
        let path = dir.path().join(file);
        std::fs::write(&path, text).expect("write the config");
        path
    };
    let python_conf = write("theirs.toml", config(&theirs));
    let python = until_last(
        std::process::Command::new(venv.join("bin/fedora-messaging"))
            .env_remove("FEDORA_MESSAGING_CONF")
            .env("PYTHONUNBUFFERED", "1")
            .arg("--conf")
            .arg(&python_conf)
            .arg("consume"),
        &theirs,
    );
    // The same text; this host finds the environment's python on PATH,
    // as in a shell where it is activated.
    let our_conf = write("ours.toml", config(&ours));
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let host = until_last(
        fedora_messaging()
            .env(
                "FEDORA_MESSAGING_PLUGIN_PATH",
                plugin("fm_python").parent().expect("a plugin directory"),
            )
            .env("PATH", path)
            .arg("--conf")
            .arg(&our_conf)
            .arg("consume"),
        &ours,
    );

    assert_eq!(python.code(), 0, "{python:#?}");
    assert_eq!(host.code(), 0, "{host:#?}");
    let expected = consumer_lines(&python.stdout, &theirs);
    assert!(
        expected
            .iter()
            .any(|line| line.contains("XMLSigner ready for service")),
        "{python:#?}"
    );
    assert_eq!(consumer_lines(&host.stdout, &ours), expected, "{host:#?}");
    // The answer x1 got, published through `publish` bound at import.
    let answer = |queue: &str| {
        let taken = broker.take_all(queue);
        assert_eq!(taken.len(), 1, "one answer in {queue}");
        String::from_utf8_lossy(&taken[0].body).into_owned()
    };
    assert_eq!(answer(&answers[1]), answer(&answers[0]));
    for name in [&theirs, &ours] {
        assert_eq!(broker.depth(name), 0, "{name} was emptied");
        broker.delete_queue(name);
    }
    for queue in &answers {
        broker.delete_queue(queue);
    }
}
