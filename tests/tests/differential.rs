//! The differential test against Python fedora-messaging: the same raw
//! messages (tests/fixtures/differential.py has the corpus: properties,
//! header names and topics that are not UTF-8, every field type pika
//! writes, hostile bodies) go to two queues, one consumed by Python
//! fedora-messaging 3.9 with a recording callback, the other by this host
//! with the `Inspect` plugin. Every case must end the same in both, be
//! dead-lettered by both, or differ only as docs/differences.md documents.
//! The table of results is written to `target/differential.md`.

use fm_e2e::broker::TestBroker;
use fm_e2e::nodes::amqp_url;
use fm_e2e::python::{fedora_messaging_py, python};
use fm_e2e::*;

fn script() -> std::path::PathBuf {
    workspace_root().join("tests/fixtures/differential.py")
}

/// A configuration for `queue` (declared by the script, so passively
/// here), with `callback`, that both implementations read.
fn config(queue: &str, callback: &str, out: &std::path::Path) -> String {
    let url = amqp_url();
    format!(
        r#"amqp_url = "{url}"
callback = "{callback}"
passive_declares = true

[[bindings]]
queue = "{queue}"
exchange = "amq.topic"
routing_keys = []

[queues."{queue}"]
durable = true
auto_delete = false
exclusive = false
arguments = {{}}

[consumer_config]
out = "{}"
"#,
        out.display()
    )
}

/// The last `n` bytes of `text` or so (at a character boundary).
fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[test]
fn the_same_raw_messages_end_the_same_in_python_and_here() {
    // No dots: the script finds each case's name after the first one.
    let run_name = TestBroker::unique_name("differential");
    let published = run(python()
        .arg(script())
        .args(["publish", amqp_url(), &run_name]));
    assert_eq!(published.code(), 0, "publishing the corpus: {published:#?}");

    let dir = scratch();
    let python_records = dir.path().join("python.jsonl");
    let python_conf = config_file(
        dir.path(),
        &config(
            &format!("{run_name}.py"),
            "differential:Recorder",
            &python_records,
        ),
    );
    let theirs = run(fedora_messaging_py()
        .env("PYTHONPATH", workspace_root().join("tests/fixtures"))
        .arg("--conf")
        .arg(&python_conf)
        .arg("consume"));
    assert_eq!(
        theirs.code(),
        0,
        "Python fedora-messaging: ...{}",
        tail(&theirs.output(), 4000)
    );

    let our_records = dir.path().join("ours.jsonl");
    let our_conf = dir.path().join("ours.toml");
    std::fs::write(
        &our_conf,
        config(
            &format!("{run_name}.rs"),
            &format!("{}:Inspect", plugin("test_consumers").display()),
            &our_records,
        ),
    )
    .unwrap();
    let ours = run(fedora_messaging()
        .arg("--conf")
        .arg(&our_conf)
        .arg("consume"));
    assert_eq!(
        ours.code(),
        0,
        "this host: ...{}",
        tail(&ours.output(), 4000)
    );

    let table = target_dir().join("differential.md");
    let compared = run(python()
        .arg(script())
        .args(["compare", amqp_url(), &run_name])
        .arg(&python_records)
        .arg(&our_records)
        .arg(&table));
    let shown = std::fs::read_to_string(&table).unwrap_or_default();
    println!("{shown}");
    assert_eq!(
        compared.code(),
        0,
        "cases that end differently:\n{}\n{shown}",
        compared.stderr
    );
}
