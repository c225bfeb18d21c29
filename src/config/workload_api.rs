//! `workloadApi.*`: the SPIFFE Workload API on a Unix socket, and the registration entries that
//! map attested callers to SPIFFE IDs.

use std::path::PathBuf;

use meshca_provider::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::forms::{octal_mode, socket_group, socket_mode, string_or_number};
use crate::workload_api::{RegistrationEntry, Selector, WorkloadApiLimits};

/// `workloadApi.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct WorkloadApiConfig {
    /// Serve the SPIFFE Workload API (off by default).
    pub enabled: bool,
    /// The Unix socket workloads connect to (`SPIFFE_ENDPOINT_SOCKET=unix://<path>`).
    pub socket_path: String,
    /// File mode of the socket, in octal. Every caller is attested on its connection, so the
    /// default `0666` lets any local user ask (and be refused unless an entry matches it).
    #[serde(deserialize_with = "octal_mode")]
    pub socket_mode: String,
    /// Group of the socket: a group name or a numeric gid. Empty: meshca's own group. With a
    /// mode such as `0660`, only members of this group (and meshca's user) can connect.
    #[serde(deserialize_with = "string_or_number")]
    pub socket_group: String,
    /// Streams open at once on the socket; more are refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Streams one caller (one uid) may hold at once.
    pub max_streams_per_caller: usize,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Registration entries: a caller matching every selector of an entry gets its SPIFFE ID.
    pub entries: Vec<EntryConfig>,
}

/// One `workloadApi.entries` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntryConfig {
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, or `<ns>/<sa>` in the
    /// configured trust domain.
    pub spiffe_id: String,
    /// SPIRE Unix attestor selectors, all of which must match: `unix:uid:<n>`,
    /// `unix:gid:<n>`, `unix:path:<absolute path>`, `unix:sha256:<hex>`.
    pub selectors: Vec<String>,
    /// Optional hint sent with the SVID (`internal`, `external`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

impl Default for WorkloadApiConfig {
    fn default() -> Self {
        let limits = WorkloadApiLimits::default();
        Self {
            enabled: false,
            socket_path: "/run/meshca/workload-api.sock".to_owned(),
            socket_mode: "0666".to_owned(),
            socket_group: String::new(),
            max_streams: limits.max_streams,
            max_streams_per_caller: limits.max_streams_per_caller,
            max_connections: limits.max_connections,
            entries: Vec::new(),
        }
    }
}

impl WorkloadApiConfig {
    pub(super) fn validate(&self, trust_domain: &TrustDomain) -> Result<(), ConfigError> {
        if !self.socket_path.starts_with('/') {
            return Err(ConfigError::InvalidValue {
                key: "workloadApi.socketPath",
                reason: format!(
                    "{:?} is not an absolute path: give the socket's full path, e.g. \
                     /run/meshca/workload-api.sock",
                    self.socket_path
                ),
            });
        }
        self.socket_mode()?;
        self.socket_group()?;
        let max = tokio::sync::Semaphore::MAX_PERMITS;
        for (key, value) in [
            ("workloadApi.maxStreams", self.max_streams),
            (
                "workloadApi.maxStreamsPerCaller",
                self.max_streams_per_caller,
            ),
            ("workloadApi.maxConnections", self.max_connections),
        ] {
            if value == 0 || value > max {
                return Err(ConfigError::InvalidValue {
                    key,
                    reason: format!("must be between 1 and {max}"),
                });
            }
        }
        let entries = self.entries(trust_domain)?;
        if self.enabled && entries.is_empty() {
            return Err(ConfigError::InvalidValue {
                key: "workloadApi.entries",
                reason: "is empty: with no registration entry every caller is refused; add \
                         entries such as {spiffeId: ns/sa, selectors: [\"unix:uid:1000\"]}"
                    .to_owned(),
            });
        }
        Ok(())
    }

    /// The socket's path.
    pub fn socket_path(&self) -> PathBuf {
        PathBuf::from(&self.socket_path)
    }

