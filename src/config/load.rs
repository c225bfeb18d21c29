//! Where configuration comes from: built-in defaults, the YAML file, `MESHCA_*` variables and
//! `--set` flags, merged in that order into one tree that is parsed into a [`Config`].

use std::collections::BTreeMap;
use std::path::Path;

use serde_yaml::Value;

use super::forms::PEM_BEGIN;
use super::{Config, ConfigError};

/// Prefix of every environment variable meshca reads.
pub const ENV_PREFIX: &str = "MESHCA_";

/// Where configuration comes from, in increasing precedence (after the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `(key, value)` pairs from the environment, with the variable name as origin.
    pub env: Vec<(String, String, String)>,
    /// `(key, value)` pairs from flags.
    pub flags: Vec<(String, String)>,
}

impl Overrides {
    /// Reads every `MESHCA_*` variable that names a configuration key. Variables that are not
    /// configuration keys (`MESHCA_CONFIG`, tool paths) are left alone.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let by_env: BTreeMap<String, String> = known_keys()
            .into_iter()
            .map(|key| (env_name(&key), key))
            .collect();
        let env = vars
            .into_iter()
            .filter_map(|(name, value)| {
                by_env
                    .get(&name)
                    .map(|key| (key.clone(), value, name.clone()))
            })
            .collect();
        Self {
            env,
            flags: Vec::new(),
        }
    }

    /// Adds a `key=value` flag.
    pub fn set(&mut self, assignment: &str) -> Result<(), ConfigError> {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid {
                origin: format!("--set {assignment}"),
                reason: "expected key=value, e.g. --set certificateProvider.kind=vault".to_owned(),
            })?;
        self.flags.push((key.trim().to_owned(), value.to_owned()));
        Ok(())
    }
}

impl Config {
    /// Loads the configuration: defaults, then `file` if given, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let origin = path.display().to_string();
                let value: Value =
                    serde_yaml::from_str(&text).map_err(|e| ConfigError::Invalid {
                        origin: origin.clone(),
                        reason: e.to_string(),
                    })?;
                // Check the file alone first, so its errors name the file.
                if !value.is_null() {
                    Self::from_value(value.clone(), &origin)?;
                }
                if value.is_null() {
                    Value::Mapping(Default::default())
                } else {
                    value
                }
            }
            None => Value::Mapping(Default::default()),
        };
        let known = known_keys();
        let sources = overrides
            .env
            .iter()
            .map(|(k, v, var)| (k, v, format!("environment variable {var}")))
            .chain(
                overrides
                    .flags
                    .iter()
                    .map(|(k, v)| (k, v, format!("--set {k}={v}"))),
            );
        for (key, raw, origin) in sources {
            if !known.iter().any(|k| k == key) {
                return Err(ConfigError::UnknownKey {
                    key: key.clone(),
                    origin,
                    known: known.join(", "),
                });
            }
            // A value is read as a YAML scalar, so `0.3` is a number and `24h` a string; PEM
            // text is kept as written (YAML would fold its line breaks into spaces); an empty
            // value is the empty string (`--set admin.listen=` disables the listener), not
            // YAML's null.
            let value: Value = if raw.trim_start().starts_with(PEM_BEGIN) {
                Value::String(raw.clone())
            } else {
                match serde_yaml::from_str(raw) {
                    Ok(Value::Null) if raw.trim().is_empty() => Value::String(String::new()),
                    Ok(value) => value,
                    Err(_) => Value::String(raw.clone()),
                }
            };
            set_path(&mut tree, key, value);
            Self::from_value(tree.clone(), &origin)?;
        }
        let config = Self::from_value(tree, "configuration")?;
        config.validate()?;
        Ok(config)
    }

    fn from_value(value: Value, origin: &str) -> Result<Self, ConfigError> {
        serde_yaml::from_value(value.clone()).map_err(|e| ConfigError::Invalid {
            origin: origin.to_owned(),
            reason: with_expected_keys(&value, e.to_string()),
        })
    }
}

/// serde lists the keys it expected after an unknown one, except in a section with flattened
/// fields (`sds.*` and `istio.*` share `TransportLimits`): there, name the unknown key and the
/// keys of its section.
fn with_expected_keys(tree: &Value, reason: String) -> String {
    if !reason.starts_with("unknown field") || reason.contains("expected") {
        return reason;
    }
    let known = known_keys();
    let mut present = Vec::new();
    collect_keys(tree, String::new(), &mut present);
    let Some(unknown) = present.iter().find(|key| !known.contains(key)) else {
        return reason;
    };
    let prefix = unknown
        .rsplit_once('.')
        .map_or(String::new(), |(section, _)| format!("{section}."));
    let mut expected: Vec<&str> = Vec::new();
    for key in known.iter().filter_map(|key| key.strip_prefix(&prefix)) {
        let name = key.split('.').next().unwrap_or(key);
        if !expected.contains(&name) {
            expected.push(name);
        }
    }
    let expected: Vec<String> = expected.iter().map(|name| format!("`{name}`")).collect();
    format!(
        "{reason} ({unknown}), expected one of {}",
        expected.join(", ")
    )
}

