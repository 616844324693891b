//! The Python bridge takes the next message while Python handles the
//! current one (plugin interface revision 4, `fm_plugin_api::ahead`), and
//! still consumes nothing after a halt or once a stop began: a message
//! sent ahead is then not begun, and the broker delivers it again.

use std::time::Duration;

use fm_e2e::broker::dead_lettered_queue;
use fm_e2e::process::Running;
use fm_e2e::python::{bridge_config, bridge_host, ids_of, written};
use fm_e2e::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn nothing_after_a_halt_is_begun_though_it_was_sent_ahead() {
    let (broker, queue, _dead, config) = dead_lettered_queue("ahead-halt", "");
    for (id, body) in [
        ("h1", json!({"do": "ack"})),
        ("h2", json!({"do": "halt", "code": 3})),
        ("h3", json!({"do": "ack"})),
        ("h4", json!({"do": "ack"})),
    ] {
        broker.publish(&json!({"id": id, "topic": format!("{queue}.test"), "body": body}));
    }
    let dir = scratch();
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(&config, "bridge_callbacks:Scripted", &out, "ahead-halt"),
    );
    let run = Running::start(&mut bridge_host(&conf)).finish();
    assert_eq!(run.code(), 3, "{run:#?}");
    assert_eq!(ids_of(&written(&out)), ["h1", "h2"]);
    assert_eq!(broker.depth(&queue), 2, "h3 and h4 are back in the queue");
    broker.delete_queue(&queue);
}

#[test]
fn a_message_sent_ahead_is_not_begun_once_a_stop_began() {
    let (broker, queue, _dead, config) = dead_lettered_queue("ahead-stop", "");
    let dir = scratch();
    let go = dir.path().join("go");
    broker.publish(&json!({"id": "w1", "topic": format!("{queue}.test"),
                          "body": {"do": "wait_for", "path": go}}));
    for id in ["w2", "w3"] {
        broker.publish(&json!({"id": id, "topic": format!("{queue}.test"), "body": {}}));
    }
    let out = dir.path().join("out.jsonl");
    let conf = config_file(
        dir.path(),
        &bridge_config(&config, "bridge_callbacks:Scripted", &out, "ahead-stop"),
    );
    let mut host = Running::start(&mut bridge_host(&conf));
    host.wait_for("message w1 asks for wait_for", WAIT);
    host.signal("TERM");
    // The host holds its workers before it says so.
    host.wait_for("Waiting for the workers", WAIT);
    std::fs::write(&go, b"").expect("the go file");
    let run = host.finish();
    assert_eq!(run.code(), 0, "{run:#?}");
    assert_eq!(ids_of(&written(&out)), ["w1"], "{run:#?}");
    assert_eq!(
        broker.depth(&queue),
        2,
        "w1 was acknowledged, w2 and w3 are back in the queue"
    );
    broker.delete_queue(&queue);
}
