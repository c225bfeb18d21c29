//! One stream's xDS bookkeeping, the same for state of the world and delta: the checks every
//! request passes, versions and nonces (per-stream counters), ACK and NACK accounting against
//! the last response sent, and making a response. What differs between the two protocols —
//! their message types, how a request changes the subscription, which resources a response
//! carries — is the small [`Protocol`] that `sotw.rs` and `delta.rs` implement.

use std::future::Future;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshca_provider::{SpiffeId, TrustBundle};
use tracing::{debug, warn};

use super::admission::{Shared, StreamSlot};
use super::subscriptions::{Rendered, Subscriptions};
use crate::sds::error::RequestError;
use crate::sds::stats::SdsStats;
use crate::sds::throttle::CallerText;

/// What differs between a state-of-the-world and a delta stream.
pub(super) trait Protocol: Default + Send + 'static {
    /// The request message.
    type Request: Send + 'static;
    /// The response message.
    type Response: Send + 'static;
    /// `sotw` or `delta`, for logs.
    const KIND: &'static str;
    /// Whether a request answering an older response than the last one sent is ignored whole
    /// (state of the world: the next request restates everything) rather than only its ACK
    /// (delta: requests are incremental, so its subscription changes still apply).
    const IGNORES_STALE_REQUESTS: bool;

    /// The Envoy node a request carries, if any.
    fn node(request: &Self::Request) -> Option<&Node>;

    /// The nonce of the response a request answers (empty: none) and, for a NACK, why the
    /// proxy rejected it.
    fn answers(request: &Self::Request) -> (&str, Option<&RpcStatus>);

    /// Checks a request against the limits before anything of it is used
    /// ([`Shared::check_request`] with the request's own count of names).
    fn check(shared: &Shared, request: &Self::Request) -> Result<(), RequestError>;

    /// Applies a request's subscription changes (resolving and refusing new names before
    /// anything changes). `first`: the stream's first request. Returns whether the request
    /// calls for a response.
    fn apply(
        &mut self,
        subs: &mut Subscriptions,
        request: Self::Request,
        first: bool,
    ) -> impl Future<Output = Result<bool, RequestError>> + Send;

    /// The resources the next response carries; `None` when there is nothing to send. `push`:
    /// made after a change of a held certificate or bundle rather than for a request.
    fn select(
        &self,
        subs: &Subscriptions,
        push: bool,
        last: Option<&Sent>,
    ) -> Option<Vec<Rendered>>;

    /// The response carrying `resources` under `nonce` (also its version); records what the
    /// client will hold.
    fn response(&mut self, resources: Vec<Rendered>, nonce: &str) -> Self::Response;
}

/// What was sent last on a stream, to match its ACK.
pub(super) struct Sent {
    nonce: String,
    pub(super) versions: Vec<(String, String)>,
    bundle: Option<Arc<TrustBundle>>,
    /// An ACK or NACK of this response was counted: a repeated one is not counted or logged
    /// again (a proxy answers each response once; a NACK storm is one NACK).
    answered: bool,
}

/// One open stream, SotW or delta.
pub(super) struct Session<P> {
    pub(super) subs: Subscriptions,
    /// The number of responses sent: the last one's nonce and version.
    sequence: u64,
    last: Option<Sent>,
    /// The response the client last acknowledged, for logs.
    acked: Option<u64>,
    /// No request has been applied yet.
    first: bool,
    protocol: P,
    slot: StreamSlot,
}

impl<P: Protocol> Session<P> {
    pub(super) fn new(subs: Subscriptions, slot: StreamSlot) -> Self {
        Self {
            subs,
            sequence: 0,
            last: None,
            acked: None,
            first: true,
            protocol: P::default(),
            slot,
        }
    }

    /// The response the client last acknowledged, for logs.
    pub(super) fn acked(&self) -> Option<u64> {
        self.acked
    }

    /// Applies a request; returns the response it calls for, if any.
    pub(super) async fn on_request(
        &mut self,
        request: P::Request,
    ) -> Result<Option<P::Response>, RequestError> {
        P::check(&self.subs.shared, &request)?;
        let (nonce, error_detail) = P::answers(&request);
        if !nonce.is_empty() {
            match &mut self.last {
                Some(last) if last.nonce == nonce => {
                    if !std::mem::replace(&mut last.answered, true) {
                        let shared = &self.subs.shared;
                        match error_detail {
                            Some(detail) => {
                                SdsStats::bump(&shared.stats.nacks);
                                log_nack(shared, self.slot.id, &self.subs.caller, last, detail);
                            }
                            None => {
                                SdsStats::bump(&shared.stats.acks);
                                // The nonce matched: what is acknowledged is what was sent
                                // (never the caller's text, which would be kept for the
                                // stream's life).
                                self.acked = Some(self.sequence);
                                if let Some(bundle) = &last.bundle {
                                    shared.acks.acknowledged(self.slot.id, bundle.clone());
                                }
                            }
                        }
                    }
                }
                Some(_) if P::IGNORES_STALE_REQUESTS => {
                    debug!(stream = self.slot.id, nonce = %CallerText(nonce), "stale SDS nonce ignored");
                    return Ok(None);
                }
                // Nothing sent yet: there is no response the nonce could name.
                None if P::IGNORES_STALE_REQUESTS => {}
                _ => {
                    debug!(stream = self.slot.id, nonce = %CallerText(nonce), "stale SDS delta nonce")
                }
            }
        }
        let first = std::mem::take(&mut self.first);
        if !self.protocol.apply(&mut self.subs, request, first).await? {
            return Ok(None);
        }
        Ok(self.respond(false))
    }

    /// The response for the current state; `None` when the client already has everything.
    pub(super) fn respond(&mut self, push: bool) -> Option<P::Response> {
        let resources = self.protocol.select(&self.subs, push, self.last.as_ref())?;
        self.sequence += 1;
        let nonce = self.sequence.to_string();
        let bundle = resources.iter().find_map(|r| r.bundle.clone());
        let versions = resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let response = self.protocol.response(resources, &nonce);
        self.last = Some(Sent {
            nonce,
            versions,
            bundle,
            answered: false,
        });
        Some(response)
    }
}

/// Logs a NACK of `sent` (at most `burst` per period over all streams), its detail cut and
/// escaped.
fn log_nack(shared: &Shared, stream: u64, caller: &SpiffeId, sent: &Sent, detail: &RpcStatus) {
    if let Some(held_back) = shared.nack_log.ready() {
        let names: Vec<&str> = sent.versions.iter().map(|(n, _)| n.as_str()).collect();
        warn!(
            stream,
            %caller,
            ?names,
            code = detail.code,
            detail = %CallerText(&detail.message),
            held_back,
            "proxy rejected an SDS response (NACK); it keeps its previous secrets"
        );
    }
}
