//! Checks a chain returned by a provider before anyone is allowed to see it.
//!
//! A provider is trusted to sign, not to be right: a misconfigured Vault role, a CA that was
//! swapped behind our back or a bug in a backend must not turn into broken mTLS across the mesh.
//! Every check here mirrors what a peer proxy will check, so a chain that passes will be
//! accepted, and one that fails is kept away from subscribers.

use std::time::{Duration, SystemTime};

use meshca_provider::{
    CertificateChain, CertificateInfo, CertificateProvider, Clock, IssueRequest, LeafSpec,
    SpiffeId, TrustBundle,
};

use super::IssueError;
use super::trust::Trust;

/// Validates `chain` as the answer to `request` against the trust bundle. A chain that does
/// not lead to a root of the bundle gets one more chance: the provider may have a root not read
/// yet (first use, or a rotation that began since the last refresh), so the bundle is re-read
/// once and the chain checked again if that changed it.
pub(super) async fn validate_issued(
    chain: &CertificateChain,
    request: &IssueRequest<'_>,
    provider: &dyn CertificateProvider,
    trust: &Trust,
    clock: &dyn Clock,
    timeout: Duration,
) -> Result<CertificateInfo, IssueError> {
    let check = ChainCheck::for_provider(provider.capabilities());
    let (spec, key) = (request.spec, request.public_key());
    let bundle = trust.current();
    let mut outcome = validate(chain, &bundle, spec, key, clock.now(), check);
    if let Err(rejection) = &outcome
        && rejection.untrusted
    {
        if let Err(e) = trust.refresh(provider, timeout).await {
            tracing::warn!(error = %e, "could not re-read the trust bundle");
        }
        // Validate again if the bundle is not the one just used: this refresh, or one that
        // ran concurrently (the cache worker's first read at start), may have changed it.
        let fresh = trust.current();
        if fresh != bundle {
            outcome = validate(chain, &fresh, spec, key, clock.now(), check);
        }
    }
    outcome.map_err(|rejection| IssueError::Invalid {
        provider: provider.name(),
        reason: rejection.reason,
    })
}

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

/// How a chain is tied to the trust bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChainCheck {
    /// Full path validation with rustls-webpki: signatures, validity, key usage.
    Signatures,
    /// Issuer names and key identifiers only, for providers that sign in this process
    /// ([`meshca_provider::Capabilities::signs_in_process`]).
    Links,
}

impl ChainCheck {
    /// The check a provider's chains get.
    pub(crate) fn for_provider(capabilities: &meshca_provider::Capabilities) -> Self {
        if capabilities.signs_in_process {
            Self::Links
        } else {
            Self::Signatures
        }
    }
}

/// Validates `chain` (leaf first) as the answer to a request for `spec` and the public key
/// `key` (the SubjectPublicKeyInfo's BIT STRING contents: meshca's key, or the one a caller's
/// CSR carries), at `now`. Returns the parsed leaf.
pub(crate) fn validate(
    chain: &CertificateChain,
    bundle: &TrustBundle,
    spec: &LeafSpec,
    key: &[u8],
    now: SystemTime,
    how: ChainCheck,
) -> Result<CertificateInfo, Rejection> {
    let info = chain
        .leaf_info()
        .map_err(|e| Rejection::new(format!("the leaf certificate is unreadable: {e}")))?;
    check_validity(&info, now)?;
    check_names(&info, spec)?;
    check_leaf(&info, key)?;
    match how {
        ChainCheck::Signatures => check_chain(chain, bundle, now)?,
        ChainCheck::Links => check_links(&info, chain, bundle)?,
    }
    Ok(info)
}

