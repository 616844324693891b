//! How long the engine waits for the broker: every request to it is
//! bounded, so one that is never answered cannot stop consumption
//! silently or keep the process from ending.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures_lite::FutureExt;

/// Why a session ends when a settlement hangs.
pub const UNSETTLED: &str =
    "a request to the broker was not taken within 5 s, so the connection is presumed dead";

/// How long one request to the broker may take to be taken or answered
/// (a settlement, a cancel, a close).
pub const BROKER_STEP: Duration = Duration::from_secs(5);

/// How long declaring and starting consumers (or opening one channel) may
/// take on a live connection before it is given up as dead.
pub const SETUP_STEP: Duration = Duration::from_secs(60);

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
    let finished = within(limit, step).await;
    if finished.is_none() {
        log::warn!("{what}: no answer from the broker within {limit:?}");
    }
    finished
}

/// Runs `step` for at most `limit`; `None`, unlogged, if it took longer
/// (for a caller that says it its own way).
pub async fn within<T>(limit: Duration, step: impl std::future::Future<Output = T>) -> Option<T> {
    async { Some(step.await) }
        .or(async {
            async_io::Timer::after(limit).await;
            None
        })
        .await
}

/// Runs every step side by side, so that one bound covers them all; their
/// outputs, in order.
pub async fn all<F: Future>(steps: Vec<F>) -> Vec<F::Output> {
    let mut steps: Vec<Pin<Box<F>>> = steps.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = steps.iter().map(|_| None).collect();
    futures_lite::future::poll_fn(|cx| {
        let mut waiting = false;
        for (step, output) in steps.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match step.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
