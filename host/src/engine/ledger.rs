//! The ledger of one channel set-up: the queues' channels and consumer
//! tags, the delivery tags not settled yet, and whether those channels
//! still live.
//!
//! A delivery is admitted as a [`Ticket`]; the job carries it to a worker
//! and back. Only the ledger that issued a ticket can settle its job, and
//! only while it lives: once it is retired (its channel or connection
//! ended, the set-up was given up, or the ledger was dropped) every ticket
//! it issued is dead at once, so a worker never starts such a job and the
//! engine never tries to settle it. The broker delivers those messages
//! again.
//!
//! Settling keeps the coalescing that makes acks cheap: when the lowest
//! unsettled tags of a channel are all acked by one batch, one `basic.ack`
//! with `multiple` covers them, never a tag still pending, in flight or
//! unstarted. lapin's `Ok(false)` (an acker poisoned by a closed channel)
//! is a settlement that did not happen, and is said so.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{FieldTable, ShortString};

use super::workers::Job;
use super::{bounded, seams};
use crate::outcome::Settle;
use crate::topology::{broker_code, broker_reply};
use crate::wire;

/// A delivery's place in the ledger that admitted it.
#[derive(Debug, Clone)]
pub struct Ticket {
    life: Arc<AtomicBool>,
    /// Which of the ledger's queues delivered it.
    source: usize,
}

impl Ticket {
    /// Whether the ledger that issued it still lives.
    pub fn is_live(&self) -> bool {
        self.life.load(Ordering::SeqCst)
    }
}

/// One queue being consumed, on a channel of its own.
pub struct QueueChannel {
    /// The queue (the broker's name for a server-named queue).
    pub queue: Arc<str>,
    pub channel: Channel,
    pub consumer_tag: ShortString,
}

/// What a batch's settlement came to.
pub struct Settlement {
    /// The caller's indexes of the jobs that were settled.
    pub settled: Vec<usize>,
    /// A request was not taken within [`bounded`]'s limit: the connection
    /// is presumed dead, and the ledger is retired.
    pub hung: bool,
}

/// What forwarding a delivery (a copy published elsewhere, the original
/// acked) came to.
pub enum Forwarded {
    /// The broker confirmed the copy and took the ack.
    Done,
    /// The broker had nowhere to route the copy; the original is not
    /// settled.
    Unroutable(Box<Delivery>),
    /// The publishing channel failed (it is closed now): set the channels
    /// up again. The original is not settled.
    Failed(String),
    /// The broker does not let this user publish there (403); trying
    /// again cannot help.
    Forbidden(String),
    /// A request was not taken in time: the connection is presumed dead.
    Hung,
}

pub struct Ledger {
    life: Arc<AtomicBool>,
    queues: Vec<QueueChannel>,
    /// A channel in confirm mode, for the delivery limit's copies.
    publisher: Option<Channel>,
    /// Per queue, the delivery tags admitted and not settled.
    unsettled: Vec<BTreeSet<u64>>,
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.retire();
    }
}

impl Ledger {
    pub fn new(queues: Vec<QueueChannel>, publisher: Option<Channel>) -> Ledger {
        let unsettled = vec![BTreeSet::new(); queues.len()];
        Ledger {
            life: Arc::new(AtomicBool::new(true)),
            queues,
            publisher,
            unsettled,
        }
    }

    pub fn queues(&self) -> &[QueueChannel] {
        &self.queues
    }

    pub fn is_live(&self) -> bool {
        self.life.load(Ordering::SeqCst)
    }

    /// The channels are gone or given up: every ticket dies now.
    pub fn retire(&self) {
        self.life.store(false, Ordering::SeqCst);
    }

    /// Whether this ledger issued `ticket` and can still settle its job.
    pub fn owns(&self, ticket: &Ticket) -> bool {
        self.is_live() && Arc::ptr_eq(&self.life, &ticket.life)
    }

    /// Admits a checked delivery of queue `source`.
    pub fn admit(&mut self, source: usize, delivery_tag: u64) -> Ticket {
        self.unsettled[source].insert(delivery_tag);
        Ticket {
            life: self.life.clone(),
            source,
        }
    }

