//! The transport limits both gRPC listeners take from their section, under the same names:
//! `<section>.maxConnections`, `maxMessageBytes`, `handshakeTimeout`, `prefaceTimeout` and
//! `connectionIdleTimeout` ([`TransportLimits`], flattened into `sds.*` and `istio.*`), with one
//! check, so that the two sections cannot drift apart. A section's defaults and key names come
//! from its [`Listener`]; `check_count` and `check_above_zero` are the checks its other limits
//! share.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use meshca_provider::duration::serde_go;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// A section holding [`TransportLimits`]: where its keys live and what its defaults are.
pub trait Listener: fmt::Debug + Clone + PartialEq {
    /// The keys, as errors name them.
    const KEYS: TransportKeys;
    /// The smallest `maxMessageBytes` that can hold a request, and why (after "must be at
    /// least N"; empty when 1).
    const MIN_MESSAGE_BYTES: (usize, &'static str);
    /// The largest `maxMessageBytes` allowed.
    const MAX_MESSAGE_BYTES: usize;

    /// The server's own defaults.
    fn defaults() -> TransportLimits<Self>;
}

/// The keys of the transport limits under `$section` (`"sds"` → `sds.maxConnections`, …).
macro_rules! transport_keys {
    ($section:literal) => {
        $crate::config::TransportKeys {
            max_connections: concat!($section, ".maxConnections"),
            max_message_bytes: concat!($section, ".maxMessageBytes"),
            handshake_timeout: concat!($section, ".handshakeTimeout"),
            preface_timeout: concat!($section, ".prefaceTimeout"),
            connection_idle_timeout: concat!($section, ".connectionIdleTimeout"),
        }
    };
}
pub(super) use transport_keys;

/// The transport limits of a server's limits (`SdsLimits`, `IstioLimits`: fields of the same
/// names), as a section's defaults.
macro_rules! transport_limits_of {
    ($limits:expr) => {{
        let limits = $limits;
        $crate::config::TransportLimits {
            max_connections: limits.max_connections,
            max_message_bytes: limits.max_message_bytes,
            handshake_timeout: limits.handshake_timeout,
            preface_timeout: limits.preface_timeout,
            connection_idle_timeout: limits.connection_idle_timeout,
            listener: ::std::marker::PhantomData,
        }
    }};
}
pub(super) use transport_limits_of;

/// The full key of each transport limit in one section (`sds.maxConnections`, …).
#[derive(Debug, Clone, Copy)]
pub struct TransportKeys {
    /// `<section>.maxConnections`.
    pub max_connections: &'static str,
    /// `<section>.maxMessageBytes`.
    pub max_message_bytes: &'static str,
    /// `<section>.handshakeTimeout`.
    pub handshake_timeout: &'static str,
    /// `<section>.prefaceTimeout`.
    pub preface_timeout: &'static str,
    /// `<section>.connectionIdleTimeout`.
    pub connection_idle_timeout: &'static str,
}

/// The limits every gRPC listener of meshca has, as one section configures them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, bound = "")]
pub struct TransportLimits<L: Listener> {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Largest request message, in bytes (OUT_OF_RANGE beyond).
    pub max_message_bytes: usize,
    /// How long a TLS client may take to complete its handshake.
    #[serde(with = "serde_go")]
    pub handshake_timeout: Duration,
    /// How long a connection may take to send the HTTP/2 preface once accepted (after the TLS
    /// handshake on a TLS listener).
    #[serde(with = "serde_go")]
    pub preface_timeout: Duration,
    /// How long a connection may carry no stream or call before it is closed.
    #[serde(with = "serde_go")]
    pub connection_idle_timeout: Duration,
    #[serde(skip)]
    pub(super) listener: PhantomData<L>,
}

impl<L: Listener> Default for TransportLimits<L> {
    fn default() -> Self {
        L::defaults()
    }
}

impl<L: Listener> TransportLimits<L> {
    /// Checks every limit, naming the key, the range and the default of the first bad one.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let keys = L::KEYS;
        let defaults = L::defaults();
        check_count(
            keys.max_connections,
            self.max_connections,
            defaults.max_connections,
            (1, ""),
            tokio::sync::Semaphore::MAX_PERMITS,
        )?;
        check_count(
            keys.max_message_bytes,
            self.max_message_bytes,
            defaults.max_message_bytes,
            L::MIN_MESSAGE_BYTES,
            L::MAX_MESSAGE_BYTES,
        )?;
        for (key, value, default) in [
            (
                keys.handshake_timeout,
                self.handshake_timeout,
                defaults.handshake_timeout,
            ),
            (
                keys.preface_timeout,
                self.preface_timeout,
                defaults.preface_timeout,
            ),
            (
                keys.connection_idle_timeout,
                self.connection_idle_timeout,
                defaults.connection_idle_timeout,
            ),
        ] {
            check_above_zero(key, value, default)?;
        }
        Ok(())
    }
}

