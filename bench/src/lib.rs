//! What the benchmark harness (`fm-bench`) and the per-message criterion
//! bench share: the message they measure with.

use fm_host::wire::RecordMessage;
use serde_json::json;

/// The benchmark queue, and the first word of its topics.
pub const QUEUE: &str = "fm-bench";

/// A message as Fedora's infrastructure sends them: the standard headers
/// (schema, severity, sent-at, a few filter headers) and a JSON body of
/// about 1 KiB.
pub fn sample_message() -> Result<RecordMessage, String> {
    let comment = "Works for me. ".repeat(66);
    let record = json!({
        "id": "2f8c5b4e-5c1d-4f7e-9a55-0b8f3c6e7d21",
        "topic": format!("{QUEUE}.bodhi.update.comment"),
        "headers": {
            "fedora_messaging_schema": "bodhi.update.comment.v1",
            "fedora_messaging_severity": 20,
            "sent-at": "2019-07-30T19:12:22+00:00",
            "fedora_messaging_user_bowlofeggs": true,
            "fedora_messaging_rpm_python-fedora-messaging": true
        },
        "body": {
            "agent": "bowlofeggs",
            "comment": {
                "karma": 1,
                "text": comment,
                "update_alias": "FEDORA-2019-6c1d2c3b0b",
                "user": {"name": "bowlofeggs"}
            }
        }
    });
    RecordMessage::from_json(record)
}
