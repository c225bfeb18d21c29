//! `sds.*`: the SDS listeners, how callers authenticate, and the hostile-input limits.

use std::collections::HashMap;
use std::time::Duration;

use meshca_provider::SpiffeId;
use meshca_provider::duration::serde_go;
use serde::{Deserialize, Serialize};

use super::forms::{octal_mode, socket_group, socket_mode, string_or_number};
use super::transport::{
    Listener, TransportKeys, TransportLimits, check_above_zero, check_count, transport_keys,
    transport_limits_of,
};
use super::{Config, ConfigError};

/// `sds.*`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SdsConfig {
    /// TCP address of the SDS gRPC listener; empty to disable.
    pub listen: String,
    /// Unix socket path of the SDS listener; empty to disable.
    pub unix_socket: String,
    /// How callers prove who they are: `mtls` (a client certificate issued by meshca),
    /// `unix-peer` (the Unix socket peer's uid, mapped by `unixPeers`), `token` (a Kubernetes
    /// service-account token, checked with TokenReview; loopback and Unix sockets only), or
    /// `development` (the Envoy node id is believed; loopback and Unix sockets only).
    pub auth: SdsAuth,
    /// With `auth: token`: comma-separated audiences a token must be meant for (empty: the API
    /// server's own audience, i.e. the pod's default token).
    pub token_audiences: String,
    /// The identity of the SDS endpoint's own certificate with `auth: mtls`, `<ns>/<sa>`.
    pub server_identity: String,
    /// With `auth: unix-peer`: comma-separated `uid=<ns>/<sa>` pairs, e.g.
    /// `1337=bookstore/bookstore-v2,1338=bookstore/bookbuyer`.
    pub unix_peers: String,
    /// File mode of the Unix socket, in octal (`0660`). Connecting needs write permission, so
    /// this decides which local users can reach the listener at all. Empty: `0600` with
    /// `auth: development` (whoever connects is believed, so only meshca's own user), `0666`
    /// otherwise (every caller is authenticated on the connection: uid, token or certificate).
    #[serde(deserialize_with = "octal_mode")]
    pub unix_socket_mode: String,
    /// Group of the Unix socket: a group name or a numeric gid. Empty: meshca's own group.
    /// With a mode such as `0660`, only members of this group can connect.
    #[serde(deserialize_with = "string_or_number")]
    pub unix_socket_group: String,
    /// Streams open at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Streams one identity (all proxies of a service account together) may hold at once.
    pub max_streams_per_identity: usize,
    /// Resource names in one request.
    pub max_names_per_request: usize,
    /// How long a new stream may take to send its first request.
    #[serde(with = "serde_go")]
    pub first_request_timeout: Duration,
    /// `maxConnections` (on all SDS listeners together), `maxMessageBytes` and the handshake,
    /// preface and idle timeouts, as the Istio CA listener has them.
    #[serde(flatten)]
    pub transport: TransportLimits<SdsListener>,
}

/// The SDS listeners' [`TransportLimits`]: `sds.*`, defaults from [`crate::sds::SdsLimits`].
#[derive(Debug, Clone, PartialEq)]
pub struct SdsListener;

impl Listener for SdsListener {
    const KEYS: TransportKeys = transport_keys!("sds");
    const MIN_MESSAGE_BYTES: (usize, &'static str) = (1, "");
    const MAX_MESSAGE_BYTES: usize = usize::MAX;

    fn defaults() -> TransportLimits<Self> {
        transport_limits_of!(crate::sds::SdsLimits::default())
    }
}

impl Default for SdsConfig {
    fn default() -> Self {
        let limits = crate::sds::SdsLimits::default();
        Self {
            listen: "127.0.0.1:15010".to_owned(),
            unix_socket: String::new(),
            auth: SdsAuth::Mtls,
            token_audiences: String::new(),
            server_identity: "meshca-system/meshca".to_owned(),
            unix_peers: String::new(),
            unix_socket_mode: String::new(),
            unix_socket_group: String::new(),
            max_streams: limits.max_streams,
            max_streams_per_identity: limits.max_streams_per_identity,
            max_names_per_request: limits.max_names_per_request,
            first_request_timeout: limits.first_request_timeout,
            transport: TransportLimits::default(),
        }
    }
}

impl SdsConfig {
    /// The limits as the SDS server takes them.
    pub fn limits(&self) -> crate::sds::SdsLimits {
        crate::sds::SdsLimits {
            max_streams: self.max_streams,
            max_streams_per_identity: self.max_streams_per_identity,
            max_connections: self.transport.max_connections,
            max_names_per_request: self.max_names_per_request,
            max_message_bytes: self.transport.max_message_bytes,
            handshake_timeout: self.transport.handshake_timeout,
            preface_timeout: self.transport.preface_timeout,
            first_request_timeout: self.first_request_timeout,
            connection_idle_timeout: self.transport.connection_idle_timeout,
            ..crate::sds::SdsLimits::default()
        }
    }