/// A count limit within `min.0..=max`; `min.1` says why the minimum (empty when it is 1).
pub(super) fn check_count(
    key: &'static str,
    value: usize,
    default: usize,
    (min, why): (usize, &str),
    max: usize,
) -> Result<(), ConfigError> {
    let reason = if value < min {
        format!("must be at least {min}{why} (default {default})")
    } else if value > max {
        format!("must be at most {max} (default {default})")
    } else {
        return Ok(());
    };
    Err(ConfigError::InvalidValue { key, reason })
}

/// A timeout, which must be above zero.
pub(super) fn check_above_zero(
    key: &'static str,
    value: Duration,
    default: Duration,
) -> Result<(), ConfigError> {
    if !value.is_zero() {
        return Ok(());
    }
    Err(ConfigError::InvalidValue {
        key,
        reason: format!(
            "must be above zero (default {})",
            meshca_provider::format_duration(default)
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::{load, write};
    use crate::config::{Config, Overrides};

    #[test]
    fn each_section_keeps_its_own_defaults_and_values() {
        let config = load(&["istio.handshakeTimeout=3s", "sds.maxMessageBytes=8192"]).unwrap();
        assert_eq!(
            config.istio.limits().handshake_timeout,
            std::time::Duration::from_secs(3)
        );
        assert_eq!(
            config.sds.limits().handshake_timeout,
            crate::sds::SdsLimits::default().handshake_timeout
        );
        assert_eq!(config.sds.limits().max_message_bytes, 8192);
        assert_eq!(
            config.istio.limits().max_message_bytes,
            crate::istio::IstioLimits::default().max_message_bytes
        );
    }

    #[test]
    fn a_file_with_a_misspelt_limit_is_refused_and_a_good_one_read() {
        let file = write("istio:\n  maxConnections: 7\n  prefaceTimeout: 2s\n");
        let config = Config::load(Some(file.path()), &Overrides::default()).unwrap();
        assert_eq!(config.istio.limits().max_connections, 7);
        assert_eq!(
            config.istio.limits().preface_timeout,
            std::time::Duration::from_secs(2)
        );
        let file = write("sds:\n  maxConnection: 7\n");
        let err = Config::load(Some(file.path()), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `maxConnection` (sds.maxConnection), expected one of")
                && err.contains("`maxConnections`")
                && err.contains("`maxStreams`"),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_limits_name_the_range_and_the_default() {
        for (setting, reason) in [
            (
                "istio.maxMessageBytes=100",
                "must be at least 4096: a smaller message cannot hold a CSR (default 65536)",
            ),
            (
                "istio.maxMessageBytes=5000000",
                "must be at most 4194304 (default 65536)",
            ),
            ("sds.maxConnections=0", "must be at least 1 (default 20000)"),
            (
                "istio.maxConnections=0",
                "must be at least 1 (default 10000)",
            ),
            ("sds.prefaceTimeout=0s", "must be above zero (default 10s)"),
            (
                "istio.connectionIdleTimeout=0s",
                "must be above zero (default 5m)",
            ),
        ] {
            let err = load(&[setting]).unwrap_err().to_string();
            let key = setting.split('=').next().unwrap();
            assert!(
                err.contains(key) && err.contains(reason),
                "{setting}: {err}"
            );
        }
    }
}
