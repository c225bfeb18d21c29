//! What a managed Secret must prove before a cron pass renews it: that an authorised issuance
//! already granted it what its annotations ask for ([`check_proof`]).

use std::time::{Duration, SystemTime};

use meshca_provider::{CertificateChain, LeafKey, LeafSpec, TrustBundle};
use zeroize::Zeroizing;

use crate::kubernetes::managed_secret::{
    CERTIFICATE_KEY, DNS_ANNOTATION, IDENTITY_ANNOTATION, PRIVATE_KEY_KEY,
};

/// Why a managed Secret's `tls.crt` and `tls.key` do not prove that what its annotations ask
/// for was granted to it. Never carries Secret data; names from the certificate are shown
/// with `Debug` (control characters escaped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// `tls.crt` or `tls.key` is absent.
    #[error("the Secret has no {key}")]
    Missing {
        /// The data key.
        key: &'static str,
    },
    /// `tls.crt` or `tls.key` cannot be read.
    #[error("{key} is unreadable ({reason})")]
    Unreadable {
        /// The data key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// The chain does not verify up to a root of the provider's trust bundle.
    #[error(
        "the certificate in tls.crt does not chain to a root of the trust bundle meshca serves \
         ({reason})"
    )]
    Untrusted {
        /// webpki's reason.
        reason: String,
    },
    /// The leaf's URI SANs are not the annotated identity.
    #[error(
        "its {IDENTITY_ANNOTATION} annotation asks for URI SANs {wanted:?} but the certificate \
         in tls.crt holds URI SANs {held:?}"
    )]
    OtherIdentity {
        /// What a renewal would ask for.
        wanted: Vec<String>,
        /// What the certificate holds.
        held: Vec<String>,
    },
    /// The leaf's DNS SANs are not the annotated DNS names.
    #[error(
        "its {DNS_ANNOTATION} annotation asks for DNS names {wanted:?} but the certificate in \
         tls.crt holds DNS names {held:?}"
    )]
    OtherNames {
        /// What a renewal would ask for.
        wanted: Vec<String>,
        /// What the certificate holds.
        held: Vec<String>,
    },
    /// `tls.key` is not the leaf's private key.
    #[error("tls.key is not the private key of the certificate in tls.crt")]
    KeyMismatch,
}

