//! The two streams: `FetchX509SVID` (every identity of the caller: chain, key, bundle) and
//! `FetchX509Bundles` (the trust domain's bundle). Each holds the cache's `watch` receivers —
//! one per identity, and the trust bundle's — and sends a new message whenever any of them
//! changes (a renewal, `meshca rotate leaves`, a root rotation, a re-read bundle), until the
//! caller goes away or the server drains.

use std::future::Future;
use std::sync::Arc;

use futures::future::select_all;
use meshca_provider::{SpiffeId, TrustBundle};
use tokio::sync::watch;
use tonic::Status;
use tracing::debug;

use super::admission::{Admitted, Shared, StreamSlot, Streamed};
use super::metrics::{Refusal, WorkloadApiMetrics};
use super::proto::{X509BundlesResponse, X509svid, X509svidResponse};
use crate::cache::{Purpose, ServedCertificate};
use crate::sds::source::SourceError;

/// One identity of the caller, as its stream holds it.
struct Held {
    spiffe_id: SpiffeId,
    hint: String,
    certificate: watch::Receiver<Arc<ServedCertificate>>,
}

/// Subscribes to every identity's certificate (issuing those not cached yet, concurrently),
/// then streams them. A certificate that cannot be issued refuses the call: the client retries.
pub(crate) async fn x509_svids(
    shared: Arc<Shared>,
    admitted: Admitted,
) -> Result<Streamed<X509svidResponse>, (Refusal, Status)> {
    let Admitted { entries, slot } = admitted;
    // One identity (the usual caller) is awaited as it is; several are issued concurrently.
    let results = if let [entry] = entries.as_slice() {
        vec![
            shared
                .source
                .certificate(&entry.spiffe_id, Purpose::Default)
                .await,
        ]
    } else {
        futures::future::join_all(entries.iter().map(|entry| {
            shared
                .source
                .certificate(&entry.spiffe_id, Purpose::Default)
        }))
        .await
    };
    let mut held = Vec::with_capacity(entries.len());
    for (entry, result) in entries.into_iter().zip(results) {
        match result {
            Ok(certificate) => held.push(Held {
                spiffe_id: entry.spiffe_id,
                hint: entry.hint,
                certificate,
            }),
            Err(error) => {
                let status = match &error {
                    SourceError::Refused { .. } => Status::failed_precondition(error.to_string()),
                    _ => Status::unavailable(error.to_string()),
                };
                return Err((Refusal::Unavailable, status));
            }
        }
    }
    let bundle = shared.source.trust_bundle();
    let stream = SvidStream {
        shared,
        _slot: slot,
        held,
        bundle,
    };
    Ok(messages(stream))
}

/// What a stream sends: a message now, then one after each change, until the server drains
/// or a source closes (an error, the last item). The stream is polled by the connection that
/// sends its messages, with no task or channel of its own (`docs/BENCHMARKS.md`,
/// workload-api-bench), and is dropped, with its slot, when the caller goes away.
trait Messages: Send + 'static {
    type Message: Send + 'static;
    /// The message for the current state.
    fn response(&mut self) -> Self::Message;
    /// Waits for a change; the error that ends the stream.
    fn changed(&mut self) -> impl Future<Output = Result<(), Status>> + Send;
}

fn messages<M: Messages>(stream: M) -> Streamed<M::Message> {
    Box::pin(futures::stream::unfold(
        (stream, Next::Send),
        |(mut stream, next)| async move {
            let item = match next {
                Next::Send => Ok(stream.response()),
                Next::Wait => stream.changed().await.map(|()| stream.response()),
                Next::End => return None,
            };
            let next = if item.is_ok() { Next::Wait } else { Next::End };
            Some((item, (stream, next)))
        },
    ))
}

/// Where a stream is.
enum Next {
    /// A message is due now: the first one, or after a change.
    Send,
    /// Waiting for a change (or the drain).
    Wait,
    /// The stream ended with an error.
    End,
}

/// What one `FetchX509SVID` stream holds.
struct SvidStream {
    shared: Arc<Shared>,
    _slot: StreamSlot,
    held: Vec<Held>,
    bundle: watch::Receiver<Arc<TrustBundle>>,
}

impl Messages for SvidStream {
    type Message = X509svidResponse;

