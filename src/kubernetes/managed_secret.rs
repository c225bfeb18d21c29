//! Managed TLS Secrets: certificates meshca keeps in `kubernetes.io/tls` Secrets for workloads
//! that read a Secret rather than speak SDS (ingress gateways, webhooks).
//!
//! A managed Secret holds `tls.crt` (the leaf and its intermediates, PEM), `tls.key` (the
//! leaf's PKCS#8 key, PEM) and `ca.crt` (the trust bundle). It carries two labels —
//! `app.kubernetes.io/managed-by: meshca` and `meshca.io/managed-certificate: "true"` — and
//! annotations that say how to issue it again ([`ManagedTlsSecret`]), so that `meshca rotate`
//! (the cron) can find every managed Secret by label ([`list_managed`]) and renew it without
//! being told what it holds.
//!
//! Writing goes through a [`TlsSecretWriter`], which reads the Secret first: an absent Secret
//! is created (POST); one that meshca manages is replaced (PUT carrying the resourceVersion
//! that was read, so a concurrent change is detected: on `409 Conflict` it reads again and
//! retries a bounded number of times); anything else — someone else's Secret, a Secret of
//! another type, meshca's own CA bundle — is refused and left untouched.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PostParams};
use meshca_provider::{DnsName, KeyType, SpiffeId, format_duration, parse_duration};
use zeroize::Zeroizing;

use crate::config::{is_dns_label, is_dns_subdomain};

/// The Secret type of a managed TLS Secret.
pub const SECRET_TYPE: &str = "kubernetes.io/tls";
/// The standard label naming the tool that manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// [`MANAGED_BY_LABEL`]'s value.
pub const MANAGED_BY: &str = "meshca";
/// The label that marks a Secret as a meshca-managed certificate (and not, say, the CA bundle,
/// which is managed by meshca too).
pub const MANAGED_CERTIFICATE_LABEL: &str = "meshca.io/managed-certificate";
/// The label selector that finds managed TLS Secrets.
pub const LABEL_SELECTOR: &str = "meshca.io/managed-certificate=true";

/// Secret data keys.
pub const CERTIFICATE_KEY: &str = "tls.crt";
/// The private key's data key.
pub const PRIVATE_KEY_KEY: &str = "tls.key";
/// The trust bundle's data key.
pub const TRUST_BUNDLE_KEY: &str = "ca.crt";

/// Annotation: the SPIFFE ID certified, empty for a server certificate.
pub const IDENTITY_ANNOTATION: &str = "meshca.io/identity";
/// Annotation: the extra DNS names asked for, comma-separated.
pub const DNS_ANNOTATION: &str = "meshca.io/dns-names";
/// Annotation: the lifetime asked for, as a Go duration (`24h`).
pub const LIFETIME_ANNOTATION: &str = "meshca.io/lifetime";
/// Annotation: the key type (`p256`, `rsa2048`, …).
pub const KEY_TYPE_ANNOTATION: &str = "meshca.io/key-type";
/// Annotation: the leaf's notBefore, RFC 3339 UTC.
pub const NOT_BEFORE_ANNOTATION: &str = "meshca.io/not-before";
/// Annotation: the leaf's notAfter, RFC 3339 UTC.
pub const NOT_AFTER_ANNOTATION: &str = "meshca.io/not-after";
/// Annotation: SHA-256 fingerprint of the root the leaf chains to (as `openssl x509
/// -fingerprint -sha256` prints it).
pub const ROOT_ANNOTATION: &str = "meshca.io/root-sha256";

/// How many times a write reads the Secret again after a conflicting change before giving up.
pub const MAX_ATTEMPTS: usize = 5;

