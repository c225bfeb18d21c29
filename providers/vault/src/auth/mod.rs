//! Vault credentials: the token in use, logging in, looking up, renewing, and replacing it.
//!
//! One [`Credentials`] holds the current token behind a lock that is only held to clone an
//! `Arc`, so issuance never waits on a renewal. A single background task
//! ([`keep_token_fresh`]) owns renewal: it renews at two thirds of the token's TTL, logs in
//! again (AppRole) or re-reads the file (token file) when renewal is impossible, and backs off
//! while Vault is unreachable. Issuance that meets a refused token calls
//! [`Credentials::replace`], which logs in at most once for all callers that saw the same
//! stale token.
//!
//! `token.rs` is a token and its lease (and when to look at it next), `login.rs` the Vault
//! calls that get, check and renew one, and `kept.rs` reading a token or secret ID kept
//! outside meshca (a file, a Secret).

mod kept;
mod login;
mod token;

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use meshca_provider::format_duration;
use tokio::sync::Notify;

use crate::error::VaultError;
use crate::http::{ApiError, VaultHttp};
use crate::settings::VaultAuth;

use kept::read_kept_token;
pub(crate) use login::{api_error, check_token};
use login::{lookup, obtain, renew};
pub(crate) use token::{Lease, LookupData, Token, next_check, token_from_auth};

/// First and longest wait between failed renewal attempts while Vault is unreachable.
const RETRY_INITIAL: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

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
    /// The token was given up on before and its file or Secret still holds it: nothing to
    /// try, nothing new to say.
    StillGivenUp,
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
    /// A token `given_up` on is only compared with its file or Secret, never renewed again.
    async fn refresh(&self, http: &VaultHttp, token: &Arc<Token>, given_up: bool) -> Step {
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
        if given_up {
            return Step::StillGivenUp;
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
        match credentials.refresh(&http, &token, gave_up_on_this).await {
            Step::Done => retry = None,
            Step::StillGivenUp => {}
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
                // Said once: the token is not renewed again (only its file or Secret is
                // watched for a new one).
                tracing::error!(
                    address = http.address(),
                    "{reason}; meshca stops renewing this token{}",
                    if watches_file {
                        " and waits for a new one in its file or Secret"
                    } else {
                        ""
                    }
                );
                retry = None;
                given_up = Some(token);
            }
        }
    }
}
