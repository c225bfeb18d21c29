//! A Vault token, its lease, and when the renewal task should look at it next.

use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::header::HeaderValue;
use serde::Deserialize;

use crate::http::AuthBlock;
use crate::settings::Secret;

/// Renewal never runs closer together than this, however short the TTL.
const MIN_RENEW_GAP: Duration = Duration::from_millis(250);
/// How often a token file is checked for a new token.
const TOKEN_FILE_POLL: Duration = Duration::from_secs(10);

/// A token and what Vault said about its lifetime.
pub(crate) struct Token {
    pub(super) value: Secret,
    pub(super) header: HeaderValue,
    lease: Mutex<Lease>,
    pub(super) warned_expiry: AtomicBool,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("lease", &self.lease())
            .finish_non_exhaustive()
    }
}

impl Token {
    pub(super) fn new(value: Secret, lease: Lease) -> Result<Self, String> {
        let mut header = HeaderValue::from_str(value.expose())
            .map_err(|_| "the token contains characters an HTTP header cannot carry".to_owned())?;
        header.set_sensitive(true);
        Ok(Self {
            value,
            header,
            lease: Mutex::new(lease),
            warned_expiry: AtomicBool::new(false),
        })
    }

    /// The `X-Vault-Token` value.
    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
    }

    pub(crate) fn lease(&self) -> Lease {
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set_lease(&self, lease: Lease) {
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner) = lease;
    }
}

/// A token's lifetime as of `granted_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    /// Time to live from `granted_at`; zero for tokens that never expire (root tokens).
    pub(crate) ttl: Duration,
    /// Whether `renew-self` can extend it.
    pub(crate) renewable: bool,
    /// When Vault stated `ttl`.
    pub(crate) granted_at: Instant,
    /// The TTL the token was created with: a renewal granting much less means its max TTL is
    /// near.
    pub(crate) first_ttl: Duration,
}

/// TTLs longer than this (Vault's own maximum is far shorter) are taken as this: the arithmetic
/// on `Instant`s stays in range whatever a server answers.
const MAX_TTL_SECS: u64 = 100 * 365 * 24 * 3600;

impl Lease {
    pub(super) fn new(ttl_secs: u64, renewable: bool, first_ttl_secs: u64) -> Self {
        let ttl = Duration::from_secs(ttl_secs.min(MAX_TTL_SECS));
        Self {
            ttl,
            renewable,
            granted_at: Instant::now(),
            first_ttl: Duration::from_secs(first_ttl_secs.min(MAX_TTL_SECS)).max(ttl),
        }
    }

    pub(super) fn expires(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// Two thirds into the TTL: late enough not to renew needlessly, early enough to survive
    /// a few failed attempts.
    pub(crate) fn renew_at(&self) -> Instant {
        self.granted_at + self.ttl * 2 / 3
    }

    pub(crate) fn remaining(&self, now: Instant) -> Duration {
        (self.granted_at + self.ttl).saturating_duration_since(now)
    }
}

/// When the renewal task should look at the token next; `None` means only when woken (the
/// token never expires, or it was given up on, and there is no file to watch).
pub(crate) fn next_check(
    lease: &Lease,
    now: Instant,
    retry: Option<Duration>,
    given_up: bool,
    watches_file: bool,
) -> Option<Duration> {
    let mut wait = None;
    if lease.expires() && !given_up {
        let due = match retry {
            Some(delay) => delay,
            None => lease.renew_at().saturating_duration_since(now),
        };
        wait = Some(due.max(MIN_RENEW_GAP));
    }
    if watches_file {
        wait = Some(wait.map_or(TOKEN_FILE_POLL, |w| w.min(TOKEN_FILE_POLL)));
    }
    wait
}

/// The `data` of `lookup-self`.
#[derive(Deserialize)]
pub(crate) struct LookupData {
    #[serde(default)]
    ttl: Option<u64>,
    #[serde(default)]
    renewable: Option<bool>,
    #[serde(default)]
    creation_ttl: Option<u64>,
}

impl LookupData {
    /// The token's lease as of now.
    pub(crate) fn lease(&self) -> Lease {
        let ttl = self.ttl.unwrap_or(0);
        Lease::new(
            ttl,
            self.renewable.unwrap_or(false),
            self.creation_ttl.unwrap_or(ttl),
        )
    }
}

pub(crate) fn token_from_auth(auth: AuthBlock) -> Result<Token, String> {
    let lease = Lease::new(auth.lease_duration, auth.renewable, auth.lease_duration);
    Token::new(auth.client_token, lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_ttl_is_a_far_renewal_not_a_panic() {
        // Found writing the vault_response fuzz target: a TTL near u64::MAX seconds overflowed
        // `Duration * 2` and `Instant + Duration`.
        let lease = Lease::new(u64::MAX, true, u64::MAX);
        let now = Instant::now();
        assert!(lease.renew_at() > now + Duration::from_secs(365 * 24 * 3600));
        assert!(lease.remaining(now) > Duration::from_secs(365 * 24 * 3600));
        let wait = next_check(&lease, now, None, false, false).unwrap();
        assert!(wait > Duration::from_secs(365 * 24 * 3600));
    }

    fn lease(ttl: u64, granted_secs_ago: u64) -> (Lease, Instant) {
        let now = Instant::now();
        let lease = Lease {
            ttl: Duration::from_secs(ttl),
            renewable: true,
            granted_at: now - Duration::from_secs(granted_secs_ago),
            first_ttl: Duration::from_secs(ttl),
        };
        (lease, now)
    }

    #[test]
    fn renews_two_thirds_into_the_ttl() {
        let (fresh, now) = lease(3600, 0);
        assert_eq!(
            next_check(&fresh, now, None, false, false),
            Some(Duration::from_secs(2400))
        );
        let (overdue, now) = lease(60, 59);
        assert_eq!(
            next_check(&overdue, now, None, false, false),
            Some(MIN_RENEW_GAP)
        );
    }

    #[test]
    fn retries_follow_the_backoff_not_the_ttl() {
        let (lease, now) = lease(3600, 3000);
        assert_eq!(
            next_check(&lease, now, Some(Duration::from_secs(4)), false, false),
            Some(Duration::from_secs(4))
        );
    }

    #[test]
    fn tokens_that_never_expire_or_were_given_up_wait_for_a_wake_up() {
        let (root, now) = lease(0, 0);
        assert_eq!(next_check(&root, now, None, false, false), None);
        let (dead, now) = lease(60, 0);
        assert_eq!(next_check(&dead, now, None, true, false), None);
        // A token file is still watched for a new token.
        assert_eq!(
            next_check(&dead, now, None, true, true),
            Some(TOKEN_FILE_POLL)
        );
        let (long, now) = lease(86_400, 0);
        assert_eq!(
            next_check(&long, now, None, false, true),
            Some(TOKEN_FILE_POLL)
        );
    }
}