/// Keys whose default is "unset", so they do not appear when the defaults are serialised.
const OPTIONAL_KEYS: &[&str] = &[
    "rotation.ackDeadline",
    "admin.tokenFile",
    "vault.address",
    "vault.namespace",
    "vault.caFile",
    "vault.token",
    "vault.tokenFile",
    "vault.appRole.roleId",
    "vault.appRole.secretId",
    "vault.appRole.secretIdFile",
    "vault.appRole.mount",
    "vault.kubernetes.role",
    "vault.kubernetes.mount",
    "vault.kubernetes.tokenFile",
    "vault.secret.name",
    "vault.secret.key",
    "vault.secret.namespace",
];

/// Every leaf key of the configuration, dotted (`certificateProvider.kind`).
pub fn known_keys() -> Vec<String> {
    let mut keys = Vec::new();
    let tree = serde_yaml::to_value(Config::default()).unwrap_or(Value::Null);
    collect_keys(&tree, String::new(), &mut keys);
    keys.extend(OPTIONAL_KEYS.iter().map(|k| (*k).to_owned()));
    keys
}

/// The environment variable for a dotted key: `certificateProvider.kind` →
/// `MESHCA_CERTIFICATE_PROVIDER_KIND`.
pub fn env_name(key: &str) -> String {
    let mut name = ENV_PREFIX.to_owned();
    for (i, part) in key.split('.').enumerate() {
        if i > 0 {
            name.push('_');
        }
        for (j, c) in part.chars().enumerate() {
            if c.is_ascii_uppercase() && j > 0 {
                name.push('_');
            }
            name.push(c.to_ascii_uppercase());
        }
    }
    name
}

fn collect_keys(value: &Value, prefix: String, out: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map {
                if let Some(k) = k.as_str() {
                    let path = if prefix.is_empty() {
                        k.to_owned()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    collect_keys(v, path, out);
                }
            }
        }
        _ => out.push(prefix),
    }
}

