//! TopicCounter run as the host runs it: through the library's exported
//! entry, configured with TOML as a user writes it, fed recorded messages
//! (what `fedora-messaging record` writes), its log lines captured.

use fm_plugin_api::testing::{Harness, Outcome, messages_from_file};
use topic_counter::TopicCounter;

const MESSAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/messages.jsonl");

#[test]
fn reports_the_counts_every_report_every_messages() {
    let mut counter = Harness::start::<TopicCounter>("TopicCounter", "report_every = 2").unwrap();
    for message in messages_from_file(MESSAGES).unwrap() {
        assert_eq!(counter.consume(&message), Outcome::Ack);
    }
    let reports: Vec<String> = counter.logs().into_iter().map(|line| line.text).collect();
    assert_eq!(
        reports,
        [
            r#"after 2 messages: {"org.fedoraproject.prod.bodhi.update.comment": 1, "org.fedoraproject.prod.buildsys.build.state.change": 1}"#,
            r#"after 4 messages: {"org.fedoraproject.prod.bodhi.update.comment": 1, "org.fedoraproject.prod.buildsys.build.state.change": 3}"#,
        ]
    );
}

#[test]
fn halts_with_exit_code_0_after_stop_after_messages() {
    let mut counter = Harness::start::<TopicCounter>("TopicCounter", "stop_after = 3").unwrap();
    let outcomes: Vec<Outcome> = messages_from_file(MESSAGES)
        .unwrap()
        .iter()
        .take(3)
        .map(|message| counter.consume(message))
        .collect();
    assert_eq!(outcomes[..2], [Outcome::Ack, Outcome::Ack]);
    assert!(
        matches!(outcomes[2], Outcome::Halt { exit_code: 0, .. }),
        "{outcomes:?}"
    );
}

#[test]
fn a_report_every_that_is_not_a_number_names_the_key() {
    let refusal = Harness::start::<TopicCounter>("TopicCounter", r#"report_every = "often""#)
        .err()
        .expect("refused");
    assert!(
        refusal.contains("consumer_config.report_every"),
        "{refusal}"
    );
}
