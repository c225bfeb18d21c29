//! The provider's settings: the `certManager:` section of meshca's configuration.

use std::time::Duration;

use meshca_provider::duration::serde_go;
use serde::{Deserialize, Serialize};

/// Default name of the Issuer (or ClusterIssuer) that signs meshca's requests.
pub const DEFAULT_ISSUER_NAME: &str = "meshca-ca";
/// Default kind of the issuer.
pub const DEFAULT_ISSUER_KIND: &str = "Issuer";
/// cert-manager's own API group, the default issuer group.
pub const CERT_MANAGER_GROUP: &str = "cert-manager.io";
/// Default namespace of the CertificateRequests (and of a namespaced Issuer).
pub const DEFAULT_NAMESPACE: &str = "meshca-system";
/// Default name of the CA bundle Secret whose `ca.crt` is the trust bundle.
pub const DEFAULT_CA_BUNDLE_SECRET: &str = "meshca-ca-bundle";
/// Default limit on waiting for one CertificateRequest to become Ready: under the daemon's
/// default `renewal.issueTimeout` (30s), so the provider's explanation is what gets reported.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25);
/// Default age past which a labelled CertificateRequest is stale (left by a crash).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(15 * 60);

/// Settings of the cert-manager provider.
///
/// ```yaml
/// certManager:
///   issuerName: meshca-ca
///   issuerKind: ClusterIssuer
///   issuerGroup: cert-manager.io
///   namespace: meshca-system
///   timeout: 25s
///   preserveCertificateRequests: false
///   staleRequestAge: 15m
///   caBundleSecret: { name: meshca-ca-bundle, namespace: meshca-system }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CertManagerSettings {
    /// Name of the issuer that signs meshca's CertificateRequests.
    pub issuer_name: String,
    /// `Issuer` (in `namespace`) or `ClusterIssuer`; an external issuer's own kind when
    /// `issuerGroup` is not cert-manager.io.
    pub issuer_kind: String,
    /// API group of the issuer: `cert-manager.io`, or an external issuer's group
    /// (e.g. `awspca.cert-manager.io`).
    pub issuer_group: String,
    /// Namespace the CertificateRequests are created in.
    pub namespace: String,
    /// Longest wait for one request to become Ready.
    #[serde(with = "serde_go")]
    pub timeout: Duration,
    /// Keep each CertificateRequest after use (for debugging) instead of deleting it. Stale
    /// requests are then not garbage-collected either.
    pub preserve_certificate_requests: bool,
    /// Labelled CertificateRequests older than this are deleted by the garbage collector
    /// (at start and then at most once per this period). Must be longer than `timeout`, so a
    /// request another replica is still waiting for is never collected.
    #[serde(with = "serde_go")]
    pub stale_request_age: Duration,
    /// The Secret whose `ca.crt` is the trust bundle returned chains must verify against.
    pub ca_bundle_secret: CaBundleSecret,
}

impl Default for CertManagerSettings {
    fn default() -> Self {
        Self {
            issuer_name: DEFAULT_ISSUER_NAME.to_owned(),
            issuer_kind: DEFAULT_ISSUER_KIND.to_owned(),
            issuer_group: CERT_MANAGER_GROUP.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            preserve_certificate_requests: false,
            stale_request_age: DEFAULT_STALE_AFTER,
            ca_bundle_secret: CaBundleSecret::default(),
        }
    }
}

/// `certManager.caBundleSecret`: where the trust bundle is read. An empty `name` means "not
/// configured": the bundle is then each request's `status.ca`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CaBundleSecret {
    /// The Secret's name; empty to use `status.ca` instead.
    pub name: String,
    /// The Secret's namespace.
    pub namespace: String,
}