/// What went wrong with a managed TLS Secret. Never carries Secret data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagedSecretError {
    /// `ns/name` could not be read as a Secret reference.
    #[error("{input:?} is not a Secret reference: {reason}")]
    InvalidReference {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The Secret exists but meshca does not manage it.
    #[error(
        "Secret {secret} exists and is not a meshca-managed TLS Secret ({reason}). Nothing was \
         changed: choose another name, or delete that Secret first if it is really unused"
    )]
    NotManaged {
        /// `namespace/name`.
        secret: SecretRef,
        /// Why it is not considered meshca's.
        reason: String,
    },
    /// An annotation of a managed Secret is missing or unreadable.
    #[error(
        "Secret {secret}: annotation {annotation} {reason}: meshca cannot tell how to renew \
         it; issue it again with `meshca issue --secret {secret} …`"
    )]
    Annotation {
        /// `namespace/name`.
        secret: SecretRef,
        /// The annotation's key.
        annotation: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The API server refused or failed a request.
    #[error("Secret {secret}: {reason}")]
    Api {
        /// `namespace/name` (`<namespace>/*` for a list).
        secret: SecretRef,
        /// What failed and what to check.
        reason: String,
    },
    /// The identity on record is in another namespace than the Secret: refused, since anyone
    /// who can write Secrets in a namespace could otherwise have meshca certify another
    /// namespace's workloads into it.
    #[error(
        "Secret {secret}: its {IDENTITY_ANNOTATION} {identity} is not in the Secret's namespace \
         {}; not renewed: a managed Secret holds an identity of its own namespace only. Delete \
         it; if {} needs a certificate in a Secret, have an admin run `meshca issue --identity \
         {} --secret {}/<name>`",
        secret.namespace,
        identity.short(),
        identity.short(),
        identity.namespace()
    )]
    ForeignIdentity {
        /// `namespace/name`.
        secret: SecretRef,
        /// The identity on record.
        identity: SpiffeId,
    },
    /// Every attempt met a concurrent change.
    #[error(
        "Secret {secret} kept changing while meshca wrote it (gave up after {attempts} attempts, \
         each answered 409): something else is writing it; find that writer, then retry"
    )]
    Conflict {
        /// `namespace/name`.
        secret: SecretRef,
        /// How many writes were tried.
        attempts: usize,
    },
}

/// A Secret's namespace and name, written `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    /// The namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
}

