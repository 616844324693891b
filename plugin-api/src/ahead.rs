//! Taking the next message while the current one is consumed (interface
//! revision 4), for consumers that hand messages on to another process.
//!
//! A consumer that only forwards each message (the Python bridge writes it
//! to a pipe) spends most of its time waiting for a round trip. With
//! [`take_next`] it forwards the next message before it waits for the
//! current answer, so that the other side never waits for the host.
//!
//! The contract, which the host keeps and the consumer must too:
//! - Once [`take_next`] returned true, the host's next call of
//!   [`Consumer::consume`](crate::Consumer::consume) on this instance is
//!   that message, whatever happens meanwhile (a halt, a stop, a channel
//!   closing). The consumer answers it as usual.
//! - A consumer may leave a message so taken unbegun only once the host is
//!   draining ([`draining_fd`] is readable, or the consumer's own previous
//!   answer halted or failed), and then answers
//!   [`ConsumerError::Unstarted`](crate::ConsumerError::Unstarted) for it:
//!   after a halt, nothing more is consumed.
//!
//! An older host never offers a next message: [`take_next`] returns false
//! and [`draining_fd`] `None`, and the consumer works one message at a time.

use std::os::fd::RawFd;

use crate::Message;
use crate::guest;

/// Called from [`Consumer::consume`](crate::Consumer::consume): when the
/// message this instance gets next has already arrived, lends it to
/// `offer` and returns true; see the module's contract. False when none
/// has arrived, when the host is draining, on another thread, and in a
/// host older than revision 4.
pub fn take_next(mut offer: impl FnMut(&Message<'_>)) -> bool {
    guest::take_next(&mut offer)
}

/// A descriptor of the host's that becomes readable once the host is
/// draining and stays so; `None` in a host older than revision 4. It is
/// close-on-exec: a consumer that hands it to another process places it
/// there itself.
pub fn draining_fd() -> Option<RawFd> {
    guest::draining_fd()
}
