//! The engine's pulse: what systemd hears from it. `WATCHDOG=1` is sent
//! only from the engine's own loop, each time it turns, so an engine that
//! stops turning (stuck in a wait with no bound, or its thread blocked)
//! stops the pings and systemd restarts the service. Every wait in the
//! engine is raced with [`Pulse::tick`], so a healthy engine turns at
//! least once per ping interval whatever the broker or the consumers do.
//! `STATUS=` says what the engine is doing or waiting for, with the
//! message counts refreshed at most once a second. With `soft_timeout`,
//! the pulse also names, once each, the messages in a consumer's hands
//! for longer than that.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::monitor::Stats;
use crate::notify::Notifier;
use crate::untrusted::Untrusted;

/// How often `STATUS=` gets fresh message counts, when they changed.
const STATUS_REFRESH: Duration = Duration::from_secs(1);

/// How often the messages in progress are checked against `soft_timeout`.
const OVERDUE_CHECK: Duration = Duration::from_secs(1);

pub struct Pulse {
    notifier: Arc<Notifier>,
    stats: Arc<Stats>,
    /// Half the watchdog's timeout, when systemd set one.
    ping_every: Option<Duration>,
    last_ping: Instant,
    last_counts: Instant,
    /// `soft_timeout`, if set.
    soft_timeout: Option<Duration>,
    last_overdue_check: Instant,
    /// One timer for every tick, re-armed by the reactor each period: a
    /// new timer per wait would wake the reactor on every turn of the
    /// loop.
    timer: async_io::Timer,
}

impl Pulse {
    pub fn new(
        notifier: Arc<Notifier>,
        stats: Arc<Stats>,
        soft_timeout: Option<Duration>,
    ) -> Pulse {
        let now = Instant::now();
        let ping_every = notifier.watchdog_interval();
        let period = match ping_every {
            // Twice per ping interval, so that the longest gap between
            // pings is 1.5 intervals (three quarters of the watchdog's
            // timeout), not two (all of it).
            Some(every) => (every / 2).min(STATUS_REFRESH),
            None if notifier.enabled() => STATUS_REFRESH,
            // Nobody listens: turning would only cost wake-ups.
            None => Duration::from_secs(3600),
        };
        // A warning comes at most a second late.
        let period = match soft_timeout {
            Some(_) => period.min(OVERDUE_CHECK),
            None => period,
        };
        Pulse {
            ping_every,
            notifier,
            stats,
            last_ping: now,
            last_counts: now,
            soft_timeout,
            last_overdue_check: now,
            timer: async_io::Timer::interval(period),
        }
    }

    /// The engine's loop turned: ping the watchdog and refresh the counts
    /// when they are due.
    pub fn turned(&mut self) {
        let now = Instant::now();
        if let Some(every) = self.ping_every
            && now.duration_since(self.last_ping) >= every
        {
            self.notifier.send("WATCHDOG=1");
            self.last_ping = now;
        }
        if self.notifier.enabled() && now.duration_since(self.last_counts) >= STATUS_REFRESH {
            self.last_counts = now;
            if let Some(summary) = self.stats.summary() {
                self.notifier.counts(summary);
            }
        }
        if let Some(limit) = self.soft_timeout
            && now.duration_since(self.last_overdue_check) >= OVERDUE_CHECK
        {
            self.last_overdue_check = now;
            for held in self.stats.in_progress().overdue(limit, now) {
                log::warn!(
                    "Message id {} on topic {} has been in the consumer for {:.0} s, longer than soft_timeout ({} s)",
                    Untrusted(&held.id),
                    Untrusted(&held.topic),
                    held.age.as_secs_f64(),
                    limit.as_secs_f64()
                );
            }
        }
    }

    /// Runs `step`, turning at each tick while it waits: for a step that
    /// is bounded (or a few in a row) but may take longer than the
    /// watchdog allows, during which the engine is alive.
    pub async fn beating<T>(&mut self, step: impl std::future::Future<Output = T>) -> T {
        let mut step = std::pin::pin!(step);
        loop {
            self.turned();
            let done = futures_lite::FutureExt::or(async { Some(step.as_mut().await) }, async {
                self.tick().await;
                None
            })
            .await;
            if let Some(value) = done {
                return value;
            }
        }
    }

    /// Resolves when the loop should turn even if nothing else happened.
    pub async fn tick(&mut self) {
        futures_lite::StreamExt::next(&mut self.timer).await;
    }

    pub fn ready(&self, doing: &str) {
        self.notifier.ready(doing);
    }

    /// What the engine is doing or waiting for now.
    pub fn status(&self, doing: &str) {
        self.notifier.status(doing);
    }

    pub fn stopping(&self) {
        self.notifier.stopping();
    }
}