fn check_validity(info: &CertificateInfo, now: SystemTime) -> Result<(), Rejection> {
    if info.not_after <= now {
        return Err(Rejection::new(format!(
            "the certificate expired at {} (NotAfter is not in the future); check the \
             provider's clock and the lifetime it grants",
            crate::cli::inspect::rfc3339(info.not_after)
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
    let uris_match = match &spec.spiffe_id {
        Some(id) => matches!(info.uri_sans.as_slice(), [uri] if uri == id.as_uri()),
        None => info.uri_sans.is_empty(),
    };
    if !uris_match {
        let expected: Vec<&str> = spec.spiffe_id.iter().map(SpiffeId::as_uri).collect();
        return Err(Rejection::new(format!(
            "URI SANs are {:?} but the request was for {:?}; the provider must put exactly the \
             SPIFFE ID in the certificate",
            info.uri_sans, expected
        )));
    }
    // The same set of names, in any order and case (a handful each: no need for a set).
    let got = &info.dns_sans;
    let wanted = &spec.dns_names;
    let has = |names: &[String], name: &str| names.iter().any(|n| n.eq_ignore_ascii_case(name));
    let asked = |name: &str| wanted.iter().any(|n| n.eq_ignore_ascii_case(name));
    if !(got.iter().all(|name| asked(name)) && wanted.iter().all(|name| has(got, name))) {
        return Err(Rejection::new(format!(
            "DNS SANs are {:?} but the request was for {:?}; check the provider's allowed \
             domains and whether it adds names of its own",
            info.dns_sans, spec.dns_names
        )));
    }
    Ok(())
}

/// The leaf certifies the requested key, and may be used for both ends of mTLS.
fn check_leaf(info: &CertificateInfo, key: &[u8]) -> Result<(), Rejection> {
    if info.public_key != key {
        return Err(Rejection::new(
            "the certificate is for a different public key than the one meshca sent; the \
             provider must sign the key from the request",
        ));
    }
    match info.extended_key_usage {
        None => Ok(()),
        Some(eku) if eku.any || (eku.server_auth && eku.client_auth) => Ok(()),
        Some(_) => Err(Rejection::new(
            "extended key usage lacks serverAuth or clientAuth, both needed for mesh mTLS; \
             allow both in the provider's role",
        )),
    }
}

/// For a provider that signs in this process: each certificate names the next as its issuer
/// (subject and key identifier), ending at a root of the bundle. The signatures are the
/// provider's own, made with a key checked against its certificate when it was loaded.
fn check_links(
    leaf: &CertificateInfo,
    chain: &CertificateChain,
    bundle: &TrustBundle,
) -> Result<(), Rejection> {
    let unreadable =
        |e: meshca_provider::X509Error| Rejection::new(format!("the chain is unreadable: {e}"));
    let issued_by = |child: &CertificateInfo, parent: &CertificateInfo| {
        child.issuer == parent.subject
            && child.authority_key_id.is_some()
            && child.authority_key_id == parent.subject_key_id
    };
    // The last certificate checked so far; `None` while that is still the leaf.
    let mut last_parent: Option<CertificateInfo> = None;
    for intermediate in chain.intermediates() {
        let parent = CertificateInfo::parse(intermediate).map_err(unreadable)?;
        let current = last_parent.as_ref().unwrap_or(leaf);
        if !issued_by(current, &parent) || !parent.is_ca {
            return Err(Rejection::new(format!(
                "the chain is out of order: {:?} is not issued by {:?}",
                current.subject, parent.subject
            )));
        }
        last_parent = Some(parent);
    }
    let current = last_parent.as_ref().unwrap_or(leaf);
    let by_root = bundle.issuer_names().iter().any(|root| {
        current.issuer == root.subject
            && current.authority_key_id.is_some()
            && current.authority_key_id == root.key_id
    });
    if by_root {
        return Ok(());
    }
    Err(Rejection {
        reason: format!(
            "the chain ends at {:?}, which is not issued by a root of the trust bundle",
            current.issuer
        ),
        untrusted: true,
    })
}

fn check_chain(
    chain: &CertificateChain,
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<(), Rejection> {
    use meshca_provider::ChainError;
    meshca_provider::verify_chain(chain, bundle, now).map_err(|e| match e {
        ChainError::NoUsableRoot => Rejection {
            reason: "the provider's trust bundle holds no usable root, so the certificate cannot \
                     be verified; check the provider's CA"
                .to_owned(),
            untrusted: true,
        },
        ChainError::NotVerified {
            reason,
            unknown_issuer,
        } => Rejection {
            untrusted: unknown_issuer,
            reason: format!(
                "the chain does not verify against the provider's trust bundle ({reason}); check \
                 that the provider returns its intermediates and that the bundle holds its root"
            ),
        },
        other => Rejection::new(other.to_string()),
    })
}

#[cfg(test)]
mod link_tests {
    use std::time::Duration;

    use meshca_provider::{KeyType, LeafKey, SpiffeId, TrustDomain};
    use rustls_pki_types::CertificateDer;

    use super::*;

    /// A CA named `name` (both CAs share a subject to show the key identifier matters).
    fn ca(
        name: &str,
    ) -> (
        rcgen::Issuer<'static, rcgen::KeyPair>,
        CertificateDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        (rcgen::Issuer::new(params, key), der)
    }

    fn leaf(
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
        key: &LeafKey,
        spec: &LeafSpec,
    ) -> CertificateChain {
        let names: Vec<String> = spec.dns_names.iter().map(ToString::to_string).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            spec.spiffe_id
                .as_ref()
                .unwrap()
                .to_string()
                .try_into()
                .unwrap(),
        ));
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(key, issuer).unwrap();
        CertificateChain::new(vec![cert.der().clone()]).unwrap()
    }

    #[test]
    fn links_accept_the_issuing_root_and_refuse_a_lookalike() {
        let id = SpiffeId::from_short("a/b", &TrustDomain::default()).unwrap();
        let spec = LeafSpec::workload(&id, &[], Duration::from_secs(3600));
        let key = LeafKey::generate(KeyType::P256).unwrap();
        let (issuer, root) = ca("same name");
        let (_, lookalike) = ca("same name");
        let chain = leaf(&issuer, &key, &spec);
        let now = SystemTime::now();

        for how in [ChainCheck::Links, ChainCheck::Signatures] {
            let good = TrustBundle::new(vec![root.clone()]);
            validate(&chain, &good, &spec, key.public_key(), now, how).unwrap();
            let wrong = TrustBundle::new(vec![lookalike.clone()]);
            let rejection =
                validate(&chain, &wrong, &spec, key.public_key(), now, how).unwrap_err();
            // webpki sees a bad signature, the link check a key identifier that matches no root.
            assert!(
                rejection.untrusted || rejection.reason.contains("does not verify"),
                "{how:?}: {rejection:?}"
            );
        }
        // A leaf for another key is refused whatever the chain check.
        let other = LeafKey::generate(KeyType::P256).unwrap();
        let good = TrustBundle::new(vec![root]);
        let rejection = validate(
            &chain,
            &good,
            &spec,
            other.public_key(),
            now,
            ChainCheck::Links,
        )
        .unwrap_err();
        assert!(
            rejection.reason.contains("different public key"),
            "{rejection:?}"
        );
    }
}
