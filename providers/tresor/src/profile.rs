//! The certificate profile: which fields and extensions a leaf, a root and an intermediate get.
//!
//! Everything here is a pure function from options and a time to rcgen parameters, so the
//! profile can be read in one place and tested without signing anything.

use std::time::{Duration, SystemTime};

#[cfg(test)]
use meshca_provider::{KeyType, LeafSpec};
use rand::RngCore;
#[cfg(test)]
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyIdMethod,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::error::AuthorityError;
use crate::options::{IntermediateOptions, ORGANIZATION, RootOptions};

/// How far CA certificates are back-dated, so that nodes whose clocks run a little slow accept
/// a freshly made root or intermediate.
pub(crate) const CA_BACKDATE: Duration = Duration::from_secs(3600);

/// Serial numbers are 16 random bytes with the top bit cleared: positive, 127 bits of entropy
/// (RFC 5280 allows up to 20 octets; CA/B Forum asks for at least 64 bits).
pub(crate) const SERIAL_LEN: usize = 16;

/// Parameters for a workload or server leaf: the profile's reference definition.
///
/// Issuance writes the same bytes through a per-CA template ([`crate::leaf::LeafTemplate`]),
/// which is tested against these parameters signed by rcgen, byte for byte.
///
/// `not_after` is clamped to `ca_not_after` so that a leaf never outlives the chain that
/// vouches for it (the requested lifetime is advisory). `subject_public_key` is the leaf key's
/// raw public key (the SPKI's BIT STRING contents), for the subject key identifier.
#[cfg(test)]
pub(crate) fn leaf_params(
    spec: &LeafSpec,
    key_type: KeyType,
    subject_public_key: &[u8],
    now: SystemTime,
    clock_skew: Duration,
    ca_not_after: SystemTime,
) -> Result<CertificateParams, AuthorityError> {
    if spec.spiffe_id.is_none() && spec.dns_names.is_empty() {
        return Err(nameless());
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(cn) = &spec.common_name {
        params
            .distinguished_name
            .push(DnType::CommonName, cn.as_str());
    }
    if let Some(id) = &spec.spiffe_id {
        let uri = id.to_string();
        let value = uri.clone().try_into().map_err(|e| name_error(&uri, e))?;
        params.subject_alt_names.push(SanType::URI(value));
    }
    for name in &spec.dns_names {
        let value = name.as_str().try_into().map_err(|e| name_error(name, e))?;
        params.subject_alt_names.push(SanType::DnsName(value));
    }
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = if key_type.is_rsa() {
        vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ]
    } else {
        vec![KeyUsagePurpose::DigitalSignature]
    };
    // ExplicitNoCa writes a critical basicConstraints CA:FALSE and a subjectKeyIdentifier.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(subject_public_key));
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    let (not_before, not_after) = validity(now, clock_skew, spec.lifetime)?;
    params.not_before = not_before;
    params.not_after = not_after.min(to_datetime(ca_not_after)?);
    Ok(params)
}

/// The error for a leaf without any name.
pub(crate) fn nameless() -> AuthorityError {
    AuthorityError::InvalidName {
        name: String::new(),
        reason: "a certificate needs at least one name: a SPIFFE ID or a DNS name".into(),
    }
}

/// Checks that `name` can be written as an IA5String (a SAN), with rcgen's error if not.
pub(crate) fn check_ia5(name: &str) -> Result<(), AuthorityError> {
    if name.is_ascii() {
        return Ok(());
    }
    rcgen::string::Ia5String::try_from(name)
        .map(|_| ())
        .map_err(|e| name_error(name, e))
}

/// The subject key identifier of a key: RFC 7093 §2 method 1, the leftmost 160 bits of the
/// SHA-256 hash of the subjectPublicKey BIT STRING's value (without tag, length and
/// unused-bits octet) — `subject_public_key` is that value ([`LeafKey::public_key`]).
///
/// Set explicitly on every certificate meshca makes: rcgen's default hashes the whole
/// SubjectPublicKeyInfo, which is neither an RFC 5280 §4.2.1.2 nor an RFC 7093 method.
///
/// [`LeafKey::public_key`]: meshca_provider::LeafKey::public_key
pub(crate) fn key_identifier(subject_public_key: &[u8]) -> Vec<u8> {
    let digest = ring::digest::digest(&ring::digest::SHA256, subject_public_key);
    digest.as_ref()[..KEY_ID_LEN].to_vec()
}

/// Length of a key identifier: 160 bits (RFC 7093 §2).
pub(crate) const KEY_ID_LEN: usize = 20;

