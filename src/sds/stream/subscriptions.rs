//! The names a stream holds: each resolved and authorized, bound to the source's watch
//! receiver for its certificate or the trust bundle, rendered as a secret on demand, with one
//! change notification over all of them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use envoy_types::pb::google::protobuf::Any;
use futures::StreamExt;
use futures::stream::BoxStream;
use meshca_provider::{SpiffeId, TrustBundle, rfc3339};
use tokio::sync::watch;
use tokio_stream::StreamMap;
use tonic::Status;

use super::admission::Shared;
use crate::sds::convert;
use crate::sds::error::RequestError;
use crate::sds::names::{Resolved, ResourceName};
use crate::sds::source::{Purpose, ServedCertificate};
use crate::sds::stats::SdsStats;
use crate::sds::throttle::CallerText;

/// One rendered resource.
pub(super) struct Rendered {
    pub(super) name: String,
    pub(super) resource: Any,
    pub(super) version: String,
    pub(super) bundle: Option<Arc<TrustBundle>>,
}

/// What one subscribed name is bound to.
enum Entry {
    Certificate(watch::Receiver<Arc<ServedCertificate>>),
    Bundle { peer: Option<SpiffeId> },
}

/// The names a stream holds, their receivers, and change notification over all of them.
pub(super) struct Subscriptions {
    pub(super) shared: Arc<Shared>,
    pub(super) caller: SpiffeId,
    pub(super) stream: u64,
    track_acks: bool,
    entries: HashMap<String, Entry>,
    changes: StreamMap<String, BoxStream<'static, ()>>,
    bundle: watch::Receiver<Arc<TrustBundle>>,
    bundle_open: bool,
    bundle_holders: usize,
    /// Per name, the version of the expired certificate last left out of a response: each is
    /// counted and logged once.
    withheld: Mutex<HashMap<String, String>>,
}

impl Subscriptions {
    pub(super) fn new(
        shared: Arc<Shared>,
        caller: SpiffeId,
        stream: u64,
        track_acks: bool,
    ) -> Self {
        let mut bundle = shared.source.trust_bundle();
        bundle.mark_unchanged();
        Self {
            shared,
            caller,
            stream,
            track_acks,
            entries: HashMap::new(),
            changes: StreamMap::new(),
            bundle,
            bundle_open: true,
            bundle_holders: 0,
            withheld: Mutex::default(),
        }
    }

    pub(super) fn refuse(&self, error: RequestError) -> Status {
        self.shared
            .refuse(Some(self.stream), Some(&self.caller), error)
    }

    /// The subscribed names, in no particular order.
    pub(super) fn names(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Makes the subscription exactly `names`.
    pub(super) async fn replace(&mut self, names: &[String]) -> Result<(), RequestError> {
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        let new: Vec<String> = names
            .iter()
            .filter(|n| !self.contains(n))
            .cloned()
            .collect();
        // Resolve (and refuse) before dropping anything, so a refused request changes nothing.
        let resolved = self.resolve(&new)?;
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove(&name);
        }
        self.bind(resolved).await
    }

    /// Adds `names` to the subscription.
    pub(super) async fn add(&mut self, names: &[String]) -> Result<(), RequestError> {
        let new: Vec<String> = names
            .iter()
            .filter(|n| !self.contains(n))
            .cloned()
            .collect();
        let resolved = self.resolve(&new)?;
        self.bind(resolved).await
    }

    /// Parses and authorizes names without side effects.
    fn resolve(&self, names: &[String]) -> Result<Vec<(String, Resolved)>, RequestError> {
        names
            .iter()
            .map(|name| {
                let parsed = ResourceName::parse(name, &self.shared.trust_domain)?;
                Ok((name.clone(), parsed.resolve(name, &self.caller)?))
            })
            .collect()
    }

