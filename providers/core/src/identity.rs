//! Workload identity: a SPIFFE ID `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Why a SPIFFE ID, a trust domain or a `ns/sa` pair was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The ID does not start with `spiffe://`.
    #[error("{input:?} is not a SPIFFE ID: it must start with spiffe://")]
    NotSpiffe {
        /// The text as given.
        input: String,
    },
    /// The trust domain is empty or has characters SPIFFE does not allow.
    #[error("invalid trust domain {trust_domain:?}: {reason}")]
    InvalidTrustDomain {
        /// The trust domain as given.
        trust_domain: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error(
        "{input:?} is not a meshca workload ID: the path must be /ns/<namespace>/sa/<service-account>"
    )]
    InvalidPath {
        /// The text as given.
        input: String,
    },
    /// A `<namespace>/<service-account>` pair without exactly one `/`.
    #[error(
        "{input:?} is not an identity: write <namespace>/<service-account>, e.g. bookstore/bookstore-v2"
    )]
    InvalidShortForm {
        /// The text as given.
        input: String,
    },
    /// The namespace is not a Kubernetes namespace name (an RFC 1123 label).
    #[error("invalid namespace {namespace:?}: {reason}")]
    InvalidNamespace {
        /// The namespace as given.
        namespace: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The service account is not a Kubernetes object name (an RFC 1123 subdomain).
    #[error("invalid service account {service_account:?}: {reason}")]
    InvalidServiceAccount {
        /// The service account as given.
        service_account: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A SPIFFE trust domain, such as `cluster.local`: lowercase letters, digits, `.`, `-`, `_`.
///
/// Cheap to clone: the name is shared.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    /// Validates a trust domain name.
    pub fn new(name: &str) -> Result<Self, IdentityError> {
        let fail = |reason| IdentityError::InvalidTrustDomain {
            trust_domain: name.to_owned(),
            reason,
        };
        if name.is_empty() {
            return Err(fail("it is empty"));
        }
        if name.len() > 255 {
            return Err(fail("it is longer than 255 characters"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(fail(
                "only lowercase letters, digits, '.', '-' and '_' are allowed",
            ));
        }
        Ok(Self(name.into()))
    }

    /// The trust domain's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self(DEFAULT_TRUST_DOMAIN.into())
    }
}

impl FromStr for TrustDomain {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

/// A workload identity: trust domain, namespace and service account.
///
/// Held as its URI, built once: the cache clones, hashes and compares identities on every
/// issuance, so a clone is two reference-count increments and hashing reads one string.
#[derive(Clone)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    uri: Arc<str>,
    /// Where the namespace ends in `uri` (it starts after the trust domain and `/ns/`).
    namespace_end: usize,
}

impl SpiffeId {
    /// Builds an identity from its parts, validating each.
    pub fn new(
        trust_domain: TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        validate_namespace(namespace)?;
        validate_service_account(service_account)?;
        let uri = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        let namespace_end = Self::namespace_start(&trust_domain) + namespace.len();
        Ok(Self {
            trust_domain,
            uri: uri.into(),
            namespace_end,
        })
    }

    fn namespace_start(trust_domain: &TrustDomain) -> usize {
        "spiffe://".len() + trust_domain.as_str().len() + "/ns/".len()
    }

    /// Parses the `<namespace>/<service-account>` form used on the command line and in Envoy
    /// node ids, in the given trust domain.
    pub fn from_short(input: &str, trust_domain: &TrustDomain) -> Result<Self, IdentityError> {
        let mut parts = input.split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(ns), Some(sa), None) => Self::new(trust_domain.clone(), ns, sa),
            _ => Err(IdentityError::InvalidShortForm {
                input: input.to_owned(),
            }),
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.uri[Self::namespace_start(&self.trust_domain)..self.namespace_end]
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.uri[self.namespace_end + "/sa/".len()..]
    }

    /// The URI form, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` (what
    /// `Display` writes), without allocating.
    pub fn as_uri(&self) -> &str {
        &self.uri
    }

    /// The `<namespace>/<service-account>` form.
    pub fn short(&self) -> String {
        format!("{}/{}", self.namespace(), self.service_account())
    }

    /// The parts in the order identities sort by.
    fn parts(&self) -> (&TrustDomain, &str, &str) {
        (&self.trust_domain, self.namespace(), self.service_account())
    }
}

// The URI determines the parts and the parts the URI (none of them may contain '/'), so
// equality and hashing need only the URI.
impl PartialEq for SpiffeId {
    fn eq(&self, other: &Self) -> bool {
        self.uri == other.uri
    }
}

impl Eq for SpiffeId {}

impl std::hash::Hash for SpiffeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.uri.hash(state);
    }
}

impl PartialOrd for SpiffeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// By trust domain, then namespace, then service account.
impl Ord for SpiffeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let rest = input
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::NotSpiffe {
                input: input.to_owned(),
            })?;
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        let trust_domain = TrustDomain::new(trust_domain)?;
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            ["ns", ns, "sa", sa] => Self::new(trust_domain, ns, sa),
            _ => Err(IdentityError::InvalidPath {
                input: input.to_owned(),
            }),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

