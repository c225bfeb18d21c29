//! Checks of values that parse but make no sense, each error naming its key and what to write.

use std::net::SocketAddr;

use meshca_provider::{SpiffeId, TrustDomain};

use super::{Config, ConfigError, ProviderKind, SdsAuth};

impl Config {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        TrustDomain::new(&self.trust_domain).map_err(|e| ConfigError::InvalidValue {
            key: "trustDomain",
            reason: e.to_string(),
        })?;
        if !is_dns_label(&self.namespace) {
            return Err(ConfigError::InvalidValue {
                key: "namespace",
                reason: format!(
                    "{:?} is not a Kubernetes namespace name (lower-case letters, digits and '-', \
                     at most 63 characters; default meshca-system)",
                    self.namespace
                ),
            });
        }
        if !is_dns_subdomain(&self.ca_bundle_secret_name) {
            return Err(ConfigError::InvalidValue {
                key: "caBundleSecretName",
                reason: format!(
                    "{:?} is not a Kubernetes object name (lower-case letters, digits, '-' and \
                     '.', at most 253 characters; default meshca-ca-bundle)",
                    self.ca_bundle_secret_name
                ),
            });
        }
        self.check_lifetimes()?;
        self.istio.validate()?;
        self.trust_distribution.validate()?;
        self.jwt_svid.validate()?;
        self.workload_api.validate(&self.trust_domain())?;
        // `renewal.*`: the cache's own validator, the one place their rules live.
        self.cache_settings().validate().map_err(|e| match e {
            crate::cache::CacheError::InvalidSettings { field, reason } => {
                ConfigError::InvalidValue { key: field, reason }
            }
            other => ConfigError::InvalidValue {
                key: "renewal",
                reason: other.to_string(),
            },
        })?;
        let r = &self.renewal;
        if self.rotation.poll_interval.is_zero() {
            return Err(ConfigError::InvalidValue {
                key: "rotation.pollInterval",
                reason: "must be above zero (default 10s)".to_owned(),
            });
        }
        if self.certificate_provider.kind == ProviderKind::CertManager {
            self.cert_manager
                .validate()
                .map_err(|e| ConfigError::InvalidValue {
                    key: "certManager",
                    reason: e.to_string(),
                })?;
            if self.cert_manager.timeout >= r.issue_timeout {
                return Err(ConfigError::InvalidValue {
                    key: "certManager.timeout",
                    reason: format!(
                        "{} is not shorter than renewal.issueTimeout ({}): the daemon would give \
                         up first, without cert-manager's reason; lower certManager.timeout or \
                         raise renewal.issueTimeout",
                        meshca_provider::format_duration(self.cert_manager.timeout),
                        meshca_provider::format_duration(r.issue_timeout)
                    ),
                });
            }
        }
        if self.certificate_provider.kind == ProviderKind::Vault
            && self.vault.mode == meshca_vault::VaultMode::Upstream
        {
            let policy = self.upstream_policy();
            self.vault
                .upstream
                .check_covers(
                    policy.longest_leaf,
                    policy.renew_fraction,
                    policy.jitter_fraction,
                )
                .map_err(|e| ConfigError::InvalidValue {
                    key: "vault.upstream.intermediateTtl",
                    reason: match e {
                        meshca_vault::SettingsError::Invalid { value, reason, .. } => {
                            format!("{value}: {reason}")
                        }
                        other => other.to_string(),
                    },
                })?;
        }
        for (key, text) in [
            ("sds.listen", &self.sds.listen),
            ("admin.listen", &self.admin.listen),
        ] {
            if !text.is_empty() && text.parse::<SocketAddr>().is_err() {
                return Err(ConfigError::InvalidValue {
                    key,
                    reason: format!(
                        "{text:?} is not an address: write IP:PORT, e.g. 127.0.0.1:15010, or \"\" to disable"
                    ),
                });
            }
        }
        if self.sds.listen.is_empty() && self.sds.unix_socket.is_empty() {
            return Err(ConfigError::InvalidValue {
                key: "sds.listen",
                reason: "both sds.listen and sds.unixSocket are empty: SDS needs a listener"
                    .to_owned(),
            });
        }
        SpiffeId::from_short(&self.sds.server_identity, &self.trust_domain()).map_err(|e| {
            ConfigError::InvalidValue {
                key: "sds.serverIdentity",
                reason: e.to_string(),
            }
        })?;
        self.unix_peers()?;
        self.unix_socket_mode()?;
        self.unix_socket_group()?;
        self.sds.validate_limits()?;
        if self.sds.auth == SdsAuth::UnixPeer && self.sds.unix_socket.is_empty() {
            return Err(ConfigError::InvalidValue {
                key: "sds.auth",
                reason: "unix-peer authentication needs sds.unixSocket".to_owned(),
            });
        }
        self.extra_trusted_roots()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(ConfigError::InvalidValue {
                key: "log.level",
                reason: format!(
                    "{:?} is not a log filter ({e}): use a level such as info or debug, or meshca=debug,info",
                    self.log.level
                ),
            });
        }
        Ok(())
    }

    /// The leaf lifetime policy ([`crate::lifetime`]): both maxima above the minimum, the
    /// default workload lifetime inside its range, a generated root able to cover the longest
    /// leaf.
    fn check_lifetimes(&self) -> Result<(), ConfigError> {
        use crate::lifetime::{LeafKind, MAX_SERVER_KEY, MAX_WORKLOAD_KEY};
        let provider = &self.certificate_provider;
        for (kind, key) in [
            (LeafKind::Workload, MAX_WORKLOAD_KEY),
            (LeafKind::Server, MAX_SERVER_KEY),
        ] {
            let policy = provider.lifetime_policy(kind);
            policy
                .check(policy.max)
                .map_err(|e| ConfigError::InvalidValue {
                    key,
                    reason: e.to_string(),
                })?;
        }
        provider
            .lifetime_policy(LeafKind::Workload)
            .check(provider.service_cert_validity_duration)
            .map_err(|e| ConfigError::InvalidValue {
                key: "certificateProvider.serviceCertValidityDuration",
                reason: format!("{e} (default 24h)"),
            })?;
        crate::lifetime::check_ca_lifetime(
            "root (tresor.rootValidityDuration)",
            self.tresor.root_validity_duration,
            provider.longest_leaf(),
        )
        .map_err(|e| ConfigError::InvalidValue {
            key: "tresor.rootValidityDuration",
            reason: e.to_string(),
        })
    }
}

