//! Consumers run on threads of their own, never on the executor that
//! drives the connection, so heartbeats flow while a consumer blocks.
//!
//! One thread per consumer instance; each instance sees one message at a
//! time. The number of instances is a parameter: fedora-messaging's serial
//! behaviour is one instance.
//!
//! Each thread takes its messages from the engine's open [`Lane`] itself
//! (the queues' delivery streams), so a message's usual path crosses no
//! thread between lapin and its ack; the engine hands a thread only the
//! rare job it had to hold itself (a delivery the delivery limit could not
//! carry on). A message is only started while the engine still wants it:
//! once a halt, a failure or a stop holds the workers, or its ticket's
//! ledger is retired, or lapin knows its channel is gone, it is put down
//! unstarted and unsettled (the broker delivers it again), so no message
//! is consumed after a halt, and none twice because its channel closed
//! while it waited.
//!
//! The engine knows when nothing is in flight any more from the number of
//! threads busy with a message ([`Workers::busy`]): a thread counts itself
//! busy before it looks at the gate, and the engine holds the gate before
//! it reads the count, so one of them always sees the other; a thread that
//! puts a message down while the gate is held says so
//! ([`Finished::Idle`]).

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, TryRecvError};
use lapin::message::Delivery;

use super::lane::{Diverted, Lane, Read, Reader};
use super::ledger::Ticket;
use super::seams;
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

/// One checked delivery, on its way to a consumer (and to the engine,
/// unless the lane settles it).
pub struct Job {
    pub delivery: Delivery,
    /// The queue it came from (the broker's name for a server-named queue).
    pub queue: Arc<str>,
    pub checked: Checked,
    /// Its place in the ledger of the channels it arrived on: a delivery
    /// can only be settled on the channel it came from.
    pub ticket: Ticket,
    /// Handed out by the engine, which counts it in flight until it is
    /// back; otherwise a consumer thread took it from the lane.
    pub from_engine: bool,
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

/// Jobs the engine may hand each worker besides the one it handles.
pub const QUEUED_PER_WORKER: usize = 15;

/// Where a worker's consumer comes from.
pub enum Source {
    /// Built already (`record`'s recorder).
    Built(Box<dyn Handler>),
    /// Built on the worker's own thread once the engine runs, so that a
    /// consumer's `new` may publish through the engine's connection.
    Build(Box<dyn FnOnce() -> Result<Box<dyn Handler>, Fatal> + Send>),
}

/// What a worker tells the engine.
#[allow(clippy::large_enum_variant)]
pub enum Finished {
    /// The consumer answered, with something the lane does not settle
    /// itself (anything but a plain ack), or the lane could not settle it.
    Done(Job, Outcome, Duration),
    /// A job from the engine handed back without being consumed: the
    /// workers were held, or the job's channel is gone. It stays
    /// unsettled.
    Unstarted(Job),
    /// The worker's consumer could not be built; the worker has ended.
    BuildFailed(Fatal),
    /// A delivery from the lane for the engine to settle.
    Diverted(Box<Diverted>),
    /// A queue's stream ended.
    Ended(Ticket, Option<lapin::Error>),
    /// A thread put a message down while the workers are held: the
    /// engine looks again at what is in flight.
    Idle,
}

/// The consumer threads.
pub struct Workers {
    jobs: Sender<Job>,
    results: Receiver<Finished>,
    /// Each thread's lane: `Some` opens one, `None` closes it.
    lanes: Vec<Sender<Option<Arc<Lane>>>>,
    graceful: Arc<AtomicBool>,
    gate: Arc<Gate>,
    threads: Vec<JoinHandle<()>>,
}

/// Whether a worker may start the message it took.
#[derive(Default)]
struct Gate {
    /// Set once for good: the process is draining.
    held: AtomicBool,
    /// Threads busy with a message from the lane.
    busy: AtomicUsize,
}

impl Gate {
    fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    fn admits(&self, job: &Job) -> bool {
        !self.is_held() && job.settleable()
    }
}

/// What a worker thread waited for.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// The engine is finishing the threads.
    Closed,
    Lane(Option<Arc<Lane>>),
    Job(Job),
    Read(Read),
}

/// One consumer thread.
struct Worker {
    consumer: Box<dyn Handler>,
    jobs: Receiver<Job>,
    lanes: Receiver<Option<Arc<Lane>>>,
    reader: Option<Reader>,
    results: Sender<Finished>,
    gate: Arc<Gate>,
}

impl Worker {
    /// Takes messages until the engine finishes the threads.
    fn run(&mut self) {
        loop {
            let finished = match futures_lite::future::block_on(self.next()) {
                Next::Closed => return,
                Next::Lane(lane) => {
                    self.reader = lane.map(Reader::new);
                    continue;
                }
                Next::Job(job) if !self.gate.admits(&job) => Finished::Unstarted(job),
                Next::Job(job) => {
                    let (job, outcome, took) = self.consume(job);
                    Finished::Done(job, outcome, took)
                }
                Next::Read(Read::Ended(ticket, error)) => Finished::Ended(ticket, error),
                Next::Read(Read::Arrived(delivery, ticket)) => {
                    // Busy before looking at the gate: see the module's doc.
                    self.gate.busy.fetch_add(1, Ordering::SeqCst);
                    let finished = self.take(delivery, ticket);
                    if let Some(finished) = finished
                        && self.results.send_blocking(finished).is_err()
                    {
                        return;
                    }
                    self.gate.busy.fetch_sub(1, Ordering::SeqCst);
                    if !self.gate.is_held() {
                        continue;
                    }
                    Finished::Idle
                }
            };
            if self.results.send_blocking(finished).is_err() {
                return;
            }
        }
    }

