//! State of the world (`StreamSecrets`): every request names the whole subscription, and every
//! response carries every subscribed resource, in the request's order.

use std::collections::HashSet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;

use super::admission::Shared;
use super::dedup;
use super::session::{Protocol, Sent};
use super::subscriptions::{Rendered, Subscriptions};
use crate::sds::convert::SECRET_TYPE_URL;
use crate::sds::error::RequestError;

/// A state-of-the-world stream's own state.
#[derive(Default)]
pub(super) struct Sotw {
    /// The names of the last accepted request, in its order, without duplicates.
    names: Vec<String>,
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const KIND: &'static str = "sotw";
    const IGNORES_STALE_REQUESTS: bool = true;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn answers(request: &DiscoveryRequest) -> (&str, Option<&RpcStatus>) {
        (&request.response_nonce, request.error_detail.as_ref())
    }

    fn check(shared: &Shared, request: &DiscoveryRequest) -> Result<(), RequestError> {
        shared.check_request(
            &request.type_url,
            request.resource_names.len(),
            request.node.as_ref(),
        )
    }

    async fn apply(
        &mut self,
        subs: &mut Subscriptions,
        request: DiscoveryRequest,
        first: bool,
    ) -> Result<bool, RequestError> {
        let names = dedup(request.resource_names);
        // The first request is always answered; a later one only when it changes the set (an
        // ACK restates it).
        if !first && same_set(&names, &self.names) {
            return Ok(false);
        }
        subs.replace(&names).await?;
        self.names = names;
        Ok(true)
    }

    /// Every subscribed resource, in the request's order; for a push, only if one of them
    /// changed since the last response.
    fn select(
        &self,
        subs: &Subscriptions,
        push: bool,
        last: Option<&Sent>,
    ) -> Option<Vec<Rendered>> {
        let rendered: Vec<Rendered> = self.names.iter().filter_map(|n| subs.render(n)).collect();
        // Every name held is an expired certificate (left out): nothing to send until a
        // fresh one is pushed.
        if rendered.is_empty() && !self.names.is_empty() {
            return None;
        }
        let unchanged = |last: &Sent| {
            last.versions
                .iter()
                .map(|(name, version)| (name.as_str(), version.as_str()))
                .eq(rendered
                    .iter()
                    .map(|r| (r.name.as_str(), r.version.as_str())))
        };
        if push && last.is_some_and(unchanged) {
            return None;
        }
        Some(rendered)
    }

    fn response(&mut self, resources: Vec<Rendered>, nonce: &str) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: nonce.to_owned(),
            resources: resources.into_iter().map(|r| r.resource).collect(),
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: nonce.to_owned(),
            ..DiscoveryResponse::default()
        }
    }
}

fn same_set(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().collect::<HashSet<_>>() == b.iter().collect::<HashSet<_>>()
}
