//! Turning certificates and bundles into Envoy `Secret` resources.
//!
//! The protobuf types derive `Debug`, which prints inline bytes: a `Secret` holding a
//! `tls_certificate` must never be logged.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SubjectAltNameMatcher, TlsCertificate, secret,
    subject_alt_name_matcher::SanType,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::Any;
use meshca_provider::x509::{Fingerprint, sha256};
use meshca_provider::{SpiffeId, TrustBundle};
use prost::Message;

use super::source::ServedCertificate;

/// The type URL of every resource the SDS server sends.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// A `tls_certificate` secret: the PEM chain (leaf first) and the PEM private key, inline.
pub fn tls_certificate_secret(name: &str, certificate: &ServedCertificate) -> Secret {
    let certificates = certificate.chain.certificates();
    let mut chain_pem = Vec::with_capacity(
        certificates
            .iter()
            .map(|c| pem_len("CERTIFICATE", c.len()))
            .sum(),
    );
    for der in certificates {
        pem_into(&mut chain_pem, "CERTIFICATE", der);
    }
    // The key goes into the protobuf as a plain Vec, which lives as long as the response
    // (tonic's buffers are not wiped either); it is written there directly, without copies.
    let key_der = certificate.key.pkcs8_der();
    let mut key_pem = Vec::with_capacity(pem_len("PRIVATE KEY", key_der.secret_pkcs8_der().len()));
    pem_into(&mut key_pem, "PRIVATE KEY", key_der.secret_pkcs8_der());
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(chain_pem)),
            private_key: Some(inline(key_pem)),
            ..TlsCertificate::default()
        })),
    }
}

/// Appends the PEM (RFC 7468: 64 base64 characters per line, LF line ends) of `der` to `out`.
///
/// Every SDS response carries a chain and a key in PEM; a general-purpose PEM encoder that
/// formats line by line into its own string cost more than the rest of the response, so this
/// one has the base64 engine write each line straight into the buffer the protobuf takes.
fn pem_into(out: &mut Vec<u8>, label: &str, der: &[u8]) {
    out.extend_from_slice(b"-----BEGIN ");
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(b"-----\n");
    // 48 bytes make one line of 64 characters.
    for line in der.chunks(48) {
        let start = out.len();
        out.resize(start + line.len().div_ceil(3) * 4, 0);
        #[allow(
            clippy::expect_used,
            reason = "encode_slice fails only when the room is too small, and it is exactly the \
                      encoded length"
        )]
        let written = STANDARD
            .encode_slice(line, &mut out[start..])
            .expect("the line's room is its exact base64 length");
        debug_assert_eq!(start + written, out.len());
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END ");
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(b"-----\n");
}

/// The length of [`pem_into`]'s output.
fn pem_len(label: &str, der_len: usize) -> usize {
    let chars = der_len.div_ceil(3) * 4;
    let lines = chars.div_ceil(64);
    2 * (label.len() + 16) + chars + lines
}

/// A `validation_context` secret: the bundle's roots as trusted CAs, and, when `peer` is set,
/// an exact URI-SAN matcher so only that identity is accepted.
pub fn validation_context_secret(
    name: &str,
    bundle: &TrustBundle,
    peer: Option<&SpiffeId>,
) -> Secret {
    let match_typed_subject_alt_names = peer
        .map(|peer| SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(StringMatcher {
                ignore_case: false,
                match_pattern: Some(string_matcher::MatchPattern::Exact(peer.to_string())),
            }),
            oid: String::new(),
        })
        .into_iter()
        .collect();
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(inline(bundle.to_pem().into_bytes())),
                match_typed_subject_alt_names,
                ..CertificateValidationContext::default()
            },
        )),
    }
}

/// Packs a secret as `google.protobuf.Any`.
pub fn pack(secret: &Secret) -> Any {
    Any {
        type_url: SECRET_TYPE_URL.to_owned(),
        value: secret.encode_to_vec(),
    }
}

/// A short content version of a certificate: its leaf's SHA-256, so two streams holding the
/// same certificate report the same version and a restart with new keys reports a new one.
pub fn certificate_version(certificate: &ServedCertificate) -> String {
    // Hashed here rather than when the certificate was issued: most certificates never reach
    // an SDS stream (the Istio CA API's, the Workload API's), and a SHA-256 of the leaf is
    // small beside the PEM and the TLS record of the response that carries this version.
    Fingerprint::of(certificate.chain.leaf()).short_hex()
}

/// A short content version of a bundle as served with an optional peer matcher.
pub fn bundle_version(bundle: &TrustBundle, peer: Option<&SpiffeId>) -> String {
    let mut material = Vec::new();
    for root in bundle.roots() {
        material.extend_from_slice(&sha256(root));
    }
    if let Some(peer) = peer {
        material.extend_from_slice(peer.to_string().as_bytes());
    }
    short_hash(&material)
}

