//! Following a set of objects: list them, then watch from the list's resourceVersion, and hand
//! every change to the task that owns the state, as [`Change`]s on a channel.
//!
//! Written here rather than taken from kube's `runtime` watcher (a crate this project does not
//! otherwise need) because what the publishers need is small and worth reading in one place:
//! - a failed list or watch is retried with capped, jittered exponential backoff, the first
//!   failure of a run logged as a warning that says what to check, the recovery logged too;
//! - `410 Gone` (the resourceVersion was compacted away) lists again at once;
//! - a watch the server ends normally (its timeout) is resumed from the last resourceVersion
//!   seen;
//! - every `resync` the objects are listed again from scratch ([`Change::Listed`] replaces
//!   what the owner knew), which repairs drift a missed event would leave;
//! - with `stop_if_not_served`, a `404` to the list (the API is not served) ends the loop so
//!   the caller can say so once.

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt as _;
use kube::Api;
use kube::api::{ListParams, WatchEvent, WatchParams};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{explain, is_status};

/// A change of the objects followed.
#[derive(Debug)]
pub(crate) enum Change<K> {
    /// Everything there is now (after a first list, a relist, or a resync).
    Listed(Vec<K>),
    /// An object was added or modified.
    Applied(K),
    /// An object was deleted.
    Deleted(K),
}

/// Why [`follow`] returned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The receiver is gone.
    Closed,
    /// The list answered `404` (with `stop_if_not_served`).
    NotServed,
}

/// What to follow.
pub(crate) struct Followed<K> {
    /// The objects' API (cluster-wide or one namespace).
    pub(crate) api: Api<K>,
    /// A field selector (`metadata.name=istio-ca-root-cert`), if any.
    pub(crate) fields: Option<String>,
    /// What they are, for logs ("namespaces", "ConfigMaps istio-ca-root-cert").
    pub(crate) what: String,
    /// How often everything is listed again.
    pub(crate) resync: Duration,
    /// End on a `404` to the list instead of retrying.
    pub(crate) stop_if_not_served: bool,
}

/// The first backoff after a failure, and the cap.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Follows `followed` until `changes`' receiver is dropped (or, with `stop_if_not_served`, the
/// API answers 404).
pub(crate) async fn follow<K>(followed: Followed<K>, changes: mpsc::Sender<Change<K>>) -> Ended
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut failures = Failures::new(&followed.what);
    let mut list_params = ListParams::default();
    let mut watch_params = WatchParams::default();
    if let Some(fields) = &followed.fields {
        list_params = list_params.fields(fields);
        watch_params = watch_params.fields(fields);
    }
    loop {
        let list = match followed.api.list(&list_params).await {
            Ok(list) => list,
            Err(error) if followed.stop_if_not_served && is_status(&error, 404) => {
                return Ended::NotServed;
            }
            Err(error) => {
                failures.failed("list", &error).await;
                continue;
            }
        };
        failures.recovered();
        let mut version = list.metadata.resource_version.clone().unwrap_or_default();
        if changes.send(Change::Listed(list.items)).await.is_err() {
            return Ended::Closed;
        }
        let relist_at = Instant::now() + followed.resync;
        // Watch (and resume watching) until the resync is due or the version is gone.
        'watching: loop {
            let stream = tokio::select! {
                () = tokio::time::sleep_until(relist_at) => break 'watching,
                stream = followed.api.watch(&watch_params, &version) => stream,
            };
            let stream = match stream {
                Ok(stream) => stream,
                Err(error) if is_status(&error, 410) => break 'watching,
                Err(error) => {
                    failures.failed("watch", &error).await;
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = tokio::select! {
                    () = tokio::time::sleep_until(relist_at) => break 'watching,
                    event = stream.next() => event,
                };
                let change = match event {
                    // The server ended the watch (its timeout): resume from where it was.
                    None => continue 'watching,
                    Some(Ok(WatchEvent::Added(object) | WatchEvent::Modified(object))) => {
                        version = resource_version(&object, version);
                        Change::Applied(object)
                    }
                    Some(Ok(WatchEvent::Deleted(object))) => {
                        version = resource_version(&object, version);
                        Change::Deleted(object)
                    }
                    Some(Ok(WatchEvent::Bookmark(bookmark))) => {
                        version = bookmark.metadata.resource_version;
                        continue;
                    }
                    Some(Ok(WatchEvent::Error(status))) if status.code == 410 => {
                        tracing::debug!(what = %followed.what, "watch expired (410 Gone): listing again");
                        break 'watching;
                    }
                    Some(Ok(WatchEvent::Error(status))) => {
                        failures.failed("watch", &kube::Error::Api(status)).await;
                        continue 'watching;
                    }
                    Some(Err(error)) => {
                        failures.failed("watch", &error).await;
                        continue 'watching;
                    }
                };
                failures.recovered();
                if changes.send(change).await.is_err() {
                    return Ended::Closed;
                }
            }
        }
    }
}

/// The object's resourceVersion, or `previous` if it has none.
fn resource_version<K: kube::Resource>(object: &K, previous: String) -> String {
    object.meta().resource_version.clone().unwrap_or(previous)
}

/// Consecutive failures: one warning per run of them, backoff between attempts.
struct Failures<'a> {
    what: &'a str,
    count: u32,
}

impl<'a> Failures<'a> {
    fn new(what: &'a str) -> Self {
        Self { what, count: 0 }
    }

    /// Logs (a warning the first time in a row) and waits before the next attempt.
    async fn failed(&mut self, verb: &str, error: &kube::Error) {
        let message = explain(&format!("{verb} {}", self.what), error);
        if self.count == 0 {
            tracing::warn!(error = %message, "trust distribution: retrying");
        } else {
            tracing::debug!(error = %message, attempt = self.count + 1, "trust distribution: still failing");
        }
        self.count = self.count.saturating_add(1);
        tokio::time::sleep(backoff(self.count)).await;
    }

    fn recovered(&mut self) {
        if self.count > 0 {
            tracing::info!(what = %self.what, "trust distribution: the API server answers again");
        }
        self.count = 0;
    }
}

/// Sleeps until `at`, or forever.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The wait after the `failures`-th consecutive failure: doubling from [`BACKOFF_START`], capped
/// at [`BACKOFF_CAP`], less up to a fifth at random so that replicas do not retry in step.
pub(crate) fn backoff(failures: u32) -> Duration {
    let doubled = BACKOFF_START.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let capped = doubled.min(BACKOFF_CAP);
    let jitter = rand::random::<f64>() * 0.2;
    capped.mul_f64(1.0 - jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap_with_jitter_below() {
        for (failures, nominal) in [(1, 0.5), (2, 1.0), (3, 2.0), (8, 60.0), (40, 60.0)] {
            let wait = backoff(failures).as_secs_f64();
            assert!(
                wait <= nominal && wait >= nominal * 0.8,
                "{failures} failures: {wait}s, expected about {nominal}s"
            );
        }
    }
}
