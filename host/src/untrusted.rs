//! How text a publisher wrote (a message id, a topic) is shown in the
//! log: on one line, with control characters escaped, so that a forged id
//! cannot end a log line and fake the next one, which operators' alerts
//! would match.

use std::fmt;

/// Displays its text with every control character escaped (`\n`, `\u{1b}`);
/// text without one is shown unchanged.
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(char::is_control) {
            f.write_str(&rest[..at])?;
            let control = rest[at..].chars().next().unwrap_or_default();
            write!(f, "{}", control.escape_default())?;
            rest = &rest[at + control.len_utf8()..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_is_kept() {
        let forged =
            "x\n[fedora_messaging.twisted.consumer INFO] Successfully consumed\r\u{1b}[2K\0é";
        assert_eq!(
            Untrusted(forged).to_string(),
            "x\\n[fedora_messaging.twisted.consumer INFO] Successfully consumed\\r\\u{1b}[2K\\u{0}é"
        );
        let plain = "9f1b2c3d-0000-4000-8000-000000000000";
        assert_eq!(Untrusted(plain).to_string(), plain);
    }
}
