//! The lines fedora-messaging's consumer logs for each message, under its
//! logger name (`fedora_messaging.twisted.consumer`), at its levels and in
//! its words, for every consumer: operators' journal alerts match them.
//! What a publisher wrote (the id, the topic) is shown escaped.

use crate::outcome::Outcome;
use crate::untrusted::Untrusted;

/// Shown as `fedora_messaging.twisted.consumer`, and configured by that
/// name in `log_config`.
const TARGET: &str = "fm_host::twisted::consumer";

/// Before the consumer is given the message.
pub fn consuming(id: &str, topic: &str) {
    log::info!(
        target: TARGET,
        "Consuming message from topic {} (message id {})",
        Untrusted(topic),
        Untrusted(id)
    );
}

/// A message the consumer took ahead and left unstarted, as the host
/// drains: put down, and the broker delivers it again.
pub fn unstarted(id: &str) {
    log::debug!(
        target: TARGET,
        "Message id {} was not started: the consumer is stopping",
        Untrusted(id)
    );
}

/// Once the consumer answered; a failure is logged by the engine, which
/// decides what follows from it.
pub fn answered(id: &str, topic: &str, outcome: &Outcome) {
    // Checked first: with the level off, nothing is formatted per message.
    if let Some(level) = level_for(outcome)
        && log::log_enabled!(target: TARGET, level)
        && let Some((_, line)) = line_for(id, topic, outcome)
    {
        log::log!(target: TARGET, level, "{line}");
    }
}

/// The level fedora-messaging logs `outcome` at, if it logs it here.
fn level_for(outcome: &Outcome) -> Option<log::Level> {
    match outcome {
        Outcome::Ack | Outcome::Halt { .. } => Some(log::Level::Info),
        Outcome::Nack | Outcome::Drop => Some(log::Level::Warn),
        Outcome::Failed { .. } => None,
    }
}

/// The line fedora-messaging logs for `outcome`, and its level.
fn line_for(id: &str, topic: &str, outcome: &Outcome) -> Option<(log::Level, String)> {
    let (id, topic) = (Untrusted(id), Untrusted(topic));
    let line = match outcome {
        Outcome::Ack => {
            format!("Successfully consumed message from topic {topic} (message id {id})")
        }
        Outcome::Nack => format!("Returning message id {id} to the queue"),
        Outcome::Drop => format!("Consumer requested message id {id} be dropped"),
        Outcome::Halt { .. } => {
            "Consumer indicated it wishes consumption to halt, shutting down".to_owned()
        }
        Outcome::Failed { .. } => return None,
    };
    Some((level_for(outcome)?, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_fedora_messagings_line_and_level() {
        let line = |outcome| line_for("m1", "org.x\n", &outcome);
        assert_eq!(
            line(Outcome::Ack),
            Some((
                log::Level::Info,
                "Successfully consumed message from topic org.x\\n (message id m1)".to_owned()
            ))
        );
        assert_eq!(
            line(Outcome::Nack),
            Some((
                log::Level::Warn,
                "Returning message id m1 to the queue".to_owned()
            ))
        );
        assert_eq!(
            line(Outcome::Drop),
            Some((
                log::Level::Warn,
                "Consumer requested message id m1 be dropped".to_owned()
            ))
        );
        assert_eq!(
            line(Outcome::Halt {
                exit_code: 3,
                requeue: true
            })
            .map(|(level, _)| level),
            Some(log::Level::Info)
        );
        assert_eq!(
            line(Outcome::Failed {
                reason: "x".to_owned()
            }),
            None
        );
    }
}
