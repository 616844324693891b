//! One delivery on its way through the engine: the job a consumer thread
//! runs, the settlement handle that travels with it ([`Ticket`], poisoned
//! when its channel dies), its in-flight token, and what a worker tells
//! the engine about it ([`Finished`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::message::Delivery;

use super::handler::Handler;
use super::inflight::InFlight;
use super::limit::Verdict;
use crate::exit::Fatal;
use crate::outcome::Outcome;
use crate::wire::{self, Checked, MessageView};

/// A consumer's answer and how long it took to give it: what the
/// statistics count once its settlement is taken.
pub type Answer = (Outcome, Duration);

/// One queue's channel, as the deliveries it gave know it: which of the
/// set-up's queues it is, and a kill switch thrown once for good when the
/// channel dies or is given up.
#[derive(Debug, Clone)]
pub struct ChannelRef {
    life: Arc<AtomicBool>,
    source: usize,
}

impl ChannelRef {
    pub fn new(life: Arc<AtomicBool>, source: usize) -> ChannelRef {
        ChannelRef { life, source }
    }

    /// Whether the channel still lives.
    pub fn is_live(&self) -> bool {
        self.life.load(Ordering::SeqCst)
    }

    /// Which of the set-up's queues it is.
    pub fn source(&self) -> usize {
        self.source
    }

    /// Whether `life` is this channel's kill switch.
    pub fn is(&self, life: &Arc<AtomicBool>) -> bool {
        Arc::ptr_eq(&self.life, life)
    }
}

/// The ability to settle one delivery: its channel and its tag. A
/// delivery can only be settled on the channel it came from, and only
/// while that channel lives.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub channel: ChannelRef,
    pub tag: u64,
}

impl Ticket {
    pub fn is_live(&self) -> bool {
        self.channel.is_live()
    }

    pub fn source(&self) -> usize {
        self.channel.source
    }
}

/// One checked delivery, on its way to a consumer (and to the engine,
/// unless the consumer thread settles it).
pub struct Job {
    pub delivery: Delivery,
    /// The queue it came from (the broker's name for a server-named queue).
    pub queue: Arc<str>,
    pub checked: Checked,
    pub ticket: Ticket,
    /// Counts it in flight until its answer has been acted on.
    pub in_flight: InFlight,
}

impl Job {
    pub fn view(&self) -> MessageView<'_> {
        wire::delivery_view(&self.delivery, &self.queue, self.checked)
    }

    pub fn message_id(&self) -> &str {
        wire::message_id(&self.delivery.properties)
    }

    /// Whether it can still be settled: its channel lives and lapin has
    /// not poisoned its acker.
    pub fn settleable(&self) -> bool {
        self.ticket.is_live() && self.delivery.acker.usable()
    }
}

/// A delivery the engine settles, not the consumer.
pub struct Diverted {
    pub delivery: Delivery,
    pub ticket: Ticket,
    pub in_flight: InFlight,
    pub why: Why,
}

/// Why a delivery was diverted to the engine.
pub enum Why {
    /// It fails fedora-messaging's checks: rejected without requeue.
    Refused(String),
    /// The delivery limit carries its count or dead-letters it.
    Limited { checked: Checked, verdict: Verdict },
}

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
    /// The consumer answered, with something the consumer thread does not
    /// settle itself (anything but a plain ack), or it could not settle it.
    Done(Job, Outcome, Duration),
    /// A delivery for the engine to settle.
    Diverted(Box<Diverted>),
    /// A queue's stream ended (with the error lapin gave, if any).
    Ended(ChannelRef, Option<lapin::Error>),
    /// The worker's consumer could not be built; the worker has ended.
    BuildFailed(Fatal),
}
