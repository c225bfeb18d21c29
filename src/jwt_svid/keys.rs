//! meshca's JWT-SVID signing keys: ECDSA P-256 keys with a key id each, newest last, and the
//! schedule that rotates them.
//!
//! A new key is made every [`KeyPolicy::rotation_interval`]. It is published (in the JWKS) at
//! once but signs only after [`KeyPolicy::activation_delay`], so verifiers that cache the JWKS
//! have it before the first token it signed reaches them. A key that no longer signs stays
//! published for [`KeyPolicy::retention`] (the longest token lifetime plus leeway) after its
//! successor took over, so every token it signed can still be validated; then it is dropped.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The most keys a set may hold: far more than any schedule needs (one signing, one next, a
/// few retired), and a bound on what a corrupt or hostile store can make meshca load.
pub const MAX_KEYS: usize = 16;

/// When keys are made, used and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// How long a key is the newest before another is made.
    pub rotation_interval: Duration,
    /// How long a new key is published before it signs.
    pub activation_delay: Duration,
    /// How long a key stays published after it stopped signing: at least the longest
    /// JWT-SVID lifetime.
    pub retention: Duration,
}

/// One signing key.
pub struct SigningKey {
    kid: String,
    created: SystemTime,
    pkcs8: Zeroizing<Vec<u8>>,
    /// The key, parsed once (ring checks the pair when it loads it: a point multiplication
    /// about as costly as a signature).
    pair: EcdsaKeyPair,
    /// The uncompressed public point (0x04 ‖ x ‖ y).
    public: Vec<u8>,
}

impl SigningKey {
    /// A new P-256 key made at `created`, with a random key id.
    pub fn generate(created: SystemTime) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| KeyError::Generate)?;
        let mut id = [0u8; 16];
        rng.fill(&mut id).map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(URL_SAFE_NO_PAD.encode(id), created, pkcs8.as_ref().to_vec())
    }

    fn from_pkcs8(kid: String, created: SystemTime, pkcs8: Vec<u8>) -> Result<Self, KeyError> {
        let pkcs8 = Zeroizing::new(pkcs8);
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|_| KeyError::Invalid {
            reason: format!("key {kid} is not an ECDSA P-256 PKCS#8 key"),
        })?;
        let public = pair.public_key().as_ref().to_vec();
        Ok(Self {
            kid,
            created,
            pkcs8,
            pair,
            public,
        })
    }

    /// The key id (`kid`) tokens and the JWKS name it by.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// When it was made.
    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// The private key, PKCS#8 DER.
    #[cfg(test)]
    pub(crate) fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// An ES256 signature of `message`: r ‖ s, 64 bytes, as JWS wants it.
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.pair
            .sign(&SystemRandom::new(), message)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|_| KeyError::Generate)
    }

    /// The public point's coordinates, base64url: the JWK's `x` and `y`.
    pub fn coordinates(&self) -> (String, String) {
        let (x, y) = self.public[1..].split_at(32);
        (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// The keys, oldest first.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<SigningKey>,
}

/// What went wrong with a key or a stored key set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The system's random source failed.
    #[error("could not make a P-256 key: the system random source failed")]
    Generate,
    /// The stored key set cannot be used.
    #[error("the stored JWT signing keys are unusable ({reason}); they are left as they are")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
}

/// The stored form: `{"version":1,"keys":[{"kid","created","pkcs8"}]}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    kid: String,
    /// Unix seconds.
    created: u64,
    /// PKCS#8 DER, base64.
    pkcs8: Zeroizing<String>,
}

