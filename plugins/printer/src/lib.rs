//! Prints each message to standard output, as fedora-messaging's example
//! `printer` callback does.
//!
//! `fedora-messaging consume --callback=libprinter.so:Printer`

use std::io::Write;

use fm_plugin_api::{Consumer, ConsumerError, Init, Message, export_consumers};

pub struct Printer;

impl Consumer for Printer {
    fn new(_init: &Init) -> Result<Self, ConsumerError> {
        Ok(Printer)
    }

    fn consume(&mut self, message: &Message) -> Result<(), ConsumerError> {
        // One write (and one flush) per message keeps lines whole when the
        // output is a pipe shared with the host's log.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{message}")?;
        stdout.flush()?;
        Ok(())
    }
}

export_consumers!(Printer);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_and_acks() {
        let mut printer = Printer::new(&Init::for_tests("Printer", "{}")).unwrap();
        let message = Message::new("t", &serde_json::json!({"hello": "world"}));
        assert_eq!(printer.consume(&message), Ok(()));
    }

    #[test]
    fn acks_through_the_hosts_entry_point() {
        use fm_plugin_api::testing::{Harness, Outcome, message_from_record};
        let mut printer = Harness::start::<Printer>("Printer", "").unwrap();
        let message =
            message_from_record(r#"{"id": "p1", "topic": "t", "body": {"hello": "world"}}"#)
                .unwrap();
        assert_eq!(printer.consume(&message), Outcome::Ack);
    }
}