impl SecretRef {
    /// A reference, its names checked as the API server would.
    pub fn new(namespace: &str, name: &str) -> Result<Self, ManagedSecretError> {
        let input = format!("{namespace}/{name}");
        let invalid = |reason: String| ManagedSecretError::InvalidReference {
            input: input.clone(),
            reason,
        };
        if !is_dns_label(namespace) {
            return Err(invalid(format!(
                "namespace {namespace:?} must be a DNS label (lowercase letters, digits and '-', \
                 at most 63 characters)"
            )));
        }
        if !is_dns_subdomain(name) {
            return Err(invalid(format!(
                "name {name:?} must be a DNS subdomain (lowercase letters, digits, '-' and '.', \
                 at most 253 characters)"
            )));
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The kubectl pipeline that prints the Secret's certificate with openssl.
    pub fn show_certificate_command(&self) -> String {
        format!(
            "kubectl get secret {} -n {} -o jsonpath='{{.data.tls\\.crt}}' | base64 -d | openssl \
             x509 -text -noout",
            self.name, self.namespace
        )
    }
}

impl FromStr for SecretRef {
    type Err = ManagedSecretError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input.split_once('/') {
            Some((namespace, name)) if !name.contains('/') => Self::new(namespace, name),
            _ => Err(ManagedSecretError::InvalidReference {
                input: input.to_owned(),
                reason: "write it as <namespace>/<name>, e.g. ingress/gateway-tls".to_owned(),
            }),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

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

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The Secret did not exist and was created.
    Created,
    /// The managed Secret was replaced.
    Replaced,
}

/// What [`TlsSecretWriter::replace_unchanged`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// The Secret was replaced: it had not changed since it was read.
    Replaced,
    /// It had changed or been deleted since it was read: nothing was written, and the writer
    /// now holds the Secret as read again (or none).
    Changed,
}

/// One managed TLS Secret to write: remembers what was last read of it, so that a replace
/// carries that resourceVersion.
pub struct TlsSecretWriter {
    api: Api<Secret>,
    target: SecretRef,
    /// The Secret as last read; `None` when it did not exist.
    current: Option<Secret>,
}

impl TlsSecretWriter {
    /// Reads `target` and checks that meshca may write it: absent, or a managed TLS Secret.
    /// Refuses anything else before a certificate is issued for it.
    pub async fn open(client: kube::Client, target: SecretRef) -> Result<Self, ManagedSecretError> {
        let api = Api::namespaced(client, &target.namespace);
        let mut writer = Self {
            api,
            target,
            current: None,
        };
        writer.reread().await?;
        Ok(writer)
    }

    /// The Secret written.
    pub fn target(&self) -> &SecretRef {
        &self.target
    }

    /// Whether the Secret existed when last read.
    pub fn exists(&self) -> bool {
        self.current.is_some()
    }

    /// What the existing Secret's annotations record, if it exists.
    pub fn recorded(&self) -> Option<Result<ManagedTlsSecret, ManagedSecretError>> {
        self.current.as_ref().map(ManagedTlsSecret::from_secret)
    }

    /// The Secret's `tls.crt` (the leaf then its intermediates, PEM) as last read, if it
    /// exists and has one.
    pub fn certificate_pem(&self) -> Option<&[u8]> {
        self.current
            .as_ref()
            .and_then(|secret| secret.data.as_ref())
            .and_then(|data| data.get(CERTIFICATE_KEY))
            .map(|bytes| bytes.0.as_slice())
    }

    /// The Secret's `tls.key` (PKCS#8 PEM) as last read, if it exists and has one. Secret
    /// data: never log it.
    pub fn private_key_pem(&self) -> Option<&[u8]> {
        self.current
            .as_ref()
            .and_then(|secret| secret.data.as_ref())
            .and_then(|data| data.get(PRIVATE_KEY_KEY))
            .map(|bytes| bytes.0.as_slice())
    }

    /// The Secret's resourceVersion as last read.
    pub fn resource_version(&self) -> Option<&str> {
        self.current
            .as_ref()
            .and_then(|secret| secret.metadata.resource_version.as_deref())
    }

    /// Replaces the Secret only if nobody changed it since it was read: one PUT carrying the
    /// resourceVersion that was read, no retry. This is how concurrent renewals agree on one
    /// winner: on `409 Conflict` (or `404`, deleted meanwhile) nothing is written, the Secret
    /// is read again — and checked again to be meshca's — and [`Replaced::Changed`] says the
    /// caller should look at it afresh ([`Self::exists`], [`Self::certificate_pem`]).
    pub async fn replace_unchanged(
        &mut self,
        record: &ManagedTlsSecret,
        material: &TlsMaterial,
    ) -> Result<Replaced, ManagedSecretError> {
        let Some(existing) = &self.current else {
            return Ok(Replaced::Changed);
        };
        let secret = self.secret_for(existing.metadata.clone(), record, material);
        match self
            .api
            .replace(&self.target.name, &PostParams::default(), &secret)
            .await
        {
            Ok(_) => Ok(Replaced::Replaced),
            Err(kube::Error::Api(status)) if status.is_conflict() || status.is_not_found() => {
                tracing::info!(
                    secret = %self.target,
                    reason = %status.reason,
                    "the Secret changed since it was read; nothing written, reading it again"
                );
                self.reread().await?;
                Ok(Replaced::Changed)
            }
            Err(error) => Err(api_error(&self.target, "update", error)),
        }
    }

    /// Writes `material` with the annotations of `record`: creates the Secret if it is absent,
    /// replaces it if meshca manages it. On a concurrent change (409) reads it again — and
    /// checks again that it is still meshca's — then retries, at most [`MAX_ATTEMPTS`] times.
    pub async fn write(
        &mut self,
        record: &ManagedTlsSecret,
        material: &TlsMaterial,
    ) -> Result<Written, ManagedSecretError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = match &self.current {
                None => {
                    let secret = self.secret_for(ObjectMeta::default(), record, material);
                    self.api
                        .create(&PostParams::default(), &secret)
                        .await
                        .map(|_| Written::Created)
                        .map_err(|e| (e, "create"))
                }
                Some(existing) => {
                    let secret = self.secret_for(existing.metadata.clone(), record, material);
                    self.api
                        .replace(&self.target.name, &PostParams::default(), &secret)
                        .await
                        .map(|_| Written::Replaced)
                        .map_err(|e| (e, "update"))
                }
            };
            match result {
                Ok(written) => return Ok(written),
                // Someone created it between our read and our create, it changed since our
                // read, or it was deleted since: read again and start over.
                Err((kube::Error::Api(status), _))
                    if status.is_already_exists()
                        || status.is_conflict()
                        || (status.is_not_found() && self.current.is_some()) =>
                {
                    if attempts >= MAX_ATTEMPTS {
                        return Err(ManagedSecretError::Conflict {
                            secret: self.target.clone(),
                            attempts,
                        });
                    }
                    tracing::info!(
                        secret = %self.target,
                        reason = %status.reason,
                        "the Secret changed while meshca wrote it; reading it again"
                    );
                    self.reread().await?;
                }
                Err((error, verb)) => return Err(api_error(&self.target, verb, error)),
            }
        }
    }

