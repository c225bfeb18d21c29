//! Full path validation of a chain against a trust bundle with rustls-webpki (feature
//! `verify`): one implementation shared by the daemon's cache and the providers that check
//! what a remote backend returned.

use std::time::SystemTime;

use rustls_pki_types::UnixTime;

use crate::{CertificateChain, TrustBundle};

/// Why a chain did not verify against a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// No root of the bundle can be used as a trust anchor (empty or unreadable).
    #[error("the trust bundle holds no usable root")]
    NoUsableRoot,
    /// The leaf cannot be read as an end-entity certificate.
    #[error("the leaf certificate is unreadable: {reason}")]
    UnreadableLeaf {
        /// webpki's reason.
        reason: String,
    },
    /// The time to verify at is before 1970.
    #[error("the system clock is before 1970")]
    ClockBeforeEpoch,
    /// Path validation failed: a signature, a validity period, a key usage, an unknown issuer.
    #[error("{reason}")]
    NotVerified {
        /// webpki's reason.
        reason: String,
        /// No path leads to a root of the bundle (webpki's `UnknownIssuer`): a fresher bundle
        /// may accept the chain.
        unknown_issuer: bool,
    },
}

/// Verifies `chain` (leaf first, intermediates after) up to a root of `bundle` at `now`, for
/// TLS server authentication: signatures, validity periods, basic constraints and extended key
/// usage.
pub fn verify_chain(
    chain: &CertificateChain,
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<(), ChainError> {
    let anchors: Vec<_> = bundle
        .roots()
        .iter()
        .filter_map(|root| webpki::anchor_from_trusted_cert(root).ok())
        .collect();
    if anchors.is_empty() {
        return Err(ChainError::NoUsableRoot);
    }
    let leaf =
        webpki::EndEntityCert::try_from(chain.leaf()).map_err(|e| ChainError::UnreadableLeaf {
            reason: e.to_string(),
        })?;
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| ChainError::ClockBeforeEpoch)?;
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        chain.intermediates(),
        UnixTime::since_unix_epoch(since_epoch),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| ChainError::NotVerified {
        unknown_issuer: matches!(e, webpki::Error::UnknownIssuer),
        reason: e.to_string(),
    })
}
