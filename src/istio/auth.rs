//! Who is calling the Istio CA API, decided from the connection and the request headers before
//! the request body is read: (a) a client certificate that verified against the trust bundle
//! during the TLS handshake — its SPIFFE URI SAN; else (b) a Kubernetes service-account token
//! in `authorization: Bearer <token>`, checked by a [`TokenCallers`] (a TokenReview); else
//! UNAUTHENTICATED, saying what to send. Either way the identity must be in the served trust
//! domain.

use std::sync::Arc;

use async_trait::async_trait;
use meshca_provider::TrustDomain;
use tonic::codegen::http;

use super::caller::{Caller, CallerKind};
use crate::sds::auth::{bearer, identity_from_certificate};
use crate::sds::{AuthError, PeerInfo, TokenAuthenticator, TokenError, check_trust_domain};

/// Turns a service-account token into a [`Caller`]: its identity and, when the token is bound
/// to a pod, that pod (what node-agent impersonation checks).
///
/// Obligations: as [`TokenAuthenticator`]: MUST verify the token with the API server (signature,
/// expiry, audience) and MUST NOT log the token or put it into errors; the pod binding MUST be
/// what the API server reported for the token, never what the caller says.
#[async_trait]
pub trait TokenCallers: Send + Sync + 'static {
    /// The caller the token belongs to, with [`CallerKind::Token`].
    async fn caller(&self, token: &str) -> Result<Caller, TokenError>;
}

/// Callers from a [`TokenAuthenticator`]: its identity and, when the authenticator reports one
/// (a TokenReview of a projected token), the pod the token is bound to; without one the caller
/// can never impersonate.
pub(super) struct IdentityTokens(pub(super) Arc<dyn TokenAuthenticator>);

#[async_trait]
impl TokenCallers for IdentityTokens {
    async fn caller(&self, token: &str) -> Result<Caller, TokenError> {
        let (identity, pod) = self.0.authenticate_caller(token).await?;
        Ok(Caller {
            identity,
            kind: CallerKind::Token,
            pod,
        })
    }
}

/// Why a caller could not be authenticated.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum IstioAuthError {
    /// No client certificate and no token.
    #[error("no credential: {hint}")]
    NoCredential {
        /// What the client must send.
        hint: &'static str,
    },
    /// A token was sent but this listener cannot check tokens.
    #[error(
        "a service-account token was sent, but this meshca has no Kubernetes API to check it \
         with: connect with a client certificate issued by meshca"
    )]
    TokensUnsupported,
    /// The client certificate, the token or the identity was refused.
    #[error(transparent)]
    Refused(#[from] AuthError),
}

impl IstioAuthError {
    /// The gRPC status: UNAVAILABLE when a token could not be checked now (the caller should
    /// retry), UNAUTHENTICATED otherwise.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::Refused(AuthError::Token(TokenError::Unavailable { .. })) => {
                tonic::Code::Unavailable
            }
            _ => tonic::Code::Unauthenticated,
        }
    }
}

/// Authenticates callers of one Istio CA listener.
pub(super) struct Authenticator {
    trust_domain: TrustDomain,
    tokens: Option<Arc<dyn TokenCallers>>,
}

impl Authenticator {
    pub(super) fn new(trust_domain: TrustDomain, tokens: Option<Arc<dyn TokenCallers>>) -> Self {
        Self {
            trust_domain,
            tokens,
        }
    }

    /// Whether service-account tokens are checked (a Kubernetes API is configured).
    pub(super) fn accepts_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// The caller, from its verified client certificate (`peer`) or the `authorization`
    /// header; always in the served trust domain.
    pub(super) async fn authenticate(
        &self,
        peer: Option<&PeerInfo>,
        headers: &http::HeaderMap,
    ) -> Result<Caller, IstioAuthError> {
        let caller = self.caller(peer, headers).await?;
        check_trust_domain(&caller.identity, &self.trust_domain)?;
        Ok(caller)
    }

    async fn caller(
        &self,
        peer: Option<&PeerInfo>,
        headers: &http::HeaderMap,
    ) -> Result<Caller, IstioAuthError> {
        // The TLS handshake verified the chain against the trust bundle; a client that sent
        // none has no entry here.
        if let Some(leaf) = peer
            .and_then(|p| p.certificates.as_ref())
            .and_then(|chain| chain.first())
        {
            return Ok(Caller {
                identity: identity_from_certificate(leaf)?,
                kind: CallerKind::ClientCertificate,
                pod: None,
            });
        }
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        match (token, &self.tokens) {
            (Some(token), Some(tokens)) => {
                let caller = tokens.caller(token).await.map_err(AuthError::Token)?;
                Ok(caller)
            }
            (Some(_), None) => Err(IstioAuthError::TokensUnsupported),
            (None, Some(_)) => Err(IstioAuthError::NoCredential {
                hint: "connect with a client certificate issued by meshca, or send \
                       `authorization: Bearer <service-account token>` (audience \
                       istio.tokenAudiences)",
            }),
            (None, None) => Err(IstioAuthError::NoCredential {
                hint: "connect with a client certificate issued by meshca (this meshca checks \
                       no service-account tokens: it has no Kubernetes API configured)",
            }),
        }
    }
}