/// A DNS-1123 label: what Kubernetes accepts as a namespace name.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A DNS-1123 subdomain: what Kubernetes accepts as most object names (Secrets included).
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::super::testing::load;
    use crate::config::{Config, ConfigError, Overrides};

    #[test]
    fn nonsense_values_are_refused() {
        for (key, value) in [
            ("renewal.fraction", "1.5"),
            ("renewal.jitter", "0.6"),
            ("certificateProvider.serviceCertValidityDuration", "1s"),
            ("certificateProvider.serviceCertValidityDuration", "2161h"),
            ("certificateProvider.maxServiceCertValidityDuration", "5s"),
            ("certificateProvider.maxServerCertValidityDuration", "0s"),
            ("tresor.rootValidityDuration", "0s"),
            ("tresor.rootValidityDuration", "720h"),
            ("sds.listen", "localhost"),
            ("trustDomain", "Not Valid"),
            ("renewal.issueTimeout", "0s"),
            ("log.level", "meshca=loud"),
            ("sds.unixPeers", "1000:a/b"),
            ("sds.unixSocketMode", "0999"),
            ("sds.unixSocketMode", "01777"),
            ("sds.unixSocketGroup", "no-such-group-here"),
            ("sds.unixPeers", "root=a/b"),
            ("sds.serverIdentity", "meshca"),
            ("sds.auth", "unix-peer"),
            ("sds.maxStreamsPerIdentity", "0"),
            ("sds.maxConnections", "0"),
            ("sds.handshakeTimeout", "0s"),
            ("sds.prefaceTimeout", "0s"),
            ("sds.firstRequestTimeout", "0s"),
            ("sds.connectionIdleTimeout", "0s"),
        ] {
            let mut overrides = Overrides::default();
            overrides.set(&format!("{key}={value}")).unwrap();
            let err = Config::load(None, &overrides).unwrap_err();
            assert!(
                matches!(err, ConfigError::InvalidValue { .. }),
                "{key}={value}: {err}"
            );
        }
    }

    #[test]
    fn an_upstream_intermediate_too_short_for_the_leaves_is_refused_at_load() {
        let upstream = [
            "certificateProvider.kind=vault",
            "vault.host=vault.example",
            "vault.token=t",
            "vault.mode=upstream",
        ];
        // The default 72h covers the default 24h leaves.
        load(&upstream).unwrap();
        let err = load(&[&upstream[..], &["vault.upstream.intermediateTtl=24h"]].concat())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid value for vault.upstream.intermediateTtl: 24h: renewed at 50% (± 10%) of \
             its life, the intermediate would have less than the longest leaf (24h) left when it \
             is renewed: set it to at least 60h, or shorten \
             certificateProvider.serviceCertValidityDuration"
        );
        load(
            &[
                &upstream[..],
                &[
                    "vault.upstream.intermediateTtl=24h",
                    "certificateProvider.serviceCertValidityDuration=1h",
                ],
            ]
            .concat(),
        )
        .unwrap();
        // Sign mode has no intermediate to check.
        load(&[&upstream[..3], &["vault.upstream.intermediateTtl=1h"]].concat()).unwrap();
    }

    #[test]
    fn lifetimes_outside_the_policy_name_the_limit_and_its_key() {
        let err = load(&["certificateProvider.serviceCertValidityDuration=2200h"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("certificateProvider.serviceCertValidityDuration")
                && err.contains("2200h is greater than the maximum allowed 2160h")
                && err.contains("raise certificateProvider.maxServiceCertValidityDuration"),
            "{err}"
        );
        // Raising the maximum makes room for it; the root must still cover the longest leaf.
        let config = load(&[
            "certificateProvider.serviceCertValidityDuration=2200h",
            "certificateProvider.maxServiceCertValidityDuration=2200h",
        ])
        .unwrap();
        assert_eq!(
            config
                .certificate_provider
                .max_service_cert_validity_duration,
            Duration::from_secs(2200 * 3600)
        );
        let err = load(&["tresor.rootValidityDuration=4000h"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tresor.rootValidityDuration")
                && err.contains("shorter than the longest leaf it must cover (8760h"),
            "{err}"
        );
        load(&[
            "tresor.rootValidityDuration=4000h",
            "certificateProvider.maxServerCertValidityDuration=4000h",
        ])
        .unwrap();
    }
}