    /// Subscribes resolved names to the source; issuing happens here, after authorization.
    async fn bind(&mut self, resolved: Vec<(String, Resolved)>) -> Result<(), RequestError> {
        let mut fetched: HashMap<Purpose, watch::Receiver<Arc<ServedCertificate>>> = HashMap::new();
        for (name, target) in resolved {
            let entry = match target {
                Resolved::Certificate { identity, purpose } => {
                    let receiver = match fetched.get(&purpose) {
                        Some(receiver) => receiver.clone(),
                        None => {
                            let receiver =
                                self.shared.source.certificate(&identity, purpose).await?;
                            fetched.insert(purpose, receiver.clone());
                            receiver
                        }
                    };
                    self.changes
                        .insert(name.clone(), changes_of(receiver.clone()));
                    Entry::Certificate(receiver)
                }
                Resolved::Bundle { peer } => {
                    self.bundle_holders += 1;
                    if self.bundle_holders == 1 && self.track_acks {
                        self.shared.acks.register(self.stream, &self.caller);
                    }
                    Entry::Bundle { peer }
                }
            };
            self.entries.insert(name, entry);
        }
        Ok(())
    }

    pub(super) fn remove(&mut self, name: &str) {
        self.changes.remove(name);
        self.withheld
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        if let Some(Entry::Bundle { .. }) = self.entries.remove(name) {
            self.bundle_holders -= 1;
            if self.bundle_holders == 0 && self.track_acks {
                self.shared.acks.unregister(self.stream);
            }
        }
    }

    /// The current resource for a subscribed name; `None` for a certificate that has expired
    /// (its renewals are failing), which is never sent: the proxy keeps what it holds until a
    /// fresh one is pushed. Every response is made here, SotW, delta and fetch alike.
    pub(super) fn render(&self, name: &str) -> Option<Rendered> {
        match self.entries.get(name)? {
            Entry::Certificate(receiver) => {
                let certificate = receiver.borrow().clone();
                let version = convert::certificate_version(&certificate);
                if certificate.info.not_after <= self.shared.source.now() {
                    self.withhold(name, &certificate, version);
                    return None;
                }
                Some(Rendered {
                    name: name.to_owned(),
                    resource: convert::pack(&convert::tls_certificate_secret(name, &certificate)),
                    version,
                    bundle: None,
                })
            }
            Entry::Bundle { peer } => {
                let bundle = self.bundle.borrow().clone();
                Some(Rendered {
                    name: name.to_owned(),
                    resource: convert::pack(&convert::validation_context_secret(
                        name,
                        &bundle,
                        peer.as_ref(),
                    )),
                    version: convert::bundle_version(&bundle, peer.as_ref()),
                    bundle: Some(bundle),
                })
            }
        }
    }

    /// Counts and logs (once per certificate and name) an expired certificate left out.
    fn withhold(&self, name: &str, certificate: &ServedCertificate, version: String) {
        let mut withheld = self.withheld.lock().unwrap_or_else(PoisonError::into_inner);
        if withheld.get(name) == Some(&version) {
            return;
        }
        withheld.insert(name.to_owned(), version);
        drop(withheld);
        SdsStats::bump(&self.shared.stats.expired_withheld);
        if let Some(held_back) = self.shared.expired_log.ready() {
            tracing::warn!(
                stream = self.stream,
                caller = %self.caller,
                name = %CallerText(name),
                serial = %certificate.info.serial_hex(),
                not_after = %rfc3339(certificate.info.not_after),
                held_back,
                "certificate expired before it could be renewed: left out of SDS responses until a fresh one is issued"
            );
        }
    }

    /// Resolves when a held certificate or the trust bundle (if held) changed. Cancel-safe.
    pub(super) async fn changed(&mut self) {
        loop {
            tokio::select! {
                Some(_) = self.changes.next(), if !self.changes.is_empty() => return,
                result = self.bundle.changed(), if self.bundle_open && self.bundle_holders > 0 => {
                    if result.is_ok() {
                        return;
                    }
                    // The source dropped its bundle sender: the last bundle stays served.
                    self.bundle_open = false;
                }
                else => std::future::pending::<()>().await,
            }
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        if self.bundle_holders > 0 && self.track_acks {
            self.shared.acks.unregister(self.stream);
        }
    }
}

/// A stream of `()` for every change a receiver sees; it ends when the sender is dropped.
fn changes_of<T: Send + Sync + 'static>(receiver: watch::Receiver<T>) -> BoxStream<'static, ()> {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.changed().await.ok()?;
        Some(((), receiver))
    })
    .boxed()
}
