//! Vault credentials: the token in use, logging in, looking up, renewing, and replacing it.
//!
//! One [`Credentials`] holds the current token behind a lock that is only held to clone an
//! `Arc`, so issuance never waits on a renewal. A single background task
//! ([`keep_token_fresh`]) owns renewal: it renews at two thirds of the token's TTL, logs in
//! again (AppRole) or re-reads the file (token file) when renewal is impossible, and backs off
//! while Vault is unreachable. Issuance that meets a refused token calls
//! [`Credentials::replace`], which logs in at most once for all callers that saw the same
//! stale token.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use meshca_provider::format_duration;
use reqwest::header::HeaderValue;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::error::VaultError;
use crate::http::{ApiError, AuthBlock, Method, VaultHttp};
use crate::settings::{Secret, SecretIdSource, SharedTokenSource, VaultAuth};

/// The service-account token file Vault's Kubernetes login reads.
const KUBERNETES_TOKEN_SETTING: &str = "vault.kubernetes.tokenFile";

/// Renewal never runs closer together than this, however short the TTL.
const MIN_RENEW_GAP: Duration = Duration::from_millis(250);
/// How often a token file is checked for a new token.
const TOKEN_FILE_POLL: Duration = Duration::from_secs(10);
/// First and longest wait between failed renewal attempts while Vault is unreachable.
const RETRY_INITIAL: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

const LOOKUP_SELF: &str = "auth/token/lookup-self";
const RENEW_SELF: &str = "auth/token/renew-self";

/// A token and what Vault said about its lifetime.
pub(crate) struct Token {
    value: Secret,
    header: HeaderValue,
    lease: Mutex<Lease>,
    warned_expiry: AtomicBool,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("lease", &self.lease())
            .finish_non_exhaustive()
    }
}

impl Token {
    fn new(value: Secret, lease: Lease) -> Result<Self, String> {
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

    fn set_lease(&self, lease: Lease) {
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
    fn new(ttl_secs: u64, renewable: bool, first_ttl_secs: u64) -> Self {
        let ttl = Duration::from_secs(ttl_secs.min(MAX_TTL_SECS));
        Self {
            ttl,
            renewable,
            granted_at: Instant::now(),
            first_ttl: Duration::from_secs(first_ttl_secs.min(MAX_TTL_SECS)).max(ttl),
        }
    }

    fn expires(&self) -> bool {
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

#[derive(serde::Serialize)]
struct AppRoleLogin<'a> {
    role_id: &'a str,
    secret_id: &'a str,
}

#[derive(serde::Serialize)]
struct KubernetesLogin<'a> {
    role: &'a str,
    jwt: &'a str,
}

/// The current token and how to get another.
pub(crate) struct Credentials {
    method: VaultAuth,
    current: RwLock<Arc<Token>>,
    login_lock: tokio::sync::Mutex<()>,
    /// Wakes the renewal task when a token was replaced outside it.
    replaced: Notify,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("method", &self.method.kind())
            .field("lease", &self.current().lease())
            .finish_non_exhaustive()
    }
}

/// What one renewal step achieved.
enum Step {
    Done,
    /// Vault could not be reached; try again soon.
    Retry(String),
    /// Nothing more can be done with this token; wait for a new one.
    GiveUp(String),
}

impl Credentials {
    /// Gets a first token and checks it with `lookup-self`.
    pub(crate) async fn establish(method: VaultAuth, http: &VaultHttp) -> Result<Self, VaultError> {
        let token = obtain(&method, http).await?;
        if matches!(
            method,
            VaultAuth::AppRole { .. } | VaultAuth::Kubernetes { .. }
        ) {
            // A fresh login proves the credentials; the lookup proves the token works and that
            // its policies allow meshca to look after it.
            let lease = lookup(http, &token.header, &method).await?;
            token.set_lease(lease);
        }
        Ok(Self {
            method,
            current: RwLock::new(Arc::new(token)),
            login_lock: tokio::sync::Mutex::new(()),
            replaced: Notify::new(),
        })
    }

    pub(crate) fn method(&self) -> &VaultAuth {
        &self.method
    }

