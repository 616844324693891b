//! How long the engine waits for the broker: every request to it is
//! bounded, so one that is never answered cannot stop consumption
//! silently or keep the process from ending.

use std::time::Duration;

use futures_lite::FutureExt;

/// Why a session ends when a settlement hangs.
pub const UNSETTLED: &str =
    "a request to the broker was not taken within 5 s, so the connection is presumed dead";

/// How long one request to the broker may take to be taken or answered
/// (a settlement, a cancel, a close).
pub const BROKER_STEP: Duration = Duration::from_secs(5);

/// Runs `step` for at most [`BROKER_STEP`]; `None` (logged) if it took
/// longer.
pub async fn bounded<T>(what: &str, step: impl std::future::Future<Output = T>) -> Option<T> {
    bounded_for(what, BROKER_STEP, step).await
}

/// Runs `step` for at most `limit`; `None` (logged) if it took longer.
pub async fn bounded_for<T>(
    what: &str,
    limit: Duration,
    step: impl std::future::Future<Output = T>,
) -> Option<T> {
    let finished = async { Some(step.await) }
        .or(async {
            async_io::Timer::after(limit).await;
            None
        })
        .await;
    if finished.is_none() {
        log::warn!("{what}: no answer from the broker within {limit:?}");
    }
    finished
}