impl KeySet {
    /// Every key, oldest first.
    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
    }

    /// The key that signs at `now`: the newest one published for at least the activation
    /// delay, or the only one there is.
    pub fn signing_key(&self, now: SystemTime, policy: &KeyPolicy) -> Option<&SigningKey> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.created + policy.activation_delay <= now)
            .or_else(|| self.keys.first())
    }

    /// The key named `kid`.
    pub fn find(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// The set `policy` wants at `now`, or `None` when this one is it: a new key when there
    /// is none or the newest is older than the rotation interval; keys dropped once their
    /// successor has signed for longer than the retention.
    pub fn plan(&self, now: SystemTime, policy: &KeyPolicy) -> Result<Option<KeySet>, KeyError> {
        let needs_new = self
            .keys
            .last()
            .is_none_or(|newest| newest.created + policy.rotation_interval <= now);
        // Key i stopped signing when key i+1 activated; it is kept for the retention after.
        let expired = |i: usize| {
            self.keys.get(i + 1).is_some_and(|next| {
                next.created + policy.activation_delay + policy.retention <= now
            })
        };
        let keep: Vec<usize> = (0..self.keys.len()).filter(|i| !expired(*i)).collect();
        if !needs_new && keep.len() == self.keys.len() {
            return Ok(None);
        }
        let mut keys: Vec<SigningKey> = keep
            .into_iter()
            .map(|i| {
                let k = &self.keys[i];
                SigningKey::from_pkcs8(k.kid.clone(), k.created, k.pkcs8.to_vec())
            })
            .collect::<Result<_, _>>()?;
        if needs_new {
            keys.push(SigningKey::generate(now)?);
        }
        // Never more than MAX_KEYS: the oldest go first.
        let excess = keys.len().saturating_sub(MAX_KEYS);
        keys.drain(..excess);
        Ok(Some(KeySet { keys }))
    }

    /// The stored form (private keys included: the store keeps it as key material).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let stored = Stored {
            version: 1,
            keys: self
                .keys
                .iter()
                .map(|k| StoredKey {
                    kid: k.kid.clone(),
                    created: unix_seconds(k.created),
                    pkcs8: Zeroizing::new(STANDARD.encode(&*k.pkcs8)),
                })
                .collect(),
        };
        // Serialising plain structs of strings and numbers cannot fail.
        Zeroizing::new(serde_json::to_vec(&stored).unwrap_or_default())
    }

    /// Reads the stored form; anything unexpected is refused, never repaired.
    pub fn decode(bytes: &[u8]) -> Result<Self, KeyError> {
        let stored: Stored = serde_json::from_slice(bytes).map_err(|e| KeyError::Invalid {
            // serde_json's message names a line and column, never the contents.
            reason: format!("not meshca's JWT key set: {e}"),
        })?;
        if stored.version != 1 {
            return Err(KeyError::Invalid {
                reason: format!(
                    "version {} is not one this meshca reads (1): a newer meshca wrote it",
                    stored.version
                ),
            });
        }
        if stored.keys.len() > MAX_KEYS {
            return Err(KeyError::Invalid {
                reason: format!(
                    "{} keys, more than the {MAX_KEYS} meshca keeps",
                    stored.keys.len()
                ),
            });
        }
        let mut keys = Vec::with_capacity(stored.keys.len());
        for key in stored.keys {
            let StoredKey {
                kid,
                created,
                pkcs8,
            } = key;
            if kid.is_empty() || kid.len() > 64 || !kid.bytes().all(is_kid_byte) {
                return Err(KeyError::Invalid {
                    reason: "a key id is empty, longer than 64 bytes or not base64url".into(),
                });
            }
            let der = STANDARD
                .decode(pkcs8.as_bytes())
                .map_err(|_| KeyError::Invalid {
                    reason: format!("key {kid} is not base64"),
                })?;
            let created = UNIX_EPOCH + Duration::from_secs(created);
            keys.push(SigningKey::from_pkcs8(kid, created, der)?);
        }
        if keys.windows(2).any(|w| w[0].created > w[1].created) {
            return Err(KeyError::Invalid {
                reason: "the keys are not in the order they were made".into(),
            });
        }
        Ok(Self { keys })
    }
}

fn is_kid_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

pub(crate) fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn policy() -> KeyPolicy {
        KeyPolicy {
            rotation_interval: 24 * HOUR,
            activation_delay: HOUR,
            retention: HOUR,
        }
    }

    fn at(hours: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000) + HOUR * hours as u32
    }

    #[test]
    fn keys_are_made_published_ahead_used_and_dropped_on_schedule() {
        let policy = policy();
        let first = KeySet::default().plan(at(0), &policy).unwrap().unwrap();
        assert_eq!(first.keys().len(), 1);
        // The only key signs at once.
        let kid0 = first.signing_key(at(0), &policy).unwrap().kid().to_owned();
        assert!(first.plan(at(23), &policy).unwrap().is_none());

        let second = first.plan(at(24), &policy).unwrap().unwrap();
        assert_eq!(second.keys().len(), 2);
        // Published, but the old key signs until the activation delay has passed.
        assert_eq!(second.signing_key(at(24), &policy).unwrap().kid(), kid0);
        let kid1 = second.keys()[1].kid().to_owned();
        assert_eq!(second.signing_key(at(25), &policy).unwrap().kid(), kid1);
        // The old key stays for the retention after it stopped signing, then goes.
        assert!(second.plan(at(25), &policy).unwrap().is_none());
        let third = second.plan(at(26), &policy).unwrap().unwrap();
        assert_eq!(third.keys().len(), 1);
        assert_eq!(third.keys()[0].kid(), kid1);
    }

    #[test]
    fn the_stored_form_round_trips_and_keeps_no_key_in_debug() {
        let set = KeySet::default().plan(at(0), &policy()).unwrap().unwrap();
        let set = set.plan(at(24), &policy()).unwrap().unwrap();
        let bytes = set.encode();
        let back = KeySet::decode(&bytes).unwrap();
        assert_eq!(back.keys().len(), 2);
        for (a, b) in set.keys().iter().zip(back.keys()) {
            assert_eq!(a.kid(), b.kid());
            assert_eq!(a.coordinates(), b.coordinates());
            assert_eq!(a.created(), b.created());
        }
        let debug = format!("{set:?}");
        let pkcs8 = STANDARD.encode(set.keys()[0].pkcs8());
        assert!(!debug.contains(&pkcs8[..20]), "{debug}");
        assert!(!debug.contains("pkcs8"), "{debug}");
    }

    #[test]
    fn a_damaged_store_is_refused_saying_what_is_wrong() {
        let set = KeySet::default().plan(at(0), &policy()).unwrap().unwrap();
        let good = String::from_utf8(set.encode().to_vec()).unwrap();
        let cases = [
            ("not json".to_owned(), "not meshca's JWT key set"),
            (good.replace("\"version\":1", "\"version\":2"), "version 2"),
            (
                good.replace("\"pkcs8\":\"", "\"pkcs8\":\"!!"),
                "is not base64",
            ),
            (
                good.replace("\"pkcs8\":\"", "\"pkcs8\":\"AAAA"),
                "not an ECDSA P-256 PKCS#8 key",
            ),
            (good.replace("\"kid\":\"", "\"kid\":\"../"), "a key id"),
        ];
        for (bytes, expected) in cases {
            let error = KeySet::decode(bytes.as_bytes()).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains("MIG"), "no key material in {error}");
        }
    }
}