    /// Settles answered jobs this ledger owns, each as its action says;
    /// `batch` holds the caller's index for each.
    pub async fn settle(&mut self, batch: Vec<(usize, Job, Settle)>) -> Settlement {
        let mut settled = Vec::with_capacity(batch.len());
        let mut acks: Vec<Vec<(usize, Job)>> = (0..self.queues.len()).map(|_| Vec::new()).collect();
        let mut others = Vec::new();
        for (index, job, action) in batch {
            debug_assert!(self.owns(&job.ticket));
            // (The hang seam needs the message settled on its own.)
            if action == Settle::Ack && !seams::get().hangs_settle_of(job.message_id()) {
                acks[job.ticket.source].push((index, job));
            } else {
                others.push((index, job, action));
            }
        }
        for (source, mut jobs) in acks.into_iter().enumerate() {
            if jobs.is_empty() {
                continue;
            }
            jobs.sort_by_key(|(_, job)| job.delivery.delivery_tag);
            // Both ascending, and every acked tag is unsettled: the run is
            // where they agree from the start.
            let run = self.unsettled[source]
                .iter()
                .zip(&jobs)
                .take_while(|(tag, (_, job))| **tag == job.delivery.delivery_tag)
                .count();
            let mut covered = 0;
            if run > 1 {
                let last = jobs[run - 1].1.delivery.delivery_tag;
                let queue = &self.queues[source];
                let ack = queue
                    .channel
                    .basic_ack(last, BasicAckOptions { multiple: true });
                match bounded("settling messages", ack).await {
                    Some(Ok(())) => settled.extend(jobs[..run].iter().map(|(index, _)| *index)),
                    Some(Err(error)) => log::warn!(
                        "Could not acknowledge {run} messages of queue {:?}: {error}; the broker will deliver them again",
                        queue.queue
                    ),
                    None => return self.hung(settled),
                }
                for (_, job) in &jobs[..run] {
                    self.unsettled[source].remove(&job.delivery.delivery_tag);
                }
                covered = run;
            }
            for (index, job) in jobs.into_iter().skip(covered) {
                self.unsettled[source].remove(&job.delivery.delivery_tag);
                match settle_one(job.delivery, Settle::Ack).await {
                    Some(true) => settled.push(index),
                    Some(false) => {}
                    None => return self.hung(settled),
                }
            }
        }
        for (index, job, action) in others {
            self.unsettled[job.ticket.source].remove(&job.delivery.delivery_tag);
            match settle_one(job.delivery, action).await {
                Some(true) => settled.push(index),
                Some(false) => {}
                None => return self.hung(settled),
            }
        }
        Settlement {
            settled,
            hung: false,
        }
    }

    fn hung(&self, settled: Vec<usize>) -> Settlement {
        self.retire();
        Settlement {
            settled,
            hung: true,
        }
    }

