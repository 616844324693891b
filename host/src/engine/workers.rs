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
//! once a halt, a failure or a stop holds the workers, or its channel is
//! gone, it is put down unstarted and unsettled (the broker delivers it
//! again), so no message is consumed after a halt, and none twice because
//! its channel closed while it waited.
//!
//! While its consumer works on one message, a thread lends it the lane, so
//! that a consumer in another process may take the next message before it
//! answers ([`super::ahead`]); that message is the thread's next.
//!
//! A thread takes a message's in-flight token ([`InFlight`](super::inflight::InFlight)) before it
//! looks at the gate, and the engine holds the gate before it reads the
//! count of tokens, so one of them always sees the other: once the workers
//! are held, the count can only fall. The token lives with the message
//! until its answer has been acted on, here or by the engine.
//!
//! A consumer that panics fails its message; a panic anywhere else on a
//! consumer thread ends the thread, and its message's token says so.
//! Each thread says when it has ended ([`Workers::ended`]), so the engine
//! can wait for them with its pulse going and a bound.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender, TryRecvError};
use lapin::message::Delivery;

use super::ahead::{self, Admitted, Reading};
use super::consumer_log;
use super::gate::Gate;
use super::handler::{Handler, Unstarted};
use super::inflight::Tracker;
use super::lane::{Lane, Read, Reader};
use super::message::{Finished, Job, Source, Ticket};
use super::seams;
use crate::exit::{Exit, Fatal};
use crate::monitor::Stats;
use crate::outcome::Outcome;
use crate::traces;

/// Jobs the engine may hand the workers and not yet have had taken, per
/// worker.
pub const QUEUED_PER_WORKER: usize = 15;

/// The consumer threads.
pub struct Workers {
    jobs: Sender<Job>,
    results: Receiver<Finished>,
    /// Each thread's lane: `Some` opens one, `None` closes it.
    lanes: Vec<Sender<Option<Arc<Lane>>>>,
    graceful: Arc<AtomicBool>,
    gate: Arc<Gate>,
    tracker: Tracker,
    /// Closed once every thread has ended: each holds a sender.
    ended: Receiver<()>,
    /// A word from each thread whose consumer was built.
    built: Receiver<()>,
    /// Consumers not yet built (none once consuming has begun).
    unbuilt: Arc<AtomicUsize>,
}

/// Resolves once every consumer was built ([`Workers::all_built`]).
pub struct AllBuilt {
    built: Receiver<()>,
    unbuilt: Arc<AtomicUsize>,
}

impl AllBuilt {
    /// Waits for the consumers still being built; pending for good once
    /// a thread ended without building its own (that failure reaches the
    /// engine as [`Finished::BuildFailed`]).
    pub async fn wait(self) {
        while self.unbuilt.load(Ordering::SeqCst) > 0 {
            match self.built.recv().await {
                Ok(()) => {
                    self.unbuilt.fetch_sub(1, Ordering::SeqCst);
                }
                Err(_) => futures_lite::future::pending::<()>().await,
            }
        }
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
    /// Its lane's reader, and what the consumer took ahead with it.
    reading: Reading,
    results: Sender<Finished>,
    gate: Arc<Gate>,
    tracker: Tracker,
    /// Which thread it is, for the account of what is in progress.
    index: usize,
    stats: Arc<Stats>,
}

impl Worker {
    /// Takes messages until the engine finishes the threads.
    fn run(&mut self) {
        loop {
            let finished = match self.reading.taken.take() {
                // Taken by the consumer while it consumed the last one: it
                // has it already, so it comes next whatever the gate says
                // (once the host drains, the consumer may leave it
                // unstarted).
                Some(job) => self.start(job),
                None => match futures_lite::future::block_on(self.next()) {
                    Next::Closed => return,
                    Next::Lane(lane) => {
                        self.reading.reader = lane.map(Reader::new);
                        None
                    }
                    // Put down unstarted, its token with it: the broker
                    // delivers it again.
                    Next::Job(job) if self.gate.is_held() || !job.settleable() => None,
                    Next::Job(job) => self
                        .consume(job)
                        .map(|(job, outcome, took)| Finished::Done(job, outcome, took)),
                    Next::Read(Read::Ended(channel, error)) => {
                        Some(Finished::Ended(channel, error))
                    }
                    Next::Read(Read::Arrived(delivery, ticket)) => self.take(delivery, ticket),
                },
            };
            // This message's word first, then what reading ahead found.
            let told = std::mem::take(&mut self.reading.told);
            for finished in finished.into_iter().chain(told) {
                if self.results.send_blocking(finished).is_err() {
                    return;
                }
            }
        }
    }

