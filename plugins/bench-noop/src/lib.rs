//! The benchmark's consumer: does nothing with each message (or sleeps, to
//! stand for I/O), and halts with exit code 0 once the process has seen
//! `halt_after` messages, so a run ends when the queue it was filled for
//! is drained.
//!
//! ```toml
//! [consumer_config]
//! halt_after = 20000   # absent: never halt
//! sleep_ms = 10        # absent: 0
//! ```
//!
//! The count is the library's, shared by every instance, so it also ends a
//! run with several workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fm_plugin_api::{Consumer, ConsumerError, Init, Message, export_consumers};
use serde::Deserialize;

static SEEN: AtomicU64 = AtomicU64::new(0);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Conf {
    halt_after: Option<u64>,
    #[serde(default)]
    sleep_ms: u64,
}

pub struct Noop {
    halt_after: u64,
    sleep: Option<Duration>,
}

impl Consumer for Noop {
    fn new(init: &Init) -> Result<Self, ConsumerError> {
        let conf: Conf = init.config()?;
        Ok(Noop {
            halt_after: conf.halt_after.unwrap_or(u64::MAX),
            sleep: (conf.sleep_ms > 0).then(|| Duration::from_millis(conf.sleep_ms)),
        })
    }

    fn consume(&mut self, _message: &Message) -> Result<(), ConsumerError> {
        if let Some(sleep) = self.sleep {
            std::thread::sleep(sleep);
        }
        let seen = SEEN.fetch_add(1, Ordering::Relaxed) + 1;
        if seen == 1 {
            // What the startup benchmark waits for.
            log::info!("first message");
        }
        if seen == self.halt_after {
            return Err(ConsumerError::halt(0));
        }
        Ok(())
    }
}

export_consumers!(Noop);
