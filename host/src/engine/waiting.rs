//! What every wait of the engine attends to, whatever the connection is
//! doing: the lifecycle, the workers' answers and their in-flight tokens,
//! the stop request and the pulse; and the waits that happen without a
//! connection (connecting, draining offline, the threads' end).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;

use super::WORKERS_END;
use super::held::HeldDeliveries;
use super::lifecycle::Lifecycle;
use super::limit::Policy;
use super::message::{Finished, Job};
use super::pulse::Pulse;
use super::settler::Ledger;
use super::workers::Workers;
use crate::exit::{Exit, Fatal};
use crate::monitor::Stats;
use crate::outcome::Next;
use crate::stop::StopRequest;

/// Why a draining stopped waiting for the messages in progress.
#[derive(Debug, Clone, Copy)]
pub(super) enum WaitOver {
    StopTimeout,
    SecondSignal,
}

/// What every wait of the engine attends to, whatever the connection is
/// doing: the lifecycle, the workers' answers, the stop request and the
/// pulse.
pub(super) struct Core {
    /// Each queue consumer's QoS.
    pub(super) prefetch_count: u16,
    pub(super) lifecycle: Lifecycle,
    pub(super) workers: Workers,
    /// Jobs the engine holds for the workers (a delivery the delivery
    /// limit could not carry on), waiting for room with them.
    pub(super) pending: VecDeque<Job>,
    /// Deliveries held unsettled until a time ([`super::held`]).
    pub(super) held: HeldDeliveries,
    pub(super) stop: StopRequest,
    pub(super) pulse: Pulse,
    pub(super) stats: Arc<Stats>,
    /// `[delivery_limit]`, if any.
    pub(super) limit: Option<Arc<Policy>>,
    /// The first consumer that could not be built: the process exits 1
    /// with it once the others have finished what they hold.
    pub(super) build_failure: Option<Fatal>,
    /// Whether a consumer thread's panic was taken into account.
    pub(super) panic_seen: bool,
    /// Whether the consumer threads were told to end ([`Core::end_workers`]).
    pub(super) workers_told_to_end: bool,
    /// [`Settings::consumer`].
    pub(super) consumer: String,
    /// [`Settings::stop_timeout`].
    pub(super) stop_timeout: Duration,
    /// While draining: when the wait for the messages in progress ends.
    pub(super) stop_deadline: Option<Instant>,
    /// Whether that wait was given up ([`Core::stop_waiting`]): the
    /// consumer threads that hold those messages are not waited for.
    pub(super) gave_up_waiting: bool,
}

impl Core {
    /// One turn of any of the engine's loops: the pulse, a consumer
    /// thread's panic, and, while draining, whether anything is still in
    /// flight.
    pub(super) fn turn(&mut self) {
        self.pulse.turned();
        if !self.panic_seen && self.workers.tracker().panicked() {
            self.panic_seen = true;
            log::error!(
                "A consumer thread panicked while handling a message (see the panic above); the message goes back to its queue, and the host stops as on a consumer failure"
            );
            if self.lifecycle.answered(Next::Abort(Exit::ConsumerFailed)) {
                self.hold_workers();
            }
        }
        if self.lifecycle.is_running() || self.lifecycle.exit().is_some() {
            return;
        }
        // Draining, so the workers are held: the count can only fall.
        if self.workers.tracker().count() > 0 {
            return;
        }
        // Only reports that carry no token can still wait unread.
        while let Some(finished) = self.workers.try_next_result() {
            if let Finished::BuildFailed(fatal) = finished {
                self.build_failed(fatal);
            }
        }
        self.lifecycle.nothing_in_flight();
    }

    /// How the process exits once the lifecycle has stopped with `exit`.
    pub(super) fn exit_with(&mut self, exit: Exit) -> Result<Exit, Fatal> {
        let build_failure = self.build_failure.take();
        match (exit, build_failure) {
            (Exit::Error, Some(fatal)) => Err(fatal),
            (exit, Some(fatal)) => {
                log::error!("A consumer could not be built: {fatal}");
                Ok(exit)
            }
            (exit, None) => Ok(exit),
        }
    }