impl Default for CaBundleSecret {
    fn default() -> Self {
        Self {
            name: DEFAULT_CA_BUNDLE_SECRET.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid certManager.{key}: {reason}")]
pub struct SettingsError {
    /// The key under `certManager`, e.g. `issuerKind`.
    pub key: &'static str,
    /// What is wrong and what is allowed.
    pub reason: String,
}

impl CertManagerSettings {
    /// Checks the settings; every error names the key and what to write instead.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |key, reason: String| Err(SettingsError { key, reason });
        if let Err(reason) = check_name(&self.issuer_name, 253) {
            return bad("issuerName", format!("{:?}: {reason}", self.issuer_name));
        }
        if let Err(reason) = check_name(&self.issuer_group, 253) {
            return bad("issuerGroup", format!("{:?}: {reason}", self.issuer_group));
        }
        if self.issuer_group == CERT_MANAGER_GROUP
            && !matches!(self.issuer_kind.as_str(), "Issuer" | "ClusterIssuer")
        {
            return bad(
                "issuerKind",
                format!(
                    "{:?}: cert-manager.io issuers are of kind Issuer or ClusterIssuer (set \
                     issuerGroup for an external issuer with a kind of its own)",
                    self.issuer_kind
                ),
            );
        }
        if self.issuer_kind.is_empty()
            || !self.issuer_kind.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return bad(
                "issuerKind",
                format!(
                    "{:?}: expected a kind such as Issuer or ClusterIssuer",
                    self.issuer_kind
                ),
            );
        }
        if let Err(reason) = check_name(&self.namespace, 63) {
            return bad("namespace", format!("{:?}: {reason}", self.namespace));
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be more than 0, e.g. 60s".to_owned());
        }
        if self.stale_request_age <= self.timeout {
            return bad(
                "staleRequestAge",
                format!(
                    "{} is not longer than certManager.timeout ({}): requests still being \
                     waited for would be collected; use e.g. 15m",
                    meshca_provider::format_duration(self.stale_request_age),
                    meshca_provider::format_duration(self.timeout)
                ),
            );
        }
        if !self.ca_bundle_secret.name.is_empty() {
            if let Err(reason) = check_name(&self.ca_bundle_secret.name, 253) {
                return bad(
                    "caBundleSecret.name",
                    format!(
                        "{:?}: {reason} (or \"\" to trust each request's status.ca)",
                        self.ca_bundle_secret.name
                    ),
                );
            }
            if let Err(reason) = check_name(&self.ca_bundle_secret.namespace, 63) {
                return bad(
                    "caBundleSecret.namespace",
                    format!("{:?}: {reason}", self.ca_bundle_secret.namespace),
                );
            }
        }
        Ok(())
    }

    /// The issuer as people name it in messages: `ClusterIssuer meshca-ca` or
    /// `Issuer meshca-system/meshca-ca`, with the group when it is not cert-manager's.
    pub fn issuer(&self) -> String {
        let kind = if self.issuer_group == CERT_MANAGER_GROUP {
            self.issuer_kind.clone()
        } else {
            format!("{}.{}", self.issuer_kind, self.issuer_group)
        };
        if self.is_cluster_issuer() {
            format!("{kind} {}", self.issuer_name)
        } else {
            format!("{kind} {}/{}", self.namespace, self.issuer_name)
        }
    }
}

impl CertManagerSettings {
    /// The `kubectl describe` command that shows the issuer's status.
    pub fn describe_issuer_command(&self) -> String {
        let resource = if self.issuer_group == CERT_MANAGER_GROUP {
            self.issuer_kind.to_lowercase()
        } else {
            format!("{}.{}", self.issuer_kind.to_lowercase(), self.issuer_group)
        };
        if self.is_cluster_issuer() {
            format!("kubectl describe {resource} {}", self.issuer_name)
        } else {
            format!(
                "kubectl describe {resource} {} -n {}",
                self.issuer_name, self.namespace
            )
        }
    }

    fn is_cluster_issuer(&self) -> bool {
        self.issuer_kind.contains("Cluster")
    }
}

/// A Kubernetes object name (DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`,
/// starting and ending alphanumeric) of at most `max` characters.
fn check_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if name.len() > max {
        return Err(format!("longer than {max} characters"));
    }
    let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !name.chars().all(valid_char) || !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Err(
            "not a Kubernetes name: use lowercase letters, digits, '-' and '.', starting and \
             ending with a letter or digit"
                .to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented() {
        let settings = CertManagerSettings::default();
        settings.validate().unwrap();
        assert_eq!(settings.issuer(), "Issuer meshca-system/meshca-ca");
        assert_eq!(settings.timeout, Duration::from_secs(25));
    }

    #[test]
    fn rejects_what_cannot_work() {
        let with = |f: fn(&mut CertManagerSettings)| {
            let mut s = CertManagerSettings::default();
            f(&mut s);
            s.validate().unwrap_err()
        };
        assert_eq!(with(|s| s.issuer_kind = "Isuer".into()).key, "issuerKind");
        assert_eq!(
            with(|s| s.issuer_name = "Meshca_CA".into()).key,
            "issuerName"
        );
        assert_eq!(with(|s| s.namespace = String::new()).key, "namespace");
        assert_eq!(with(|s| s.timeout = Duration::ZERO).key, "timeout");
        let error = with(|s| s.stale_request_age = Duration::from_secs(20));
        assert_eq!(error.key, "staleRequestAge");
        assert!(
            error.to_string().contains("certManager.staleRequestAge"),
            "{error}"
        );
        // An external issuer brings its own kind.
        let external = CertManagerSettings {
            issuer_group: "awspca.cert-manager.io".into(),
            issuer_kind: "AWSPCAClusterIssuer".into(),
            ..CertManagerSettings::default()
        };
        external.validate().unwrap();
        assert_eq!(
            external.issuer(),
            "AWSPCAClusterIssuer.awspca.cert-manager.io meshca-ca"
        );
        // An empty Secret name means status.ca and is not checked further.
        let mut status_ca = CertManagerSettings::default();
        status_ca.ca_bundle_secret.name = String::new();
        status_ca.ca_bundle_secret.namespace = String::new();
        status_ca.validate().unwrap();
    }

    #[test]
    fn reads_the_camel_case_yaml() {
        let settings: CertManagerSettings = serde_yaml::from_str(
            "issuerName: mesh-issuer\nissuerKind: ClusterIssuer\ntimeout: 2m\n\
             preserveCertificateRequests: true\ncaBundleSecret: { name: fsm-ca-bundle }\n",
        )
        .unwrap();
        assert_eq!(settings.issuer_name, "mesh-issuer");
        assert_eq!(settings.issuer_kind, "ClusterIssuer");
        assert_eq!(settings.timeout, Duration::from_secs(120));
        assert!(settings.preserve_certificate_requests);
        assert_eq!(settings.ca_bundle_secret.name, "fsm-ca-bundle");
        assert_eq!(settings.ca_bundle_secret.namespace, "meshca-system");
        assert_eq!(settings.issuer(), "ClusterIssuer mesh-issuer");
        assert_eq!(
            settings.describe_issuer_command(),
            "kubectl describe clusterissuer mesh-issuer"
        );
        assert!(serde_yaml::from_str::<CertManagerSettings>("issuer_name: x\n").is_err());
    }
}
