//! The key a certificate is issued for: one meshca makes, or a caller's, proven by a PKCS#10
//! request whose signature verifies ([`VerifiedCsr::from_der`]) before any backend sees it.

use meshca_provider::{IssueRequest, KeyType, LeafKey, LeafSpec, VerifiedCsr};

use super::IssueError;

/// Where the key to certify comes from.
#[derive(Clone, Copy)]
pub enum KeySource<'a> {
    /// meshca makes a key of this type and hands its private half to whoever asked.
    Generate(KeyType),
    /// A caller's key, from its DER-encoded PKCS#10 request; meshca never holds the private
    /// half. The request is verified (proof of possession) before anything else uses it.
    Csr(&'a [u8]),
}

impl std::fmt::Debug for KeySource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Generate(key_type) => f.debug_tuple("Generate").field(key_type).finish(),
            Self::Csr(der) => write!(f, "Csr({} bytes)", der.len()),
        }
    }
}

/// The key, resolved.
pub(super) enum SubjectKey {
    Generated(LeafKey),
    Caller(VerifiedCsr),
}

impl SubjectKey {
    /// Makes or verifies the key.
    pub(super) async fn resolve(source: KeySource<'_>) -> Result<Self, IssueError> {
        match source {
            KeySource::Generate(key_type) => generate(key_type).await.map(Self::Generated),
            KeySource::Csr(der) => VerifiedCsr::from_der(der)
                .map(Self::Caller)
                .map_err(IssueError::Csr),
        }
    }

    /// The provider request for this key and `spec`.
    pub(super) fn request<'a>(&'a self, spec: &'a LeafSpec) -> IssueRequest<'a> {
        match self {
            Self::Generated(key) => IssueRequest::generated(spec, key),
            Self::Caller(csr) => IssueRequest::for_caller(spec, csr),
        }
    }

    /// The private key, when meshca made it.
    pub(super) fn into_generated(self) -> Option<LeafKey> {
        match self {
            Self::Generated(key) => Some(key),
            Self::Caller(_) => None,
        }
    }
}

/// ECDSA keys take microseconds; RSA keys take up to seconds, so they are made on a blocking
/// thread to keep the runtime responsive.
async fn generate(key_type: KeyType) -> Result<LeafKey, IssueError> {
    if !key_type.is_rsa() {
        return LeafKey::generate(key_type).map_err(IssueError::Key);
    }
    tokio::task::spawn_blocking(move || LeafKey::generate(key_type))
        .await
        .map_err(|e| IssueError::Internal {
            reason: format!("RSA key generation failed: {e}"),
        })?
        .map_err(IssueError::Key)
}
