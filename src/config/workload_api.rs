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
    /// Which attestors read a caller's selectors: `unix` (uid, gid, executable), `k8s` (its
    /// pod's namespace, service account, UID and name, from the API server). Default `[unix]`.
    pub attestors: Vec<AttestorKind>,
    /// With the `k8s` attestor: the name of this node (`spec.nodeName`, e.g. from the downward
    /// API as `MESHCA_WORKLOAD_API_NODE_NAME`); only its pods are callers' pods.
    pub node_name: String,
    /// Registration entries: a caller matching every selector of an entry gets its SPIFFE ID.
    pub entries: Vec<EntryConfig>,
}

/// One of `workloadApi.attestors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttestorKind {
    /// SPIRE's Unix workload attestor: `unix:uid`, `unix:gid`, `unix:path`, `unix:sha256`.
    Unix,
    /// SPIRE's Kubernetes workload attestor: `k8s:ns`, `k8s:sa`, `k8s:pod-uid`,
    /// `k8s:pod-name`.
    K8s,
}

/// One `workloadApi.entries` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntryConfig {
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, or `<ns>/<sa>` in the
    /// configured trust domain.
    pub spiffe_id: String,
    /// SPIRE selectors, all of which must match: `unix:uid:<n>`, `unix:gid:<n>`,
    /// `unix:path:<absolute path>`, `unix:sha256:<hex>` (the `unix` attestor's), `k8s:ns:<ns>`,
    /// `k8s:sa:<sa>`, `k8s:pod-uid:<uid>`, `k8s:pod-name:<name>`, `k8s:pod-label:<key>:<value>`
    /// (the `k8s` attestor's).
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
            attestors: vec![AttestorKind::Unix],
            node_name: String::new(),
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
        self.check_attestors(&entries)?;
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

    /// At least one attestor; a node name for `k8s`; every entry's selectors given by an
    /// enabled attestor (else it could never match).
    fn check_attestors(&self, entries: &[RegistrationEntry]) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::InvalidValue { key, reason });
        if self.attestors.is_empty() {
            return invalid(
                "workloadApi.attestors",
                "is empty: no caller could be attested; use [unix], [k8s] or [unix, k8s]"
                    .to_owned(),
            );
        }
        let k8s = self.attestors.contains(&AttestorKind::K8s);
        let unix = self.attestors.contains(&AttestorKind::Unix);
        if k8s {
            let node = self.node_name.trim();
            let safe = !node.is_empty()
                && node
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !safe {
                return invalid(
                    "workloadApi.nodeName",
                    format!(
                        "{node:?} is not a node name: the k8s attestor looks callers' pods up                          among this node's; set it from the downward API (spec.nodeName), e.g.                          as MESHCA_WORKLOAD_API_NODE_NAME"
                    ),
                );
            }
        }
        for (index, entry) in entries.iter().enumerate() {
            let needs_k8s = entry.selectors.iter().any(Selector::is_kubernetes);
            let needs_unix = entry.selectors.iter().any(|s| !s.is_kubernetes());
            let missing = match (needs_k8s && !k8s, needs_unix && !unix) {
                (true, _) => "k8s",
                (_, true) => "unix",
                _ => continue,
            };
            return invalid(
                "workloadApi.entries",
                format!(
                    "entry {index} ({}) has {missing}: selectors, but workloadApi.attestors                      has no {missing} attestor, so it could never match: add {missing} to                      workloadApi.attestors",
                    entry.spiffe_id
                ),
            );
        }
        Ok(())
    }

    /// Whether the `k8s` attestor is on.
    pub fn attests_kubernetes(&self) -> bool {
        self.attestors.contains(&AttestorKind::K8s)
    }

    /// Whether the `unix` attestor is on.
    pub fn attests_unix(&self) -> bool {
        self.attestors.contains(&AttestorKind::Unix)
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
    fn the_k8s_attestor_needs_a_node_name_and_every_entry_an_attestor_for_its_selectors() {
        let config = load(&[
            "workloadApi.attestors=[unix, k8s]",
            "workloadApi.nodeName=node-a",
            "workloadApi.entries=[{spiffeId: web/frontend, selectors: [\"k8s:ns:web\", \"k8s:sa:frontend\"]}, {spiffeId: a/b, selectors: [\"unix:uid:0\"]}]",
        ])
        .unwrap();
        assert!(config.workload_api.attests_kubernetes() && config.workload_api.attests_unix());
        assert_eq!(
            config.workload_api.entries(&config.trust_domain()).unwrap()[0].selectors,
            [
                Selector::K8sNamespace("web".into()),
                Selector::K8sServiceAccount("frontend".into())
            ]
        );
        assert_eq!(
            Config::default().workload_api.attestors,
            [AttestorKind::Unix]
        );
        let k8s_only =
            load(&["workloadApi.attestors=[k8s]", "workloadApi.nodeName=node-a"]).unwrap();
        assert!(!k8s_only.workload_api.attests_unix());
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
                "workloadApi.attestors=[]",
                "workloadApi.attestors",
                "is empty",
            ),
            (
                "workloadApi.attestors=[unix, docker]",
                "workloadApi.attestors",
                "docker",
            ),
            (
                "workloadApi.attestors=[k8s]",
                "workloadApi.nodeName",
                "downward API",
            ),
            (
                "workloadApi.entries=[{spiffeId: a/b, selectors: [\"k8s:ns:a\"]}]",
                "workloadApi.entries",
                "no k8s attestor",
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
