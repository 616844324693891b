//! Stop requests: SIGINT and SIGTERM ask for a graceful stop.
//!
//! As in fedora-messaging, the first signal starts the stop: the messages
//! in progress are finished and settled. Unlike it, the wait is bounded
//! (`stop_timeout`), and a second signal ends it at once: what is still in
//! progress goes back to the broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_lite::FutureExt;

/// Shared view of whether a stop was asked for; cheap to clone.
#[derive(Clone)]
pub struct StopRequest {
    requested: Arc<AtomicBool>,
    /// Closed (never sent on) when a stop is requested, so every waiter
    /// wakes at once.
    closed_on_stop: async_channel::Receiver<()>,
    /// Closed when the stop is asked for again: no more waiting.
    closed_on_hurry: async_channel::Receiver<()>,
}

/// The side that requests the stop.
pub struct StopTrigger {
    requested: Arc<AtomicBool>,
    sender: async_channel::Sender<()>,
    hurry: async_channel::Sender<()>,
}

impl StopTrigger {
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.sender.close();
    }

    /// The stop was asked for again: it waits for nothing more.
    pub fn hurry(&self) {
        self.request();
        self.hurry.close();
    }
}

impl StopRequest {
    /// A request and the trigger that fulfils it.
    pub fn new() -> (StopRequest, StopTrigger) {
        let requested = Arc::new(AtomicBool::new(false));
        let (sender, receiver) = async_channel::bounded(1);
        let (hurry, closed_on_hurry) = async_channel::bounded(1);
        (
            StopRequest {
                requested: requested.clone(),
                closed_on_stop: receiver,
                closed_on_hurry,
            },
            StopTrigger {
                requested,
                sender,
                hurry,
            },
        )
    }

    /// A request fulfilled by the first SIGINT or SIGTERM.
    pub fn on_signals() -> std::io::Result<StopRequest> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let (request, trigger) = StopRequest::new();
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if trigger.requested.load(Ordering::SeqCst) {
                        log::warn!(
                            "Received signal {signal} again; no longer waiting for the messages in progress: they go back to their queues"
                        );
                        trigger.hurry();
                    } else {
                        log::info!("Received signal {signal}; stopping gracefully");
                        trigger.request();
                    }
                }
            })?;
        Ok(request)
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Resolves once a stop is requested.
    pub async fn requested(&self) {
        // recv() fails only once the channel is closed: the stop.
        let _ = self.closed_on_stop.recv().await;
    }

    /// Resolves once the stop is asked for a second time.
    pub async fn hurried(&self) {
        let _ = self.closed_on_hurry.recv().await;
    }

    /// Waits `timeout`; true if a stop was requested meanwhile.
    pub async fn wait(&self, timeout: Duration) -> bool {
        async {
            self.requested().await;
            true
        }
        .or(async {
            async_io::Timer::after(timeout).await;
            false
        })
        .await
    }
}