    async fn reread(&mut self) -> Result<(), ManagedSecretError> {
        let found = self
            .api
            .get_opt(&self.target.name)
            .await
            .map_err(|e| api_error(&self.target, "get", e))?;
        if let Some(secret) = &found {
            check_managed(secret, &self.target)?;
        }
        self.current = found;
        Ok(())
    }

    /// The Secret to send: `base` (the existing object's metadata, so its resourceVersion,
    /// other labels and annotations, and owner references survive a replace) with meshca's
    /// labels, annotations, type and data.
    fn secret_for(
        &self,
        mut meta: ObjectMeta,
        record: &ManagedTlsSecret,
        material: &TlsMaterial,
    ) -> Secret {
        meta.name = Some(self.target.name.clone());
        meta.namespace = Some(self.target.namespace.clone());
        meta.managed_fields = None;
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
        labels.insert(MANAGED_CERTIFICATE_LABEL.to_owned(), "true".to_owned());
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .extend(record.annotations());
        let data = BTreeMap::from([
            (
                CERTIFICATE_KEY.to_owned(),
                ByteString(material.chain_pem.as_bytes().to_vec()),
            ),
            (
                PRIVATE_KEY_KEY.to_owned(),
                ByteString(material.key_pem.as_bytes().to_vec()),
            ),
            (
                TRUST_BUNDLE_KEY.to_owned(),
                ByteString(material.trust_bundle_pem.as_bytes().to_vec()),
            ),
        ]);
        Secret {
            metadata: meta,
            type_: Some(SECRET_TYPE.to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }
}

impl fmt::Debug for TlsSecretWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSecretWriter")
            .field("target", &self.target)
            .field(
                "resource_version",
                &self
                    .current
                    .as_ref()
                    .and_then(|s| s.metadata.resource_version.as_deref()),
            )
            .finish_non_exhaustive()
    }
}

/// One managed Secret found by [`list_managed`].
#[derive(Debug)]
pub struct ListedSecret {
    /// What its annotations record, or why they cannot be read (the cron reports those).
    pub record: Result<ManagedTlsSecret, ManagedSecretError>,
    /// A writer holding the Secret as listed, ready to replace it.
    pub writer: TlsSecretWriter,
}

/// Every managed TLS Secret in `namespace`, or in all namespaces, found by label. Secrets that
/// carry the label but are not `kubernetes.io/tls` are skipped with a warning.
pub async fn list_managed(
    client: kube::Client,
    namespace: Option<&str>,
) -> Result<Vec<ListedSecret>, ManagedSecretError> {
    let api: Api<Secret> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let scope = SecretRef {
        namespace: namespace.unwrap_or("*").to_owned(),
        name: "*".to_owned(),
    };
    let list = api
        .list(&ListParams::default().labels(LABEL_SELECTOR))
        .await
        .map_err(|e| api_error(&scope, "list", e))?;
    let mut found = Vec::new();
    for secret in list.items {
        let target = secret_ref(&secret);
        if let Err(e) = check_managed(&secret, &target) {
            tracing::warn!(secret = %target, "skipping a labelled Secret: {e}");
            continue;
        }
        found.push(ListedSecret {
            record: ManagedTlsSecret::from_secret(&secret),
            writer: TlsSecretWriter {
                api: Api::namespaced(client.clone(), &target.namespace),
                target,
                current: Some(secret),
            },
        });
    }
    Ok(found)
}

/// Refuses a Secret that is not a meshca-managed TLS Secret.
fn check_managed(secret: &Secret, target: &SecretRef) -> Result<(), ManagedSecretError> {
    let label = |key: &str| {
        secret
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(key))
            .map(String::as_str)
    };
    let reason = if label(MANAGED_BY_LABEL) != Some(MANAGED_BY) {
        match label(MANAGED_BY_LABEL) {
            Some(other) => format!("it is labelled {MANAGED_BY_LABEL}={other}"),
            None => format!("it has no {MANAGED_BY_LABEL}={MANAGED_BY} label"),
        }
    } else if label(MANAGED_CERTIFICATE_LABEL) != Some("true") {
        format!(
            "it is meshca's but not a managed certificate (no {MANAGED_CERTIFICATE_LABEL}=true \
             label): it may be the CA bundle"
        )
    } else if secret.type_.as_deref() != Some(SECRET_TYPE) {
        format!(
            "its type is {}, not {SECRET_TYPE}",
            secret.type_.as_deref().unwrap_or("Opaque")
        )
    } else {
        return Ok(());
    };
    Err(ManagedSecretError::NotManaged {
        secret: target.clone(),
        reason,
    })
}

