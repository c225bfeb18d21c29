//! The PKI secrets engine's side: request bodies, answers, role reading and what Vault's
//! refusals mean for the person who has to fix the role.

use std::time::{Duration, SystemTime};

use meshca_provider::x509::certificates_from_pem;
use meshca_provider::{CertificateInfo, KeyType, LeafSpec};
use rustls_pki_types::CertificateDer;
// vaultrs's request body, named here rather than through `crate::endpoints`, which reads its
// answer as this module's `Issued`: the bodies and answers sit below the endpoints.
use vaultrs::api::pki::requests::SignCertificateRequest;

/// The API paths of one mount + role.
#[derive(Debug, Clone)]
pub(crate) struct PkiPaths {
    pub(crate) mount: String,
    pub(crate) role_name: String,
    pub(crate) sign: String,
    pub(crate) role: String,
    pub(crate) ca_chain: String,
}

impl PkiPaths {
    pub(crate) fn new(mount: &str, role: &str) -> Self {
        Self {
            mount: mount.to_owned(),
            role_name: role.to_owned(),
            sign: format!("{mount}/sign/{role}"),
            role: format!("{mount}/roles/{role}"),
            ca_chain: format!("{mount}/cert/ca_chain"),
        }
    }
}

/// The `sign/<role>` request for `spec` with `csr_pem`: the names as parameters (no common
/// name for a workload: Vault would add it to the DNS SANs; DNS SANs other than the CN as
/// `alt_names`, the SPIFFE ID as `uri_sans`), the lifetime in whole seconds.
pub(crate) fn sign_request(
    paths: &PkiPaths,
    spec: &LeafSpec,
    csr_pem: String,
) -> SignCertificateRequest {
    let cn = spec.common_name.as_deref();
    let alt_names = spec
        .dns_names
        .iter()
        .filter(|name| Some(name.as_str()) != cn)
        .map(meshca_provider::DnsName::as_str)
        .collect::<Vec<_>>()
        .join(",");
    SignCertificateRequest {
        mount: paths.mount.clone(),
        role: paths.role_name.clone(),
        csr: Some(csr_pem),
        common_name: cn.map(str::to_owned),
        alt_names: Some(alt_names).filter(|names| !names.is_empty()),
        uri_sans: spec.spiffe_id.as_ref().map(ToString::to_string),
        ttl: ttl_seconds(spec.lifetime),
        // Base64 DER rather than PEM: read straight into DER (see `Issued`).
        format: Some("der".to_owned()),
        exclude_cn_from_sans: Some(false),
        ..Default::default()
    }
}

/// A lifetime as Vault's `ttl`, in whole seconds rounded up; `None` leaves the role's default.
pub(crate) fn ttl_seconds(lifetime: Duration) -> Option<String> {
    if lifetime.is_zero() {
        return None;
    }
    let secs = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
    Some(format!("{secs}s"))
}

/// The `data` of a `sign` answer, asked for with `format=der`: the certificates come as base64
/// DER and are decoded into DER as the JSON is read, with no PEM text in between. A PEM string
/// (what `format=pem` answers) is read too, every `CERTIFICATE` block of it.
#[derive(serde::Deserialize)]
pub(crate) struct Issued {
    pub(crate) certificate: Certificates,
    #[serde(default)]
    pub(crate) ca_chain: Option<Vec<Certificates>>,
    #[serde(default)]
    pub(crate) issuing_ca: Option<Certificates>,
    /// The leaf's NotAfter, in Unix seconds.
    #[serde(default)]
    pub(crate) expiration: Option<u64>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("ca_chain", &self.ca_chain.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// The certificates in one string of Vault's answer: one base64 DER certificate, or the
/// `CERTIFICATE` blocks of a PEM text; none for an empty string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Certificates(pub(crate) Vec<CertificateDer<'static>>);

impl<'de> serde::Deserialize<'de> for Certificates {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Certificates;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64 DER certificate or PEM certificates")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Certificates, E> {
                Certificates::read(text).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl Certificates {
    /// Reads `text`: PEM when it holds a PEM block, base64 DER otherwise.
    pub(crate) fn read(text: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::default());
        }
        if text.starts_with("-----BEGIN") {
            return certificates_from_pem(text)
                .map(Self)
                .map_err(|e| format!("not PEM: {e}"));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("neither PEM nor base64 DER: {e}"))?;
        Ok(Self(vec![CertificateDer::from(der)]))
    }
}

impl Issued {
    /// The CA certificates Vault sent along (`ca_chain`, else `issuing_ca`), in its order.
    pub(crate) fn ca_certificates(&self) -> Vec<CertificateDer<'static>> {
        match (&self.ca_chain, &self.issuing_ca) {
            (Some(chain), _) if chain.iter().any(|c| !c.0.is_empty()) => {
                chain.iter().flat_map(|c| c.0.iter().cloned()).collect()
            }
            (_, Some(issuing)) => issuing.0.clone(),
            _ => Vec::new(),
        }
    }