    /// Waits for a lane to open or close, a job from the engine, or a
    /// message from the lane, in that order.
    async fn next(&mut self) -> Next {
        let (jobs, lanes, gate) = (&self.jobs, &self.lanes, &self.gate);
        let reader = &mut self.reader;
        // Only polled (which registers a listener) when nothing is ready.
        let mut lane_changed = pin!(lanes.recv());
        let mut job_came = pin!(jobs.recv());
        futures_lite::future::poll_fn(|cx| {
            match lanes.try_recv() {
                Ok(lane) => return Poll::Ready(Next::Lane(lane)),
                Err(TryRecvError::Closed) => return Poll::Ready(Next::Closed),
                Err(TryRecvError::Empty) => {}
            }
            match jobs.try_recv() {
                Ok(job) => return Poll::Ready(Next::Job(job)),
                Err(TryRecvError::Closed) => return Poll::Ready(Next::Closed),
                Err(TryRecvError::Empty) => {}
            }
            if !gate.is_held()
                && let Some(reader) = reader.as_mut()
                && let Poll::Ready(read) = reader.poll_next(cx)
            {
                return Poll::Ready(Next::Read(read));
            }
            if let Poll::Ready(lane) = lane_changed.as_mut().poll(cx) {
                return Poll::Ready(lane.map_or(Next::Closed, Next::Lane));
            }
            if let Poll::Ready(job) = job_came.as_mut().poll(cx) {
                return Poll::Ready(job.map_or(Next::Closed, Next::Job));
            }
            Poll::Pending
        })
        .await
    }

    /// A delivery from the lane: checked, consumed and its ack marked
    /// here; what the lane does not settle goes to the engine. `None`:
    /// nothing for the engine (settled here, or put down unsettled).
    fn take(&mut self, delivery: Delivery, ticket: Ticket) -> Option<Finished> {
        if self.gate.is_held() {
            return None;
        }
        let lane = self.reader.as_ref()?.lane();
        let job = match lane.check(delivery, ticket) {
            Ok(job) => job,
            Err(diverted) => return Some(Finished::Diverted(diverted)),
        };
        if !job.settleable() {
            return None;
        }
        let (job, outcome, took) = self.consume(job);
        if matches!(outcome, Outcome::Ack) && !seams::get().needs_engine(job.message_id()) {
            let lane = self.reader.as_ref()?.lane();
            return match lane.ack(&job, (outcome, took)) {
                Ok(()) => None,
                Err((outcome, took)) => Some(Finished::Done(job, outcome, took)),
            };
        }
        Some(Finished::Done(job, outcome, took))
    }

    /// Hands a job to the consumer: its answer, and how long it took.
    fn consume(&mut self, job: Job) -> (Job, Outcome, Duration) {
        let started = Instant::now();
        let outcome = self.consumer.consume(&job.view());
        let took = started.elapsed();
        log::debug!("message {} from {}: {outcome}", job.message_id(), job.queue);
        if matches!(outcome, Outcome::Halt { .. } | Outcome::Failed { .. }) {
            // Before this thread takes another message: after a halt or a
            // failure nothing more is consumed.
            self.gate.held.store(true, Ordering::SeqCst);
        }
        (job, outcome, took)
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
        let mut lanes = Vec::with_capacity(consumers.len());
        for (index, source) in consumers.into_iter().enumerate() {
            let (lane_sender, lane_receiver) = async_channel::unbounded();
            lanes.push(lane_sender);
            let job_receiver = job_receiver.clone();
            let result_sender = result_sender.clone();
            let graceful = graceful.clone();
            let gate = gate.clone();
            let thread = std::thread::Builder::new()
                .name(format!("consumer-{index}"))
                .spawn(move || {
                    let consumer = match source {
                        Source::Built(consumer) => consumer,
                        Source::Build(build) => match build() {
                            Ok(consumer) => consumer,
                            Err(fatal) => {
                                let _ = result_sender.send_blocking(Finished::BuildFailed(fatal));
                                return;
                            }
                        },
                    };
                    let mut worker = Worker {
                        consumer,
                        jobs: job_receiver,
                        lanes: lane_receiver,
                        reader: None,
                        results: result_sender,
                        gate,
                    };
                    worker.run();
                    if graceful.load(Ordering::SeqCst) {
                        worker.consumer.stop();
                    }
                })?;
            threads.push(thread);
        }
        Ok(Workers {
            jobs,
            results,
            lanes,
            graceful,
            gate,
            threads,
        })
    }

    /// How many jobs the engine may hand out and not yet have back.
    pub fn capacity(&self) -> usize {
        self.threads.len().max(1) * (1 + QUEUED_PER_WORKER)
    }

    /// Hands a job to the workers. Call only below [`Workers::capacity`].
    pub async fn submit(&self, job: Job) {
        // Fails only once finish() has run.
        let _ = self.jobs.send(job).await;
    }

    /// The threads take messages from `lane` from now on.
    pub fn open_lane(&self, lane: &Arc<Lane>) {
        for sender in &self.lanes {
            let _ = sender.try_send(Some(lane.clone()));
        }
    }

    /// The threads stop reading the lane they were given, whose channels
    /// are gone; they drop their hold on its streams.
    pub fn close_lane(&self) {
        for sender in &self.lanes {
            let _ = sender.try_send(None);
        }
    }

    /// No message is started any more: the host is draining, for good.
    pub fn hold(&self) {
        self.gate.held.store(true, Ordering::SeqCst);
    }

    /// How many threads are busy with a message from the lane.
    pub fn busy(&self) -> usize {
        self.gate.busy.load(Ordering::SeqCst)
    }

    /// The next thing a worker tells.
    pub async fn next_result(&self) -> Option<Finished> {
        self.results.recv().await.ok()
    }

    /// What a worker told, if anything is waiting, without waiting.
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
