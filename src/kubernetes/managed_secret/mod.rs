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
//!
//! This file holds the names (labels, keys, annotations), the errors and [`SecretRef`];
//! `record.rs` what a Secret's annotations record ([`ManagedTlsSecret`]) and the PEM it holds
//! ([`TlsMaterial`]); `writer.rs` the read-then-write protocol ([`TlsSecretWriter`]) and
//! [`list_managed`].

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use meshca_provider::SpiffeId;

use crate::config::{is_dns_label, is_dns_subdomain};

mod record;
mod writer;

pub use record::{ManagedTlsSecret, TlsMaterial};
pub use writer::{ListedSecret, Replaced, TlsSecretWriter, Written, list_managed};

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

    use std::collections::BTreeMap;
    use std::time::Duration;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use meshca_provider::KeyType;
    use zeroize::Zeroizing;

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