    /// A consumer instance could not be built: the others finish what they
    /// hold, then the process exits 1 with the first such reason.
    pub(super) fn build_failed(&mut self, fatal: Fatal) {
        self.build_failure.get_or_insert(fatal);
        if self.lifecycle.build_failed() {
            self.hold_workers();
        }
    }

    /// Resolves when the in-flight tokens have news for [`Core::turn`]:
    /// the last one is gone while `draining`, or one was dropped by a
    /// panic not yet `panic_seen`. Pending otherwise.
    pub(super) async fn in_flight_news(workers: &Workers, draining: bool, panic_seen: bool) {
        let tracker = workers.tracker();
        let idle = async {
            if !draining {
                futures_lite::future::pending::<()>().await;
            }
            tracker.idle().await;
        };
        let panic = async {
            if panic_seen {
                futures_lite::future::pending::<()>().await;
            }
            tracker.panic().await;
        };
        idle.or(panic).await;
    }

    /// While draining: when the wait for the messages in progress ends,
    /// `stop_timeout` after the draining was first seen here; `None`
    /// otherwise.
    pub(super) fn stop_deadline(&mut self) -> Option<Instant> {
        if self.lifecycle.is_running() || self.lifecycle.exit().is_some() {
            return None;
        }
        let stop_timeout = self.stop_timeout;
        Some(
            *self
                .stop_deadline
                .get_or_insert_with(|| Instant::now() + stop_timeout),
        )
    }

    /// Resolves when a draining stops waiting for the messages in
    /// progress: at `deadline`, or at a second stop signal. Pending
    /// without a deadline.
    pub(super) async fn wait_is_over(stop: &StopRequest, deadline: Option<Instant>) -> WaitOver {
        let Some(deadline) = deadline else {
            return futures_lite::future::pending().await;
        };
        async {
            async_io::Timer::at(deadline).await;
            WaitOver::StopTimeout
        }
        .or(async {
            stop.hurried().await;
            WaitOver::SecondSignal
        })
        .await
    }

    /// The wait for the messages in progress is over: they go back to the
    /// broker (with their channels, which close), and the process exits as
    /// its draining decided, without waiting for the threads that hold
    /// them (a Python callback or an Exec command in them is killed with
    /// the process).
    pub(super) fn stop_waiting(&mut self, over: WaitOver) {
        let in_flight = self.workers.tracker().count();
        if !self.lifecycle.stop_waiting() {
            return;
        }
        self.gave_up_waiting = true;
        let why = match over {
            WaitOver::StopTimeout => format!(
                "stop_timeout, {} s, ran out",
                self.stop_timeout.as_secs_f64()
            ),
            WaitOver::SecondSignal => "a second signal came".to_owned(),
        };
        log::warn!(
            "Stopped waiting for the {in_flight} message(s) still in progress ({why}): they go back to their queues, and the host exits without the consumer that holds them"
        );
    }

    /// Tells the consumer threads to end, and waits for them with the
    /// pulse going, for at most [`WORKERS_END`] in all: a second call (the
    /// supervisor's, after a graceful stop ended them with the connection
    /// up) does not wait again for a thread that did not end, and none is
    /// waited for once the wait for the messages in progress was given up.
    pub(super) async fn end_workers(&mut self, graceful: bool) {
        if self.workers_told_to_end {
            return;
        }
        self.workers_told_to_end = true;
        self.workers.close(graceful);
        if self.gave_up_waiting {
            return;
        }
        if graceful {
            self.pulse.status("Stopping: running the consumers' stop");
        }
        let (workers, pulse) = (&self.workers, &mut self.pulse);
        let ended = pulse
            .beating(
                async {
                    workers.ended().await;
                    true
                }
                .or(async {
                    async_io::Timer::after(WORKERS_END).await;
                    false
                }),
            )
            .await;
        if !ended {
            log::warn!(
                "A consumer thread did not end within {WORKERS_END:?} of being told to (a consumer still being built, or one whose stop hangs); exiting without it"
            );
        }
    }

