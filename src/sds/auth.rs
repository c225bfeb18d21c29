//! Who is calling: caller authentication for the SDS server, done before anything is issued.
//!
//! One [`AuthMode`] per server decides which credential is trusted:
//! - [`AuthMode::Mtls`]: a client certificate chaining to the current trust bundle (checked
//!   during the TLS handshake, see `tls.rs`); the identity is its SPIFFE URI SAN.
//! - [`AuthMode::UnixPeer`]: the uid of the process on the other end of the Unix socket,
//!   mapped to an identity by configuration.
//! - [`AuthMode::Token`]: a Kubernetes service-account token in `authorization: Bearer …`,
//!   checked by a [`TokenAuthenticator`] (TokenReview).
//! - [`AuthMode::Development`]: the Envoy node id `<ns>/<sa>` (or node metadata `NAMESPACE`
//!   and `SERVICE_ACCOUNT`) is believed. Only on loopback or a Unix socket.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;
use meshca_provider::{CertificateInfo, SpiffeId, TrustDomain};
use tonic::metadata::MetadataMap;

use super::transport::{PeerInfo, PeerTransport, UnixSocketAccess};

/// How the SDS server decides who a caller is.
#[derive(Clone)]
#[non_exhaustive]
pub enum AuthMode {
    /// mTLS on every SDS listener: a client certificate from meshca is required.
    Mtls(MtlsSettings),
    /// Unix socket peer credentials: the caller's uid, mapped to an identity. Only with a Unix
    /// socket listener.
    UnixPeer(UnixPeerMap),
    /// A Kubernetes service-account token in the `authorization` metadata.
    Token(Arc<dyn TokenAuthenticator>),
    /// Development only: the caller's Envoy node id is believed. Refused unless every listener
    /// is loopback or a Unix socket.
    Development,
}

impl fmt::Debug for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mtls(settings) => f.debug_tuple("Mtls").field(settings).finish(),
            Self::UnixPeer(map) => f.debug_tuple("UnixPeer").field(map).finish(),
            Self::Token(_) => f.write_str("Token"),
            Self::Development => f.write_str("Development"),
        }
    }
}

impl AuthMode {
    /// Short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Mtls(_) => "mtls",
            Self::UnixPeer(_) => "unix-peer",
            Self::Token(_) => "token",
            Self::Development => "development",
        }
    }
}

// Here rather than in `transport.rs`, which knows sockets and not authentication modes.
impl UnixSocketAccess {
    /// `0600` (meshca's own user) in development mode, where whoever connects is believed;
    /// `0666` in the modes that authenticate every caller on the connection (its uid, a token
    /// or a client certificate), so that the proxies' users can connect and unknown callers
    /// are refused by authentication, as the SPIRE agent's socket does.
    pub fn default_for(auth: &AuthMode) -> Self {
        let mode = match auth {
            AuthMode::Development => 0o600,
            _ => 0o666,
        };
        Self { mode, group: None }
    }
}

/// Settings of mTLS on the SDS listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsSettings {
    /// The identity whose certificate the SDS endpoint presents, obtained from the secret source
    /// and renewed like any other. Clients verify its URI SAN, or its DNS SAN
    /// `<sa>.<ns>.<trust-domain>` (the certificate's CN).
    pub server_identity: SpiffeId,
}

impl MtlsSettings {
    /// The default server identity `meshca-system/meshca` in `trust_domain`.
    #[allow(
        clippy::expect_used,
        reason = "a constant namespace and service account, valid in every trust domain \
                  (the SDS tests build it)"
    )]
    pub fn new(trust_domain: &TrustDomain) -> Self {
        Self {
            server_identity: SpiffeId::new(trust_domain.clone(), "meshca-system", "meshca")
                .expect("meshca-system/meshca is a valid identity"),
        }
    }
}

/// Which identity each local uid speaks for, on a Unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixPeerMap {
    by_uid: HashMap<u32, SpiffeId>,
}

impl UnixPeerMap {
    /// A map from uid to identity.
    pub fn new(by_uid: HashMap<u32, SpiffeId>) -> Self {
        Self { by_uid }
    }

    /// Adds or replaces a uid's identity.
    pub fn insert(&mut self, uid: u32, identity: SpiffeId) {
        self.by_uid.insert(uid, identity);
    }

    /// The identity of a uid.
    pub fn identity(&self, uid: u32) -> Option<&SpiffeId> {
        self.by_uid.get(&uid)
    }
}

