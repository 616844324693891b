use std::fmt;

/// How a consumer asks the host to settle a message other than with an ack.
///
/// Returning `Ok(())` from [`Consumer::consume`](crate::Consumer::consume)
/// acknowledges the message. Each variant here says what happens instead,
/// exactly as the fedora-messaging exception of the same name does:
///
/// | value | the message | the host |
/// |---|---|---|
/// | [`Nack`](Self::Nack) | returned to the queue | goes on |
/// | [`Drop`](Self::Drop) | rejected, not requeued (a dead-letter exchange gets it) | goes on |
/// | [`halt(n)`](Self::halt) | acknowledged | stops gracefully, exits `n` |
/// | [`halt_and_requeue(n)`](Self::halt_and_requeue) | returned to the queue | stops gracefully, exits `n` |
/// | [`failed(reason)`](Self::failed), any `?` error, a panic | returned to the queue with every prefetched one | logs the reason, stops, exits 13 |
///
/// `?` turns any [`std::error::Error`] into a failure carrying its message
/// and the messages of its sources.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerError {
    /// Return the message to the queue and carry on.
    Nack,
    /// Reject the message without requeueing it and carry on.
    Drop,
    /// Stop consuming and exit with `exit_code`; the message is requeued
    /// when `requeue` is set, acknowledged otherwise.
    Halt { exit_code: i32, requeue: bool },
    /// The consumer failed; `reason` says why.
    Failed { reason: String },
    /// Only for a message taken with [`ahead::take_next`](crate::ahead::take_next)
    /// that the consumer did not begin because the host is draining
    /// ([`ahead::draining_fd`](crate::ahead::draining_fd) is readable): the
    /// host leaves it unsettled, and the broker delivers it again. Anywhere
    /// else the host takes it as a failure, so that no message is left
    /// unsettled on a channel that goes on.
    Unstarted,
}

impl ConsumerError {
    /// Acknowledge the message, then stop and exit with `exit_code`.
    pub fn halt(exit_code: i32) -> Self {
        ConsumerError::Halt {
            exit_code,
            requeue: false,
        }
    }

    /// Return the message to the queue, then stop and exit with `exit_code`.
    pub fn halt_and_requeue(exit_code: i32) -> Self {
        ConsumerError::Halt {
            exit_code,
            requeue: true,
        }
    }

    /// A failure with a reason of the consumer's choosing.
    pub fn failed(reason: impl Into<String>) -> Self {
        ConsumerError::Failed {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConsumerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsumerError::Nack => f.write_str("nack"),
            ConsumerError::Drop => f.write_str("drop"),
            ConsumerError::Halt {
                exit_code,
                requeue: false,
            } => write!(f, "halt {exit_code}"),
            ConsumerError::Halt {
                exit_code,
                requeue: true,
            } => write!(f, "halt {exit_code} (requeue)"),
            ConsumerError::Failed { reason } => write!(f, "failed: {reason}"),
            ConsumerError::Unstarted => f.write_str("not started"),
        }
    }
}

// `ConsumerError` deliberately does not implement `std::error::Error`, so
// that this conversion can cover every error type (as anyhow's does).
impl<E: std::error::Error> From<E> for ConsumerError {
    fn from(error: E) -> Self {
        let mut reason = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        ConsumerError::Failed { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot save message")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn question_mark_keeps_the_source_chain() {
        fn save() -> Result<(), ConsumerError> {
            Err(Outer(std::io::Error::other("disk full")))?;
            Ok(())
        }
        assert_eq!(
            save(),
            Err(ConsumerError::failed("cannot save message: disk full"))
        );
    }

    #[test]
    fn halts_say_whether_they_requeue() {
        assert_eq!(ConsumerError::halt(3).to_string(), "halt 3");
        assert_eq!(
            ConsumerError::halt_and_requeue(4).to_string(),
            "halt 4 (requeue)"
        );
    }
}