fn secret_ref(secret: &Secret) -> SecretRef {
    SecretRef {
        namespace: secret.metadata.namespace.clone().unwrap_or_default(),
        name: secret.metadata.name.clone().unwrap_or_default(),
    }
}

/// An error that says what to check. Only the API server's status message or the transport
/// error is included, never the Secret's data.
fn api_error(target: &SecretRef, verb: &str, error: kube::Error) -> ManagedSecretError {
    let namespace = &target.namespace;
    let rbac = format!(
        "meshca needs get, list, create and update on secrets in namespace {namespace} (a Role \
         and RoleBinding for its ServiceAccount, or for your kubeconfig user)"
    );
    let reason = match error {
        // Only a replacement (PUT) meets this: Kubernetes refuses to change an immutable Secret.
        kube::Error::Api(status) if status.code == 422 => format!(
            "the API server refused the Secret as invalid on {verb} ({}): an immutable \
             Secret cannot be replaced; delete it and issue again",
            status.message
        ),
        other => super::explain_secret_error(verb, namespace, &rbac, other),
    };
    ManagedSecretError::Api {
        secret: target.clone(),
        reason,
    }
}

/// `2026-11-23T14:48:30Z` (whole seconds, UTC).
fn rfc3339(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at)
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::from(at));
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{at:?}"))
}

fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use meshca_provider::TrustDomain;

    fn record() -> ManagedTlsSecret {
        ManagedTlsSecret {
            identity: Some(SpiffeId::from_short("shop/web", &TrustDomain::default()).unwrap()),
            dns: vec![
                "web.example.com".parse().unwrap(),
                "web.shop.svc".parse().unwrap(),
            ],
            lifetime: Duration::from_secs(90 * 60),
            key_type: KeyType::Rsa2048,
            not_before: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_005_400),
            root_fingerprint: "AB:CD".into(),
        }
    }

    fn secret_with(annotations: BTreeMap<String, String>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("web-tls".into()),
                namespace: Some("shop".into()),
                annotations: Some(annotations),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY_LABEL.into(), MANAGED_BY.into()),
                    (MANAGED_CERTIFICATE_LABEL.into(), "true".into()),
                ])),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE.into()),
            ..Secret::default()
        }
    }

    #[test]
    fn annotations_round_trip() {
        let annotations = record().annotations();
        assert_eq!(
            annotations[IDENTITY_ANNOTATION],
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert_eq!(annotations[DNS_ANNOTATION], "web.example.com,web.shop.svc");
        assert_eq!(annotations[LIFETIME_ANNOTATION], "1h30m");
        assert_eq!(annotations[KEY_TYPE_ANNOTATION], "rsa2048");
        assert_eq!(annotations[NOT_AFTER_ANNOTATION], "2027-01-15T09:30:00Z");
        let back = ManagedTlsSecret::from_secret(&secret_with(annotations)).unwrap();
        assert_eq!(back, record());
    }

    #[test]
    fn a_server_certificate_has_an_empty_identity() {
        let mut server = record();
        server.identity = None;
        let annotations = server.annotations();
        assert_eq!(annotations[IDENTITY_ANNOTATION], "");
        assert_eq!(
            ManagedTlsSecret::from_secret(&secret_with(annotations)).unwrap(),
            server
        );
    }

    #[test]
    fn unreadable_annotations_are_named() {
        let cases = [
            (LIFETIME_ANNOTATION, "soon", "is not a Go duration"),
            (LIFETIME_ANNOTATION, "5s", "of at least 10s"),
            (KEY_TYPE_ANNOTATION, "dsa", "is not a key type"),
            (NOT_AFTER_ANNOTATION, "tomorrow", "is not an RFC 3339 time"),
            (IDENTITY_ANNOTATION, "web", "is not a SPIFFE ID"),
        ];
        for (key, value, expected) in cases {
            let mut annotations = record().annotations();
            annotations.insert(key.into(), value.into());
            let error = ManagedTlsSecret::from_secret(&secret_with(annotations)).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(key), "{message}");
            assert!(message.contains(expected), "{message}");
            assert!(message.contains("shop/web-tls"), "{message}");
        }
        let mut annotations = record().annotations();
        annotations.remove(ROOT_ANNOTATION);
        let message = ManagedTlsSecret::from_secret(&secret_with(annotations))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("meshca.io/root-sha256 is missing"),
            "{message}"
        );
    }

    /// An edited annotation cannot put a name in a certificate that `meshca issue --dns`
    /// would refuse; duplicates are dropped.
    #[test]
    fn dns_annotations_hold_valid_hostnames_only() {
        for (value, rule) in [
            ("web.example.com,a..b", "empty label"),
            ("1.2.3.4", "IP address"),
            ("foo.", "final dot"),
            ("-x.com", "starts or ends with '-'"),
            ("x\u{1b}[2J.example", "control character"),
        ] {
            let mut annotations = record().annotations();
            annotations.insert(DNS_ANNOTATION.into(), value.into());
            let message = ManagedTlsSecret::from_secret(&secret_with(annotations))
                .unwrap_err()
                .to_string();
            assert!(message.contains(DNS_ANNOTATION), "{message}");
            assert!(message.contains(rule), "{value:?}: {message}");
            assert!(!message.contains('\u{1b}'), "{message:?}");
        }
        let mut annotations = record().annotations();
        annotations.insert(
            DNS_ANNOTATION.into(),
            "Web.Example.com, web.example.com,web.shop.svc".into(),
        );
        let read = ManagedTlsSecret::from_secret(&secret_with(annotations)).unwrap();
        assert_eq!(read.dns, ["web.example.com", "web.shop.svc"]);
    }

    #[test]
    fn an_identity_must_be_in_the_secrets_namespace() {
        let own = SecretRef::new("shop", "web-tls").unwrap();
        record().check_namespace(&own).unwrap();
        let other = SecretRef::new("attacker", "web-tls").unwrap();
        let message = record().check_namespace(&other).unwrap_err().to_string();
        assert!(
            message.contains(
                "its meshca.io/identity spiffe://cluster.local/ns/shop/sa/web is not in the \
                 Secret's namespace attacker; not renewed"
            ),
            "{message}"
        );
        assert!(
            message.contains("meshca issue --identity shop/web --secret shop/<name>"),
            "{message}"
        );
        let mut server = record();
        server.identity = None;
        server.check_namespace(&other).unwrap();
    }

    #[test]
    fn only_managed_tls_secrets_pass() {
        let target = SecretRef::new("shop", "web-tls").unwrap();
        let managed = secret_with(BTreeMap::new());
        check_managed(&managed, &target).unwrap();

        let mut foreign = managed.clone();
        foreign.metadata.labels = None;
        let message = check_managed(&foreign, &target).unwrap_err().to_string();
        assert!(
            message.contains("no app.kubernetes.io/managed-by=meshca label"),
            "{message}"
        );
        assert!(message.contains("Nothing was changed"), "{message}");

        let mut helm = managed.clone();
        helm.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(MANAGED_BY_LABEL.into(), "Helm".into());
        let message = check_managed(&helm, &target).unwrap_err().to_string();
        assert!(message.contains("managed-by=Helm"), "{message}");

        let mut bundle = managed.clone();
        bundle.metadata.labels = Some(BTreeMap::from([(
            MANAGED_BY_LABEL.into(),
            MANAGED_BY.into(),
        )]));
        bundle.type_ = Some("Opaque".into());
        let message = check_managed(&bundle, &target).unwrap_err().to_string();
        assert!(message.contains("may be the CA bundle"), "{message}");

        let mut opaque = managed;
        opaque.type_ = Some("Opaque".into());
        let message = check_managed(&opaque, &target).unwrap_err().to_string();
        assert!(message.contains("its type is Opaque"), "{message}");
    }

    #[test]
    fn secret_references_are_checked() {
        let ok: SecretRef = "ingress/gateway-tls".parse().unwrap();
        assert_eq!(ok.to_string(), "ingress/gateway-tls");
        for bad in [
            "gateway-tls",
            "a/b/c",
            "Ingress/x",
            "ingress/",
            "/x",
            "ns/Bad_Name",
        ] {
            let error = bad.parse::<SecretRef>().unwrap_err();
            assert!(
                matches!(error, ManagedSecretError::InvalidReference { .. }),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn material_debug_shows_nothing() {
        let material = TlsMaterial {
            chain_pem: "CHAIN".into(),
            key_pem: Zeroizing::new("-----BEGIN PRIVATE KEY-----".into()),
            trust_bundle_pem: "BUNDLE".into(),
        };
        let debug = format!("{material:?}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
        assert!(!debug.contains("CHAIN"), "{debug}");
    }
}
