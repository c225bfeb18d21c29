//! The names meshca gives a CertificateRequest: its `generateName` prefix, the identity
//! annotation and the label-safe identity label the garbage collector and operators select on.

use meshca_provider::LeafSpec;
use meshca_provider::x509::sha256;

/// The identity a request is for: the SPIFFE ID, else the first DNS name.
pub(crate) fn identity_of(spec: &LeafSpec) -> String {
    spec.spiffe_id.as_ref().map_or_else(
        || {
            spec.dns_names
                .first()
                .map(ToString::to_string)
                .unwrap_or_default()
        },
        ToString::to_string,
    )
}

/// A label value (at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends) for
/// `identity`: `spiffe://cluster.local/ns/bookstore/sa/bookstore-v2` →
/// `cluster.local_bookstore_bookstore-v2`; longer ones are cut and end with a hash of the
/// whole identity, so they stay distinct.
pub fn label_value(identity: &str) -> String {
    let short = match identity.strip_prefix("spiffe://") {
        Some(rest) => rest.replace("/ns/", "_").replace("/sa/", "_"),
        None => identity.to_owned(),
    };
    let cleaned: String = short
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trim = |s: &str| {
        s.trim_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_owned()
    };
    let cleaned = trim(&cleaned);
    if cleaned.len() <= 63 && cleaned == short {
        return cleaned;
    }
    let digest = sha256(identity.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let head = trim(&cleaned.chars().take(54).collect::<String>());
    if head.is_empty() {
        hash
    } else {
        format!("{head}-{hash}")
    }
}

/// `generateName` for a request: `meshca-<service account or DNS name>-`.
pub(crate) fn name_prefix(identity: &str) -> String {
    let last = identity.rsplit('/').next().unwrap_or_default();
    let cleaned: String = last
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if cleaned.is_empty() {
        "meshca-".to_owned()
    } else {
        format!("meshca-{cleaned}-")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_label_safe() {
        assert_eq!(
            label_value("spiffe://cluster.local/ns/bookstore/sa/bookstore-v2"),
            "cluster.local_bookstore_bookstore-v2"
        );
        assert_eq!(
            label_value("webhook.meshca-system.svc"),
            "webhook.meshca-system.svc"
        );
        let long = format!("spiffe://cluster.local/ns/{}/sa/sa", "n".repeat(60));
        let value = label_value(&long);
        assert!(value.len() <= 63, "{value}");
        assert_ne!(
            value,
            label_value(&format!(
                "spiffe://cluster.local/ns/{}/sa/sb",
                "n".repeat(60)
            ))
        );
        let odd = label_value("spiffe://td/ns/a/sa/b:c");
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{odd}"
        );
        assert_eq!(
            name_prefix("spiffe://cluster.local/ns/a/sa/Book.Store"),
            "meshca-book-store-"
        );
    }
}