    /// The leaf certificate and its NotAfter.
    pub(crate) fn leaf(&mut self) -> Result<(CertificateDer<'static>, SystemTime), String> {
        if self.certificate.0.is_empty() {
            return Err("no certificate in the answer".to_owned());
        }
        let leaf = self.certificate.0.swap_remove(0);
        // Vault states the leaf's NotAfter as `expiration`; reading it saves parsing the leaf
        // (the daemon parses and validates the whole chain anyway).
        let not_after = match self.expiration {
            Some(secs) => SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs(secs))
                .ok_or_else(|| format!("the answer's expiration {secs} is not a time"))?,
            None => {
                CertificateInfo::parse(&leaf)
                    .map_err(|e| format!("the certificate is unreadable: {e}"))?
                    .not_after
            }
        };
        Ok((leaf, not_after))
    }
}

/// The `data` of `cert/ca_chain` (vaultrs's `ReadCertificateResponse`), as meshca uses it.
#[derive(Debug)]
pub(crate) struct CaChain {
    pub(crate) certificate: String,
}

impl From<vaultrs::api::pki::responses::ReadCertificateResponse> for CaChain {
    fn from(chain: vaultrs::api::pki::responses::ReadCertificateResponse) -> Self {
        Self {
            certificate: chain.certificate,
        }
    }
}

/// What meshca uses of `roles/<role>` (read as vaultrs's `ReadRoleResponse`).
#[derive(Debug, Default)]
pub(crate) struct RoleData {
    pub(crate) key_type: Option<String>,
    pub(crate) key_bits: Option<u64>,
    pub(crate) max_ttl: Option<Duration>,
    pub(crate) allowed_uri_sans: Option<Vec<String>>,
    /// Whether `sign` takes the common name from the CSR (Vault's default: yes).
    pub(crate) use_csr_common_name: Option<bool>,
    /// Whether `sign` takes the DNS, IP, URI and other SANs from the CSR instead of the
    /// request's parameters (Vault's default: yes).
    pub(crate) use_csr_sans: Option<bool>,
    /// The issuer `sign/<role>` uses (`default`: the mount's default issuer).
    pub(crate) issuer_ref: Option<String>,
}

impl From<vaultrs::api::pki::responses::ReadRoleResponse> for RoleData {
    fn from(role: vaultrs::api::pki::responses::ReadRoleResponse) -> Self {
        Self {
            key_type: Some(role.key_type),
            key_bits: Some(role.key_bits),
            max_ttl: Some(Duration::from_secs(role.max_ttl)),
            allowed_uri_sans: Some(role.allowed_uri_sans),
            use_csr_common_name: Some(role.use_csr_common_name),
            use_csr_sans: Some(role.use_csr_sans),
            issuer_ref: Some(role.issuer_ref),
        }
    }
}

/// The role settings that make `pki/sign` certify names a CSR asks for, rather than the ones
/// passed as parameters. Both default to true in Vault and OpenBao.
pub(crate) const CSR_NAME_SETTINGS: [&str; 2] = ["use_csr_common_name", "use_csr_sans"];

