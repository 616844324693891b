//! `fedora-messaging record FILE`: consume as `consume` does, with a
//! consumer built into the host that writes each message to FILE in
//! fedora-messaging's record format, the format `publish` and
//! `reconsume --file` read.
//!
//! As in fedora-messaging, FILE is truncated (`-` is standard output) and
//! `--limit N` halts with exit code 0 once the Nth message is written and
//! acknowledged. Each line is written and flushed before its message is
//! acknowledged, so a crash loses none. Unlike fedora-messaging, a message
//! that cannot be written fails (exit 13, the message goes back to the
//! queue) instead of halting with 1 and acknowledging it: a full disk must
//! not eat messages.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;

use fm_plugin_api::Message;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::engine::handler::{Handler, Unstarted};
use crate::exit::{Exit, Fatal};
use crate::outcome::Outcome;
use crate::wire::MessageView;

/// Writes each message it is given as one record line.
pub struct Recorder {
    out: Box<dyn Write + Send>,
    limit: Option<u64>,
    written: u64,
    progress: Option<ProgressBar>,
}

impl Recorder {
    /// Opens `file` (truncating it; `-` is standard output) for a recording
    /// of at most `limit` messages.
    pub fn create(file: &Path, limit: Option<u64>) -> Result<Recorder, Fatal> {
        let out: Box<dyn Write + Send> = if file == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(File::create(file).map_err(|error| {
                Fatal::new(
                    Exit::Usage,
                    format!("cannot write the record file {}: {error}", file.display()),
                )
            })?)
        };
        // Like click's progress bar, only on a terminal; on standard error
        // so that it never mixes with a recording on standard output.
        let progress = limit
            .filter(|_| std::io::stderr().is_terminal())
            .map(progress_bar);
        Ok(Recorder {
            out,
            limit,
            written: 0,
            progress,
        })
    }

    fn write(&mut self, message: &MessageView<'_>) -> Result<(), String> {
        let line = record_line(message)?;
        self.out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|error| error.to_string())
    }
}

impl Handler for Recorder {
    fn consume(&mut self, message: &MessageView<'_>) -> Result<Outcome, Unstarted> {
        Ok(self.record(message))
    }

    fn stop(&mut self) {
        let _ = self.out.flush();
        if let Some(progress) = &self.progress {
            progress.finish();
        }
    }
}

impl Recorder {
    /// Writes one message; halts once the limit is reached.
    fn record(&mut self, message: &MessageView<'_>) -> Outcome {
        if let Err(reason) = self.write(message) {
            return Outcome::Failed {
                reason: format!("Unable to save messages to file: {reason}"),
            };
        }
        self.written += 1;
        if let Some(progress) = &self.progress {
            progress.set_position(self.written);
        }
        match self.limit {
            Some(limit) if self.written >= limit => Outcome::Halt {
                exit_code: 0,
                requeue: false,
            },
            _ => Outcome::Ack,
        }
    }
}

/// The message as fedora-messaging's `dumps` writes it.
pub fn record_line(message: &MessageView<'_>) -> Result<String, String> {
    let body = fm_plugin_api::json::parse_object(message.body)
        .map(Value::Object)
        .map_err(|error| format!("the body is not a JSON object: {error}"))?;
    let headers = fm_plugin_api::json::parse_object(message.headers.headers_json().as_bytes())
        .map_err(|error| format!("the headers are not a JSON object: {error}"))?;
    let line = Message::new(message.topic, &body)
        .with_id(message.id)
        .with_queue(message.queue)
        .with_priority(message.priority)
        .with_headers(headers)
        .to_record_line();
    Ok(line)
}

/// `[#####-----]  12/100  12%` on standard error, redrawn in place (at
/// most a few times a second).
fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("  [{bar:36}]  {pos}/{len}  {percent:>3}%") {
        bar.set_style(style.progress_chars("#-"));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::HeadersJson;

    struct Headers(&'static str);

    impl HeadersJson for Headers {
        fn headers_json(&self) -> String {
            self.0.to_owned()
        }
    }

    fn view<'a>(headers: &'a Headers, body: &'a [u8]) -> MessageView<'a> {
        MessageView {
            id: "9f1b",
            topic: "org.example.thing",
            queue: "q",
            body,
            severity: 30,
            priority: 3,
            sent_at: None,
            schema: None,
            headers,
        }
    }

    #[test]
    fn writes_python_dumps_lines() {
        let headers = Headers(r#"{"fedora_messaging_severity": 30, "x": "é"}"#);
        let line = record_line(&view(&headers, r#"{"b":[1,2],"a":"ü"}"#.as_bytes())).unwrap();
        assert_eq!(
            line,
            "{\"body\": {\"a\": \"ü\", \"b\": [1, 2]}, \"headers\": {\"fedora_messaging_severity\": 30, \"x\": \"é\"}, \"id\": \"9f1b\", \"priority\": 3, \"queue\": \"q\", \"topic\": \"org.example.thing\"}\n"
        );
    }

    #[test]
    fn halts_with_zero_after_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut recorder = Recorder::create(&path, Some(2)).unwrap();
        let headers = Headers("{}");
        assert_eq!(recorder.consume(&view(&headers, b"{}")), Ok(Outcome::Ack));
        assert_eq!(
            recorder.consume(&view(&headers, b"{}")),
            Ok(Outcome::Halt {
                exit_code: 0,
                requeue: false
            })
        );
        recorder.stop();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }
}