/// Parameters for a self-signed root over the key whose raw public key is
/// `subject_public_key`.
pub(crate) fn root_params(
    options: &RootOptions,
    subject_public_key: &[u8],
    now: SystemTime,
) -> Result<CertificateParams, AuthorityError> {
    let mut params = ca_params(&options.common_name, options.organization.as_deref())?;
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(subject_public_key));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let (not_before, not_after) = validity(now, CA_BACKDATE, options.lifetime)?;
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

/// Parameters for a per-cluster intermediate, which may sign leaves only (path length 0).
pub(crate) fn intermediate_params(
    options: &IntermediateOptions,
    subject_public_key: &[u8],
    now: SystemTime,
    issuer_not_after: SystemTime,
) -> Result<CertificateParams, AuthorityError> {
    let cluster = options.cluster.trim();
    if cluster.is_empty() || cluster.chars().any(char::is_control) {
        return Err(AuthorityError::InvalidName {
            name: options.cluster.clone(),
            reason: "the cluster name must be non-empty printable text".into(),
        });
    }
    let common_name = format!("meshca intermediate {cluster}");
    let mut params = ca_params(&common_name, Some(ORGANIZATION))?;
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(subject_public_key));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let uri = format!("spiffe://{}", options.trust_domain);
    let value = uri.clone().try_into().map_err(|e| name_error(&uri, e))?;
    params.subject_alt_names.push(SanType::URI(value));
    let (not_before, not_after) = validity(now, CA_BACKDATE, options.lifetime)?;
    params.not_before = not_before;
    params.not_after = not_after.min(to_datetime(issuer_not_after)?);
    Ok(params)
}