    /// The current certificates and bundle. The message (and the key in it, wiped on drop) is
    /// gone once tonic has encoded it.
    fn response(&mut self) -> X509svidResponse {
        let roots = self.bundle.borrow_and_update().clone();
        let mut bundle_der = concatenated(roots.roots());
        let last = self.held.len().saturating_sub(1);
        let mut svids = Vec::with_capacity(self.held.len());
        for (i, h) in self.held.iter_mut().enumerate() {
            let certificate = h.certificate.borrow_and_update().clone();
            svids.push(X509svid {
                spiffe_id: h.spiffe_id.as_uri().to_owned(),
                x509_svid: concatenated(certificate.chain.certificates()),
                x509_svid_key: certificate.key.pkcs8_der().secret_pkcs8_der().to_vec(),
                // The last SVID takes the bundle, the others a copy.
                bundle: if i == last {
                    std::mem::take(&mut bundle_der)
                } else {
                    bundle_der.clone()
                },
                hint: h.hint.clone(),
            });
        }
        WorkloadApiMetrics::bump(&self.shared.metrics.svid_messages, 1);
        WorkloadApiMetrics::bump(&self.shared.metrics.svids_sent, svids.len() as u64);
        X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles: Default::default(),
        }
    }

    /// Waits until a certificate or the bundle changes; the error the stream ends with when
    /// the server drains or a source closes.
    async fn changed(&mut self) -> Result<(), Status> {
        // `held` is never empty: a caller with no identity was refused before. One identity
        // (the usual caller) waits on its receiver alone, with nothing boxed per wait.
        let held = &mut self.held;
        let certificates = async {
            match held.as_mut_slice() {
                [only] => only.certificate.changed().await,
                held => {
                    select_all(held.iter_mut().map(|h| Box::pin(h.certificate.changed())))
                        .await
                        .0
                }
            }
        };
        let changed = tokio::select! {
            () = self.shared.drain.cancelled() => return Err(draining()),
            changed = certificates => changed,
            changed = self.bundle.changed() => changed,
        };
        changed.map_err(|_| {
            debug!("a certificate source closed: ending a Workload API stream");
            source_closed()
        })
    }
}

/// Streams the trust bundle, keyed by the trust domain's SPIFFE ID (polled by its connection,
/// as `FetchX509SVID`'s stream).
pub(crate) fn x509_bundles(shared: Arc<Shared>, slot: StreamSlot) -> Streamed<X509BundlesResponse> {
    let bundle = shared.source.trust_bundle();
    let key = format!("spiffe://{}", shared.trust_domain);
    let stream = BundleStream {
        shared,
        _slot: slot,
        bundle,
        key,
    };
    messages(stream)
}

/// What one `FetchX509Bundles` stream holds.
struct BundleStream {
    shared: Arc<Shared>,
    _slot: StreamSlot,
    bundle: watch::Receiver<Arc<TrustBundle>>,
    key: String,
}

impl Messages for BundleStream {
    type Message = X509BundlesResponse;

    fn response(&mut self) -> X509BundlesResponse {
        let roots = self.bundle.borrow_and_update().clone();
        WorkloadApiMetrics::bump(&self.shared.metrics.bundle_messages, 1);
        X509BundlesResponse {
            crl: Vec::new(),
            bundles: [(self.key.clone(), concatenated(roots.roots()))].into(),
        }
    }

    async fn changed(&mut self) -> Result<(), Status> {
        tokio::select! {
            () = self.shared.drain.cancelled() => Err(draining()),
            changed = self.bundle.changed() => changed.map_err(|_| source_closed()),
        }
    }
}

/// What a stream ends with when the server shuts down: clients reconnect (to another replica,
/// or to this one restarted).
fn draining() -> Status {
    Status::unavailable("meshca is shutting down: reconnect")
}

fn source_closed() -> Status {
    Status::unavailable("the certificate source is shutting down")
}

/// DER certificates back to back, as the Workload API carries chains and bundles.
fn concatenated<C: AsRef<[u8]>>(certificates: &[C]) -> Vec<u8> {
    let mut out = Vec::with_capacity(certificates.iter().map(|c| c.as_ref().len()).sum());
    for certificate in certificates {
        out.extend_from_slice(certificate.as_ref());
    }
    out
}
