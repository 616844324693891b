//! What a consumer thread drives: the one trait the plugin loader (and
//! `record`'s recorder) implements.

use crate::outcome::Outcome;
use crate::wire::MessageView;

/// A consumer, as a worker thread calls it.
pub trait Handler: Send {
    /// Answers one message.
    fn consume(&mut self, message: &MessageView<'_>) -> Outcome;
    /// The host is stopping gracefully: no more messages will come.
    fn stop(&mut self);
}