    /// `workloadApi.socketMode` as permission bits.
    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        socket_mode("workloadApi.socketMode", &self.socket_mode)?.ok_or_else(|| {
            ConfigError::InvalidValue {
                key: "workloadApi.socketMode",
                reason: "is empty: write permission bits in octal, e.g. 0666 (every local user \
                         may ask) or 0660 (the socket's group only, workloadApi.socketGroup)"
                    .to_owned(),
            }
        })
    }

    /// `workloadApi.socketGroup`, if set, as a gid: a number, or a name looked up in
    /// /etc/group.
    pub fn socket_group(&self) -> Result<Option<u32>, ConfigError> {
        socket_group("workloadApi.socketGroup", &self.socket_group)
    }

    /// The limits.
    pub fn limits(&self) -> WorkloadApiLimits {
        WorkloadApiLimits {
            max_streams: self.max_streams,
            max_streams_per_caller: self.max_streams_per_caller,
            max_connections: self.max_connections,
            ..WorkloadApiLimits::default()
        }
    }

    /// `workloadApi.entries`, parsed: SPIFFE IDs in `trust_domain`, selectors understood.
    pub fn entries(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<Vec<RegistrationEntry>, ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidValue {
            key: "workloadApi.entries",
            reason,
        };
        self.entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let spiffe_id = if entry.spiffe_id.starts_with("spiffe://") {
                    entry.spiffe_id.parse::<SpiffeId>()
                } else {
                    SpiffeId::from_short(&entry.spiffe_id, trust_domain)
                }
                .map_err(|e| {
                    invalid(format!(
                        "entry {index}: spiffeId {:?}: {e}; write \
                         spiffe://{trust_domain}/ns/<namespace>/sa/<service-account> or \
                         <namespace>/<service-account>",
                        entry.spiffe_id
                    ))
                })?;
                if spiffe_id.trust_domain() != trust_domain {
                    return Err(invalid(format!(
                        "entry {index}: {spiffe_id} is not in this trust domain \
                         ({trust_domain}): meshca issues for its own trust domain only"
                    )));
                }
                if entry.selectors.is_empty() {
                    return Err(invalid(format!(
                        "entry {index} ({spiffe_id}) has no selectors: it would match every \
                         caller; give at least one, e.g. unix:uid:1000"
                    )));
                }
                let selectors = entry
                    .selectors
                    .iter()
                    .map(|text| {
                        text.parse::<Selector>()
                            .map_err(|e| invalid(format!("entry {index} ({spiffe_id}): {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RegistrationEntry {
                    spiffe_id,
                    selectors,
                    hint: entry.hint.clone(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::{load, write};
    use super::*;
    use crate::config::{Config, Overrides};

    #[test]
    fn entries_are_read_from_yaml_and_from_a_flag() {
        let file = write(
            "trustDomain: example.org\nworkloadApi:\n  enabled: true\n  socketPath: /tmp/w.sock\n  \
             entries:\n  - spiffeId: spiffe://example.org/ns/web/sa/frontend\n    selectors: \
             [\"unix:uid:1000\", \"unix:path:/usr/bin/web\"]\n  - spiffeId: db/postgres\n    \
             selectors: [\"unix:gid:70\"]\n    hint: internal\n",
        );
        let config = Config::load(Some(file.path()), &Overrides::default()).unwrap();
        let entries = config.workload_api.entries(&config.trust_domain()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0].spiffe_id.as_uri(),
            "spiffe://example.org/ns/web/sa/frontend"
        );
        assert_eq!(
            entries[0].selectors,
            [Selector::Uid(1000), Selector::Path("/usr/bin/web".into())]
        );
        assert_eq!(entries[1].spiffe_id.short(), "db/postgres");
        assert_eq!(entries[1].hint, "internal");
        let config = load(&[
            "workloadApi.entries=[{spiffeId: a/b, selectors: [\"unix:uid:0\"]}]",
            "workloadApi.socketMode=0660",
            "workloadApi.socketGroup=root",
        ])
        .unwrap();
        assert_eq!(config.workload_api.socket_mode().unwrap(), 0o660);
        assert_eq!(config.workload_api.socket_group().unwrap(), Some(0));
        assert_eq!(
            config.workload_api.entries(&config.trust_domain()).unwrap()[0].selectors,
            [Selector::Uid(0)]
        );
        assert!(!Config::default().workload_api.enabled);
    }

    #[test]
    fn the_socket_group_is_a_gid_or_a_known_name_and_the_mode_octal_text() {
        let config = load(&["workloadApi.socketGroup=1337"]).unwrap();
        assert_eq!(config.workload_api.socket_group().unwrap(), Some(1337));
        assert_eq!(Config::default().workload_api.socket_group().unwrap(), None);
        // As for sds.unixSocketMode: 660 is a YAML number, refused rather than read as 0o1224.
        let file = write("workloadApi:\n  socketMode: 660\n");
        let err = Config::load(Some(file.path()), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("leading zero"), "{err}");
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (setting, key, says) in [
            (
                "workloadApi.socketPath=relative.sock",
                "workloadApi.socketPath",
                "absolute",
            ),
            (
                "workloadApi.socketMode=0999",
                "workloadApi.socketMode",
                "octal",
            ),
            (
                "workloadApi.socketMode=",
                "workloadApi.socketMode",
                "is empty",
            ),
            (
                "workloadApi.socketGroup=no-such-group-here",
                "workloadApi.socketGroup",
                "no group \"no-such-group-here\" in /etc/group",
            ),
            (
                "workloadApi.maxStreams=0",
                "workloadApi.maxStreams",
                "between",
            ),
            (
                "workloadApi.maxStreamsPerCaller=0",
                "workloadApi.maxStreamsPerCaller",
                "between",
            ),
            (
                "workloadApi.enabled=true",
                "workloadApi.entries",
                "is empty",
            ),
            (
                "workloadApi.entries=[{spiffeId: a/b, selectors: [\"unix:user:root\"]}]",
                "workloadApi.entries",
                "unix:user:root",
            ),
            (
                "workloadApi.entries=[{spiffeId: a/b, selectors: []}]",
                "workloadApi.entries",
                "no selectors",
            ),
            (
                "workloadApi.entries=[{spiffeId: \"spiffe://other.org/ns/a/sa/b\", selectors: [\"unix:uid:1\"]}]",
                "workloadApi.entries",
                "trust domain",
            ),
            (
                "workloadApi.entries=[{spiffeId: \"spiffe://cluster.local/web\", selectors: [\"unix:uid:1\"]}]",
                "workloadApi.entries",
                "<namespace>/<service-account>",
            ),
        ] {
            let error = load(&[setting]).unwrap_err().to_string();
            assert!(
                error.contains(key) && error.contains(says),
                "{setting}: {error}"
            );
        }
    }
}