/// Checks a Kubernetes service-account token (TokenReview) and says whose it is.
///
/// Obligations: MUST verify the token with the API server (signature, expiry, audience) rather
/// than decode it; MUST NOT log the token or put it into errors; the pod binding
/// [`Self::authenticate_caller`] returns MUST come from the API server's review, never from the
/// token's claims read locally.
#[async_trait]
pub trait TokenAuthenticator: Send + Sync + 'static {
    /// The identity the token belongs to.
    async fn authenticate(&self, token: &str) -> Result<SpiffeId, TokenError>;

    /// The identity the token belongs to and, for a token bound to a pod (a projected
    /// service-account token), that pod as the review reported it. The default knows no pod
    /// binding: implementations that can see one (TokenReview) override it.
    async fn authenticate_caller(
        &self,
        token: &str,
    ) -> Result<(SpiffeId, Option<PodBinding>), TokenError> {
        Ok((self.authenticate(token).await?, None))
    }
}

/// The pod a service-account token was bound to, as the TokenReview reported it
/// (`status.user.extra["authentication.kubernetes.io/pod-name"]`, `…/pod-uid`,
/// `…/node-name`). Only bound tokens carry it; a client certificate never does.
///
/// Defined here, with the authenticator that produces it, so that SDS does not depend on the
/// Istio CA API that consumes it (`crate::istio::PodBinding` re-exports it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodBinding {
    /// The pod's name (its namespace is the caller identity's).
    pub name: String,
    /// The pod's UID, when the token names it.
    pub uid: Option<String>,
    /// The node the pod runs on, when the token names it (Kubernetes 1.30+).
    pub node: Option<String>,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token is invalid, expired or for another audience.
    #[error("service-account token rejected: {reason}")]
    Rejected {
        /// Why, without the token.
        reason: String,
    },
    /// The token could not be checked now (API server unreachable).
    #[error("service-account token could not be checked: {reason}")]
    Unavailable {
        /// Why, without the token.
        reason: String,
    },
}

/// Why a caller could not be authenticated.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The call carried no credential of the kind this server trusts.
    #[error("no {mode} credential on the SDS call: {hint}")]
    NoCredential {
        /// The configured mode.
        mode: &'static str,
        /// What the client must send.
        hint: &'static str,
    },
    /// The client certificate verified but carries no usable SPIFFE ID.
    #[error("the client certificate carries no meshca identity: {reason}")]
    BadCertificate {
        /// What is wrong with it.
        reason: String,
    },
    /// The Unix peer's uid has no identity configured.
    #[error("uid {uid} is not mapped to an identity: add it to the SDS Unix peer map")]
    UnknownUid {
        /// The peer's uid.
        uid: u32,
    },
    /// The token was rejected or could not be checked.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The caller proved an identity in a trust domain meshca does not serve (a client
    /// certificate from another cluster's CA trusted through `extraTrustedRoots`, say).
    #[error(
        "{identity} is in trust domain {found}, but this meshca serves {served}: a caller \
         authenticates with an identity of the configured trustDomain only"
    )]
    ForeignTrustDomain {
        /// The caller's identity.
        identity: String,
        /// Its trust domain.
        found: String,
        /// The trust domain meshca serves (`trustDomain`).
        served: String,
    },
    /// Development mode: the node id and metadata name no valid identity.
    #[error(
        "development mode: cannot read an identity from the Envoy node ({reason}); set node.id \
         to <namespace>/<service-account> or node metadata NAMESPACE and SERVICE_ACCOUNT"
    )]
    BadNode {
        /// What is wrong.
        reason: String,
    },
}

/// Establishes the identity of an SDS caller, once per stream.
pub(crate) struct Authenticator {
    mode: AuthMode,
    trust_domain: TrustDomain,
}

impl Authenticator {
    pub(crate) fn new(mode: AuthMode, trust_domain: TrustDomain) -> Self {
        Self { mode, trust_domain }
    }

    /// Whether [`Authenticator::authenticate`] needs the Envoy node of the first request
    /// (development mode); every other mode authenticates from the connection and metadata.
    pub(crate) fn needs_node(&self) -> bool {
        matches!(self.mode, AuthMode::Development)
    }

    /// The caller's identity from the connection (`peer`), the call's metadata, and the Envoy
    /// node of the first request; always in the served trust domain.
    pub(crate) async fn authenticate(
        &self,
        peer: Option<&PeerInfo>,
        metadata: &MetadataMap,
        node: Option<&Node>,
    ) -> Result<SpiffeId, AuthError> {
        let identity = self.identity(peer, metadata, node).await?;
        check_trust_domain(&identity, &self.trust_domain)?;
        Ok(identity)
    }

