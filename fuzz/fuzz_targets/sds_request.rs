//! SDS requests as a proxy sends them: protobuf bytes decoded into a `DiscoveryRequest` (first
//! byte even) or a `DeltaDiscoveryRequest` (odd), then the node and every resource name through
//! the server's parsing. Properties: no panic; a parsed name displays as a name that parses to
//! the same value; a name never resolves to a certificate of anyone but the caller; a node's
//! identity is in the served trust domain.
#![no_main]

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use libfuzzer_sys::fuzz_target;
use meshca::sds::ResourceName;
use meshca::sds::auth::identity_from_node;
use meshca::sds::names::Resolved;
use meshca_provider::{SpiffeId, TrustDomain};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let trust_domain = TrustDomain::default();
    if kind % 2 == 0 {
        let Ok(request) = DiscoveryRequest::decode(bytes) else {
            return;
        };
        let caller = caller(request.node.as_ref(), &trust_domain);
        for name in &request.resource_names {
            check_name(name, &trust_domain, &caller);
        }
    } else {
        let Ok(request) = DeltaDiscoveryRequest::decode(bytes) else {
            return;
        };
        let caller = caller(request.node.as_ref(), &trust_domain);
        let names = request
            .resource_names_subscribe
            .iter()
            .chain(&request.resource_names_unsubscribe)
            .chain(request.initial_resource_versions.keys());
        for name in names {
            check_name(name, &trust_domain, &caller);
        }
    }
});

/// The node's identity (development mode), or a fixed caller when it has none.
fn caller(node: Option<&Node>, trust_domain: &TrustDomain) -> SpiffeId {
    match identity_from_node(node, trust_domain) {
        Ok(id) => {
            assert_eq!(id.trust_domain(), trust_domain);
            assert_eq!(id.to_string().parse::<SpiffeId>().ok(), Some(id.clone()));
            id
        }
        Err(error) => {
            let _ = error.to_string();
            SpiffeId::new(trust_domain.clone(), "fuzz", "caller").expect("a valid identity")
        }
    }
}

fn check_name(name: &str, trust_domain: &TrustDomain, caller: &SpiffeId) {
    let parsed = match ResourceName::parse(name, trust_domain) {
        Ok(parsed) => parsed,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    let shown = parsed.to_string();
    assert_eq!(
        ResourceName::parse(&shown, trust_domain).as_ref(),
        Ok(&parsed),
        "{name:?} parsed as {parsed:?}, shown as {shown:?}"
    );
    match parsed.resolve(name, caller) {
        Ok(Resolved::Certificate { identity, .. }) => assert_eq!(&identity, caller),
        Ok(Resolved::Bundle { .. }) => {}
        Err(error) => {
            let _ = error.to_string();
        }
    }
}
