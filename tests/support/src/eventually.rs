//! Waiting for something to happen without sleeping for a guessed time: poll a condition until
//! it holds or a deadline passes, then fail naming what was awaited and the last value seen.
//!
//! The deadline is on tokio's clock, so a test on paused time (`start_paused = true`) waits in
//! virtual time; [`eventually_blocking`] is for code outside a runtime.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::time::Duration;

/// How often a condition is polled.
const INTERVAL: Duration = Duration::from_millis(50);

/// Polls `observe` until `done` accepts what it returns, for at most `limit`, and returns that
/// value. On time-out it panics with `what` and the last observed value.
///
/// ```ignore
/// let held = eventually(PATIENCE, "Envoy to present the new serial",
///     || envoy.leaf_serials(), |held| held.contains(&serial)).await;
/// ```
pub async fn eventually<T, F, Fut>(
    limit: Duration,
    what: &str,
    mut observe: F,
    mut done: impl FnMut(&T) -> bool,
) -> T
where
    T: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let observed = observe().await;
        if done(&observed) {
            return observed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last observed: {observed:?}"
        );
        tokio::time::sleep(INTERVAL).await;
    }
}

/// Polls `observe` until it returns `Ok`, for at most `limit`, and returns the value. `Err`
/// carries the state observed meanwhile; on time-out the last one is in the panic message.
pub async fn eventually_ok<T, E, F, Fut>(limit: Duration, what: &str, observe: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    eventually_ok_every(limit, INTERVAL, what, observe).await
}

/// [`eventually_ok`] polling every `interval` (for observations that cost more than a read,
/// such as running a command).
pub async fn eventually_ok_every<T, E, F, Fut>(
    limit: Duration,
    interval: Duration,
    what: &str,
    mut observe: F,
) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match observe().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last observed: {last}"
        );
        tokio::time::sleep(interval).await;
    }
}

/// [`eventually`] for code outside an async runtime (blocks the thread between polls).
pub fn eventually_blocking<T: Debug>(
    limit: Duration,
    what: &str,
    mut observe: impl FnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let observed = observe();
        if done(&observed) {
            return observed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last observed: {observed:?}"
        );
        std::thread::sleep(INTERVAL);
    }
}
