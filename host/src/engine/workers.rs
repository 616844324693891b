//! Consumers run on threads of their own, never on the executor that
//! drives the connection, so heartbeats flow while a consumer blocks.
//!
//! One thread per consumer instance; each instance sees one message at a
//! time. The number of instances is a parameter: fedora-messaging's serial
//! behaviour is one instance.
//!
//! Up to [`QUEUED_PER_WORKER`] jobs per worker wait in the channel between
//! the engine and the threads, so a worker that finishes a message starts
//! the next without waiting for the engine to wake up and hand it one:
//! each thread hop costs more than a consumer that does little. A job is
//! only started while the engine still wants it: once a halt, a failure or
//! a stop holds the workers, or its ticket's ledger is retired, or lapin
//! knows its channel is gone, the worker hands it back unstarted, so no
//! message is consumed after a halt, and none twice because its channel
//! closed while it waited.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lapin::message::Delivery;

use super::ledger::Ticket;
use crate::exit::Fatal;
use crate::outcome::Outcome;
use crate::wire::{self, Checked, MessageView};

/// What a worker thread drives: a plugin's consumer, or one built into the
/// host (`record`'s recorder).
pub trait Handler: Send {
    /// Answers one message.
    fn consume(&mut self, message: &MessageView<'_>) -> Outcome;
    /// The host is stopping gracefully: no more messages will come.
    fn stop(&mut self);
}

/// One checked delivery, on its way to a consumer and back.
pub struct Job {
    pub delivery: Delivery,
    /// The queue it came from (the broker's name for a server-named queue).
    pub queue: Arc<str>,
    pub checked: Checked,
    /// Its place in the ledger of the channels it arrived on: a delivery
    /// can only be settled on the channel it came from.
    pub ticket: Ticket,
}

impl Job {
    pub fn view(&self) -> MessageView<'_> {
        wire::delivery_view(&self.delivery, &self.queue, self.checked)
    }

    pub fn message_id(&self) -> &str {
        wire::message_id(&self.delivery.properties)
    }

    /// Whether it can still be settled: its ledger lives and lapin has not
    /// poisoned its acker (the channel closed).
    pub fn settleable(&self) -> bool {
        self.ticket.is_live() && self.delivery.acker.usable()
    }
}

/// Jobs that may wait for each worker, besides the one it handles: room
/// for a gathered batch ([`super::gather::BATCH`]) and the jobs that
/// follow it while the worker is busy.
pub const QUEUED_PER_WORKER: usize = 15;

/// Where a worker's consumer comes from.
pub enum Source {
    /// Built already (`record`'s recorder).
    Built(Box<dyn Handler>),
    /// Built on the worker's own thread once the engine runs, so that a
    /// consumer's `new` may publish through the engine's connection.
    Build(Box<dyn FnOnce() -> Result<Box<dyn Handler>, Fatal> + Send>),
}

/// What comes back from a worker.
pub enum Finished {
    /// The consumer answered.
    Done(Job, Outcome, Duration),
    /// Handed back without being consumed: the workers were held, or the
    /// job's channel is gone. It stays unsettled.
    Unstarted(Job),
    /// The worker's consumer could not be built; the worker has ended.
    BuildFailed(Fatal),
}

/// The consumer threads.
pub struct Workers {
    jobs: async_channel::Sender<Job>,
    results: async_channel::Receiver<Finished>,
    graceful: Arc<AtomicBool>,
    gate: Arc<Gate>,
    threads: Vec<JoinHandle<()>>,
}

/// Whether a worker may start the job it took.
#[derive(Default)]
struct Gate {
    /// Set once for good: the process is draining.
    held: AtomicBool,
}

impl Gate {
    fn admits(&self, job: &Job) -> bool {
        !self.held.load(Ordering::SeqCst) && job.settleable()
    }
}

impl Workers {
    /// Starts one thread per consumer instance.
    pub fn start(consumers: Vec<Source>) -> std::io::Result<Workers> {
        let count = consumers.len().max(1);
        let (jobs, job_receiver) = async_channel::bounded::<Job>(count * (1 + QUEUED_PER_WORKER));
        let (result_sender, results) = async_channel::unbounded();
        let graceful = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Gate::default());
        let mut threads = Vec::with_capacity(consumers.len());
        for (index, source) in consumers.into_iter().enumerate() {
            let job_receiver = job_receiver.clone();
            let result_sender = result_sender.clone();
            let graceful = graceful.clone();
            let gate = gate.clone();
            let thread = std::thread::Builder::new()
                .name(format!("consumer-{index}"))
                .spawn(move || {
                    let mut consumer = match source {
                        Source::Built(consumer) => consumer,
                        Source::Build(build) => match build() {
                            Ok(consumer) => consumer,
                            Err(fatal) => {
                                let _ = result_sender.send_blocking(Finished::BuildFailed(fatal));
                                return;
                            }
                        },
                    };
                    while let Ok(job) = job_receiver.recv_blocking() {
                        if !gate.admits(&job) {
                            if result_sender
                                .send_blocking(Finished::Unstarted(job))
                                .is_err()
                            {
                                break;
                            }
                            continue;
                        }
                        let started = Instant::now();
                        let outcome = consumer.consume(&job.view());
                        let took = started.elapsed();
                        log::debug!("message {} from {}: {outcome}", job.message_id(), job.queue);
                        if matches!(outcome, Outcome::Halt { .. } | Outcome::Failed { .. }) {
                            // Before this thread takes another job: after a
                            // halt or a failure nothing more is consumed.
                            gate.held.store(true, Ordering::SeqCst);
                        }
                        if result_sender
                            .send_blocking(Finished::Done(job, outcome, took))
                            .is_err()
                        {
                            break;
                        }
                    }
                    if graceful.load(Ordering::SeqCst) {
                        consumer.stop();
                    }
                })?;
            threads.push(thread);
        }
        Ok(Workers {
            jobs,
            results,
            graceful,
            gate,
            threads,
        })
    }

    /// How many jobs may be handed out and not yet finished.
    pub fn capacity(&self) -> usize {
        self.threads.len().max(1) * (1 + QUEUED_PER_WORKER)
    }

    /// Hands a job to the workers. Call only below [`Workers::capacity`].
    pub async fn submit(&self, job: Job) {
        // Fails only once finish() has run.
        let _ = self.jobs.send(job).await;
    }

    /// No job handed out is started any more: the host is draining, for
    /// good.
    pub fn hold(&self) {
        self.gate.held.store(true, Ordering::SeqCst);
    }

    /// The next finished job.
    pub async fn next_result(&self) -> Option<Finished> {
        self.results.recv().await.ok()
    }

    /// A finished job if one is waiting, without waiting.
    pub fn try_next_result(&self) -> Option<Finished> {
        self.results.try_recv().ok()
    }

    /// Ends the threads gracefully now: each consumer's `stop` runs (and
    /// may still publish, while the engine's connection lives) and the
    /// threads are joined. Later calls do nothing.
    pub fn stop_consumers(&mut self) {
        self.graceful.store(true, Ordering::SeqCst);
        self.jobs.close();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                log::error!("a consumer thread panicked while stopping");
            }
        }
    }

    /// Ends the threads, unless [`Workers::stop_consumers`] did. Graceful:
    /// each consumer's `stop` runs and the threads are joined; otherwise
    /// (after a failure) they are left to end with the process.
    pub fn finish(mut self, graceful: bool) {
        if graceful {
            self.stop_consumers();
        } else {
            self.jobs.close();
        }
    }
}