/// Checks that a managed Secret's `tls.crt` and `tls.key` prove an authorised issuance of
/// what `spec` (the renewal's request) asks for: the chain verifies up to a root of `bundle`
/// (webpki: signatures, validity, key usage); its leaf's SANs are exactly `spec`'s (URI SAN the
/// SPIFFE ID or none, DNS SANs the same set in any order and case); `tls.key` is the leaf's
/// private key. An expired leaf is verified as of one second before its NotAfter, so only time
/// is forgiven.
pub fn check_proof(
    certificate_pem: Option<&[u8]>,
    key_pem: Option<&[u8]>,
    spec: &LeafSpec,
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<(), ProofError> {
    let unreadable = |key: &'static str, reason: String| ProofError::Unreadable { key, reason };
    let text = |key: &'static str, pem: Option<&[u8]>| {
        let pem = pem.ok_or(ProofError::Missing { key })?;
        std::str::from_utf8(pem)
            .map(str::to_owned)
            .map_err(|_| unreadable(key, "not PEM text".to_owned()))
    };
    let chain = CertificateChain::from_pem(&text(CERTIFICATE_KEY, certificate_pem)?)
        .map_err(|e| unreadable(CERTIFICATE_KEY, format!("not a PEM chain: {e}")))?;
    let leaf = chain.leaf_info().map_err(|e| {
        unreadable(
            CERTIFICATE_KEY,
            format!("its first certificate cannot be parsed: {e}"),
        )
    })?;
    let at = if now >= leaf.not_after {
        leaf.not_after
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(leaf.not_after)
    } else {
        now
    };
    meshca_provider::verify_chain(&chain, bundle, at).map_err(|e| ProofError::Untrusted {
        reason: e.to_string(),
    })?;
    let wanted: Vec<String> = spec
        .spiffe_id
        .iter()
        .map(|id| id.as_uri().to_owned())
        .collect();
    if leaf.uri_sans != wanted {
        return Err(ProofError::OtherIdentity {
            wanted,
            held: leaf.uri_sans.clone(),
        });
    }
    let wanted: Vec<String> = spec
        .dns_names
        .iter()
        .map(|n| n.as_str().to_owned())
        .collect();
    let held = &leaf.dns_sans;
    let has = |names: &[String], name: &str| names.iter().any(|n| n.eq_ignore_ascii_case(name));
    if !(held.iter().all(|n| has(&wanted, n)) && wanted.iter().all(|n| has(held, n))) {
        return Err(ProofError::OtherNames {
            wanted,
            held: held.clone(),
        });
    }
    // LeafKey reads the key with ring, which refuses a PKCS#8 document whose public half does
    // not belong to its private half; so a matching public half proves possession.
    let key = LeafKey::from_pem(&Zeroizing::new(text(PRIVATE_KEY_KEY, key_pem)?))
        .map_err(|e| unreadable(PRIVATE_KEY_KEY, e.to_string()))?;
    if key.public_key() != leaf.public_key.as_slice() {
        return Err(ProofError::KeyMismatch);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    /// A root valid from `t(0)` to `t(until)` (same subject for every call: only the key tells
    /// two roots apart).
    fn root(
        until: u64,
    ) -> (
        rcgen::Issuer<'static, rcgen::KeyPair>,
        rustls_pki_types::CertificateDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "meshca root");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        params.not_before = time::OffsetDateTime::from(t(0));
        params.not_after = time::OffsetDateTime::from(t(until));
        let der = params.self_signed(&key).unwrap().der().clone();
        (rcgen::Issuer::new(params, key), der)
    }

    /// A leaf for `spec` signed by `issuer`, valid from `t(0)` for an hour: (chain PEM, key PEM).
    fn leaf_pem(
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
        spec: &LeafSpec,
    ) -> (String, zeroize::Zeroizing<String>) {
        let key = LeafKey::generate(meshca_provider::KeyType::P256).unwrap();
        let names: Vec<String> = spec.dns_names.iter().map(ToString::to_string).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        if let Some(id) = &spec.spiffe_id {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(id.to_string().try_into().unwrap()));
        }
        params.not_before = time::OffsetDateTime::from(t(0));
        params.not_after = time::OffsetDateTime::from(t(3600));
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.pem(), key.private_key_pem())
    }

    fn web_spec() -> LeafSpec {
        let id = meshca_provider::SpiffeId::from_short(
            "shop/web",
            &meshca_provider::TrustDomain::default(),
        )
        .unwrap();
        LeafSpec::workload(&id, &["web.example.com".parse().unwrap()], HOUR)
    }

    /// Only time is forgiven: an expired leaf with its key is accepted under the root that
    /// signed it, and refused under a lookalike root (same subject, another key).
    #[test]
    fn an_expired_certificate_proves_its_grant_only_time_is_forgiven() {
        const YEAR: u64 = 365 * 24 * 3600;
        let (issuer, root_der) = root(YEAR);
        let (_, lookalike) = root(YEAR);
        let spec = web_spec();
        let (crt, key) = leaf_pem(&issuer, &spec);
        let (crt, key) = (Some(crt.as_bytes()), Some(key.as_bytes()));
        let bundle = TrustBundle::new(vec![root_der]);
        for now in [t(60), t(3600), t(10 * 24 * 3600), t(2 * YEAR)] {
            check_proof(crt, key, &spec, &bundle, now).unwrap();
        }
        let wrong = TrustBundle::new(vec![lookalike]);
        let error = check_proof(crt, key, &spec, &wrong, t(60)).unwrap_err();
        assert!(matches!(error, ProofError::Untrusted { .. }), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("the certificate in tls.crt does not chain to a root"),
            "{error}"
        );
    }

    /// The identity and names on record must be exactly the certificate's.
    #[test]
    fn the_names_on_record_must_be_the_certificates() {
        let (issuer, root_der) = root(24 * 3600);
        let bundle = TrustBundle::new(vec![root_der]);
        let spec = web_spec();
        let (crt, key) = leaf_pem(&issuer, &spec);
        let (crt, key) = (Some(crt.as_bytes()), Some(key.as_bytes()));
        let other = meshca_provider::SpiffeId::from_short(
            "payments/payments",
            &meshca_provider::TrustDomain::default(),
        )
        .unwrap();
        let asked = LeafSpec::workload(&other, &spec.dns_names, HOUR);
        let error = check_proof(crt, key, &asked, &bundle, t(60)).unwrap_err();
        assert!(matches!(error, ProofError::OtherIdentity { .. }), "{error}");
        // Fewer names than the certificate holds is not the same grant either.
        let id = spec.spiffe_id.clone().unwrap();
        let fewer = LeafSpec::workload(&id, &[], HOUR);
        let error = check_proof(crt, key, &fewer, &bundle, t(60)).unwrap_err();
        assert!(matches!(error, ProofError::OtherNames { .. }), "{error}");
        // Case does not matter.
        let upper = LeafSpec::workload(&id, &["WEB.example.com".parse().unwrap()], HOUR);
        check_proof(crt, key, &upper, &bundle, t(60)).unwrap();
        let error = check_proof(crt, Some(b"junk"), &spec, &bundle, t(60)).unwrap_err();
        assert!(
            matches!(error, ProofError::Unreadable { key: "tls.key", .. }),
            "{error}"
        );
    }
}
