//! Consumers run on threads of their own, never on the executor that
//! drives the connection, so heartbeats flow while a consumer blocks.
//!
//! One thread per consumer instance; each instance sees one message at a
//! time. The number of instances is a parameter: fedora-messaging's serial
//! behaviour is one instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lapin::message::Delivery;

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
    /// Which channel set-up it arrived on: a delivery can only be settled
    /// on the channel it came from.
    pub generation: u64,
}

impl Job {
    pub fn view(&self) -> MessageView<'_> {
        wire::delivery_view(&self.delivery, &self.queue, self.checked)
    }

    pub fn message_id(&self) -> &str {
        wire::message_id(&self.delivery.properties)
    }
}

/// The consumer threads.
pub struct Workers {
    jobs: async_channel::Sender<Job>,
    results: async_channel::Receiver<(Job, Outcome, Duration)>,
    graceful: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts one thread per consumer instance.
    pub fn start(consumers: Vec<Box<dyn Handler>>) -> std::io::Result<Workers> {
        // Jobs are only handed out to idle workers, so the queue between
        // never holds more than one job per worker.
        let (jobs, job_receiver) = async_channel::bounded::<Job>(consumers.len().max(1));
        let (result_sender, results) = async_channel::unbounded();
        let graceful = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(consumers.len());
        for (index, mut consumer) in consumers.into_iter().enumerate() {
            let job_receiver = job_receiver.clone();
            let result_sender = result_sender.clone();
            let graceful = graceful.clone();
            let thread = std::thread::Builder::new()
                .name(format!("consumer-{index}"))
                .spawn(move || {
                    while let Ok(job) = job_receiver.recv_blocking() {
                        let started = Instant::now();
                        let outcome = consumer.consume(&job.view());
                        let took = started.elapsed();
                        log::debug!("message {} from {}: {outcome}", job.message_id(), job.queue);
                        if result_sender.send_blocking((job, outcome, took)).is_err() {
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
            threads,
        })
    }

    /// How many messages can be in progress at once.
    pub fn count(&self) -> usize {
        self.threads.len()
    }

    /// Hands a job to an idle worker. Call only when one is idle.
    pub async fn submit(&self, job: Job) {
        // Fails only once finish() has run.
        let _ = self.jobs.send(job).await;
    }

    /// The next finished job, with what its consumer answered and how long
    /// it took.
    pub async fn next_result(&self) -> Option<(Job, Outcome, Duration)> {
        self.results.recv().await.ok()
    }

    /// Ends the threads. Graceful: each consumer's `stop` runs and the
    /// threads are joined; otherwise (after a failure) they are left to end
    /// with the process.
    pub fn finish(self, graceful: bool) {
        self.graceful.store(graceful, Ordering::SeqCst);
        self.jobs.close();
        if graceful {
            for thread in self.threads {
                if thread.join().is_err() {
                    log::error!("a consumer thread panicked while stopping");
                }
            }
        }
    }
}
