//! SDS callers authenticated by their Kubernetes service-account token: the API server's
//! TokenReview says whose token it is; meshca maps `system:serviceaccount:<ns>:<sa>` to the
//! identity `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`. A token bound to a pod (a projected
//! token) also names that pod in the review's `status.user.extra`: the [`PodBinding`] node-agent
//! impersonation checks against the pod as it is now.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use meshca_provider::x509::sha256;
use meshca_provider::{SpiffeId, TrustDomain};

use crate::sds::{PodBinding, TokenAuthenticator, TokenError};

/// The username prefix TokenReview gives service accounts.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The `status.user.extra` keys the API server sets for a token bound to a pod
/// (`k8s.io/apiserver/pkg/authentication/serviceaccount`).
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// The longest object name Kubernetes allows (a DNS subdomain): a pod or node name in the
/// extras beyond it is not a name, and is ignored rather than stored.
const MAX_NAME_LEN: usize = 253;
/// A UID is 36 characters; anything much longer is not one.
const MAX_UID_LEN: usize = 128;

/// Checks tokens with TokenReview and remembers accepted ones.
///
/// An accepted token is cached (by its SHA-256, never the token itself) until it expires (the
/// `exp` claim, read only after the API server accepted the token) or `max_cache_age` passes,
/// whichever is first: the cap bounds how long a token the API server has since invalidated
/// (its pod deleted) keeps working.
///
/// A rejected token is remembered too, for [`Self::DEFAULT_REJECTION_CACHE_AGE`], so a caller
/// retrying a bad token (or a flood of them) costs one TokenReview per token and period, not
/// one per call. A review that could not be made (API server unreachable) is not remembered.
/// Both caches are bounded ([`Self::MAX_CACHE_ENTRIES`] each): when full, expired entries are
/// dropped, and if none has expired, all of them.
///
/// At most [`Self::MAX_CONCURRENT_REVIEWS`] reviews are in flight at once; further callers wait
/// for one to finish, then look at the caches again (a flood of one token is reviewed by the
/// first callers only). SDS authenticates a stream before it takes a slot, so this, not the
/// stream limit, is what bounds the API calls unauthenticated callers cause.
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    audiences: Vec<String>,
    trust_domain: TrustDomain,
    max_cache_age: Duration,
    rejection_cache_age: Duration,
    max_cache_entries: usize,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    rejected: Mutex<HashMap<[u8; 32], Rejected>>,
    reviews: tokio::sync::Semaphore,
    /// The setting the audiences come from, named when a token is for another audience.
    audience_setting: &'static str,
}

#[derive(Clone)]
struct Rejected {
    error: TokenError,
    until: Instant,
}

#[derive(Clone)]
struct Cached {
    identity: SpiffeId,
    /// The pod the token is bound to: fixed for the token's life, so cached with it (whether
    /// that pod still exists, and where, is checked live by whoever relies on it).
    pod: Option<PodBinding>,
    until: Instant,
}

impl TokenReviewAuthenticator {
    /// Accepted tokens are trusted again without a review for at most this long.
    pub const DEFAULT_MAX_CACHE_AGE: Duration = Duration::from_secs(300);
    /// A rejected token is refused again without a review for this long.
    pub const DEFAULT_REJECTION_CACHE_AGE: Duration = Duration::from_secs(15);
    /// Entries of each cache (accepted, rejected).
    pub const MAX_CACHE_ENTRIES: usize = 100_000;
    /// TokenReviews in flight at once.
    pub const MAX_CONCURRENT_REVIEWS: usize = 32;

    /// Reviews tokens with `client`; `audiences` are sent with each review (empty: the API
    /// server's own audience, i.e. the pod's default token).
    pub fn new(client: kube::Client, audiences: Vec<String>, trust_domain: TrustDomain) -> Self {
        Self {
            client,
            audiences,
            trust_domain,
            max_cache_age: Self::DEFAULT_MAX_CACHE_AGE,
            rejection_cache_age: Self::DEFAULT_REJECTION_CACHE_AGE,
            max_cache_entries: Self::MAX_CACHE_ENTRIES,
            cache: Mutex::default(),
            rejected: Mutex::default(),
            reviews: tokio::sync::Semaphore::new(Self::MAX_CONCURRENT_REVIEWS),
            audience_setting: "sds.tokenAudiences",
        }
    }

    /// Names the setting the audiences come from in refusals (default `sds.tokenAudiences`;
    /// the Istio CA listener's are `istio.tokenAudiences`).
    #[must_use]
    pub fn with_audience_setting(mut self, setting: &'static str) -> Self {
        self.audience_setting = setting;
        self
    }

    /// Changes how long a rejected token is refused without a new review (zero: not at all).
    #[must_use]
    pub fn with_rejection_cache_age(mut self, age: Duration) -> Self {
        self.rejection_cache_age = age;
        self
    }

    fn cached_rejection(&self, digest: &[u8; 32]) -> Option<TokenError> {
        let rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        rejected
            .get(digest)
            .filter(|r| r.until > Instant::now())
            .map(|r| r.error.clone())
    }