    pub(super) fn validate_limits(&self) -> Result<(), ConfigError> {
        let defaults = crate::sds::SdsLimits::default();
        let permits = tokio::sync::Semaphore::MAX_PERMITS;
        for (key, value, default, max) in [
            (
                "sds.maxStreams",
                self.max_streams,
                defaults.max_streams,
                permits,
            ),
            (
                "sds.maxStreamsPerIdentity",
                self.max_streams_per_identity,
                defaults.max_streams_per_identity,
                usize::MAX,
            ),
            (
                "sds.maxNamesPerRequest",
                self.max_names_per_request,
                defaults.max_names_per_request,
                usize::MAX,
            ),
        ] {
            check_count(key, value, default, (1, ""), max)?;
        }
        self.transport.validate()?;
        check_above_zero(
            "sds.firstRequestTimeout",
            self.first_request_timeout,
            defaults.first_request_timeout,
        )
    }
}

impl SdsAuth {
    /// The configuration name: `mtls`, `unix-peer`, `token`, `development`.
    pub fn as_str(self) -> &'static str {
        match self {
            SdsAuth::Mtls => "mtls",
            SdsAuth::UnixPeer => "unix-peer",
            SdsAuth::Token => "token",
            SdsAuth::Development => "development",
        }
    }
}

/// SDS caller authentication modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SdsAuth {
    /// A client certificate issued by meshca.
    Mtls,
    /// Unix socket peer credentials.
    UnixPeer,
    /// A Kubernetes service-account token (TokenReview).
    Token,
    /// Trust the Envoy node id (development only).
    Development,
}

impl Config {
    /// `sds.tokenAudiences` as a list.
    pub fn token_audiences(&self) -> Vec<String> {
        self.sds
            .token_audiences
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// `sds.unixPeers` as a map.
    pub fn unix_peers(&self) -> Result<HashMap<u32, SpiffeId>, ConfigError> {
        let mut peers = HashMap::new();
        for pair in self
            .sds
            .unix_peers
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let bad = |reason: String| ConfigError::InvalidValue {
                key: "sds.unixPeers",
                reason: format!(
                    "{pair:?}: {reason}; write uid=<namespace>/<service-account>, comma-separated"
                ),
            };
            let (uid, identity) = pair
                .split_once('=')
                .ok_or_else(|| bad("no '='".to_owned()))?;
            let uid: u32 = uid
                .trim()
                .parse()
                .map_err(|_| bad(format!("{uid:?} is not a uid")))?;
            let identity = SpiffeId::from_short(identity.trim(), &self.trust_domain())
                .map_err(|e| bad(e.to_string()))?;
            peers.insert(uid, identity);
        }
        Ok(peers)
    }

    /// `sds.unixSocketMode`, if set: the permission bits (at most `0777`).
    pub fn unix_socket_mode(&self) -> Result<Option<u32>, ConfigError> {
        socket_mode("sds.unixSocketMode", &self.sds.unix_socket_mode)
    }

    /// `sds.unixSocketGroup`, if set, as a gid: a number, or a name looked up in /etc/group.
    pub fn unix_socket_group(&self) -> Result<Option<u32>, ConfigError> {
        socket_group("sds.unixSocketGroup", &self.sds.unix_socket_group)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{load, write};
    use crate::config::{Config, Overrides};

    #[test]
    fn sds_limits_reach_the_server_settings() {
        let defaults = crate::sds::SdsLimits::default();
        assert_eq!(Config::default().sds.limits(), defaults);
        let mut overrides = Overrides::default();
        for setting in [
            "sds.maxStreamsPerIdentity=5",
            "sds.maxConnections=300",
            "sds.handshakeTimeout=3s",
            "sds.prefaceTimeout=2s",
            "sds.connectionIdleTimeout=2m",
            "sds.firstRequestTimeout=45s",
        ] {
            overrides.set(setting).unwrap();
        }
        let limits = Config::load(None, &overrides).unwrap().sds.limits();
        assert_eq!(limits.max_streams_per_identity, 5);
        assert_eq!(limits.max_connections, 300);
        assert_eq!(limits.handshake_timeout, Duration::from_secs(3));
        assert_eq!(limits.preface_timeout, Duration::from_secs(2));
        assert_eq!(limits.connection_idle_timeout, Duration::from_secs(120));
        assert_eq!(limits.first_request_timeout, Duration::from_secs(45));
        assert_eq!(limits.max_streams, defaults.max_streams);
    }

    #[test]
    fn unix_socket_mode_is_octal_and_group_a_name_or_gid() {
        let config = load(&["sds.unixSocketMode=0660", "sds.unixSocketGroup=0"]).unwrap();
        assert_eq!(config.unix_socket_mode().unwrap(), Some(0o660));
        assert_eq!(config.unix_socket_group().unwrap(), Some(0));
        let config = load(&["sds.unixSocketGroup=root"]).unwrap();
        assert_eq!(config.unix_socket_group().unwrap(), Some(0));
        assert_eq!(Config::default().unix_socket_mode().unwrap(), None);
        // 660 without the leading zero is a YAML number: refused, not read as 0o1224.
        let file = write("sds:\n  unixSocketMode: 660\n");
        let err = Config::load(Some(file.path()), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("leading zero"), "{err}");
    }
}