    /// The token to use now.
    pub(crate) fn current(&self) -> Arc<Token> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether a refused token can be replaced without a person (a login, or a token that is
    /// re-read from a file or a Secret).
    pub(crate) fn can_replace(&self) -> bool {
        !matches!(self.method, VaultAuth::Token(_))
    }

    /// Replaces `stale` with a fresh token (login, or re-reading the token file), unless
    /// another caller already did: then the newer token is returned. `why` says what was wrong
    /// with `stale`, for the error when no better token can be had.
    pub(crate) async fn replace(
        &self,
        http: &VaultHttp,
        stale: &Arc<Token>,
        why: &str,
    ) -> Result<Arc<Token>, VaultError> {
        let _one_login_at_a_time = self.login_lock.lock().await;
        let current = self.current();
        if !Arc::ptr_eq(&current, stale) {
            return Ok(current);
        }
        let rejected = || VaultError::TokenRejected {
            address: http.address().to_owned(),
            status: why.to_owned(),
            settings: self.method.settings_hint(),
        };
        if let Some(read) = read_kept_token(&self.method).await
            && read?.expose() == stale.value.expose()
        {
            // Same token as before: nothing better to offer.
            return Err(rejected());
        }
        if matches!(self.method, VaultAuth::Token(_)) {
            return Err(rejected());
        }
        let fresh = Arc::new(obtain(&self.method, http).await?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh.clone();
        tracing::info!(
            address = http.address(),
            method = self.method.kind(),
            valid_for = %format_duration(fresh.lease().ttl),
            "obtained a new Vault token"
        );
        self.replaced.notify_one();
        Ok(fresh)
    }

    /// One renewal step for `token`, which is due or may have been replaced in its file.
    async fn refresh(&self, http: &VaultHttp, token: &Arc<Token>) -> Step {
        if let Some(read) = read_kept_token(&self.method).await {
            match read {
                Ok(value) if value.expose() != token.value.expose() => {
                    return self
                        .replace_step(http, token, "the kept token changed")
                        .await;
                }
                Ok(_) => {}
                Err(e) => return Step::Retry(e.to_string()),
            }
        }
        let lease = token.lease();
        let now = Instant::now();
        if !lease.expires() || now < lease.renew_at() {
            return Step::Done;
        }
        if !lease.renewable {
            if self.can_replace() {
                return self
                    .replace_step(http, token, "the token is not renewable")
                    .await;
            }
            return Step::GiveUp(format!(
                "the vault token is not renewable and expires in {}: meshca will then fail to \
                 issue; give it a longer-lived token ({}) or use vault.appRole",
                format_duration(lease.remaining(now)),
                self.method.settings_hint()
            ));
        }
        match renew(http, &token.header).await {
            Ok(renewed) => {
                // Keep comparing renewals with what the token was created with.
                let renewed = Lease {
                    first_ttl: lease.first_ttl,
                    ..renewed
                };
                token.set_lease(renewed);
                tracing::debug!(
                    address = http.address(),
                    valid_for = %format_duration(renewed.ttl),
                    "renewed the Vault token"
                );
                // A renewal that grants much less than the token started with means its max TTL
                // is close: renewing cannot keep it alive much longer.
                if renewed.ttl * 3 < renewed.first_ttl {
                    if self.can_replace() {
                        return self
                            .replace_step(http, token, "the token reached its max TTL")
                            .await;
                    }
                    if !token.warned_expiry.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            address = http.address(),
                            expires_in = %format_duration(renewed.ttl),
                            "the Vault token is reaching its max TTL and cannot be renewed \
                             past it: give meshca a new token ({}) or use vault.appRole",
                            self.method.settings_hint()
                        );
                    }
                }
                Step::Done
            }
            Err(e) if e.is_transient() => Step::Retry(format!(
                "renewing the token at {}: {}",
                http.address(),
                e.summary()
            )),
            Err(e) if self.can_replace() => {
                self.replace_step(http, token, &format!("renewal refused: {}", e.summary()))
                    .await
            }
            Err(e) => Step::GiveUp(format!(
                "vault token can no longer be renewed by {} ({}): issuance will fail from now \
                 on or when it expires (in {}); give meshca a new token ({}) or use \
                 vault.appRole",
                http.address(),
                e.summary(),
                format_duration(lease.remaining(Instant::now())),
                self.method.settings_hint()
            )),
        }
    }

    async fn replace_step(&self, http: &VaultHttp, token: &Arc<Token>, why: &str) -> Step {
        match self.replace(http, token, why).await {
            Ok(_) => Step::Done,
            Err(e) if e.is_transient() => Step::Retry(e.to_string()),
            // A token file may be rewritten later; an AppRole secret ID may be fixed: keep the
            // task alive but stop hammering Vault.
            Err(e) => Step::GiveUp(e.to_string()),
        }
    }

