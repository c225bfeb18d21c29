//! The two streams: `FetchX509SVID` (every identity of the caller: chain, key, bundle) and
//! `FetchX509Bundles` (the trust domain's bundle). Each holds the cache's `watch` receivers —
//! one per identity, and the trust bundle's — and sends a new message whenever any of them
//! changes (a renewal, `meshca rotate leaves`, a root rotation, a re-read bundle), until the
//! caller goes away or the server drains.

use std::sync::Arc;

use futures::future::select_all;
use meshca_provider::{SpiffeId, TrustBundle};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
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
    let subscriptions = entries.iter().map(|entry| {
        let source = shared.source.clone();
        async move {
            source
                .certificate(&entry.spiffe_id, Purpose::Default)
                .await
                .map(|certificate| Held {
                    spiffe_id: entry.spiffe_id.clone(),
                    hint: entry.hint.clone(),
                    certificate,
                })
        }
    });
    let mut held = Vec::with_capacity(entries.len());
    for result in futures::future::join_all(subscriptions).await {
        match result {
            Ok(h) => held.push(h),
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
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(serve_svids(shared, slot, held, bundle, tx));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

async fn serve_svids(
    shared: Arc<Shared>,
    _slot: StreamSlot,
    mut held: Vec<Held>,
    mut bundle: watch::Receiver<Arc<TrustBundle>>,
    tx: mpsc::Sender<Result<X509svidResponse, Status>>,
) {
    loop {
        let roots = bundle.borrow_and_update().clone();
        let bundle_der = concatenated(roots.roots());
        let svids: Vec<X509svid> = held
            .iter_mut()
            .map(|h| {
                let certificate = h.certificate.borrow_and_update().clone();
                X509svid {
                    spiffe_id: h.spiffe_id.to_string(),
                    x509_svid: concatenated(certificate.chain.certificates()),
                    x509_svid_key: certificate.key.pkcs8_der().secret_pkcs8_der().to_vec(),
                    bundle: bundle_der.clone(),
                    hint: h.hint.clone(),
                }
            })
            .collect();
        let count = svids.len() as u64;
        let response = X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles: Default::default(),
        };
        // The response (and the key in it, wiped on drop) is gone once tonic has encoded it.
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
        WorkloadApiMetrics::bump(&shared.metrics.svid_messages, 1);
        WorkloadApiMetrics::bump(&shared.metrics.svids_sent, count);
        // `held` is never empty: a caller with no identity was refused before.
        let certificates = select_all(held.iter_mut().map(|h| Box::pin(h.certificate.changed())));
        let changed = tokio::select! {
            () = shared.drain.cancelled() => {
                let _ = tx.send(Err(draining())).await;
                return;
            }
            () = tx.closed() => return,
            (changed, _, _) = certificates => changed,
            changed = bundle.changed() => changed,
        };
        if changed.is_err() {
            debug!("a certificate source closed: ending a Workload API stream");
            let _ = tx.send(Err(source_closed())).await;
            return;
        }
    }
}

/// Streams the trust bundle, keyed by the trust domain's SPIFFE ID.
pub(crate) fn x509_bundles(shared: Arc<Shared>, slot: StreamSlot) -> Streamed<X509BundlesResponse> {
    let (tx, rx) = mpsc::channel(1);
    let bundle = shared.source.trust_bundle();
    tokio::spawn(serve_bundles(shared, slot, bundle, tx));
    Box::pin(ReceiverStream::new(rx))
}

async fn serve_bundles(
    shared: Arc<Shared>,
    _slot: StreamSlot,
    mut bundle: watch::Receiver<Arc<TrustBundle>>,
    tx: mpsc::Sender<Result<X509BundlesResponse, Status>>,
) {
    let key = format!("spiffe://{}", shared.trust_domain);
    loop {
        let roots = bundle.borrow_and_update().clone();
        let response = X509BundlesResponse {
            crl: Vec::new(),
            bundles: [(key.clone(), concatenated(roots.roots()))].into(),
        };
        if tx.send(Ok(response)).await.is_err() {
            return;
        }
        WorkloadApiMetrics::bump(&shared.metrics.bundle_messages, 1);
        tokio::select! {
            () = shared.drain.cancelled() => {
                let _ = tx.send(Err(draining())).await;
                return;
            }
            () = tx.closed() => return,
            changed = bundle.changed() => {
                if changed.is_err() {
                    let _ = tx.send(Err(source_closed())).await;
                    return;
                }
            }
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