fn ca_params(
    common_name: &str,
    organization: Option<&str>,
) -> Result<CertificateParams, AuthorityError> {
    // RFC 5280 ub-common-name.
    if common_name.is_empty() || common_name.chars().count() > 64 {
        return Err(AuthorityError::InvalidName {
            name: common_name.to_owned(),
            reason: "a CA common name must be 1 to 64 characters long".into(),
        });
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(organization) = organization.filter(|o| !o.is_empty()) {
        params
            .distinguished_name
            .push(DnType::OrganizationName, organization);
    }
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    // keyCertSign and cRLSign only (SPIFFE X.509-SVID Appendix A): a CA key signs
    // certificates and CRLs, never a TLS handshake.
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// NotBefore = now − `backdate`, NotAfter = now + `lifetime`, both in whole seconds (X.509's
/// resolution), so that NotAfter − NotBefore is exactly `backdate + lifetime`.
pub(crate) fn validity(
    now: SystemTime,
    backdate: Duration,
    lifetime: Duration,
) -> Result<(OffsetDateTime, OffsetDateTime), AuthorityError> {
    let now = to_datetime(now)?;
    let seconds = |d: Duration| {
        i64::try_from(d.as_secs())
            .map(time::Duration::seconds)
            .map_err(|_| AuthorityError::InvalidValidity {
                reason: format!("{} is too long", meshca_provider::format_duration(d)),
            })
    };
    let out_of_range = || AuthorityError::InvalidValidity {
        reason: format!(
            "a lifetime of {} ends beyond the year 9999",
            meshca_provider::format_duration(lifetime)
        ),
    };
    let not_before = now
        .checked_sub(seconds(backdate)?)
        .ok_or_else(out_of_range)?;
    let not_after = now
        .checked_add(seconds(lifetime)?)
        .ok_or_else(out_of_range)?;
    if not_after.year() > 9999 {
        return Err(out_of_range());
    }
    Ok((not_before, not_after))
}

/// A time as rcgen wants it, truncated to whole seconds.
pub(crate) fn to_datetime(t: SystemTime) -> Result<OffsetDateTime, AuthorityError> {
    let seconds = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .ok_or_else(|| AuthorityError::InvalidValidity {
            reason: "the clock reads a time before 1970".into(),
        })?;
    OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| AuthorityError::InvalidValidity {
        reason: e.to_string(),
    })
}

fn random_serial() -> Result<SerialNumber, AuthorityError> {
    Ok(SerialNumber::from_slice(&serial_bytes()))
}

/// A random positive serial of [`SERIAL_LEN`] bytes, never zero (RFC 5280 §4.1.2.2).
///
/// From the thread's CSPRNG (ChaCha, seeded and periodically reseeded from the OS), not a
/// `getrandom` call per certificate: serials must be unpredictable, and a system call per
/// issuance was a measurable part of the issuance path.
pub(crate) fn serial_bytes() -> [u8; SERIAL_LEN] {
    let mut rng = rand::rng();
    let mut bytes = [0u8; SERIAL_LEN];
    loop {
        rng.fill_bytes(&mut bytes);
        bytes[0] &= 0x7f;
        // A zero serial: 2^-127 odds, but cheap to rule out.
        if bytes.iter().any(|b| *b != 0) {
            return bytes;
        }
    }
}

fn name_error(name: &str, error: rcgen::Error) -> AuthorityError {
    AuthorityError::InvalidName {
        name: name.to_owned(),
        reason: format!("{error} (names in certificates must be ASCII)"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use meshca_provider::{SpiffeId, TrustDomain};

    fn spec() -> LeafSpec {
        let id = SpiffeId::from_short("bookstore/bookstore-v2", &TrustDomain::default()).unwrap();
        LeafSpec::workload(
            &id,
            &["bookstore".parse().unwrap()],
            Duration::from_secs(24 * 3600),
        )
    }

    /// A raw public key, for the subject key identifier (its value does not matter here).
    const PUBLIC_KEY: &[u8] = &[4; 65];

    fn far_future() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000)
    }

    #[test]
    fn leaf_validity_is_backdated_by_the_skew_and_lasts_the_lifetime() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_900);
        let params = leaf_params(
            &spec(),
            KeyType::P256,
            PUBLIC_KEY,
            now,
            Duration::from_secs(60),
            far_future(),
        )
        .unwrap();
        assert_eq!(params.not_before.unix_timestamp(), 1_700_000_000 - 60);
        assert_eq!(params.not_after.unix_timestamp(), 1_700_000_000 + 24 * 3600);
    }

    #[test]
    fn leaf_never_outlives_its_ca() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ca_end = now + Duration::from_secs(600);
        let params = leaf_params(
            &spec(),
            KeyType::P256,
            PUBLIC_KEY,
            now,
            Duration::from_secs(60),
            ca_end,
        )
        .unwrap();
        assert_eq!(params.not_after.unix_timestamp(), 1_700_000_600);
    }

    #[test]
    fn key_usage_depends_on_the_key_type() {
        let now = SystemTime::now();
        let ec = leaf_params(
            &spec(),
            KeyType::P384,
            PUBLIC_KEY,
            now,
            Duration::ZERO,
            far_future(),
        )
        .unwrap();
        assert_eq!(ec.key_usages, [KeyUsagePurpose::DigitalSignature]);
        let rsa = leaf_params(
            &spec(),
            KeyType::Rsa2048,
            PUBLIC_KEY,
            now,
            Duration::ZERO,
            far_future(),
        )
        .unwrap();
        assert_eq!(
            rsa.key_usages,
            [
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment
            ]
        );
    }

    #[test]
    fn ca_certificates_sign_certificates_and_crls_only() {
        let now = SystemTime::now();
        let root = root_params(&RootOptions::default(), PUBLIC_KEY, now).unwrap();
        let options = IntermediateOptions::new("east", Default::default());
        let intermediate = intermediate_params(&options, PUBLIC_KEY, now, far_future()).unwrap();
        for params in [root, intermediate] {
            assert_eq!(
                params.key_usages,
                [KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign]
            );
        }
    }

    #[test]
    fn key_identifiers_follow_rfc_7093_method_1() {
        // SHA-256 of the public key's bits, leftmost 160 bits: the BIT STRING's value, not the
        // whole SubjectPublicKeyInfo (what rcgen hashes by default).
        let digest = ring::digest::digest(&ring::digest::SHA256, PUBLIC_KEY);
        assert_eq!(key_identifier(PUBLIC_KEY), digest.as_ref()[..20]);
        let now = SystemTime::now();
        let root = root_params(&RootOptions::default(), PUBLIC_KEY, now).unwrap();
        let leaf = leaf_params(
            &spec(),
            KeyType::P256,
            PUBLIC_KEY,
            now,
            Duration::ZERO,
            far_future(),
        )
        .unwrap();
        for params in [root, leaf] {
            assert_eq!(
                params.key_identifier_method,
                KeyIdMethod::PreSpecified(digest.as_ref()[..20].to_vec())
            );
        }
    }

    #[test]
    fn serials_are_positive_sixteen_bytes_and_distinct() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_eq!(a.len(), SERIAL_LEN);
        assert_eq!(a[0] & 0x80, 0);
        assert_ne!(a, b);
    }

    #[test]
    fn refuses_what_cannot_be_encoded() {
        let now = SystemTime::now();
        let nameless = LeafSpec::server(vec![], Duration::from_secs(60));
        assert!(matches!(
            leaf_params(
                &nameless,
                KeyType::P256,
                PUBLIC_KEY,
                now,
                Duration::ZERO,
                far_future()
            ),
            Err(AuthorityError::InvalidName { .. })
        ));
        let forever = LeafSpec::server(
            vec!["a.example".parse().unwrap()],
            Duration::from_secs(u64::MAX),
        );
        assert!(matches!(
            leaf_params(
                &forever,
                KeyType::P256,
                PUBLIC_KEY,
                now,
                Duration::ZERO,
                far_future()
            ),
            Err(AuthorityError::InvalidValidity { .. })
        ));
    }
}
