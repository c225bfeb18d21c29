//! Who is calling the Istio CA API, and the seam that decides whether a caller may ask for
//! another identity's certificate (node-agent impersonation).

use async_trait::async_trait;
use meshca_provider::SpiffeId;

/// The pod a token was bound to: defined with the token authenticator that reads it
/// (`crate::sds::auth`), which must not depend on this module.
pub use crate::sds::PodBinding;

/// How a caller proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallerKind {
    /// A client certificate issued by meshca (istio-agent renewing).
    ClientCertificate,
    /// A Kubernetes service-account token checked with a TokenReview.
    Token,
}

impl CallerKind {
    /// Lowercase name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientCertificate => "client-certificate",
            Self::Token => "token",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Its identity, in meshca's trust domain.
    pub identity: SpiffeId,
    /// How it proved it.
    pub kind: CallerKind,
    /// The pod its token is bound to, if any.
    pub pod: Option<PodBinding>,
}

/// Why a caller may not have another identity's certificate; the reason reaches the caller in a
/// PERMISSION_DENIED status, so it names what to fix and holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{caller} may not ask for a certificate of {target}: {reason}")]
pub struct ImpersonationDenied {
    /// The caller's identity.
    pub caller: String,
    /// The identity asked for.
    pub target: String,
    /// Why not, and what to fix.
    pub reason: String,
}

/// Decides whether `caller` may have a certificate for `target` (a node agent asking for a
/// workload on its node).
///
/// Obligations: MUST refuse unless the caller is a configured trusted node agent AND a pod
/// running as `target` is scheduled on the caller's own node, as the API server reports it now;
/// MUST NOT trust anything the caller says about its pod or node beyond what the TokenReview
/// returned.
#[async_trait]
pub trait ImpersonationCheck: Send + Sync + 'static {
    /// `Ok` when allowed; otherwise why not.
    async fn authorize(
        &self,
        caller: &Caller,
        target: &SpiffeId,
    ) -> Result<(), ImpersonationDenied>;
}

/// Nobody may impersonate (no node agents configured, or no Kubernetes API to check pods with).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoImpersonation;

#[async_trait]
impl ImpersonationCheck for NoImpersonation {
    async fn authorize(
        &self,
        caller: &Caller,
        target: &SpiffeId,
    ) -> Result<(), ImpersonationDenied> {
        Err(ImpersonationDenied {
            caller: caller.identity.to_string(),
            target: target.to_string(),
            reason: "no node agents are trusted to impersonate (istio.trustedNodeAgents)"
                .to_owned(),
        })
    }
}