    /// Waits for a lane to open or close, a job from the engine, or a
    /// message from the lane, in that order.
    async fn next(&mut self) -> Next {
        let (jobs, lanes, gate) = (&self.jobs, &self.lanes, &self.gate);
        let reader = &mut self.reading.reader;
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

    /// A delivery from the lane: admitted, then started. `None`: nothing
    /// for the engine (settled here, or put down unsettled).
    fn take(&mut self, delivery: Delivery, ticket: Ticket) -> Option<Finished> {
        let reader = self.reading.reader.as_ref()?;
        match ahead::admit(reader, &self.gate, &self.tracker, delivery, ticket) {
            Admitted::Job(job) => self.start(job),
            Admitted::Diverted(diverted) => Some(diverted),
            Admitted::PutDown => None,
        }
    }

    /// A checked job from the lane: consumed and its ack marked here; what
    /// the lane does not settle goes to the engine, with its token.
    fn start(&mut self, job: Job) -> Option<Finished> {
        seams::get().maybe_panic_on(job.message_id());
        let (job, outcome, took) = self.consume(job)?;
        if matches!(outcome, Outcome::Ack) && !seams::get().needs_engine(job.message_id()) {
            let Some(reader) = self.reading.reader.as_ref() else {
                return Some(Finished::Done(job, outcome, took));
            };
            return match reader.lane().ack(&job, (outcome, took)) {
                Ok(()) => None,
                Err((outcome, took)) => Some(Finished::Done(job, outcome, took)),
            };
        }
        Some(Finished::Done(job, outcome, took))
    }

    /// Hands a job to the consumer, lending it the lane to take the next
    /// one from ([`ahead`]): its answer, and how long it took; `None` when
    /// it was left unstarted, which puts it down with its token. A
    /// consumer that panics has failed on the message.
    fn consume(&mut self, job: Job) -> Option<(Job, Outcome, Duration)> {
        let started = Instant::now();
        let topic = job.delivery.routing_key.as_str();
        // Only a message taken ahead is handed over while the host drains,
        // and the consumer may leave it unstarted: whether it began is
        // known from its answer.
        let draining = self.gate.is_held();
        if !draining {
            consumer_log::consuming(job.message_id(), topic);
        }
        let in_progress = self.stats.in_progress();
        in_progress.began(self.index, job.message_id(), topic, started);
        let span = traces::process(&traces::Delivered {
            queue: &job.queue,
            exchange: job.delivery.exchange.as_str(),
            routing_key: topic,
            message_id: job.message_id(),
            delivery_tag: job.delivery.delivery_tag,
            headers: job.delivery.properties.headers().as_ref(),
        });
        let consumer = &mut self.consumer;
        let answer = ahead::lend(&mut self.reading, &self.gate, &self.tracker, || {
            // What the consumer publishes meanwhile continues its trace.
            let _current = span.as_ref().map(traces::ProcessSpan::enter);
            catch_unwind(AssertUnwindSafe(|| consumer.consume(&job.view())))
        });
        in_progress.ended(self.index);
        let outcome = match answer {
            Ok(Ok(outcome)) => outcome,
            // Only a draining host lets a message go unstarted: on a
            // channel that goes on, it would be held unsettled for good.
            Ok(Err(Unstarted)) if self.gate.is_held() => {
                consumer_log::unstarted(job.message_id());
                if let Some(span) = span {
                    span.unstarted();
                }
                return None;
            }
            Ok(Err(Unstarted)) => Outcome::Failed {
                reason: "the consumer left the message unstarted while the host was not draining"
                    .to_owned(),
            },
            Err(panic) => Outcome::Failed {
                reason: format!("the consumer panicked: {}", panic_text(panic.as_ref())),
            },
        };
        let took = started.elapsed();
        if let Some(span) = span {
            span.end(&outcome);
        }
        if draining {
            consumer_log::consuming(job.message_id(), topic);
        }
        consumer_log::answered(job.message_id(), topic, &outcome);
        if matches!(outcome, Outcome::Halt { .. } | Outcome::Failed { .. }) {
            // Before this thread takes another message: after a halt or a
            // failure nothing more is consumed.
            self.gate.hold();
        }
        Some((job, outcome, took))
    }
}

/// What a panic said, when it said it with a string.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

impl Workers {
    /// Starts one thread per consumer instance.
    /// `stats` keeps the account of what each thread has in hand.
    pub fn start(consumers: Vec<Source>, stats: &Arc<Stats>) -> std::io::Result<Workers> {
        let instances = consumers.len();
        let count = instances.max(1);
        let (jobs, job_receiver) = async_channel::bounded::<Job>(count * QUEUED_PER_WORKER);
        let (result_sender, results) = async_channel::unbounded();
        let (ended_sender, ended) = async_channel::bounded::<()>(1);
        let (built_sender, built) = async_channel::bounded::<()>(count);
        let graceful = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Gate::default());
        let tracker = Tracker::new();
        let mut lanes = Vec::with_capacity(consumers.len());
        for (index, source) in consumers.into_iter().enumerate() {
            let (lane_sender, lane_receiver) = async_channel::unbounded();
            lanes.push(lane_sender);
            let job_receiver = job_receiver.clone();
            let result_sender = result_sender.clone();
            let graceful = graceful.clone();
            let gate = gate.clone();
            let tracker = tracker.clone();
            // Dropped when the thread ends, however it ends.
            let alive = ended_sender.clone();
            let built_sender = built_sender.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name(format!("consumer-{index}"))
                .spawn(move || {
                    let _alive = alive;
                    let consumer = match source {
                        Source::Built(consumer) => consumer,
                        Source::Build(build) => {
                            let built =
                                catch_unwind(AssertUnwindSafe(build)).unwrap_or_else(|panic| {
                                    Err(Fatal::new(
                                        Exit::Error,
                                        format!(
                                            "the consumer panicked while being built: {}",
                                            panic_text(panic.as_ref())
                                        ),
                                    ))
                                });
                            match built {
                                Ok(consumer) => consumer,
                                Err(fatal) => {
                                    let _ =
                                        result_sender.send_blocking(Finished::BuildFailed(fatal));
                                    return;
                                }
                            }
                        }
                    };
                    let _ = built_sender.try_send(());
                    let mut worker = Worker {
                        consumer,
                        jobs: job_receiver,
                        lanes: lane_receiver,
                        reading: Reading::default(),
                        results: result_sender,
                        gate,
                        tracker,
                        index,
                        stats,
                    };
                    worker.run();
                    if graceful.load(Ordering::SeqCst) {
                        let consumer = &mut worker.consumer;
                        if catch_unwind(AssertUnwindSafe(|| consumer.stop())).is_err() {
                            log::error!("a consumer panicked while stopping");
                        }
                    }
                })?;
        }
        Ok(Workers {
            jobs,
            results,
            lanes,
            graceful,
            gate,
            tracker,
            ended,
            built,
            unbuilt: Arc::new(AtomicUsize::new(instances)),
        })
    }

