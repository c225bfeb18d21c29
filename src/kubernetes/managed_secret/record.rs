//! What a managed Secret's annotations record, and the PEM texts it holds.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use meshca_provider::{DnsName, KeyType, SpiffeId, format_duration, parse_duration};
use zeroize::Zeroizing;

use super::*;

/// What a managed Secret's annotations record: what was asked for (enough to issue it again)
/// and what was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedTlsSecret {
    /// The workload identity certified; `None` for a server certificate.
    pub identity: Option<SpiffeId>,
    /// The DNS names asked for, each a valid hostname, each once.
    pub dns: Vec<DnsName>,
    /// The lifetime asked for.
    pub lifetime: Duration,
    /// The key type.
    pub key_type: KeyType,
    /// The leaf's notBefore (whole seconds).
    pub not_before: SystemTime,
    /// The leaf's notAfter (whole seconds).
    pub not_after: SystemTime,
    /// SHA-256 fingerprint of the root the leaf chains to, colon-separated uppercase hex.
    pub root_fingerprint: String,
}

impl ManagedTlsSecret {
    /// The annotations recording this.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let entries = [
            (
                IDENTITY_ANNOTATION,
                self.identity
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
            (
                DNS_ANNOTATION,
                self.dns
                    .iter()
                    .map(DnsName::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (LIFETIME_ANNOTATION, format_duration(self.lifetime)),
            (KEY_TYPE_ANNOTATION, self.key_type.name().to_owned()),
            (NOT_BEFORE_ANNOTATION, rfc3339(self.not_before)),
            (NOT_AFTER_ANNOTATION, rfc3339(self.not_after)),
            (ROOT_ANNOTATION, self.root_fingerprint.clone()),
        ];
        entries
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect()
    }

    /// Reads the record back from a managed Secret's annotations.
    pub fn from_secret(secret: &Secret) -> Result<Self, ManagedSecretError> {
        let target = secret_ref(secret);
        let empty = BTreeMap::new();
        let annotations = secret.metadata.annotations.as_ref().unwrap_or(&empty);
        let problem = |annotation: &'static str, reason: String| ManagedSecretError::Annotation {
            secret: target.clone(),
            annotation,
            reason,
        };
        let read = |annotation: &'static str| {
            annotations
                .get(annotation)
                .map(String::as_str)
                .ok_or_else(|| problem(annotation, "is missing".to_owned()))
        };
        let identity = match read(IDENTITY_ANNOTATION)?.trim() {
            "" => None,
            text => Some(text.parse::<SpiffeId>().map_err(|e| {
                problem(
                    IDENTITY_ANNOTATION,
                    format!("is not a SPIFFE ID ({text:?}: {e})"),
                )
            })?),
        };
        // Each name is checked as `meshca issue --dns` checks it, so an edited annotation cannot
        // put a name in a certificate that the command line would refuse. A wildcard is kept:
        // it is on record because `meshca issue --allow-wildcard` wrote it.
        let dns = read(DNS_ANNOTATION)?
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| {
                DnsName::with_wildcard(name)
                    .map_err(|e| problem(DNS_ANNOTATION, format!("holds an invalid name ({e})")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let dns = meshca_provider::dns::dedup(dns);
        if identity.is_none() && dns.is_empty() {
            return Err(problem(
                DNS_ANNOTATION,
                format!("is empty and so is {IDENTITY_ANNOTATION}"),
            ));
        }
        let lifetime = read(LIFETIME_ANNOTATION)?;
        // The maximum depends on the configuration: `meshca rotate` checks it when it renews.
        let min = crate::lifetime::MIN_LEAF_LIFETIME;
        let lifetime = parse_duration(lifetime)
            .ok()
            .filter(|d| *d >= min)
            .ok_or_else(|| {
                problem(
                    LIFETIME_ANNOTATION,
                    format!(
                        "is not a Go duration of at least {} ({lifetime:?})",
                        format_duration(min)
                    ),
                )
            })?;
        let key_type = read(KEY_TYPE_ANNOTATION)?;
        let key_type = key_type.parse::<KeyType>().map_err(|_| {
            problem(
                KEY_TYPE_ANNOTATION,
                format!(
                    "is not a key type ({key_type:?}; one of p256, p384, rsa2048, rsa3072, rsa4096)"
                ),
            )
        })?;
        let time = |annotation: &'static str| {
            let text = read(annotation)?;
            parse_rfc3339(text)
                .ok_or_else(|| problem(annotation, format!("is not an RFC 3339 time ({text:?})")))
        };
        Ok(Self {
            identity,
            dns,
            lifetime,
            key_type,
            not_before: time(NOT_BEFORE_ANNOTATION)?,
            not_after: time(NOT_AFTER_ANNOTATION)?,
            root_fingerprint: read(ROOT_ANNOTATION)?.to_owned(),
        })
    }
}

impl ManagedTlsSecret {
    /// Refuses a record whose identity is not in `target`'s namespace (a server certificate,
    /// with no identity, passes): a managed Secret certifies a workload of its own namespace.
    pub fn check_namespace(&self, target: &SecretRef) -> Result<(), ManagedSecretError> {
        match &self.identity {
            Some(identity) if identity.namespace() != target.namespace => {
                Err(ManagedSecretError::ForeignIdentity {
                    secret: target.clone(),
                    identity: identity.clone(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// The PEM texts a managed Secret holds. `Debug` shows none of them.
pub struct TlsMaterial {
    /// The leaf then its intermediates.
    pub chain_pem: String,
    /// The leaf's PKCS#8 private key.
    pub key_pem: Zeroizing<String>,
    /// The trust bundle.
    pub trust_bundle_pem: String,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial").finish_non_exhaustive()
    }
}