    /// `lookup-self` with the current token, for health checks.
    pub(crate) async fn check(&self, http: &VaultHttp) -> Result<(), ApiError> {
        check_token(http, &self.current()).await
    }
}

/// `lookup-self` with `token`: whether Vault still accepts it.
pub(crate) async fn check_token(http: &VaultHttp, token: &Token) -> Result<(), ApiError> {
    http.call::<(), serde_json::Value>(Method::Get, LOOKUP_SELF, Some(&token.header), None)
        .await
        .map(|_| ())
}

/// The renewal task: runs until aborted (when the provider is dropped).
pub(crate) async fn keep_token_fresh(credentials: Arc<Credentials>, http: Arc<VaultHttp>) {
    let mut retry: Option<Duration> = None;
    let mut given_up: Option<Arc<Token>> = None;
    let watches_file = matches!(
        credentials.method,
        VaultAuth::TokenFile(_) | VaultAuth::Source(_)
    );
    loop {
        let token = credentials.current();
        let gave_up_on_this = given_up.as_ref().is_some_and(|t| Arc::ptr_eq(t, &token));
        let wait = next_check(
            &token.lease(),
            Instant::now(),
            retry,
            gave_up_on_this,
            watches_file,
        );
        let sleep = async {
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            () = credentials.replaced.notified() => {
                retry = None;
                continue;
            }
        }
        if !Arc::ptr_eq(&credentials.current(), &token) {
            retry = None;
            continue;
        }
        match credentials.refresh(&http, &token).await {
            Step::Done => retry = None,
            Step::Retry(reason) => {
                let delay = retry.map_or(RETRY_INITIAL, |d| (d * 2).min(RETRY_MAX));
                tracing::warn!(
                    address = http.address(),
                    retry_in = %format_duration(delay),
                    "could not renew the Vault token: {reason}"
                );
                retry = Some(delay);
            }
            Step::GiveUp(reason) => {
                tracing::error!(address = http.address(), "{reason}");
                retry = None;
                given_up = Some(token);
            }
        }
    }
}

/// A token by the configured method, with its lease.
async fn obtain(method: &VaultAuth, http: &VaultHttp) -> Result<Token, VaultError> {
    let invalid = |reason: String| VaultError::TokenRejected {
        address: http.address().to_owned(),
        status: reason,
        settings: method.settings_hint(),
    };
    match method {
        VaultAuth::Token(value) => {
            let token = Token::new(value.clone(), Lease::new(0, false, 0)).map_err(invalid)?;
            token.set_lease(lookup(http, &token.header, method).await?);
            Ok(token)
        }
        VaultAuth::TokenFile(_) | VaultAuth::Source(_) => {
            let value = match method {
                VaultAuth::Source(source) => read_source(source).await?,
                _ => read_secret_file_of(method)?,
            };
            let token = Token::new(value, Lease::new(0, false, 0)).map_err(invalid)?;
            token.set_lease(lookup(http, &token.header, method).await?);
            Ok(token)
        }
        VaultAuth::AppRole {
            role_id,
            secret_id,
            mount,
        } => {
            let secret_id = match secret_id {
                SecretIdSource::Value(secret) => secret.clone(),
                SecretIdSource::File(path) => read_secret_file(path, "vault.appRole.secretIdFile")?,
            };
            let body = AppRoleLogin {
                role_id,
                secret_id: secret_id.expose(),
            };
            login(http, method, mount, &body).await
        }
        VaultAuth::Kubernetes {
            role,
            mount,
            jwt_file,
        } => {
            let jwt = read_secret_file(jwt_file, KUBERNETES_TOKEN_SETTING)?;
            let body = KubernetesLogin {
                role,
                jwt: jwt.expose(),
            };
            login(http, method, mount, &body).await
        }
    }
}

/// `auth/<mount>/login` with `body`: a new token and its lease.
async fn login<B: serde::Serialize>(
    http: &VaultHttp,
    method: &VaultAuth,
    mount: &str,
    body: &B,
) -> Result<Token, VaultError> {
    let path = format!("auth/{mount}/login");
    let answer = http
        .call::<_, serde_json::Value>(Method::Post, &path, None, Some(body))
        .await
        .map_err(|e| match e {
            ApiError::Status { status, .. } if status < 500 && status != 429 => {
                VaultError::LoginRejected {
                    address: http.address().to_owned(),
                    path: path.clone(),
                    status: e.summary(),
                    settings: method.settings_hint(),
                }
            }
            other => api_error(http, &path, other),
        })?;
    let auth = answer.auth.ok_or_else(|| VaultError::InvalidResponse {
        address: http.address().to_owned(),
        path: path.clone(),
        reason: "the login answer has no auth block".to_owned(),
    })?;
    token_from_auth(auth).map_err(|reason| VaultError::TokenRejected {
        address: http.address().to_owned(),
        status: reason,
        settings: method.settings_hint(),
    })
}

/// The token as kept now, for methods that keep one outside meshca (a file, a Secret);
/// `None` for the others.
async fn read_kept_token(method: &VaultAuth) -> Option<Result<Secret, VaultError>> {
    match method {
        VaultAuth::TokenFile(path) => Some(read_secret_file(path, "vault.tokenFile")),
        VaultAuth::Source(source) => Some(read_source(source).await),
        _ => None,
    }
}

fn read_secret_file_of(method: &VaultAuth) -> Result<Secret, VaultError> {
    match method {
        VaultAuth::TokenFile(path) => read_secret_file(path, "vault.tokenFile"),
        other => Err(VaultError::TokenSource {
            origin: other.settings_hint(),
            reason: "this method keeps no token file".to_owned(),
        }),
    }
}

async fn read_source(source: &SharedTokenSource) -> Result<Secret, VaultError> {
    let failed = |reason: String| VaultError::TokenSource {
        origin: source.0.describe(),
        reason,
    };
    let token = source.0.read().await.map_err(failed)?;
    let trimmed = token.expose().trim();
    if trimmed.is_empty() {
        return Err(failed("the token is empty".to_owned()));
    }
    Ok(Secret::new(trimmed))
}

pub(crate) fn token_from_auth(auth: AuthBlock) -> Result<Token, String> {
    let lease = Lease::new(auth.lease_duration, auth.renewable, auth.lease_duration);
    Token::new(auth.client_token, lease)
}

/// `lookup-self`: checks the token and learns its lease.
async fn lookup(
    http: &VaultHttp,
    header: &HeaderValue,
    method: &VaultAuth,
) -> Result<Lease, VaultError> {
    let answer = http
        .call::<(), LookupData>(Method::Get, LOOKUP_SELF, Some(header), None)
        .await
        .map_err(|e| match e {
            ApiError::Status { status, .. } if (400..500).contains(&status) && status != 429 => {
                VaultError::TokenRejected {
                    address: http.address().to_owned(),
                    status: e.summary(),
                    settings: method.settings_hint(),
                }
            }
            other => api_error(http, LOOKUP_SELF, other),
        })?;
    let data = answer.data.ok_or_else(|| VaultError::InvalidResponse {
        address: http.address().to_owned(),
        path: LOOKUP_SELF.to_owned(),
        reason: "the lookup answer has no data".to_owned(),
    })?;
    Ok(data.lease())
}

/// `renew-self`: extends the token by its default increment.
async fn renew(http: &VaultHttp, header: &HeaderValue) -> Result<Lease, ApiError> {
    let answer = http
        .call::<_, serde_json::Value>(
            Method::Post,
            RENEW_SELF,
            Some(header),
            Some(&serde_json::json!({})),
        )
        .await?;
    let auth = answer.auth.ok_or_else(|| ApiError::Malformed {
        reason: "the renewal answer has no auth block".to_owned(),
    })?;
    Ok(Lease::new(auth.lease_duration, auth.renewable, 0))
}

/// A token or secret ID from a file, trimmed (sinks and Secrets often end with a newline).
fn read_secret_file(path: &Path, setting: &'static str) -> Result<Secret, VaultError> {
    let failed = |reason: String| VaultError::CredentialFile {
        setting,
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let secret = Secret::new(text.trim());
    if secret.expose().is_empty() {
        return Err(failed("the file is empty".to_owned()));
    }
    Ok(secret)
}

/// A failed call as a start-up error.
pub(crate) fn api_error(http: &VaultHttp, path: &str, error: ApiError) -> VaultError {
    let address = http.address().to_owned();
    match error {
        ApiError::Unreachable { reason } => VaultError::Unreachable { address, reason },
        ApiError::Malformed { reason } => VaultError::InvalidResponse {
            address,
            path: path.to_owned(),
            reason,
        },
        status @ ApiError::Status { .. } => VaultError::Api {
            address,
            path: path.to_owned(),
            transient: status.is_transient(),
            status: status.summary(),
        },
    }
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