fn set_path(tree: &mut Value, key: &str, value: Value) {
    let mut node = tree;
    for part in key.split('.') {
        if !node.is_mapping() {
            *node = Value::Mapping(Default::default());
        }
        let Value::Mapping(map) = node else {
            unreachable!("made a mapping just above")
        };
        node = map
            .entry(Value::String(part.to_owned()))
            .or_insert(Value::Null);
    }
    *node = value;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::super::testing::write;
    use super::*;
    use crate::config::ProviderKind;

    #[test]
    fn defaults_are_the_embedded_tresor_setup() {
        let config = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(config.certificate_provider.kind, ProviderKind::Tresor);
        assert_eq!(
            config.certificate_provider.service_cert_validity_duration,
            Duration::from_secs(86_400)
        );
        assert_eq!(config.sds_listen().unwrap().to_string(), "127.0.0.1:15010");
        assert!(known_keys().contains(&"certificateProvider.kind".to_owned()));
    }

    #[test]
    fn precedence_is_file_then_env_then_flags() {
        let file = write(
            "certificateProvider:\n  serviceCertValidityDuration: 12h\ntrustDomain: file.example\n",
        );
        let mut overrides = Overrides::from_env([
            ("MESHCA_TRUST_DOMAIN".to_owned(), "env.example".to_owned()),
            (
                "MESHCA_CERTIFICATE_PROVIDER_SERVICE_CERT_VALIDITY_DURATION".to_owned(),
                "6h".to_owned(),
            ),
            ("MESHCA_UNRELATED".to_owned(), "x".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ]);
        overrides
            .set("certificateProvider.serviceCertValidityDuration=90m")
            .unwrap();
        let config = Config::load(Some(file.path()), &overrides).unwrap();
        assert_eq!(config.trust_domain, "env.example");
        assert_eq!(
            config.certificate_provider.service_cert_validity_duration,
            Duration::from_secs(90 * 60)
        );
        let from_file = Config::load(Some(file.path()), &Overrides::default()).unwrap();
        assert_eq!(
            from_file
                .certificate_provider
                .service_cert_validity_duration,
            Duration::from_secs(12 * 3600)
        );
    }

    #[test]
    fn optional_keys_are_real_keys() {
        for key in OPTIONAL_KEYS {
            let mut overrides = Overrides::default();
            let value = if key.ends_with("File") {
                "/tmp/x"
            } else if key.ends_with("Deadline") {
                "5m"
            } else {
                "x"
            };
            overrides.set(&format!("{key}={value}")).unwrap();
            Config::load(None, &overrides).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        let overrides =
            Overrides::from_env([("MESHCA_VAULT_TOKEN".to_owned(), "s.abc".to_owned())]);
        let config = Config::load(None, &overrides).unwrap();
        assert!(config.vault.token.is_some());
        assert!(
            !format!("{config:?}").contains("s.abc"),
            "the token leaked into Debug"
        );
    }

    #[test]
    fn an_empty_value_is_an_empty_string_and_rotation_durations_parse() {
        let mut overrides = Overrides::default();
        overrides.set("admin.listen=").unwrap();
        overrides.set("rotation.ackDeadline=1h30m").unwrap();
        let config = Config::load(None, &overrides).unwrap();
        assert_eq!(config.admin_listen(), None);
        assert_eq!(
            config.rotation.ack_deadline,
            Some(Duration::from_secs(5400))
        );
        assert_eq!(Config::default().rotation.ack_deadline, None);
        let mut overrides = Overrides::default();
        overrides.set("rotation.ackDeadline=soon").unwrap();
        let err = Config::load(None, &overrides).unwrap_err().to_string();
        assert!(err.contains("rotation.ackDeadline"), "{err}");
    }

    #[test]
    fn cert_manager_section_is_configurable() {
        let file = write("certManager:\n  issuerKind: ClusterIssuer\n  timeout: 2m\n");
        let overrides = Overrides::from_env([(
            "MESHCA_CERT_MANAGER_CA_BUNDLE_SECRET_NAME".to_owned(),
            "fsm-ca-bundle".to_owned(),
        )]);
        let config = Config::load(Some(file.path()), &overrides).unwrap();
        assert_eq!(config.cert_manager.issuer_kind, "ClusterIssuer");
        assert_eq!(config.cert_manager.timeout, Duration::from_secs(120));
        assert_eq!(config.cert_manager.ca_bundle_secret.name, "fsm-ca-bundle");
        assert!(known_keys().contains(&"certManager.preserveCertificateRequests".to_owned()));
        // Selected, its timeout must be shorter than the daemon's issue timeout.
        let mut overrides = Overrides::default();
        overrides
            .set("certificateProvider.kind=cert-manager")
            .unwrap();
        let error = Config::load(Some(file.path()), &overrides).unwrap_err();
        assert!(error.to_string().contains("certManager.timeout"), "{error}");
        overrides.set("renewal.issueTimeout=3m").unwrap();
        Config::load(Some(file.path()), &overrides).unwrap();
    }

    #[test]
    fn env_names_follow_the_keys() {
        assert_eq!(
            env_name("certificateProvider.kind"),
            "MESHCA_CERTIFICATE_PROVIDER_KIND"
        );
        assert_eq!(env_name("renewal.backoffMax"), "MESHCA_RENEWAL_BACKOFF_MAX");
        assert_eq!(
            env_name("caBundleSecretName"),
            "MESHCA_CA_BUNDLE_SECRET_NAME"
        );
    }

    #[test]
    fn bad_values_name_where_they_came_from() {
        let file = write("certificateProvider:\n  serviceCertValidityDuration: 3d\n");
        let err = Config::load(Some(file.path()), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&file.path().display().to_string()), "{text}");
        assert!(text.contains("unknown unit"), "{text}");

        let file = write("certificateProvider:\n  kindd: vault\n");
        let text = Config::load(Some(file.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(text.contains("kindd"), "{text}");

        let overrides =
            Overrides::from_env([("MESHCA_RENEWAL_FLOOR".to_owned(), "soon".to_owned())]);
        let text = Config::load(None, &overrides).unwrap_err().to_string();
        assert!(text.contains("MESHCA_RENEWAL_FLOOR"), "{text}");

        let mut overrides = Overrides::default();
        overrides.set("certificateProvider.kind=vaultt").unwrap();
        let text = Config::load(None, &overrides).unwrap_err().to_string();
        assert!(
            text.contains("--set certificateProvider.kind=vaultt"),
            "{text}"
        );

        let mut overrides = Overrides::default();
        overrides.set("certificateProvider.knd=vault").unwrap();
        assert!(matches!(
            Config::load(None, &overrides),
            Err(ConfigError::UnknownKey { .. })
        ));
        assert!(Overrides::default().set("novalue").is_err());
    }
}