fn short_hash(bytes: &[u8]) -> String {
    Fingerprint(sha256(bytes)).short_hex()
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        watched_directory: None,
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use meshca_provider::{CertificateChain, CertificateInfo, KeyType, LeafKey, TrustDomain};
    use rustls_pki_types::CertificateDer;

    fn self_signed(name: &str) -> (CertificateDer<'static>, LeafKey) {
        let key = LeafKey::generate(KeyType::P256).unwrap();
        let signer = key.signing_key().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&signer).unwrap();
        (cert.der().clone(), key)
    }

    fn data(source: Option<&DataSource>) -> Vec<u8> {
        match source.and_then(|s| s.specifier.as_ref()) {
            Some(data_source::Specifier::InlineBytes(bytes)) => bytes.clone(),
            other => panic!("not inline bytes: {other:?}"),
        }
    }

    #[test]
    fn pem_matches_the_reference_encoder_for_every_length() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        for len in 0..bytes.len() {
            let der = &bytes[..len];
            let mut ours = Vec::new();
            pem_into(&mut ours, "CERTIFICATE", der);
            let reference = meshca_provider::x509::pem_block("CERTIFICATE", der);
            assert_eq!(String::from_utf8(ours).unwrap(), reference, "length {len}");
            assert_eq!(pem_len("CERTIFICATE", len), reference.len(), "length {len}");
        }
    }

    #[test]
    fn tls_certificate_carries_the_chain_and_key_as_pem() {
        let (der, key) = self_signed("a.example");
        let chain = CertificateChain::new(vec![der.clone()]).unwrap();
        let served = ServedCertificate {
            info: CertificateInfo::parse(&der).unwrap().into_summary(),
            chain: chain.clone(),
            key,
            issued_by: "test",
        };
        let packed = pack(&tls_certificate_secret("default", &served));
        assert_eq!(packed.type_url, SECRET_TYPE_URL);
        let secret = Secret::decode(packed.value.as_slice()).unwrap();
        assert_eq!(secret.name, "default");
        let Some(secret::Type::TlsCertificate(tls)) = secret.r#type else {
            panic!("not a tls_certificate");
        };
        let chain_pem = String::from_utf8(data(tls.certificate_chain.as_ref())).unwrap();
        assert_eq!(CertificateChain::from_pem(&chain_pem).unwrap(), chain);
        let key_pem = String::from_utf8(data(tls.private_key.as_ref())).unwrap();
        let reloaded = LeafKey::from_pem(&key_pem).unwrap();
        assert_eq!(reloaded.public_key_spki(), served.key.public_key_spki());
    }

    #[test]
    fn certificate_version_is_the_start_of_the_leafs_sha256() {
        let (der, key) = self_signed("a.example");
        let served = ServedCertificate {
            info: CertificateInfo::parse(&der).unwrap().into_summary(),
            chain: CertificateChain::new(vec![der.clone()]).unwrap(),
            key,
            issued_by: "test",
        };
        let digest = sha256(&der);
        let expected: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(certificate_version(&served), expected);
        assert_eq!(short_hash(&der), expected);
    }

    #[test]
    fn validation_context_has_bundle_and_optional_exact_uri_matcher() {
        let (root, _) = self_signed("root.example");
        let bundle = TrustBundle::new(vec![root]);
        let peer = SpiffeId::from_short("ns/server", &TrustDomain::default()).unwrap();

        let plain = validation_context_secret("ROOTCA", &bundle, None);
        let Some(secret::Type::ValidationContext(context)) = plain.r#type else {
            panic!("not a validation_context");
        };
        let pem = String::from_utf8(data(context.trusted_ca.as_ref())).unwrap();
        assert_eq!(TrustBundle::from_pem(&pem).unwrap(), bundle);
        assert!(context.match_typed_subject_alt_names.is_empty());

        let matched = validation_context_secret(
            "root-cert-for-mtls-outbound:ns/server",
            &bundle,
            Some(&peer),
        );
        let Some(secret::Type::ValidationContext(context)) = matched.r#type else {
            panic!("not a validation_context");
        };
        let [matcher] = context.match_typed_subject_alt_names.as_slice() else {
            panic!("expected one matcher");
        };
        assert_eq!(matcher.san_type, SanType::Uri as i32);
        assert_eq!(
            matcher
                .matcher
                .as_ref()
                .and_then(|m| m.match_pattern.clone()),
            Some(string_matcher::MatchPattern::Exact(
                "spiffe://cluster.local/ns/ns/sa/server".to_owned()
            ))
        );
        assert_ne!(
            bundle_version(&bundle, None),
            bundle_version(&bundle, Some(&peer))
        );
    }
}
