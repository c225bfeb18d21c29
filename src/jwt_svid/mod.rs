//! JWT-SVIDs: meshca's ES256 signing keys, kept with the CA store and rotated on a schedule
//! (`keys.rs`), the tokens signed and validated with them (`token.rs`), and their publication
//! as JWKS and OIDC discovery (`jwks.rs`, served by `http.rs`). [`JwtAuthority`] holds the current key set and
//! keeps it in step with the store, so several replicas sharing a store sign with the same
//! keys and publish the same set.

pub mod http;
mod jwks;
mod keys;
mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca_provider::{SpiffeId, TrustDomain};
use meshca_tresor::{CaStore, JwtKeysSwap, StoreError};
use tokio::sync::watch;

pub use jwks::{DISCOVERY_PATH, KEYS_PATH, KeyUse, discovery, jwks};
pub use keys::{KeyError, KeyPolicy, KeySet, MAX_KEYS, SigningKey};
pub use token::{
    Claims, MAX_AUDIENCE_BYTES, MAX_AUDIENCES, MAX_TOKEN_BYTES, TokenError, sign, validate,
};

/// Why the key set could not be read or kept current.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtKeysError {
    /// The store failed, or cannot hold JWT keys.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// What the store holds is unusable (it is left as it is).
    #[error("{store}: {source}")]
    Keys {
        /// The store's description.
        store: String,
        /// What is wrong.
        source: KeyError,
    },
    /// Other writers kept changing the keys.
    #[error("{store}: the JWT signing keys changed under meshca three times in a row; retry")]
    Contended {
        /// The store's description.
        store: String,
    },
}

/// The JWT-SVID signing keys of this daemon, kept in step with the store.
pub struct JwtAuthority {
    store: Arc<dyn CaStore>,
    policy: KeyPolicy,
    /// The keys held now; receivers see every change of the published key ids.
    keys: watch::Sender<Arc<KeySet>>,
}

impl std::fmt::Debug for JwtAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthority")
            .field("store", &self.store.describe())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl JwtAuthority {
    /// An authority over `store`'s keys; it holds none until [`refresh`](Self::refresh).
    pub fn new(store: Arc<dyn CaStore>, policy: KeyPolicy) -> Self {
        Self {
            store,
            policy,
            keys: watch::Sender::new(Arc::new(KeySet::default())),
        }
    }

    /// Reads the stored keys and, when the policy wants a change at `now` (the first key, the
    /// next one, dropping retired ones), makes it in the store — only over what was read, so
    /// of several replicas one writes and the others adopt its keys. Unusable stored keys are
    /// an error and are never overwritten. Returns whether the held set changed.
    pub async fn refresh(&self, now: SystemTime) -> Result<bool, JwtKeysError> {
        let describe = || self.store.describe();
        let mut stored = self.store.load_jwt_keys().await?;
        for _ in 0..3 {
            let current = match &stored {
                Some(s) => KeySet::decode(&s.contents).map_err(|source| JwtKeysError::Keys {
                    store: describe(),
                    source,
                })?,
                None => KeySet::default(),
            };
            let planned = current
                .plan(now, &self.policy)
                .map_err(|source| JwtKeysError::Keys {
                    store: describe(),
                    source,
                })?;
            let Some(next) = planned else {
                return Ok(self.hold(current));
            };
            let expected = stored.as_ref().map(|s| s.digest());
            match self
                .store
                .swap_jwt_keys(expected.as_ref(), &next.encode())
                .await?
            {
                JwtKeysSwap::Stored => {
                    tracing::info!(
                        store = %describe(),
                        keys = next.keys().len(),
                        newest = next.keys().last().map(SigningKey::kid).unwrap_or_default(),
                        "JWT-SVID signing keys changed"
                    );
                    return Ok(self.hold(next));
                }
                JwtKeysSwap::Stale(found) => stored = found,
            }
        }
        Err(JwtKeysError::Contended { store: describe() })
    }

    fn hold(&self, keys: KeySet) -> bool {
        let kids = |set: &KeySet| -> Vec<String> {
            set.keys().iter().map(|k| k.kid().to_owned()).collect()
        };
        let keys = Arc::new(keys);
        self.keys.send_if_modified(|held| {
            let changed = kids(held) != kids(&keys);
            *held = keys;
            changed
        })
    }

    /// The keys held now.
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.borrow().clone()
    }

    /// The keys, seeing every change of which keys are published (a new key, a dropped one).
    pub fn subscribe(&self) -> watch::Receiver<Arc<KeySet>> {
        self.keys.subscribe()
    }

    /// The policy.
    pub fn policy(&self) -> &KeyPolicy {
        &self.policy
    }

    /// Signs a JWT-SVID with the current key (see [`sign`]).
    pub fn sign(
        &self,
        subject: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
        issuer: Option<&str>,
        now: SystemTime,
    ) -> Result<String, TokenError> {
        sign(
            &self.keys(),
            &self.policy,
            subject,
            audiences,
            ttl,
            issuer,
            now,
        )
    }

    /// Validates a JWT-SVID against the keys held now (see [`validate`]).
    pub fn validate(
        &self,
        token: &str,
        audience: &str,
        trust_domain: &TrustDomain,
        now: SystemTime,
    ) -> Result<(SpiffeId, Claims), TokenError> {
        validate(&self.keys(), token, audience, trust_domain, now)
    }
}

#[cfg(test)]
mod tests;
