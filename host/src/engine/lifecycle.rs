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
//! Exit codes rank: a signal's 0 is raised by a halt's code or a cancelled
//! queue's 12 (the first of those wins), and a consumer failure's 13 wins
//! over everything.

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

/// The lifecycle, and the counts it needs to know when draining ends.
#[derive(Debug)]
pub struct Lifecycle {
    phase: Phase,
    /// Jobs the engine handed to workers and not yet back (answered or
    /// unstarted), whatever connection they came from.
    in_flight: usize,
    /// Consumer threads busy with a message they took themselves, as last
    /// counted; unknown from the moment draining starts until they are
    /// counted again with the workers held (a count taken earlier may have
    /// missed a thread that was starting a message).
    lane_busy: Option<usize>,
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
            in_flight: 0,
            lane_busy: Some(0),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_running(&self) -> bool {
        self.phase == Phase::Running
    }

    /// Messages with the consumers: the jobs handed out and the threads
    /// busy (as last counted).
    pub fn in_flight(&self) -> usize {
        self.in_flight + self.lane_busy.unwrap_or(0)
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

    /// A job was handed to a worker.
    pub fn dispatched(&mut self) {
        self.in_flight += 1;
    }

    /// A job came back from a worker, answered or not.
    pub fn returned(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.settle_phase();
    }

    /// The consumer threads busy with a message they took themselves:
    /// counted after the workers were held if the process is draining.
    pub fn lane_busy(&mut self, busy: usize) {
        self.lane_busy = Some(busy);
        self.settle_phase();
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

    fn drain(&mut self, exit: Exit, requeue_all: bool) -> bool {
        let started = match &mut self.phase {
            Phase::Running => {
                self.phase = Phase::Draining { exit, requeue_all };
                self.lane_busy = None;
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
        };
        self.settle_phase();
        started
    }

    fn settle_phase(&mut self) {
        if let Phase::Draining { exit, .. } = self.phase
            && self.in_flight == 0
            && self.lane_busy == Some(0)
        {
            self.phase = Phase::Stopped(exit);
        }
    }
}

/// Which exit wins when several reasons to stop come together.
fn rank(exit: Exit) -> u8 {
    match exit {
        Exit::ConsumerFailed => 2,
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
        life.dispatched();
        life.dispatched();
        assert!(!life.answered(Next::Continue));
        life.returned();
        assert!(life.is_running());
        assert!(life.stop_requested());
        assert!(!life.stop_requested(), "a second signal starts nothing");
        assert_eq!(
            life.phase(),
            Phase::Draining {
                exit: Exit::Success,
                requeue_all: false
            }
        );
        life.lane_busy(0);
        assert_eq!(life.exit(), None, "one job is still with a worker");
        life.returned();
        assert_eq!(life.exit(), Some(Exit::Success));
    }

    #[test]
    fn with_nothing_in_flight_a_stop_is_immediate() {
        let mut life = Lifecycle::new();
        assert!(life.stop_requested());
        life.lane_busy(0);
        assert_eq!(life.exit(), Some(Exit::Success));
    }

    #[test]
    fn busy_threads_are_waited_for_once_counted_with_the_workers_held() {
        let mut life = Lifecycle::new();
        life.lane_busy(0);
        assert!(life.stop_requested());
        // Counted before the workers were held: a thread may have been
        // starting a message.
        assert_eq!(life.exit(), None);
        life.lane_busy(2);
        assert_eq!(life.in_flight(), 2);
        assert_eq!(life.exit(), None);
        life.lane_busy(0);
        assert_eq!(life.exit(), Some(Exit::Success));
    }

    #[test]
    fn a_halt_raises_a_signal_and_a_failure_raises_everything() {
        let mut life = Lifecycle::new();
        life.dispatched();
        life.dispatched();
        life.dispatched();
        life.stop_requested();
        life.lane_busy(0);
        life.answered(Next::Stop(Exit::Halt(7)));
        life.returned();
        // A later halt does not replace the first.
        life.answered(Next::Stop(Exit::Halt(9)));
        life.returned();
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
        life.returned();
        assert_eq!(life.exit(), Some(Exit::ConsumerFailed));
        assert!(life.requeue_all());
    }

    #[test]
    fn a_failure_is_not_lowered_by_a_later_halt_or_cancel() {
        let mut life = Lifecycle::new();
        life.dispatched();
        assert!(life.answered(failure()));
        life.lane_busy(0);
        assert!(!life.answered(Next::Stop(Exit::Halt(3))));
        assert!(!life.queue_gone());
        life.returned();
        assert_eq!(life.exit(), Some(Exit::ConsumerFailed));
    }

    #[test]
    fn a_cancelled_queue_exits_twelve_unless_a_consumer_failed() {
        let mut life = Lifecycle::new();
        assert!(life.queue_gone());
        life.lane_busy(0);
        assert_eq!(life.exit(), Some(Exit::Canceled));
    }

    #[test]
    fn after_stopping_nothing_changes_the_exit() {
        let mut life = Lifecycle::new();
        life.answered(Next::Stop(Exit::Halt(4)));
        life.lane_busy(0);
        assert_eq!(life.exit(), Some(Exit::Halt(4)));
        life.answered(failure());
        life.returned();
        assert_eq!(life.exit(), Some(Exit::Halt(4)));
    }

    #[test]
    fn returns_never_underflow() {
        let mut life = Lifecycle::new();
        life.returned();
        assert_eq!(life.in_flight(), 0);
        assert!(life.is_running());
    }
}
