//! The SDS protocol: `StreamSecrets` (state of the world), `DeltaSecrets` and `FetchSecrets`.
//!
//! A stream's state lives in the response stream tonic sends from, which is polled only when
//! the connection can take a response (`responses`): no task or queue per stream, and a slow
//! proxy only ever delays itself. A stream:
//! 1. authenticates its caller on the first request, before anything is issued;
//! 2. resolves every requested name (malformed → INVALID_ARGUMENT, another identity's
//!    certificate → PERMISSION_DENIED) before subscribing to any;
//! 3. subscribes to the source's `watch` receivers and answers;
//! 4. then waits for either a request (ACK, NACK, changed names) or a change on any receiver
//!    (renewal, root rotation), which is pushed.
//!
//! Versions and nonces are per-stream counters. An ACK or NACK only counts when it carries the
//! last nonce sent; older nonces are stale and ignored (state of the world) or only their
//! subscription changes are applied (delta, where requests are incremental).
//!
//! One file per concern: `admission.rs` (authentication, stream slots, the first request, the
//! per-request limits and refusals), `subscriptions.rs` (the names a stream holds and their
//! watch receivers), `session.rs` (versions, nonces, ACK/NACK and responses, over the
//! [`Protocol`](session::Protocol) that `sotw.rs` and `delta.rs` implement) and `push.rs` (the
//! loop that sends responses as the connection takes them).

mod admission;
mod delta;
mod push;
mod session;
mod sotw;
mod subscriptions;

use std::collections::HashSet;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::sds::convert::SECRET_TYPE_URL;
use crate::sds::stats::SdsStats;
use crate::sds::transport::PeerInfo;
pub(crate) use admission::Shared;
use admission::{Opened, busy, open};
use delta::Delta;
use push::responses;
use session::{Protocol, Session};
use sotw::Sotw;
use subscriptions::{Rendered, Subscriptions};

/// The gRPC service.
#[derive(Clone)]
pub(crate) struct SdsService(pub(crate) Arc<Shared>);

/// The responses of one stream, produced as the connection takes them (see `push.rs`).
type ResponseStream<T> = BoxStream<'static, Result<T, Status>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        serve::<Sotw>(&self.0, request).await
    }

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        serve::<Delta>(&self.0, request).await
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let shared = self.0.clone();
        let (metadata, extensions, request) = request.into_parts();
        shared
            .check_request(
                &request.type_url,
                request.resource_names.len(),
                request.node.as_ref(),
            )
            .map_err(|e| shared.refuse(None, None, e))?;
        let caller = shared
            .authenticate(
                extensions.get::<PeerInfo>(),
                &metadata,
                request.node.as_ref(),
            )
            .await
            .map_err(|e| shared.refuse(None, None, e))?;
        // An answer may wait on issuance: the connection is not idle meanwhile.
        let _busy = busy(extensions.get::<PeerInfo>());
        let names = dedup(request.resource_names);
        let mut subs = Subscriptions::new(shared.clone(), caller, u64::MAX, false);
        subs.replace(&names).await.map_err(|e| subs.refuse(e))?;
        let rendered: Vec<Rendered> = names.iter().filter_map(|n| subs.render(n)).collect();
        let version = combined_version(&rendered);
        SdsStats::bump(&shared.stats.responses);
        Ok(Response::new(DiscoveryResponse {
            version_info: version.clone(),
            resources: rendered.into_iter().map(|r| r.resource).collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: version,
            ..DiscoveryResponse::default()
        }))
    }
}

/// One `StreamSecrets` or `DeltaSecrets` call: the stream's prologue (authentication, a slot,
/// the first request), the answer to the first request, then the push loop.
async fn serve<P: Protocol>(
    shared: &Arc<Shared>,
    request: Request<Streaming<P::Request>>,
) -> Result<Response<ResponseStream<P::Response>>, Status> {
    let Some(Opened {
        slot,
        first,
        inbound,
        caller,
    }) = open(shared, request, P::node, P::KIND).await?
    else {
        return Ok(Response::new(futures::stream::empty().boxed()));
    };
    let subs = Subscriptions::new(shared.clone(), caller, slot.id, true);
    let mut session = Session::<P>::new(subs, slot);
    let first = match session.on_request(first).await {
        Ok(response) => response,
        Err(e) => return Err(session.subs.refuse(e)),
    };
    Ok(Response::new(responses(session, inbound, first)))
}

/// The names of a request in their order, without duplicates.
fn dedup(names: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    names
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .collect()
}

/// A version for a fetched set of resources: changes whenever any of them does.
fn combined_version(rendered: &[Rendered]) -> String {
    let joined: Vec<&str> = rendered.iter().map(|r| r.version.as_str()).collect();
    let digest = meshca_provider::x509::sha256(joined.join(",").as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}
