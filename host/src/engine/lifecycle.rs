//! The process's lifecycle as one state machine: whether messages may
//! start, what the process exits with, and when it may exit.
//!
//! It decides without doing any I/O, and it lives as long as the engine,
//! not a connection: a halt, a failure or a stop request is never forgotten
//! when the connection breaks, and once draining the engine never goes back
//! to the broker for more messages.
//!
//! ```text
//!            stop request, halt, failure, queue gone
//! Running ─────────────────────────────────────────► Draining { exit, requeue_all }
//!                                                      │   a later halt or failure
//!                                                      │◄──raises exit (and requeue_all)
//!                                                      │
//!                                                      │ nothing in flight
//!                                                      ▼
//!                                                    Stopped(exit)
//! ```
//!
//! What is in flight is not counted here: the engine counts it once, with
//! a token per message ([`super::inflight`]), and says when none is left
//! once no message can start any more.
//!
//! Exit codes rank: a signal's 0 is raised by a halt's code or a cancelled
//! queue's 12 (the first of those wins), both by a consumer that could not
//! be built (1), and a consumer failure's 13 wins over everything.

use crate::exit::Exit;
use crate::outcome::Next;

/// Where the process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Consuming, or getting (back) to it.
    Running,
    /// No message starts any more; those given to workers finish and are
    /// settled where their channel still lives; then the process exits
    /// with `exit`. `requeue_all`: a consumer failed, so every other
    /// unsettled message goes back to its queue at once.
    Draining { exit: Exit, requeue_all: bool },
    /// Nothing is in flight: exit with this.
    Stopped(Exit),
}

/// The lifecycle.
#[derive(Debug)]
pub struct Lifecycle {
    phase: Phase,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle::new()
    }
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        Lifecycle {
            phase: Phase::Running,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// The exit code, once the process may exit.
    pub fn exit(&self) -> Option<Exit> {
        match self.phase {
            Phase::Stopped(exit) => Some(exit),
            _ => None,
        }
    }

    /// Whether a consumer failed, so every unsettled message goes back.
    pub fn requeue_all(&self) -> bool {
        matches!(
            self.phase,
            Phase::Draining {
                requeue_all: true,
                ..
            }
        ) || self.phase == Phase::Stopped(Exit::ConsumerFailed)
    }

    /// No message is in flight, and none can start: a draining process
    /// may exit. Call only once the workers are held.
    pub fn nothing_in_flight(&mut self) {
        self.stop_waiting();
    }

    /// The wait for what is in flight is over (`stop_timeout` ran out, or
    /// a second signal came): the process exits as its draining decided,
    /// and what consumers still hold goes back to the broker. True if this
    /// ended a draining.
    pub fn stop_waiting(&mut self) -> bool {
        match self.phase {
            Phase::Draining { exit, .. } => {
                self.phase = Phase::Stopped(exit);
                true
            }
            _ => false,
        }
    }

    /// SIGINT or SIGTERM. True if this started the draining.
    pub fn stop_requested(&mut self) -> bool {
        self.drain(Exit::Success, false)
    }

    /// A consumer answered; `next` is what its outcome asks for. True if
    /// this started the draining.
    pub fn answered(&mut self, next: Next) -> bool {
        match next {
            Next::Continue => false,
            Next::Stop(exit) => self.drain(exit, false),
            Next::Abort(exit) => self.drain(exit, true),
        }
    }

    /// The broker cancelled a consumer and its queue is gone (exit 12).
    pub fn queue_gone(&mut self) -> bool {
        self.drain(Exit::Canceled, false)
    }

    /// A consumer instance could not be built (exit 1); the others finish
    /// what they hold. True if this started the draining.
    pub fn build_failed(&mut self) -> bool {
        self.drain(Exit::Error, false)
    }

    fn drain(&mut self, exit: Exit, requeue_all: bool) -> bool {
        match &mut self.phase {
            Phase::Running => {
                self.phase = Phase::Draining { exit, requeue_all };
                true
            }
            Phase::Draining {
                exit: current,
                requeue_all: requeue,
            } => {
                if rank(exit) > rank(*current) {
                    *current = exit;
                }
                *requeue |= requeue_all;
                false
            }
            // Exiting already: what came too late changes nothing.
            Phase::Stopped(_) => false,
        }
    }
}