impl RoleData {
    /// Key types the role signs CSRs for. Vault treats `key_bits` as a minimum.
    pub(crate) fn key_types(&self) -> Vec<KeyType> {
        let bits = self.key_bits.unwrap_or(0);
        match self.key_type.as_deref().unwrap_or("any") {
            "ec" => KeyType::ALL
                .into_iter()
                .filter(|k| match k {
                    KeyType::P256 => bits <= 256,
                    KeyType::P384 => bits <= 384,
                    _ => false,
                })
                .collect(),
            "rsa" => KeyType::ALL
                .into_iter()
                .filter(|k| k.rsa_bits().is_some_and(|b| b as u64 >= bits.max(2048)))
                .collect(),
            "any" => KeyType::ALL.to_vec(),
            // ed25519 and whatever comes next: nothing meshca makes.
            _ => Vec::new(),
        }
    }

    /// Whether `allowed_uri_sans` admits SPIFFE IDs.
    pub(crate) fn allows_spiffe_ids(&self) -> bool {
        self.allowed_uri_sans
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .any(|pattern| {
                let pattern = pattern.trim();
                pattern == "*"
                    || pattern.starts_with("spiffe://")
                    || pattern.starts_with("spiffe:*")
            })
    }

    /// Those of [`CSR_NAME_SETTINGS`] the role has on (a setting it does not state is Vault's
    /// default, on): with any of them, `sign` certifies names from the CSR, so a caller's CSR
    /// must ask for exactly meshca's names.
    pub(crate) fn copies_csr_names(&self) -> Vec<&'static str> {
        let [common_name, sans] = CSR_NAME_SETTINGS;
        [
            (common_name, self.use_csr_common_name),
            (sans, self.use_csr_sans),
        ]
        .into_iter()
        .filter(|(_, on)| on.unwrap_or(true))
        .map(|(setting, _)| setting)
        .collect()
    }

    /// The role's `max_ttl`, if it sets one.
    pub(crate) fn max_lifetime(&self) -> Option<Duration> {
        self.max_ttl.filter(|d| !d.is_zero())
    }
}

/// Whether `der` is self-signed (subject = issuer): a root, which chains must not carry.
pub(crate) fn is_self_signed(der: &CertificateDer<'_>) -> Result<bool, String> {
    let info = CertificateInfo::parse(der).map_err(|e| e.to_string())?;
    Ok(info.subject == info.issuer)
}

/// The intermediates among the CA certificates Vault returned with a leaf: everything but
/// roots, nearest first.
pub(crate) fn intermediates(
    ca: &[CertificateDer<'static>],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    for certificate in ca {
        if !is_self_signed(certificate)? {
            out.push(certificate.clone());
        }
    }
    Ok(out)
}

/// The root the CA certificates Vault returned with a leaf lead to: the self-signed one, or —
/// for a mount holding an intermediate without its root — the topmost.
pub(crate) fn chain_root(
    ca: &[CertificateDer<'static>],
) -> Result<Option<CertificateDer<'static>>, String> {
    for certificate in ca {
        if is_self_signed(certificate)? {
            return Ok(Some(certificate.clone()));
        }
    }
    Ok(ca.last().cloned())
}

/// The trust anchors in `cert/ca_chain`: its self-signed certificates, or — when the mount
/// holds an intermediate without its root — the topmost certificate.
pub(crate) fn trust_anchors(ca_chain_pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let all = certificates_from_pem(ca_chain_pem).map_err(|e| e.to_string())?;
    let mut roots = Vec::new();
    for certificate in &all {
        if is_self_signed(certificate)? {
            roots.push(certificate.clone());
        }
    }
    if roots.is_empty() {
        roots.extend(all.last().cloned());
    }
    Ok(roots)
}

