//! Test seams: faults the end-to-end tests cannot cause from outside the
//! process, switched on by environment variables. They exist only in a
//! build with the `test-seams` feature, which the end-to-end tests' crate
//! turns on; any other build (a release, a package) ignores the variables.
//! Each names a message id (but the last); without the variables nothing
//! here acts.
//!
//! - `FM_TEST_STALL_ENGINE_ON`: once that message's answer reaches the
//!   engine, the engine's thread blocks for good (as a deadlock would), so
//!   a test can see the systemd watchdog go quiet.
//! - `FM_TEST_HANG_SETTLE_OF`: settling that message never completes (as
//!   on a connection that is dead but not yet known to be).
//! - `FM_TEST_SLOW_SETTLE_OF`: settling that message takes 2 s more (and
//!   then completes), so a test can finish another message while the
//!   engine is inside that settlement.
//! - `FM_TEST_BREAK_CHANNEL_ON`: when a consumer thread first takes that
//!   message, it acknowledges a delivery tag the broker never gave, and the
//!   broker closes the channel (406), as it closes one for any channel
//!   error, while the message runs and others wait in lapin's buffer.
//! - `FM_TEST_PANIC_ON`: a consumer thread panics outside the consumer
//!   when it is about to hand that message over, as a bug in the host
//!   would.
//! - `FM_TEST_QUEUE_DEPTH_EVERY`: the queues' depths are asked every that
//!   many seconds instead of every 30, so a test sees a new figure soon.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How much longer `FM_TEST_SLOW_SETTLE_OF`'s settlement takes.
const SLOW_SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct Seams {
    stall_engine_on: Option<String>,
    hang_settle_of: Option<String>,
    slow_settle_of: Option<String>,
    break_channel_on: Option<String>,
    panic_on: Option<String>,
    channel_broken: AtomicBool,
    queue_depth_every: Option<Duration>,
}

/// The seams this process was started with: none unless built with the
/// `test-seams` feature.
pub fn get() -> &'static Seams {
    static SEAMS: OnceLock<Seams> = OnceLock::new();
    SEAMS.get_or_init(|| {
        if !cfg!(feature = "test-seams") {
            return Seams::default();
        }
        let read = |name: &str| std::env::var(name).ok().filter(|id| !id.is_empty());
        Seams {
            stall_engine_on: read("FM_TEST_STALL_ENGINE_ON"),
            hang_settle_of: read("FM_TEST_HANG_SETTLE_OF"),
            slow_settle_of: read("FM_TEST_SLOW_SETTLE_OF"),
            break_channel_on: read("FM_TEST_BREAK_CHANNEL_ON"),
            panic_on: read("FM_TEST_PANIC_ON"),
            channel_broken: AtomicBool::new(false),
            queue_depth_every: read("FM_TEST_QUEUE_DEPTH_EVERY")
                .and_then(|seconds| seconds.parse().ok())
                .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok()),
        }
    })
}

impl Seams {
    /// How often the queues' depths are asked, if a test says.
    pub fn queue_depth_every(&self) -> Option<Duration> {
        self.queue_depth_every
    }

    /// Blocks the calling thread for good if `message_id` is the one.
    pub fn maybe_stall_engine(&self, message_id: &str) {
        if self.stall_engine_on.as_deref() == Some(message_id) {
            log::warn!("test seam: the engine stalls on message {message_id}");
            loop {
                std::thread::park();
            }
        }
    }

    /// Panics if `message_id` is the one.
    pub fn maybe_panic_on(&self, message_id: &str) {
        if self.panic_on.as_deref() == Some(message_id) {
            panic!("test seam: a consumer thread panics on message {message_id}");
        }
    }

    /// Whether the engine must settle that message's answer, whatever it
    /// is, for a seam to act on it.
    pub fn needs_engine(&self, message_id: &str) -> bool {
        self.stall_engine_on.as_deref() == Some(message_id)
            || self.hangs_settle_of(message_id)
            || self.settle_delay_of(message_id).is_some()
    }

    /// How much longer settling that message takes, if it is the one.
    pub fn settle_delay_of(&self, message_id: &str) -> Option<Duration> {
        (self.slow_settle_of.as_deref() == Some(message_id)).then_some(SLOW_SETTLE)
    }

    pub fn hangs_settle_of(&self, message_id: &str) -> bool {
        self.hang_settle_of.as_deref() == Some(message_id)
    }

    /// True once: on the first delivery of the message.
    pub fn breaks_channel_on(&self, message_id: &str) -> bool {
        self.break_channel_on.as_deref() == Some(message_id)
            && !self.channel_broken.swap(true, Ordering::SeqCst)
    }
}
