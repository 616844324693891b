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

    #[test]
    fn appends_one_record_line_per_message() {
        let dir = std::env::temp_dir().join(format!("saver-test-{}", std::process::id()));
        let path = dir.join("sub/messages.jsonl");
        let config = serde_json::json!({ "path": path }).to_string();
        let mut saver = SaveMessage::new(&Init::for_tests("SaveMessage", &config)).unwrap();
        for id in ["a", "b"] {
            let message = Message::new("t", &serde_json::json!({"k": id})).with_id(id);
            saver.consume(&message).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(ids, ["a", "b"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_path_is_a_clear_error() {
        let error = SaveMessage::new(&Init::for_tests("SaveMessage", "{}"))
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("missing field `path`"),
            "{error}"
        );
    }
}