    /// Whether every consumer was built.
    pub fn are_built(&self) -> bool {
        self.unbuilt.load(Ordering::SeqCst) == 0
    }

    /// What resolves once every consumer was built: consuming begins only
    /// then, so that a consumer that cannot be built stops the host
    /// before any message was delivered to it.
    pub fn all_built(&self) -> AllBuilt {
        AllBuilt {
            built: self.built.clone(),
            unbuilt: self.unbuilt.clone(),
        }
    }

    /// What counts the messages in flight.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Whether the workers can take another job now.
    pub fn has_room(&self) -> bool {
        !self.jobs.is_full()
    }

    /// Hands a job to the workers. Call only when they have room: the
    /// engine is the only sender. A job they cannot take (they are being
    /// closed) is dropped unsettled, and the broker delivers it again.
    pub fn submit(&self, job: Job) {
        let _ = self.jobs.try_send(job);
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
        self.gate.hold();
    }

    /// The next thing a worker tells.
    pub async fn next_result(&self) -> Option<Finished> {
        self.results.recv().await.ok()
    }

    /// What a worker told, if anything is waiting, without waiting.
    pub fn try_next_result(&self) -> Option<Finished> {
        self.results.try_recv().ok()
    }

    /// Tells the threads to end once their message (if any) is done;
    /// `graceful`: each consumer's `stop` runs first (and may still
    /// publish, while the engine's connection lives). Later calls change
    /// nothing. [`Workers::ended`] says when they have.
    pub fn close(&self, graceful: bool) {
        if !self.jobs.is_closed() {
            self.graceful.store(graceful, Ordering::SeqCst);
            self.jobs.close();
        }
    }

    /// Resolves once every thread has ended.
    pub async fn ended(&self) {
        // Nothing is ever sent: recv fails once the last sender is gone.
        let _ = self.ended.recv().await;
    }
}
