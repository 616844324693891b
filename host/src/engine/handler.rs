//! What a consumer thread drives: the one trait the plugin loader (and
//! `record`'s recorder) implements.

use crate::outcome::Outcome;
use crate::wire::MessageView;

/// A consumer, as a worker thread calls it.
pub trait Handler: Send {
    /// Answers one message; [`Unstarted`] only for one it took ahead
    /// ([`super::ahead`]) and did not begin.
    fn consume(&mut self, message: &MessageView<'_>) -> Result<Outcome, Unstarted>;
    /// The host is stopping gracefully: no more messages will come.
    fn stop(&mut self);
}

/// A consumer's word that it did not begin a message it took ahead,
/// because the host drains: the message is put down unsettled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unstarted;