/// Which exit wins when several reasons to stop come together.
fn rank(exit: Exit) -> u8 {
    match exit {
        Exit::ConsumerFailed => 3,
        Exit::Error => 2,
        Exit::Success => 0,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> Next {
        Next::Abort(Exit::ConsumerFailed)
    }

    #[test]
    fn runs_until_asked_and_stops_once_nothing_is_in_flight() {
        let mut life = Lifecycle::new();
        assert!(!life.answered(Next::Continue));
        life.nothing_in_flight();
        assert!(life.is_running(), "running, nothing in flight is no stop");
        assert!(life.stop_requested());
        assert!(!life.stop_requested(), "a second signal starts nothing");
        assert_eq!(
            life.phase(),
            Phase::Draining {
                exit: Exit::Success,
                requeue_all: false
            }
        );
        assert_eq!(life.exit(), None, "told of nothing in flight yet");
        life.nothing_in_flight();
        assert_eq!(life.exit(), Some(Exit::Success));
    }

    #[test]
    fn a_halt_raises_a_signal_and_a_failure_raises_everything() {
        let mut life = Lifecycle::new();
        life.stop_requested();
        life.answered(Next::Stop(Exit::Halt(7)));
        // A later halt does not replace the first.
        life.answered(Next::Stop(Exit::Halt(9)));
        assert!(!life.requeue_all());
        assert_eq!(
            life.phase(),
            Phase::Draining {
                exit: Exit::Halt(7),
                requeue_all: false
            }
        );
        life.answered(failure());
        assert!(life.requeue_all());
        life.nothing_in_flight();
        assert_eq!(life.exit(), Some(Exit::ConsumerFailed));
        assert!(life.requeue_all());
    }

    #[test]
    fn a_failure_is_not_lowered_by_a_later_halt_cancel_or_build_failure() {
        let mut life = Lifecycle::new();
        assert!(life.answered(failure()));
        assert!(!life.answered(Next::Stop(Exit::Halt(3))));
        assert!(!life.queue_gone());
        assert!(!life.build_failed());
        life.nothing_in_flight();
        assert_eq!(life.exit(), Some(Exit::ConsumerFailed));
    }

    #[test]
    fn a_consumer_that_cannot_be_built_raises_a_halt_and_yields_to_a_failure() {
        let mut life = Lifecycle::new();
        assert!(life.answered(Next::Stop(Exit::Halt(3))));
        assert!(!life.build_failed());
        assert_eq!(
            life.phase(),
            Phase::Draining {
                exit: Exit::Error,
                requeue_all: false
            }
        );
        life.answered(failure());
        life.nothing_in_flight();
        assert_eq!(life.exit(), Some(Exit::ConsumerFailed));
    }

    #[test]
    fn a_wait_given_up_exits_as_the_draining_decided_and_only_a_draining_is_ended() {
        let mut life = Lifecycle::new();
        assert!(!life.stop_waiting(), "nothing to give up while running");
        assert!(life.is_running());
        life.answered(Next::Stop(Exit::Halt(3)));
        assert!(life.stop_waiting());
        assert_eq!(life.exit(), Some(Exit::Halt(3)));
        assert!(!life.stop_waiting(), "already stopped");
    }

    #[test]
    fn a_cancelled_queue_exits_twelve_unless_a_consumer_failed() {
        let mut life = Lifecycle::new();
        assert!(life.queue_gone());
        life.nothing_in_flight();
        assert_eq!(life.exit(), Some(Exit::Canceled));
    }

    #[test]
    fn after_stopping_nothing_changes_the_exit() {
        let mut life = Lifecycle::new();
        life.answered(Next::Stop(Exit::Halt(4)));
        life.nothing_in_flight();
        assert_eq!(life.exit(), Some(Exit::Halt(4)));
        life.answered(failure());
        assert_eq!(life.exit(), Some(Exit::Halt(4)));
    }
}
