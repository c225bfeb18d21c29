//! Delta xDS (`DeltaSecrets`): requests add and remove names, and a response carries only the
//! resources whose version the client does not hold.

use std::collections::{HashMap, HashSet};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;

use super::admission::Shared;
use super::dedup;
use super::session::{Protocol, Sent};
use super::subscriptions::{Rendered, Subscriptions};
use crate::sds::convert::SECRET_TYPE_URL;
use crate::sds::error::RequestError;

/// Versions longer than this in a delta stream's `initial_resource_versions` are not meshca's
/// (they are short hashes) and are not kept.
const MAX_VERSION_BYTES: usize = 128;

/// A delta stream's own state.
#[derive(Default)]
pub(super) struct Delta {
    /// The version of each resource the client holds (as far as we know).
    client_versions: HashMap<String, String>,
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const KIND: &'static str = "delta";
    const IGNORES_STALE_REQUESTS: bool = false;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn answers(request: &DeltaDiscoveryRequest) -> (&str, Option<&RpcStatus>) {
        (&request.response_nonce, request.error_detail.as_ref())
    }

    fn check(shared: &Shared, request: &DeltaDiscoveryRequest) -> Result<(), RequestError> {
        // Subscriptions and unsubscriptions count together; `initial_resource_versions` (only
        // read on the first request) against the same limit on its own.
        shared.check_request(
            &request.type_url,
            request
                .resource_names_subscribe
                .len()
                .saturating_add(request.resource_names_unsubscribe.len()),
            request.node.as_ref(),
        )?;
        if request.initial_resource_versions.len() > shared.limits.max_names_per_request {
            return Err(RequestError::TooManyNames {
                count: request.initial_resource_versions.len(),
                limit: shared.limits.max_names_per_request,
            });
        }
        Ok(())
    }

    async fn apply(
        &mut self,
        subs: &mut Subscriptions,
        request: DeltaDiscoveryRequest,
        first: bool,
    ) -> Result<bool, RequestError> {
        let subscribe = dedup(request.resource_names_subscribe);
        if first {
            // Only versions of names this request subscribes to, and only ones that can be
            // meshca's, are kept: the rest would be stored for nothing.
            self.client_versions
                .extend(
                    request
                        .initial_resource_versions
                        .into_iter()
                        .filter(|(name, version)| {
                            version.len() <= MAX_VERSION_BYTES && subscribe.contains(name)
                        }),
                );
        }
        let unsubscribe: HashSet<&String> = request
            .resource_names_unsubscribe
            .iter()
            .filter(|n| !subscribe.contains(n))
            .collect();
        let kept = subs.names().filter(|n| !unsubscribe.contains(n)).count();
        let added = subscribe.iter().filter(|n| !subs.contains(n)).count();
        let limit = subs.shared.limits.max_names_per_request;
        if kept + added > limit {
            return Err(RequestError::TooManyNames {
                count: kept + added,
                limit,
            });
        }
        // Resolve new names first: a refused request changes nothing.
        subs.add(&subscribe).await?;
        for name in unsubscribe {
            subs.remove(name);
            self.client_versions.remove(name);
        }
        // Whether a response follows depends only on what the client lacks.
        Ok(true)
    }

    /// Every subscribed resource whose version the client does not hold, push or not.
    fn select(
        &self,
        subs: &Subscriptions,
        _push: bool,
        _last: Option<&Sent>,
    ) -> Option<Vec<Rendered>> {
        let mut names: Vec<&String> = subs.names().collect();
        names.sort();
        let changed: Vec<Rendered> = names
            .into_iter()
            .filter_map(|n| subs.render(n))
            .filter(|r| self.client_versions.get(&r.name) != Some(&r.version))
            .collect();
        (!changed.is_empty()).then_some(changed)
    }

    fn response(&mut self, resources: Vec<Rendered>, nonce: &str) -> DeltaDiscoveryResponse {
        let mut sent = Vec::with_capacity(resources.len());
        for rendered in resources {
            self.client_versions
                .insert(rendered.name.clone(), rendered.version.clone());
            sent.push(Resource {
                name: rendered.name,
                version: rendered.version,
                resource: Some(rendered.resource),
                ..Resource::default()
            });
        }
        DeltaDiscoveryResponse {
            system_version_info: nonce.to_owned(),
            resources: sent,
            type_url: SECRET_TYPE_URL.to_owned(),
            nonce: nonce.to_owned(),
            ..DeltaDiscoveryResponse::default()
        }
    }
}