    fn remember_rejection(&self, digest: [u8; 32], error: &TokenError) {
        if self.rejection_cache_age.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
        make_room(&mut rejected, self.max_cache_entries, now, |r| r.until);
        rejected.insert(
            digest,
            Rejected {
                error: error.clone(),
                until: now + self.rejection_cache_age,
            },
        );
    }

    /// Changes how long an accepted token is trusted without a new review.
    #[must_use]
    pub fn with_max_cache_age(mut self, age: Duration) -> Self {
        self.max_cache_age = age;
        self
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<(SpiffeId, Option<PodBinding>)> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(digest)
            .filter(|c| c.until > Instant::now())
            .map(|c| (c.identity.clone(), c.pod.clone()))
    }

    fn remember(
        &self,
        digest: [u8; 32],
        (identity, pod): (SpiffeId, Option<PodBinding>),
        token: &str,
    ) {
        let lifetime = token_expiry(token)
            .and_then(|exp| exp.duration_since(SystemTime::now()).ok())
            .map_or(self.max_cache_age, |left| left.min(self.max_cache_age));
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        make_room(&mut cache, self.max_cache_entries, now, |c| c.until);
        cache.insert(
            digest,
            Cached {
                identity,
                pod,
                until: now + lifetime,
            },
        );
    }

    async fn review(&self, token: &str) -> Result<(SpiffeId, Option<PodBinding>), TokenError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(review_failed)?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            // The API server's reason is its own text, cut so a long one cannot swell the
            // status a caller gets; a token for another audience fails here too, so the
            // audiences asked for, and their setting, are named.
            let reason: String = status
                .error
                .as_deref()
                .unwrap_or("no reason given")
                .chars()
                .take(256)
                .collect();
            let audiences = if self.audiences.is_empty() {
                String::new()
            } else {
                format!(
                    "; meshca asked for a token meant for {:?} ({})",
                    self.audiences, self.audience_setting
                )
            };
            return Err(TokenError::Rejected {
                reason: format!("the API server did not authenticate it ({reason}){audiences}"),
            });
        }
        // The API server may accept a token for audiences other than the ones asked for when
        // it ignores `spec.audiences`; clients must check (TokenReview API documentation).
        if !self.audiences.is_empty() {
            let granted = status.audiences.unwrap_or_default();
            if !granted.iter().any(|a| self.audiences.contains(a)) {
                return Err(TokenError::Rejected {
                    reason: format!(
                        "it is not meant for meshca (audiences {granted:?}; meshca accepts \
                         {:?}, {}): mount a projected token with one of them",
                        self.audiences, self.audience_setting
                    ),
                });
            }
        }
        let user = status.user.unwrap_or_default();
        let pod = user.extra.as_ref().and_then(pod_binding);
        let username = user.username.unwrap_or_default();
        let identity = username
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(|| TokenError::Rejected {
                reason: format!(
                    "it belongs to {username:?}, not a service account: only service-account \
                     tokens map to a workload identity"
                ),
            })?;
        let identity =
            SpiffeId::new(self.trust_domain.clone(), identity.0, identity.1).map_err(|e| {
                TokenError::Rejected {
                    reason: format!("its service account is not a valid identity: {e}"),
                }
            })?;
        Ok((identity, pod))
    }
}

#[async_trait]
impl TokenAuthenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, token: &str) -> Result<SpiffeId, TokenError> {
        self.authenticate_caller(token)
            .await
            .map(|(identity, _)| identity)
    }

    async fn authenticate_caller(
        &self,
        token: &str,
    ) -> Result<(SpiffeId, Option<PodBinding>), TokenError> {
        let digest = sha256(token.as_bytes());
        let cached = || match self.cached(&digest) {
            Some(caller) => Some(Ok(caller)),
            None => self.cached_rejection(&digest).map(Err),
        };
        if let Some(answer) = cached() {
            return answer;
        }
        #[allow(
            clippy::expect_used,
            reason = "acquire fails only on a closed semaphore, and nothing closes this one"
        )]
        let _in_flight = self
            .reviews
            .acquire()
            .await
            .expect("the review semaphore is never closed");
        // Another call may have reviewed this token while this one waited.
        if let Some(answer) = cached() {
            return answer;
        }
        match self.review(token).await {
            Ok(caller) => {
                self.remember(digest, caller.clone(), token);
                Ok(caller)
            }
            Err(error) => {
                if matches!(error, TokenError::Rejected { .. }) {
                    self.remember_rejection(digest, &error);
                }
                Err(error)
            }
        }
    }
}

impl fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("audiences", &self.audiences)
            .field("trust_domain", &self.trust_domain)
            .field("max_cache_age", &self.max_cache_age)
            .finish_non_exhaustive()
    }
}

