//! Appends each message to a file, one JSON line each in fedora-messaging's
//! record format, so `fedora-messaging publish` or `reconsume --file` can
//! replay it.
//!
//! ```toml
//! callback = "libsaver.so:SaveMessage"
//! [consumer_config]
//! path = "/var/lib/saver/messages.jsonl"
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use fm_plugin_api::{Consumer, ConsumerError, Init, Message, export_consumers};
use serde::Deserialize;

pub struct SaveMessage {
    file: File,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Conf {
    /// The file to append to; its directory is created if missing.
    path: PathBuf,
}

impl Consumer for SaveMessage {
    fn new(init: &Init) -> Result<Self, ConsumerError> {
        let conf: Conf = init.config()?;
        if let Some(dir) = conf.path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| {
                ConsumerError::failed(format!("cannot create {}: {error}", dir.display()))
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&conf.path)
            .map_err(|error| {
                ConsumerError::failed(format!("cannot open {}: {error}", conf.path.display()))
            })?;
        log::info!("saving messages to {}", conf.path.display());
        Ok(SaveMessage { file })
    }

    fn consume(&mut self, message: &Message) -> Result<(), ConsumerError> {
        // One write per line: with O_APPEND the line lands whole, and it is
        // in the file before the host acknowledges the message.
        self.file.write_all(message.to_record_line().as_bytes())?;
        Ok(())
    }
}

export_consumers!(SaveMessage);

#[cfg(test)]
mod tests {
    use super::*;
    use fm_plugin_api::testing::{Harness, Outcome, message_from_record};

    #[test]
    fn appends_each_record_line_as_it_came() {
        let dir = std::env::temp_dir().join(format!("saver-test-{}", std::process::id()));
        let path = dir.join("sub/messages.jsonl");
        let mut saver = Harness::start::<SaveMessage>(
            "SaveMessage",
            &format!("path = {:?}", path.display().to_string()),
        )
        .unwrap();
        let lines = [
            r#"{"body": {"k": "a"}, "headers": {"fedora_messaging_severity": 20}, "id": "a", "priority": 0, "queue": null, "topic": "t"}"#,
            r#"{"body": {"k": "b é"}, "headers": {}, "id": "b", "priority": 0, "queue": null, "topic": "t.b"}"#,
        ];
        for line in lines {
            let message = message_from_record(line).unwrap();
            assert_eq!(saver.consume(&message), Outcome::Ack);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().collect::<Vec<_>>(), lines);
        assert_eq!(
            saver.logs()[0].text,
            format!("saving messages to {}", path.display())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_path_is_a_clear_error() {
        let error = Harness::start::<SaveMessage>("SaveMessage", "")
            .err()
            .unwrap();
        assert_eq!(error, "consumer_config: missing field `path`");
        let error = Harness::start::<SaveMessage>("SaveMessage", "path = 3")
            .err()
            .unwrap();
        assert_eq!(
            error,
            "consumer_config.path: invalid type: integer `3`, expected path string"
        );
    }
}