fn validate_namespace(namespace: &str) -> Result<(), IdentityError> {
    dns_label_problem(namespace, 63).map_or(Ok(()), |reason| {
        Err(IdentityError::InvalidNamespace {
            namespace: namespace.to_owned(),
            reason,
        })
    })
}

fn validate_service_account(service_account: &str) -> Result<(), IdentityError> {
    let problem = if service_account.len() > 253 {
        Some("it is longer than 253 characters")
    } else {
        service_account
            .split('.')
            .find_map(|label| dns_label_problem(label, 63))
    };
    problem.map_or(Ok(()), |reason| {
        Err(IdentityError::InvalidServiceAccount {
            service_account: service_account.to_owned(),
            reason,
        })
    })
}

/// What makes `label` an invalid RFC 1123 label, if anything.
fn dns_label_problem(label: &str, max: usize) -> Option<&'static str> {
    if label.is_empty() {
        return Some("it is empty");
    }
    if label.len() > max {
        return Some("it is longer than 63 characters");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("only lowercase letters, digits and '-' are allowed");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Some("it must start and end with a letter or digit");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in [
            "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2",
            "spiffe://example.org/ns/default/sa/default",
            "spiffe://a_b-c.d/ns/x/sa/y.z",
            "spiffe://cluster.local/ns/a1/sa/1a",
        ] {
            let id: SpiffeId = text.parse().unwrap();
            assert_eq!(id.to_string(), text);
            assert_eq!(id.to_string().parse::<SpiffeId>().unwrap(), id);
        }
    }

    #[test]
    fn parts_and_names() {
        let id: SpiffeId = "spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.namespace(), "bookstore");
        assert_eq!(id.service_account(), "bookstore-v2");
        assert_eq!(id.short(), "bookstore/bookstore-v2");
        let short =
            SpiffeId::from_short("bookstore/bookstore-v2", &TrustDomain::default()).unwrap();
        assert_eq!(short, id);
    }

    #[test]
    fn bad_inputs_get_specific_errors() {
        type Check = fn(&IdentityError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("cluster.local/ns/a/sa/b", |e| {
                matches!(e, IdentityError::NotSpiffe { .. })
            }),
            ("http://cluster.local/ns/a/sa/b", |e| {
                matches!(e, IdentityError::NotSpiffe { .. })
            }),
            ("spiffe:///ns/a/sa/b", |e| {
                matches!(e, IdentityError::InvalidTrustDomain { .. })
            }),
            ("spiffe://Cluster.Local/ns/a/sa/b", |e| {
                matches!(e, IdentityError::InvalidTrustDomain { .. })
            }),
            ("spiffe://cluster.local", |e| {
                matches!(e, IdentityError::InvalidPath { .. })
            }),
            ("spiffe://cluster.local/", |e| {
                matches!(e, IdentityError::InvalidPath { .. })
            }),
            ("spiffe://cluster.local/ns/a", |e| {
                matches!(e, IdentityError::InvalidPath { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b/", |e| {
                matches!(e, IdentityError::InvalidPath { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b/c", |e| {
                matches!(e, IdentityError::InvalidPath { .. })
            }),
            ("spiffe://cluster.local/sa/b/ns/a", |e| {
                matches!(e, IdentityError::InvalidPath { .. })
            }),
            ("spiffe://cluster.local/ns//sa/b", |e| {
                matches!(e, IdentityError::InvalidNamespace { .. })
            }),
            ("spiffe://cluster.local/ns/A/sa/b", |e| {
                matches!(e, IdentityError::InvalidNamespace { .. })
            }),
            ("spiffe://cluster.local/ns/-a/sa/b", |e| {
                matches!(e, IdentityError::InvalidNamespace { .. })
            }),
            ("spiffe://cluster.local/ns/a.b/sa/b", |e| {
                matches!(e, IdentityError::InvalidNamespace { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/", |e| {
                matches!(e, IdentityError::InvalidServiceAccount { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b..c", |e| {
                matches!(e, IdentityError::InvalidServiceAccount { .. })
            }),
            ("spiffe://cluster.local/ns/a/sa/b%2fc", |e| {
                matches!(e, IdentityError::InvalidServiceAccount { .. })
            }),
        ];
        for (text, is_expected) in cases {
            let err = text.parse::<SpiffeId>().expect_err(text);
            assert!(is_expected(&err), "{text:?} gave {err:?}");
        }
        let long_ns = format!("spiffe://cluster.local/ns/{}/sa/b", "a".repeat(64));
        assert!(matches!(
            long_ns.parse::<SpiffeId>(),
            Err(IdentityError::InvalidNamespace { .. })
        ));
        let td = TrustDomain::default();
        for bad in ["a", "a/b/c", "/b", "a/"] {
            assert!(SpiffeId::from_short(bad, &td).is_err(), "{bad}");
        }
        assert!(matches!(
            SpiffeId::from_short("a/b/c", &td),
            Err(IdentityError::InvalidShortForm { .. })
        ));
    }
}