    async fn identity(
        &self,
        peer: Option<&PeerInfo>,
        metadata: &MetadataMap,
        node: Option<&Node>,
    ) -> Result<SpiffeId, AuthError> {
        match &self.mode {
            AuthMode::Mtls(_) => {
                let leaf = peer
                    .and_then(|p| p.certificates.as_ref())
                    .and_then(|chain| chain.first())
                    .ok_or(AuthError::NoCredential {
                        mode: "mtls",
                        hint: "connect with TLS and a client certificate issued by meshca",
                    })?;
                identity_from_certificate(leaf)
            }
            AuthMode::UnixPeer(map) => {
                let uid = match peer.map(|p| &p.transport) {
                    Some(PeerTransport::Unix { uid: Some(uid), .. }) => *uid,
                    _ => {
                        return Err(AuthError::NoCredential {
                            mode: "unix-peer",
                            hint: "connect over the SDS Unix socket",
                        });
                    }
                };
                map.identity(uid)
                    .cloned()
                    .ok_or(AuthError::UnknownUid { uid })
            }
            AuthMode::Token(authenticator) => {
                let token = bearer_token(metadata).ok_or(AuthError::NoCredential {
                    mode: "token",
                    hint: "send `authorization: Bearer <service-account token>` metadata",
                })?;
                Ok(authenticator.authenticate(token).await?)
            }
            AuthMode::Development => identity_from_node(node, &self.trust_domain),
        }
    }
}

/// Refuses an authenticated `identity` outside the trust domain meshca `serves`. Every API that
/// authenticates callers checks this before serving them: a certificate chaining to a trusted
/// root proves an identity, but only identities of the served trust domain get certificates.
pub fn check_trust_domain(identity: &SpiffeId, serves: &TrustDomain) -> Result<(), AuthError> {
    if identity.trust_domain() == serves {
        return Ok(());
    }
    Err(AuthError::ForeignTrustDomain {
        identity: identity.to_string(),
        found: identity.trust_domain().to_string(),
        served: serves.to_string(),
    })
}

/// The single SPIFFE URI SAN of a (verified) client certificate. Also how the Istio CA API
/// reads a client certificate's identity.
pub(crate) fn identity_from_certificate(leaf: &[u8]) -> Result<SpiffeId, AuthError> {
    let info = CertificateInfo::parse(leaf).map_err(|e| AuthError::BadCertificate {
        reason: e.to_string(),
    })?;
    let mut spiffe = info.uri_sans.iter().filter(|u| u.starts_with("spiffe://"));
    match (spiffe.next(), spiffe.next()) {
        (Some(uri), None) => {
            uri.parse().map_err(
                |e: meshca_provider::IdentityError| AuthError::BadCertificate {
                    reason: e.to_string(),
                },
            )
        }
        (None, _) => Err(AuthError::BadCertificate {
            reason: "it has no spiffe:// URI SAN".to_owned(),
        }),
        (Some(_), Some(_)) => Err(AuthError::BadCertificate {
            reason: "it has more than one spiffe:// URI SAN".to_owned(),
        }),
    }
}

fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    bearer(metadata.get("authorization")?.to_str().ok()?)
}

