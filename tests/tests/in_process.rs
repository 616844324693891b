//! Several plugin libraries, and several consumers of one library, loaded
//! into one process through the host's loader.

use fm_e2e::plugin;
use fm_host::outcome::Outcome;
use fm_host::plugin::Plugin;
use fm_host::wire::RecordMessage;
use serde_json::json;

#[test]
fn two_libraries_and_two_consumers_of_one_library() {
    let test_consumers = Plugin::load(&plugin("test_consumers")).unwrap();
    let saver = Plugin::load(&plugin("saver")).unwrap();
    // The same library again, as a second `--callback` on it would.
    let test_consumers_again = Plugin::load(&plugin("test_consumers")).unwrap();
    assert_eq!(
        test_consumers.consumer_names(),
        ["Scripted", "Inspect", "PanicInNew", "FailInNew"]
    );
    assert_eq!(saver.consumer_names(), ["SaveMessage"]);

    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.jsonl");
    let mut scripted = test_consumers.build("Scripted", &json!({})).unwrap();
    let mut inspect = test_consumers_again.build("Inspect", &json!({})).unwrap();
    let mut save = saver
        .build("SaveMessage", &json!({ "path": saved }))
        .unwrap();

    let ack = RecordMessage::parse(r#"{"id": "m1", "topic": "t", "body": {"do": "ack"}}"#).unwrap();
    let halt =
        RecordMessage::parse(r#"{"id": "m2", "topic": "t", "body": {"do": "halt", "code": 5}}"#)
            .unwrap();
    assert_eq!(scripted.consume(&ack.view()).unwrap(), Outcome::Ack);
    assert_eq!(save.consume(&ack.view()).unwrap(), Outcome::Ack);
    assert_eq!(inspect.consume(&halt.view()).unwrap(), Outcome::Ack);
    assert_eq!(
        scripted.consume(&halt.view()).unwrap(),
        Outcome::Halt {
            exit_code: 5,
            requeue: false
        }
    );
    // Each instance keeps its own state; the saver wrote through its own.
    assert_eq!(save.consume(&halt.view()).unwrap(), Outcome::Ack);
    let lines = std::fs::read_to_string(&saved).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
}

#[test]
fn consumers_of_one_library_are_independent_instances() {
    let library = Plugin::load(&plugin("test_consumers")).unwrap();
    let mut first = library.build("Scripted", &json!({})).unwrap();
    let mut second = library.build("Scripted", &json!({})).unwrap();
    let panic = RecordMessage::parse(
        r#"{"id": "p", "topic": "t", "body": {"do": "panic", "reason": "only this one"}}"#,
    )
    .unwrap();
    let ack = RecordMessage::parse(r#"{"id": "a", "topic": "t", "body": {}}"#).unwrap();
    match first.consume(&panic.view()).unwrap() {
        Outcome::Failed { reason } => assert!(reason.ends_with("only this one"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    // The panic in one instance left the library and the other instance
    // working.
    assert_eq!(second.consume(&ack.view()).unwrap(), Outcome::Ack);
    assert_eq!(first.consume(&ack.view()).unwrap(), Outcome::Ack);
}