    /// Publishes a copy of a delivery that was never admitted to
    /// `exchange` with `routing_key` and `headers` (its other properties
    /// and its body as they were), waits for the broker's confirm, then
    /// acks the original: at-least-once, never lost in between.
    pub async fn forward(
        &self,
        delivery: Delivery,
        exchange: &str,
        routing_key: &str,
        headers: FieldTable,
    ) -> Forwarded {
        let Some(publisher) = &self.publisher else {
            return Forwarded::Failed("no publishing channel (please report this bug)".to_owned());
        };
        let properties = delivery.properties.clone().with_headers(headers);
        let confirmed = async {
            let confirm = publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    properties,
                )
                .await?;
            confirm.await
        };
        match bounded("publishing a copy of a message", confirmed).await {
            None => Forwarded::Hung,
            Some(Err(error)) if broker_code(&error) == Some(403) => Forwarded::Forbidden(format!(
                "the broker does not let this user publish to exchange {exchange:?}: {}",
                broker_reply(&error)
            )),
            Some(Err(error)) => Forwarded::Failed(format!(
                "publishing a copy of message {} to exchange {exchange:?} failed: {error}",
                wire::message_id(&delivery.properties)
            )),
            Some(Ok(lapin::Confirmation::Ack(None))) => {
                match settle_one(delivery, Settle::Ack).await {
                    Some(_) => Forwarded::Done,
                    None => Forwarded::Hung,
                }
            }
            Some(Ok(lapin::Confirmation::Ack(Some(_)))) => {
                Forwarded::Unroutable(Box::new(delivery))
            }
            Some(Ok(confirmation)) => Forwarded::Failed(format!(
                "the broker did not take a copy of message {} for exchange {exchange:?} ({confirmation:?})",
                wire::message_id(&delivery.properties)
            )),
        }
    }

    /// Rejects a delivery that was never admitted (it failed the checks);
    /// `false` when the request was not taken in time.
    #[must_use]
    pub async fn reject(&self, delivery: Delivery) -> bool {
        settle_one(delivery, Settle::Reject).await.is_some()
    }

    /// After a failure, once no worker holds a message: every delivery
    /// still unsettled on the channels (prefetched, never handed out) goes
    /// back to its queue, as fedora-messaging does with one `basic.nack`
    /// of tag 0 with `multiple`. `false` when a channel did not take it in
    /// time.
    #[must_use]
    pub async fn requeue_all(&self) -> bool {
        for queue in &self.queues {
            let requeue = queue.channel.basic_nack(
                0,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            );
            match bounded("returning unsettled messages", requeue).await {
                Some(Ok(())) => {}
                Some(Err(error)) => log::warn!(
                    "Could not return the unsettled messages of queue {:?}: {error}; closing the channel returns them",
                    queue.queue
                ),
                None => return false,
            }
        }
        true
    }

    /// Asks the broker to stop delivering to our consumers; what it
    /// already delivered and we did not settle goes back when the channels
    /// close.
    pub async fn cancel_all(&self) {
        for queue in &self.queues {
            let cancel = queue
                .channel
                .basic_cancel(queue.consumer_tag.clone(), BasicCancelOptions::default());
            if let Some(Err(error)) = bounded("cancelling a consumer", cancel).await {
                log::debug!("cancelling the consumer of {:?}: {error}", queue.queue);
            }
        }
    }

    /// Retires the ledger and closes its channels (the broker requeues
    /// what they hold unsettled).
    pub async fn close(&self, reason: &str) {
        self.retire();
        let channels = self.queues.iter().map(|queue| &queue.channel);
        for channel in channels.chain(&self.publisher) {
            bounded("closing a channel", channel.close(200, reason.into())).await;
        }
    }

    /// The `FM_TEST_BREAK_CHANNEL_ON` seam: acknowledges a tag the broker
    /// never gave on `source`'s channel, which the broker answers by
    /// closing the channel.
    pub async fn break_channel(&self, source: usize) {
        let channel = &self.queues[source].channel;
        let bogus = channel.basic_ack(u64::MAX / 2, BasicAckOptions::default());
        let _ = bounded("breaking a channel (test seam)", bogus).await;
    }
}

/// Settles one delivery as the outcome table says; taking the delivery by
/// value means it cannot be settled twice (a second settle would close the
/// channel). `Some(true)` settled; `Some(false)` not settled (logged: the
/// broker delivers it again); `None` when the library did not take the
/// settlement within [`bounded`]'s limit: the connection is dead but not
/// yet known to be, and waiting on it would stop consumption silently.
async fn settle_one(delivery: Delivery, action: Settle) -> Option<bool> {
    let hang = seams::get().hangs_settle_of(wire::message_id(&delivery.properties));
    let settling = async {
        if hang {
            futures_lite::future::pending::<()>().await;
        }
        match action {
            Settle::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
            // After a failure, the other unsettled messages follow once no
            // worker holds one (requeue_all), so none is settled twice.
            Settle::Requeue | Settle::RequeueAllUnsettled => {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await
            }
            Settle::Reject => {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: false,
                    })
                    .await
            }
        }
    };
    let settled = bounded("settling a message", settling).await;
    let id = wire::message_id(&delivery.properties);
    match settled {
        Some(Ok(true)) => Some(true),
        Some(Ok(false)) => {
            log::warn!(
                "Could not settle message {id} ({action:?}): its channel has closed; the broker will deliver it again"
            );
            Some(false)
        }
        Some(Err(error)) => {
            log::warn!(
                "Could not settle message {id} ({action:?}): {error}; the broker will deliver it again"
            );
            Some(false)
        }
        None => None,
    }
}
