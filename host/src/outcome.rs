//! What a consumer's answer means: the one table from outcome to the
//! settlement of the message and to what the host does next.

use std::fmt;

use crate::exit::Exit;

/// A consumer's answer to one message, as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ack,
    Nack,
    Drop,
    Halt { exit_code: i32, requeue: bool },
    Failed { reason: String },
}

/// How the message is settled with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// `basic.ack`.
    Ack,
    /// `basic.nack`, requeue.
    Requeue,
    /// `basic.nack`, no requeue (dead-lettered if the queue says so).
    Reject,
    /// `basic.nack`, requeue, for this message; then, once no worker
    /// holds a message, one `basic.nack` with `multiple` returns every
    /// other unsettled one to the queue.
    RequeueAllUnsettled,
}

/// What the host does after settling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Stop gracefully, then exit.
    Stop(Exit),
    /// Cancel at once without waiting for anything else, log, then exit.
    Abort(Exit),
}

impl Outcome {
    /// fedora-messaging's table, the only place it is written down.
    pub fn disposition(&self) -> (Settle, Next) {
        match self {
            Outcome::Ack => (Settle::Ack, Next::Continue),
            Outcome::Nack => (Settle::Requeue, Next::Continue),
            Outcome::Drop => (Settle::Reject, Next::Continue),
            Outcome::Halt {
                exit_code,
                requeue: false,
            } => (Settle::Ack, Next::Stop(Exit::Halt(*exit_code))),
            Outcome::Halt {
                exit_code,
                requeue: true,
            } => (Settle::Requeue, Next::Stop(Exit::Halt(*exit_code))),
            Outcome::Failed { .. } => (
                Settle::RequeueAllUnsettled,
                Next::Abort(Exit::ConsumerFailed),
            ),
        }
    }
}

/// The words `reconsume` prints: `ack`, `nack`, `drop`, `halt N`,
/// `failed: reason`.
impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ack => f.write_str("ack"),
            Outcome::Nack => f.write_str("nack"),
            Outcome::Drop => f.write_str("drop"),
            Outcome::Halt {
                exit_code,
                requeue: false,
            } => write!(f, "halt {exit_code}"),
            Outcome::Halt {
                exit_code,
                requeue: true,
            } => write!(f, "halt {exit_code} (requeue)"),
            Outcome::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        use Outcome::*;
        let failed = Failed { reason: "x".into() };
        let rows = [
            (Ack, Settle::Ack, Next::Continue),
            (Nack, Settle::Requeue, Next::Continue),
            (Drop, Settle::Reject, Next::Continue),
            (
                Halt {
                    exit_code: 3,
                    requeue: false,
                },
                Settle::Ack,
                Next::Stop(Exit::Halt(3)),
            ),
            (
                Halt {
                    exit_code: 4,
                    requeue: true,
                },
                Settle::Requeue,
                Next::Stop(Exit::Halt(4)),
            ),
            (
                failed,
                Settle::RequeueAllUnsettled,
                Next::Abort(Exit::ConsumerFailed),
            ),
        ];
        for (outcome, settle, next) in rows {
            assert_eq!(outcome.disposition(), (settle, next), "{outcome}");
        }
        assert_eq!(Exit::ConsumerFailed.code(), 13);
    }
}