/// The pod a reviewed token is bound to, from the review's `status.user.extra`: `None` unless
/// the pod name is there as one valid object name. A UID or node name that is not one (several
/// values, absurd sizes, characters no name has) is left out rather than trusted.
fn pod_binding(extra: &std::collections::BTreeMap<String, Vec<String>>) -> Option<PodBinding> {
    let single = |key: &str| match extra.get(key).map(Vec::as_slice) {
        Some([value]) => Some(value.as_str()),
        _ => None,
    };
    let name = single(EXTRA_POD_NAME).filter(|n| is_object_name(n))?;
    let uid = single(EXTRA_POD_UID)
        .filter(|u| !u.is_empty() && u.len() <= MAX_UID_LEN)
        .filter(|u| u.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    let node = single(EXTRA_NODE_NAME).filter(|n| is_object_name(n));
    Some(PodBinding {
        name: name.to_owned(),
        uid: uid.map(str::to_owned),
        node: node.map(str::to_owned),
    })
}

/// A Kubernetes object name (an RFC 1123 subdomain): what pod and node names are.
fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'))
}

/// Makes room for one more entry in a cache of at most `max` entries: drops the expired ones,
/// and if that is not enough, everything (a flood of distinct tokens must not grow it).
fn make_room<V>(
    cache: &mut HashMap<[u8; 32], V>,
    max: usize,
    now: Instant,
    until: impl Fn(&V) -> Instant,
) {
    if cache.len() >= max {
        cache.retain(|_, v| until(v) > now);
        if cache.len() >= max {
            cache.clear();
        }
    }
}

/// A TokenReview that could not be made: the caller is told to retry (UNAVAILABLE), the log
/// says what to fix. Never contains the token: kube's errors carry the API server's status.
fn review_failed(error: kube::Error) -> TokenError {
    let reason = match error {
        kube::Error::Api(status) if status.code == 403 => format!(
            "the API server forbade the TokenReview ({}): meshca's ServiceAccount needs create on \
             tokenreviews.authentication.k8s.io (ClusterRole)",
            status.message
        ),
        kube::Error::Api(status) => format!(
            "the API server answered {} {} to the TokenReview ({})",
            status.code, status.reason, status.message
        ),
        other => format!("the Kubernetes API server is not reachable: {other}"),
    };
    TokenError::Unavailable { reason }
}

/// The `exp` claim of a JWT, read without verifying it: only used to bound the cache for a
/// token the API server has just accepted.
fn token_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2lnbmF0dXJl", b64(r#"{"alg":"RS256"}"#), b64(claims))
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first_then_everything() {
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        let mut cache: HashMap<[u8; 32], Instant> =
            [([1; 32], now), ([2; 32], later), ([3; 32], later)].into();
        make_room(&mut cache, 3, now, |until| *until);
        assert_eq!(cache.len(), 2, "the expired entry went");
        make_room(&mut cache, 3, now, |until| *until);
        assert_eq!(cache.len(), 2, "room enough: nothing dropped");
        make_room(&mut cache, 2, now, |until| *until);
        assert!(cache.is_empty(), "full of live entries: all dropped");
    }

    fn extra(pairs: &[(&str, &[&str])]) -> std::collections::BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
            .collect()
    }

    #[test]
    fn the_pod_binding_comes_from_the_extras_and_ignores_what_is_not_a_name() {
        let full = extra(&[
            (EXTRA_POD_NAME, &["ztunnel-abc"]),
            (EXTRA_POD_UID, &["0a1b2c3d-0000-4000-8000-123456789abc"]),
            (EXTRA_NODE_NAME, &["node-1.example"]),
        ]);
        assert_eq!(
            pod_binding(&full),
            Some(PodBinding {
                name: "ztunnel-abc".into(),
                uid: Some("0a1b2c3d-0000-4000-8000-123456789abc".into()),
                node: Some("node-1.example".into()),
            })
        );
        assert_eq!(pod_binding(&extra(&[])), None, "not bound to a pod");
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad_name in [
            &["Pod_1"][..],
            &["a", "b"],
            &[""],
            &[long.as_str()],
            &["-x"],
        ] {
            assert_eq!(
                pod_binding(&extra(&[(EXTRA_POD_NAME, bad_name)])),
                None,
                "{bad_name:?} is not a pod name"
            );
        }
        let long_uid = "a".repeat(MAX_UID_LEN + 1);
        let odd = extra(&[
            (EXTRA_POD_NAME, &["p"]),
            (EXTRA_POD_UID, &[long_uid.as_str()]),
            (EXTRA_NODE_NAME, &["node 1"]),
        ]);
        assert_eq!(
            pod_binding(&odd),
            Some(PodBinding {
                name: "p".into(),
                uid: None,
                node: None,
            }),
            "an absurd UID or node name is dropped, not trusted"
        );
    }

    #[test]
    fn expiry_is_read_from_the_exp_claim_only_when_present() {
        assert_eq!(
            token_expiry(&jwt(r#"{"exp":2000000000,"sub":"x"}"#)),
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(token_expiry(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(token_expiry("not-a-jwt"), None);
        assert_eq!(token_expiry("a.%%%.c"), None);
    }
}
