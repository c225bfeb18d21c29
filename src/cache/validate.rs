//! Checks a chain returned by a provider before anyone is allowed to see it.
//!
//! A provider is trusted to sign, not to be right: a misconfigured Vault role, a CA that was
//! swapped behind our back or a bug in a backend must not turn into broken mTLS across the mesh.
//! Every check here mirrors what a peer proxy will check, so a chain that passes will be
//! accepted, and one that fails is kept away from subscribers.

use std::collections::BTreeSet;
use std::time::SystemTime;

use meshca_provider::{CertificateChain, CertificateInfo, LeafKey, LeafSpec, TrustBundle};
use rustls_pki_types::UnixTime;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// What was wrong, for the operator.
    pub reason: String,
    /// The chain did not lead to a root in the bundle: a fresher bundle may accept it.
    pub untrusted: bool,
}

impl Rejection {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            untrusted: false,
        }
    }
}

/// Validates `chain` (leaf first) as the answer to a request for `spec` with `key`, at `now`.
/// Returns the parsed leaf.
pub(crate) fn validate(
    chain: &CertificateChain,
    bundle: &TrustBundle,
    spec: &LeafSpec,
    key: &LeafKey,
    now: SystemTime,
) -> Result<CertificateInfo, Rejection> {
    let info = chain
        .leaf_info()
        .map_err(|e| Rejection::new(format!("the leaf certificate is unreadable: {e}")))?;
    check_validity(&info, now)?;
    check_names(&info, spec)?;
    check_leaf(chain, key)?;
    check_chain(chain, bundle, now)?;
    Ok(info)
}

fn check_validity(info: &CertificateInfo, now: SystemTime) -> Result<(), Rejection> {
    if info.not_after <= now {
        return Err(Rejection::new(format!(
            "the certificate expired at {} (NotAfter is not in the future); check the \
             provider's clock and the lifetime it grants",
            super::rfc3339(info.not_after)
        )));
    }
    if info.is_ca {
        return Err(Rejection::new(
            "the leaf is a CA certificate (basicConstraints CA:true); the provider's role must \
             issue end-entity certificates",
        ));
    }
    Ok(())
}

fn check_names(info: &CertificateInfo, spec: &LeafSpec) -> Result<(), Rejection> {
    let expected_uris: Vec<String> = spec.spiffe_id.iter().map(ToString::to_string).collect();
    if info.uri_sans != expected_uris {
        return Err(Rejection::new(format!(
            "URI SANs are {:?} but the request was for {:?}; the provider must put exactly the \
             SPIFFE ID in the certificate",
            info.uri_sans, expected_uris
        )));
    }
    let got: BTreeSet<&str> = info.dns_sans.iter().map(String::as_str).collect();
    let wanted: BTreeSet<&str> = spec.dns_names.iter().map(String::as_str).collect();
    if got != wanted {
        return Err(Rejection::new(format!(
            "DNS SANs are {:?} but the request was for {:?}; check the provider's allowed \
             domains and whether it adds names of its own",
            info.dns_sans, spec.dns_names
        )));
    }
    Ok(())
}

/// The leaf certifies our key, and may be used for both ends of mTLS.
fn check_leaf(chain: &CertificateChain, key: &LeafKey) -> Result<(), Rejection> {
    let unreadable = |e: String| Rejection::new(format!("the leaf certificate is unreadable: {e}"));
    let (_, leaf) =
        X509Certificate::from_der(chain.leaf()).map_err(|e| unreadable(e.to_string()))?;
    let spki = key.public_key_spki();
    let (_, ours) = SubjectPublicKeyInfo::from_der(&spki)
        .map_err(|e| Rejection::new(format!("meshca could not encode its own public key: {e}")))?;
    if leaf.public_key().subject_public_key.data != ours.subject_public_key.data {
        return Err(Rejection::new(
            "the certificate is for a different public key than the one meshca sent; the \
             provider must sign the key from the request",
        ));
    }
    match leaf.extended_key_usage() {
        Ok(None) => Ok(()),
        Ok(Some(eku)) if eku.value.any || (eku.value.server_auth && eku.value.client_auth) => {
            Ok(())
        }
        Ok(Some(_)) => Err(Rejection::new(
            "extended key usage lacks serverAuth or clientAuth, both needed for mesh mTLS; \
             allow both in the provider's role",
        )),
        Err(e) => Err(unreadable(e.to_string())),
    }
}

fn check_chain(
    chain: &CertificateChain,
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<(), Rejection> {
    let anchors: Vec<_> = bundle
        .roots()
        .iter()
        .filter_map(|root| webpki::anchor_from_trusted_cert(root).ok())
        .collect();
    if anchors.is_empty() {
        return Err(Rejection {
            reason: "the provider's trust bundle holds no usable root, so the certificate cannot \
                     be verified; check the provider's CA"
                .to_owned(),
            untrusted: true,
        });
    }
    let leaf = webpki::EndEntityCert::try_from(chain.leaf())
        .map_err(|e| Rejection::new(format!("the leaf certificate is unreadable: {e}")))?;
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| Rejection::new("the system clock is before 1970"))?;
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
    .map_err(|e| Rejection {
        untrusted: matches!(e, webpki::Error::UnknownIssuer),
        reason: format!(
            "the chain does not verify against the provider's trust bundle ({e}); check that \
             the provider returns its intermediates and that the bundle holds its root"
        ),
    })
}