/// The token of an `authorization` value `Bearer <token>` (the scheme in any case); `None` for
/// another scheme or an empty token.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The identity a development-mode caller claims in its Envoy node: `NAMESPACE` and
/// `SERVICE_ACCOUNT` metadata, else a `<ns>/<sa>` node id, in `trust_domain`. Public for the
/// fuzz targets (`fuzz/`).
pub fn identity_from_node(
    node: Option<&Node>,
    trust_domain: &TrustDomain,
) -> Result<SpiffeId, AuthError> {
    // The reason quotes what the caller sent: cut, so metadata values of any size stay short
    // in the status and the log.
    let bad = |reason: String| AuthError::BadNode {
        reason: super::throttle::cut(reason),
    };
    let node = node.ok_or_else(|| bad("the first request carries no node".to_owned()))?;
    let field = |key: &str| {
        node.metadata
            .as_ref()
            .and_then(|m| m.fields.get(key))
            .and_then(|v| match &v.kind {
                Some(Kind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            })
    };
    if let (Some(namespace), Some(service_account)) = (field("NAMESPACE"), field("SERVICE_ACCOUNT"))
    {
        return SpiffeId::new(trust_domain.clone(), namespace, service_account)
            .map_err(|e| bad(format!("node metadata: {e}")));
    }
    if node.id.is_empty() {
        return Err(bad(
            "node.id is empty and NAMESPACE/SERVICE_ACCOUNT metadata is absent".to_owned(),
        ));
    }
    SpiffeId::from_short(&node.id, trust_domain).map_err(|e| bad(format!("node.id: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    fn node(id: &str, metadata: &[(&str, &str)]) -> Node {
        let fields = metadata
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    Value {
                        kind: Some(Kind::StringValue((*v).to_owned())),
                    },
                )
            })
            .collect();
        Node {
            id: id.to_owned(),
            metadata: Some(Struct { fields }),
            ..Node::default()
        }
    }

    fn dev() -> Authenticator {
        Authenticator::new(AuthMode::Development, TrustDomain::default())
    }

    #[tokio::test]
    async fn development_mode_reads_node_id_or_metadata() {
        let md = MetadataMap::new();
        let from_id = dev()
            .authenticate(None, &md, Some(&node("ns/client", &[])))
            .await
            .unwrap();
        assert_eq!(
            from_id.to_string(),
            "spiffe://cluster.local/ns/ns/sa/client"
        );
        let from_metadata = dev()
            .authenticate(
                None,
                &md,
                Some(&node(
                    "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local",
                    &[
                        ("NAMESPACE", "bookstore"),
                        ("SERVICE_ACCOUNT", "bookstore-v2"),
                    ],
                )),
            )
            .await
            .unwrap();
        assert_eq!(from_metadata.short(), "bookstore/bookstore-v2");
        for bad in [
            None,
            Some(node("", &[])),
            Some(node("sidecar~1.2.3.4", &[])),
        ] {
            let err = dev()
                .authenticate(None, &md, bad.as_ref())
                .await
                .unwrap_err();
            assert!(matches!(err, AuthError::BadNode { .. }), "{err:?}");
            assert!(err.to_string().contains("SERVICE_ACCOUNT"));
        }
    }

    #[tokio::test]
    async fn a_huge_metadata_value_is_not_echoed_whole() {
        let huge = "n".repeat(60_000);
        let err = dev()
            .authenticate(
                None,
                &MetadataMap::new(),
                Some(&node(
                    "",
                    &[("NAMESPACE", &huge), ("SERVICE_ACCOUNT", "sa")],
                )),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::BadNode { .. }), "{err:?}");
        assert!(err.to_string().len() < 2048, "{}", err.to_string().len());
    }

    #[tokio::test]
    async fn unix_peer_mode_maps_uids() {
        let mut map = UnixPeerMap::default();
        let id = SpiffeId::from_short("ns/client", &TrustDomain::default()).unwrap();
        map.insert(1000, id.clone());
        let auth = Authenticator::new(AuthMode::UnixPeer(map), TrustDomain::default());
        let md = MetadataMap::new();
        let peer = |uid| PeerInfo {
            transport: PeerTransport::Unix {
                uid: Some(uid),
                gid: None,
                pid: None,
            },
            certificates: None,
            activity: None,
        };
        assert_eq!(
            auth.authenticate(Some(&peer(1000)), &md, None)
                .await
                .unwrap(),
            id
        );
        assert!(matches!(
            auth.authenticate(Some(&peer(1001)), &md, None).await,
            Err(AuthError::UnknownUid { uid: 1001 })
        ));
        let tcp = PeerInfo {
            transport: PeerTransport::Tcp { remote: None },
            certificates: None,
            activity: None,
        };
        assert!(matches!(
            auth.authenticate(Some(&tcp), &md, None).await,
            Err(AuthError::NoCredential { .. })
        ));
    }

    #[test]
    fn only_the_served_trust_domain_is_accepted() {
        let served = TrustDomain::default();
        let own = SpiffeId::from_short("ns/client", &served).unwrap();
        assert!(check_trust_domain(&own, &served).is_ok());
        let other = TrustDomain::new("other.example").unwrap();
        let foreign = SpiffeId::new(other, "ns", "client").unwrap();
        let err = check_trust_domain(&foreign, &served).unwrap_err();
        assert!(
            matches!(err, AuthError::ForeignTrustDomain { .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("other.example") && message.contains("cluster.local"),
            "{message}"
        );
    }

    struct Fixed;

    #[async_trait]
    impl TokenAuthenticator for Fixed {
        async fn authenticate(&self, token: &str) -> Result<SpiffeId, TokenError> {
            if token == "good" {
                Ok(SpiffeId::from_short("ns/client", &TrustDomain::default()).unwrap())
            } else {
                Err(TokenError::Rejected {
                    reason: "unknown token".to_owned(),
                })
            }
        }
    }

    #[tokio::test]
    async fn token_mode_reads_bearer_metadata() {
        let auth = Authenticator::new(AuthMode::Token(Arc::new(Fixed)), TrustDomain::default());
        let with = |value: &str| {
            let mut md = MetadataMap::new();
            md.insert("authorization", value.parse().unwrap());
            md
        };
        assert_eq!(
            auth.authenticate(None, &with("Bearer good"), None)
                .await
                .unwrap()
                .short(),
            "ns/client"
        );
        assert!(matches!(
            auth.authenticate(None, &with("Bearer bad"), None).await,
            Err(AuthError::Token(TokenError::Rejected { .. }))
        ));
        for missing in ["Basic good", "Bearer ", "good"] {
            assert!(matches!(
                auth.authenticate(None, &with(missing), None).await,
                Err(AuthError::NoCredential { .. })
            ));
        }
        assert!(matches!(
            auth.authenticate(None, &MetadataMap::new(), None).await,
            Err(AuthError::NoCredential { .. })
        ));
    }
}
