//! The seal on the host's own delivery count: an HMAC-SHA256, keyed by
//! `[delivery_limit]`'s secret, over what the count is about (the queue,
//! the message's id, its topic and body) and the count itself. A count
//! without a valid seal was not written by a host holding the secret: a
//! publisher's, or one signed with another key, and it is not believed.
//! Pure: [`super::limit`] decides what an opened seal means.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The seal's version, first in what is signed and in the header.
const VERSION: &str = "v1";

/// What a count is about, and the count.
#[derive(Debug, Clone, Copy)]
pub struct Counted<'a> {
    /// The queue the count is for: a count moved to another queue (a
    /// dead-letter queue, a relay) does not hold there.
    pub queue: &'a str,
    pub message_id: &'a [u8],
    pub topic: &'a str,
    pub body: &'a [u8],
    /// Attempts made so far.
    pub attempts: u32,
}

/// The key that seals and opens counts.
#[derive(Clone)]
pub struct Seal {
    key: Vec<u8>,
}

/// The shortest secret taken: 128 bits.
pub const MIN_SECRET: usize = 16;

impl std::fmt::Debug for Seal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Seal { key: <secret> }")
    }
}

impl Seal {
    /// A seal with `key` (at least [`MIN_SECRET`] bytes, which the
    /// configuration checks).
    pub fn new(key: &[u8]) -> Seal {
        Seal { key: key.to_vec() }
    }

    fn mac(&self, counted: &Counted<'_>) -> Hmac<Sha256> {
        // Any key length is accepted by HMAC.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        // Each field with its length first: an id may hold any byte, so no
        // separator could tell where it ends.
        for field in [
            VERSION.as_bytes(),
            counted.queue.as_bytes(),
            counted.message_id,
            counted.topic.as_bytes(),
            counted.body,
            counted.attempts.to_string().as_bytes(),
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    /// The seal of `counted`, as the header holds it.
    pub fn sign(&self, counted: &Counted<'_>) -> String {
        let tag = self.mac(counted).finalize().into_bytes();
        let mut text = String::with_capacity(VERSION.len() + 1 + tag.len() * 2);
        text.push_str(VERSION);
        text.push(':');
        for byte in tag {
            text.push_str(&format!("{byte:02x}"));
        }
        text
    }

    /// Whether `seal` (a header's text) is the seal of `counted`, checked
    /// in constant time.
    pub fn opens(&self, counted: &Counted<'_>, seal: &str) -> bool {
        let Some(hex) = seal
            .strip_prefix(VERSION)
            .and_then(|rest| rest.strip_prefix(':'))
        else {
            return false;
        };
        let Some(tag) = from_hex(hex) else {
            return false;
        };
        self.mac(counted).verify_slice(&tag).is_ok()
    }
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(attempts: u32) -> Counted<'static> {
        Counted {
            queue: "q",
            message_id: b"id\0with a nul",
            topic: "org.example.topic",
            body: b"{}",
            attempts,
        }
    }

    #[test]
    fn a_seal_opens_only_for_what_it_was_made_for() {
        let seal = Seal::new(b"0123456789abcdef");
        let signed = seal.sign(&counted(2));
        assert!(signed.starts_with("v1:") && signed.len() == 67, "{signed}");
        assert!(seal.opens(&counted(2), &signed));
        assert!(!seal.opens(&counted(3), &signed), "another count");
        let other_queue = Counted {
            queue: "dead",
            ..counted(2)
        };
        assert!(!seal.opens(&other_queue, &signed), "another queue");
        let other_topic = Counted {
            topic: "x",
            ..counted(2)
        };
        assert!(!seal.opens(&other_topic, &signed), "another topic");
        let other_body = Counted {
            body: b"{ }",
            ..counted(2)
        };
        assert!(!seal.opens(&other_body, &signed), "another body");
        // Lengths first: moving a byte from one field to the next changes
        // the seal.
        let shifted = Counted {
            queue: "qi",
            message_id: b"d\0with a nul",
            ..counted(2)
        };
        assert!(!seal.opens(&shifted, &signed));
        assert!(!Seal::new(b"another key of 16").opens(&counted(2), &signed));
    }

    #[test]
    fn malformed_seals_do_not_open() {
        let seal = Seal::new(b"0123456789abcdef");
        let signed = seal.sign(&counted(1));
        for bad in [
            "",
            "v1:",
            &signed[3..],
            &signed.replace("v1:", "v2:"),
            &format!("{signed}00"),
            &signed.to_uppercase().replace("V1:", "v1:zz"),
            "v1:ééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé",
        ] {
            assert!(!seal.opens(&counted(1), bad), "{bad:?}");
        }
    }
}