/// What to change when the role refuses a request, from Vault's messages.
pub(crate) fn rejection_hint(
    errors: &[String],
    paths: &PkiPaths,
    key_type: KeyType,
) -> Option<String> {
    let text = errors.join("; ").to_ascii_lowercase();
    let role = &paths.role;
    // Vault and OpenBao word it "URI Subject Alternative Names are not allowed in this role"
    // (a role without allowed_uri_sans) or, OpenBao 2.7 for a role whose allowed_uri_sans
    // does not match, "... were provided via the API which are not valid for this role".
    let hint = if text.contains("uri subject alternative names are not allowed")
        || (text.contains("uri") && (text.contains("not allowed") || text.contains("not valid")))
    {
        format!(
            "the role must allow SPIFFE IDs as URI SANs: bao write {role} \
             allowed_uri_sans=\"spiffe://*\" (keeping its other settings)"
        )
    } else if text.contains("unknown role") {
        format!(
            "there is no role {} under {}: create it (see the meshca-vault README) or set \
             vault.role",
            paths.role_name, paths.mount
        )
    } else if text.contains("key") && (text.contains("bits") || text.contains("type")) {
        format!(
            "the role's key_type/key_bits do not accept {key_type} keys: set \
             certificateProvider.keyType to a type the role accepts, or bao write {role} \
             key_type=any"
        )
    } else if text.contains("common name") && text.contains("not allowed") {
        format!("the role must allow meshca's names: bao write {role} allow_any_name=true")
    } else if text.contains("subject alternative name") && text.contains("not allowed") {
        format!(
            "the role must allow meshca's DNS names: bao write {role} allow_any_name=true \
             enforce_hostnames=false"
        )
    } else if text.contains("beyond the expiration of the ca") || text.contains("notafter") {
        format!(
            "the requested lifetime ends after Vault's CA certificate: rotate the CA, or let \
             Vault shorten leaves with bao write {}/issuer/default leaf_not_after_behavior=truncate",
            paths.mount
        )
    } else if text.contains("no handler for route") {
        format!(
            "no PKI secrets engine is mounted at {}: check vault.pkiPath",
            paths.mount
        )
    } else {
        return None;
    };
    Some(hint)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use meshca_provider::{SpiffeId, TrustDomain};

    use super::*;

    fn sign_body(spec: &LeafSpec) -> serde_json::Value {
        use rustify::Endpoint as _;
        let request = sign_request(&PkiPaths::new("pki", "meshca"), spec, "CSR".into());
        assert_eq!(request.path(), "pki/sign/meshca");
        serde_json::from_slice(&request.body().unwrap().unwrap()).unwrap()
    }

    #[test]
    fn sign_body_sends_seconds_and_every_name_once() {
        let id = SpiffeId::from_short("bookstore/bookstore-v2", &TrustDomain::default()).unwrap();
        let spec = LeafSpec::workload(
            &id,
            &["bookstore-v2.bookstore.svc".parse().unwrap()],
            Duration::from_secs(1200),
        );
        let body = sign_body(&spec);
        assert_eq!(body["ttl"], "1200s");
        assert_eq!(body["csr"], "CSR");
        // No common name: Vault would add it to the DNS SANs (the role has require_cn=false).
        assert!(body.get("common_name").is_none(), "{body}");
        assert_eq!(body["alt_names"], "bookstore-v2.bookstore.svc");
        assert_eq!(
            body["uri_sans"],
            "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"
        );
        assert_eq!(body["format"], "der");
        assert_eq!(body["exclude_cn_from_sans"], false);

        let bare = LeafSpec::workload(&id, &[], Duration::from_secs(1200));
        let body = sign_body(&bare);
        assert!(body.get("common_name").is_none(), "{body}");
        assert!(body.get("alt_names").is_none(), "{body}");

        let server = LeafSpec::server(vec!["hook.svc".parse().unwrap()], Duration::ZERO);
        let body = sign_body(&server);
        assert_eq!(body["common_name"], "hook.svc");
        assert!(body.get("alt_names").is_none(), "{body}");
        assert!(body.get("uri_sans").is_none(), "{body}");
        assert!(body.get("ttl").is_none(), "{body}");
    }

    #[test]
    fn short_lifetimes_are_not_rounded_away() {
        assert_eq!(
            ttl_seconds(Duration::from_secs(20 * 60)).as_deref(),
            Some("1200s")
        );
        assert_eq!(
            ttl_seconds(Duration::from_millis(1500)).as_deref(),
            Some("2s")
        );
        assert_eq!(
            ttl_seconds(Duration::from_secs(86_400)).as_deref(),
            Some("86400s")
        );
        assert_eq!(ttl_seconds(Duration::ZERO), None);
    }

    #[test]
    fn role_key_types_follow_vaults_minimums() {
        let role = |key_type: &str, key_bits: u64| RoleData {
            key_type: Some(key_type.into()),
            key_bits: Some(key_bits),
            ..RoleData::default()
        };
        assert_eq!(role("ec", 256).key_types(), [KeyType::P256, KeyType::P384]);
        assert_eq!(role("ec", 384).key_types(), [KeyType::P384]);
        assert_eq!(
            role("rsa", 3072).key_types(),
            [KeyType::Rsa3072, KeyType::Rsa4096]
        );
        assert_eq!(role("rsa", 0).key_types().len(), 3);
        assert_eq!(role("any", 0).key_types(), KeyType::ALL);
        assert!(role("ed25519", 0).key_types().is_empty());
    }

    #[test]
    fn an_expiration_past_the_end_of_time_is_an_error_not_a_panic() {
        // Found writing the vault_response fuzz target: `SystemTime + Duration` panicked.
        let mut issued = Issued {
            certificate: Certificates::read("MA==").unwrap(),
            ca_chain: None,
            issuing_ca: None,
            expiration: Some(u64::MAX),
        };
        let error = issued.leaf().unwrap_err();
        assert!(error.contains("18446744073709551615"), "{error}");
    }

    #[test]
    fn a_role_copies_csr_names_unless_both_settings_are_off() {
        let role = |use_csr_common_name, use_csr_sans| RoleData {
            use_csr_common_name,
            use_csr_sans,
            ..RoleData::default()
        };
        // Unstated: Vault's defaults, both on.
        assert_eq!(role(None, None).copies_csr_names(), CSR_NAME_SETTINGS);
        assert_eq!(
            role(Some(false), Some(true)).copies_csr_names(),
            ["use_csr_sans"]
        );
        assert_eq!(
            role(Some(true), Some(false)).copies_csr_names(),
            ["use_csr_common_name"]
        );
        assert!(role(Some(false), Some(false)).copies_csr_names().is_empty());
    }

    #[test]
    fn refusals_point_at_the_role_setting_to_change() {
        let paths = PkiPaths::new("pki", "meshca");
        let hint = |message: &str| {
            rejection_hint(&[message.to_owned()], &paths, KeyType::P256).unwrap_or_default()
        };
        assert!(
            hint("URI Subject Alternative Names are not allowed in this role, but were provided via CSR")
                .contains("allowed_uri_sans=\"spiffe://*\"")
        );
        // OpenBao 2.7.2's answers (asked of the real server) for a role with
        // allowed_uri_sans="urn:*", the names sent as parameters and in a caller's CSR.
        for refusal in [
            "URI Subject Alternative Names were provided via the API which are not valid for this role",
            "URI Subject Alternative Names were provided via CSR which are not valid for this role",
            "URI Subject Alternative Names are not allowed in this role, but were provided via the API",
        ] {
            assert!(
                hint(refusal).contains("allowed_uri_sans=\"spiffe://*\""),
                "{refusal}"
            );
        }
        assert!(hint("unknown role: meshca").contains("vault.role"));
        assert!(
            hint("role requires a minimum of a 3072-bit key, but CSR's key is 2048 bits")
                .contains("key_type")
        );
        assert!(hint("common name x.y not allowed by this role").contains("allow_any_name=true"));
        assert!(rejection_hint(&["something new".into()], &paths, KeyType::P256).is_none());
    }
}