    /// Runs `step` while attending to everything else: worker answers
    /// (whose channels are gone: no ledger lives while the engine waits
    /// here), the stop request, the pulse. `None` once the lifecycle stops
    /// running; `step` is then dropped unfinished.
    pub(super) async fn interruptible<T>(
        &mut self,
        step: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let mut step = std::pin::pin!(step);
        loop {
            self.turn();
            if !self.lifecycle.is_running() {
                return None;
            }
            // Built and matched at once, never stored: boxing would cost an
            // allocation a message.
            #[allow(clippy::large_enum_variant)]
            enum Woke<T> {
                Done(T),
                Finished(Finished),
                StopRequested,
                Tick,
            }
            let panic_seen = self.panic_seen;
            let (workers, stop, pulse) = (&self.workers, &self.stop, &mut self.pulse);
            let woke = async { Woke::Done(step.as_mut().await) }
                .or(async {
                    match workers.next_result().await {
                        Some(finished) => Woke::Finished(finished),
                        None => futures_lite::future::pending().await,
                    }
                })
                .or(async {
                    stop.requested().await;
                    Woke::StopRequested
                })
                .or(async {
                    pulse.tick().await;
                    Woke::Tick
                })
                .or(async {
                    Core::in_flight_news(workers, false, panic_seen).await;
                    Woke::Tick
                })
                .await;
            match woke {
                Woke::Done(value) => return Some(value),
                Woke::Finished(finished) => {
                    // No ledger: nothing to settle, so nothing can hang,
                    // and what comes from a lane is for channels gone.
                    self.answer(None, vec![finished]).await;
                }
                Woke::StopRequested => {
                    if self.lifecycle.stop_requested() {
                        self.start_draining(None).await;
                    }
                }
                Woke::Tick => {}
            }
        }
    }

    /// The lifecycle is draining and no connection is left: wait for the
    /// workers to hand back what they hold (nothing can be settled: the
    /// broker delivers it again), at most until the wait is over, then say
    /// how to exit. Never waits for the broker.
    pub(super) async fn drain_offline(&mut self) -> Exit {
        // Built and matched at once, never stored.
        #[allow(clippy::large_enum_variant)]
        enum Offline {
            Finished(Finished),
            WaitOver(WaitOver),
            Tick,
        }
        self.hold_workers();
        loop {
            self.turn();
            if let Some(exit) = self.lifecycle.exit() {
                return exit;
            }
            self.pulse.status(&format!(
                "Stopping: waiting for {} message(s) given to the consumer",
                self.workers.tracker().count()
            ));
            let deadline = self.stop_deadline();
            let (workers, pulse, panic_seen) = (&self.workers, &mut self.pulse, self.panic_seen);
            let stop = &self.stop;
            let woke = async {
                match workers.next_result().await {
                    Some(finished) => Offline::Finished(finished),
                    // Every thread is gone, and with it every token.
                    None => futures_lite::future::pending().await,
                }
            }
            .or(async {
                pulse.tick().await;
                Offline::Tick
            })
            .or(async {
                Core::in_flight_news(workers, true, panic_seen).await;
                Offline::Tick
            })
            .or(async { Offline::WaitOver(Core::wait_is_over(stop, deadline).await) })
            .await;
            match woke {
                // No ledger: nothing to settle, so nothing can hang, and
                // what comes from a lane is for channels gone.
                Offline::Finished(finished) => {
                    self.answer(None, vec![finished]).await;
                }
                Offline::WaitOver(over) => self.stop_waiting(over),
                Offline::Tick => {}
            }
        }
    }

    /// No job starts any more, and none waits with the engine: their
    /// tokens go, and the broker delivers them again.
    pub(super) fn hold_workers(&mut self) {
        self.workers.hold();
        self.pending.clear();
    }

    /// The lifecycle just started draining: no job starts any more, and
    /// the broker is asked to stop delivering.
    pub(super) async fn start_draining(&mut self, ledger: Option<&Ledger>) {
        self.hold_workers();
        self.stats.set_consuming(false);
        self.pulse.stopping();
        let in_flight = self.workers.tracker().count();
        if in_flight > 0 {
            log::info!(
                "Waiting for the workers to finish or hand back the {in_flight} message(s) given to them before stopping"
            );
        }
        if let Some(ledger) = ledger {
            self.pulse.beating(ledger.cancel_all()).await;
        }
    }
}
