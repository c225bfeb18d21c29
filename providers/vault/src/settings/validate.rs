//! Checks of the address, the PKI path, the role and the namespace.

use super::{DEFAULT_PKI_PATH, DEFAULT_PORT, DEFAULT_ROLE, SettingsError, VaultSettings};

impl VaultSettings {
    /// Checks every setting, including that credentials resolve (which may read `VAULT_TOKEN`).
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.address()?;
        self.pki_path()?;
        self.role_name()?;
        self.namespace()?;
        match self.auth() {
            // The reader of a Kubernetes Secret is supplied when connecting.
            Err(SettingsError::NeedsTokenSource) => {}
            other => {
                other?;
            }
        }
        if self.request_timeout.is_zero() {
            return Err(SettingsError::Invalid {
                key: "vault.requestTimeout",
                value: "0s".to_owned(),
                reason: "must be more than zero, e.g. 30s".to_owned(),
            });
        }
        Ok(())
    }

    /// The normalised address, e.g. `https://vault.vault.svc:8200` (no trailing slash).
    pub fn address(&self) -> Result<String, SettingsError> {
        let host = self.host.trim();
        let address = self
            .address
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty());
        match (address, host.is_empty()) {
            (Some(address), true) => parse_address(address),
            (Some(address), false) => Err(SettingsError::ConflictingAddress {
                address: address.to_owned(),
                host: host.to_owned(),
            }),
            (None, true) => Err(SettingsError::MissingAddress),
            (None, false) => {
                if host.contains("://") || host.contains('/') {
                    return Err(SettingsError::Invalid {
                        key: "vault.host",
                        value: host.to_owned(),
                        reason: "a host name or IP address only: put the scheme in \
                                 vault.protocol and the port in vault.port, or use vault.address"
                            .to_owned(),
                    });
                }
                if self.port == 0 {
                    return Err(SettingsError::Invalid {
                        key: "vault.port",
                        value: "0".to_owned(),
                        reason: format!("must be a TCP port, Vault's default is {DEFAULT_PORT}"),
                    });
                }
                let bracketed = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host.to_owned()
                };
                let url = format!("{}://{bracketed}:{}", self.protocol.scheme(), self.port);
                parse_address(&url).map_err(|e| match e {
                    SettingsError::Invalid { reason, .. } => SettingsError::Invalid {
                        key: "vault.host",
                        value: host.to_owned(),
                        reason,
                    },
                    other => other,
                })
            }
        }
    }

    /// The PKI mount path without surrounding slashes.
    pub fn pki_path(&self) -> Result<&str, SettingsError> {
        if let Some(path) = mount_path(&self.pki_path) {
            Ok(path)
        } else {
            Err(SettingsError::Invalid {
                key: "vault.pkiPath",
                value: self.pki_path.clone(),
                reason: format!(
                    "the mount path of the PKI secrets engine, e.g. {DEFAULT_PKI_PATH} or \
                     pki_int (letters, digits, - _ . /)"
                ),
            })
        }
    }

    /// The PKI role name.
    pub fn role_name(&self) -> Result<&str, SettingsError> {
        let role = self.role.trim();
        if !role.is_empty()
            && role
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            Ok(role)
        } else {
            Err(SettingsError::Invalid {
                key: "vault.role",
                value: self.role.clone(),
                reason: format!(
                    "the name of a role under the PKI mount, e.g. {DEFAULT_ROLE} (letters, \
                     digits, - _ .)"
                ),
            })
        }
    }

    /// The namespace, if one is set.
    pub fn namespace(&self) -> Result<Option<&str>, SettingsError> {
        let Some(namespace) = self
            .namespace
            .as_deref()
            .map(|n| n.trim().trim_matches('/'))
        else {
            return Ok(None);
        };
        if namespace.is_empty() {
            return Ok(None);
        }
        if namespace
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(SettingsError::Invalid {
                key: "vault.namespace",
                value: namespace.to_owned(),
                reason: "a namespace path such as team-a or team-a/meshca".to_owned(),
            });
        }
        Ok(Some(namespace))
    }
}

/// A mount path (PKI engine or auth method) without surrounding slashes, if it is one: it goes
/// into request URLs, so only letters, digits and `- _ . /`, and no empty, `.` or `..` segment.
pub(super) fn mount_path(text: &str) -> Option<&str> {
    let path = text.trim().trim_matches('/');
    let valid = !path.is_empty()
        && !path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    valid.then_some(path)
}

fn parse_address(text: &str) -> Result<String, SettingsError> {
    let invalid = |reason: String| SettingsError::Invalid {
        key: "vault.address",
        value: text.to_owned(),
        reason,
    };
    let url = reqwest::Url::parse(text).map_err(|e| {
        invalid(format!(
            "{e}: write a URL such as https://vault.vault.svc:8200"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https".to_owned()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host".to_owned()));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid(
            "only scheme, host, port and an optional path prefix are allowed".to_owned(),
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::settings::testing::with_host;

    #[test]
    fn addresses_are_normalised_or_refused_with_the_setting_named() {
        assert_eq!(
            with_host("127.0.0.1").address().unwrap(),
            "http://127.0.0.1:8200"
        );
        assert_eq!(with_host("::1").address().unwrap(), "http://[::1]:8200");
        let explicit = VaultSettings {
            address: Some("https://vault.example:443/".into()),
            ..VaultSettings::default()
        };
        assert_eq!(explicit.address().unwrap(), "https://vault.example");
        let err = with_host("https://vault:8200").address().unwrap_err();
        assert!(err.to_string().contains("vault.host"), "{err}");
        let err = VaultSettings {
            port: 0,
            ..with_host("vault")
        }
        .address()
        .unwrap_err();
        assert!(err.to_string().contains("vault.port"), "{err}");
        let both = VaultSettings {
            address: Some("http://a:1".into()),
            ..with_host("b")
        };
        assert!(matches!(
            both.address(),
            Err(SettingsError::ConflictingAddress { .. })
        ));
        let ftp = VaultSettings {
            address: Some("ftp://vault".into()),
            ..VaultSettings::default()
        };
        assert!(
            ftp.address()
                .unwrap_err()
                .to_string()
                .contains("http or https")
        );
    }
    #[test]
    fn paths_and_names_are_checked() {
        for bad in ["", "/", "pki//x", "../pki", "pki path"] {
            let settings = VaultSettings {
                pki_path: bad.into(),
                ..with_host("vault")
            };
            let err = settings.validate().unwrap_err();
            assert!(err.to_string().contains("vault.pkiPath"), "{bad:?}: {err}");
        }
        let settings = VaultSettings {
            role: "a/b".into(),
            ..with_host("vault")
        };
        assert!(
            settings
                .validate()
                .unwrap_err()
                .to_string()
                .contains("vault.role")
        );
        let settings = VaultSettings {
            request_timeout: Duration::ZERO,
            ..with_host("vault")
        };
        assert!(
            settings
                .validate()
                .unwrap_err()
                .to_string()
                .contains("requestTimeout")
        );
        assert!(with_host("vault").validate().is_ok());
    }
}
