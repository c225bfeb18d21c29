//! [`VaultProvider`]: the [`CertificateProvider`] over a PKI secrets engine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use meshca_provider::x509::pem_block;
use meshca_provider::{
    Capabilities, CertificateChain, CertificateProvider, CsrNames, IssueRequest, KeyType,
    ProviderError, TrustBundle, format_duration,
};
use rustify::Endpoint;
use rustls_pki_types::CertificateDer;

use crate::NAME;
use crate::auth::{Credentials, api_error, check_token, keep_token_fresh};
use crate::endpoints::{ReadCertificateRequest, ReadRoleRequest};
use crate::error::VaultError;
use crate::http::{ApiError, Envelope, VaultHttp, endpoint_path};
use crate::pki::{self, CaChain, Issued, PkiPaths, RoleData};
use crate::settings::{SettingsError, SharedTokenSource, TokenSource, VaultAuth, VaultSettings};

/// A leaf shorter than asked by more than this counts as capped by the role (Vault stamps
/// NotAfter from its own clock, a little after meshca asked).
const CAP_TOLERANCE: Duration = Duration::from_secs(60);

/// Certificates from a Vault or OpenBao PKI secrets engine.
///
/// Built by [`connect`](Self::connect), which checks the credentials, the mount and the role
/// before returning, so a misconfiguration stops meshca at start with a message naming the
/// setting. Afterwards:
/// - `issue` sends a CSR to `<pkiPath>/sign/<role>` — one meshca makes over its own key, or a
///   caller's own CSR — with the names as parameters (lifetime in seconds, the SPIFFE ID as
///   URI SAN, the other DNS names as `alt_names`) and returns the leaf with Vault's
///   intermediates, without the root;
/// - the role decides where names come from for a caller's CSR: with `use_csr_common_name`
///   and `use_csr_sans` both off, Vault certifies meshca's parameters whatever the CSR asks
///   ([`CsrNames::Decided`]); otherwise it copies the CSR's names, so the provider declares
///   [`CsrNames::FromCsr`] and the daemon refuses a caller's CSR that asks for anything but
///   exactly meshca's names before it is sent;
/// - a token is renewed in the background at two thirds of its TTL, and replaced (AppRole
///   login, token file re-read) when it cannot be renewed or Vault refuses it;
/// - no answer or a 5xx from Vault is [`ProviderError::Unavailable`] (transient: the daemon
///   retries with backoff and keeps serving what it has); connections are made afresh, so a
///   restarted Vault is picked up without restarting meshca;
/// - a role that caps lifetimes below what is asked is reported once in the log and through
///   [`observed_lifetime_cap`](Self::observed_lifetime_cap).
pub struct VaultProvider {
    http: Arc<VaultHttp>,
    credentials: Arc<Credentials>,
    paths: PkiPaths,
    capabilities: Capabilities,
    /// Vault sends the same CA chain with every leaf; it is parsed once per distinct chain.
    intermediates: Mutex<Option<CachedIntermediates>>,
    lifetime_cap: Mutex<Option<Duration>>,
    cap_reported: AtomicBool,
    renewer: tokio::task::JoinHandle<()>,
}

/// The intermediates parsed out of the `ca_chain` Vault last sent.
struct CachedIntermediates {
    pems: Vec<String>,
    parsed: Arc<[CertificateDer<'static>]>,
}

impl std::fmt::Debug for VaultProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultProvider")
            .field("address", &self.http.address())
            .field("pki_path", &self.paths.mount)
            .field("role", &self.paths.role_name)
            .field("auth", &self.credentials.method().kind())
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl Drop for VaultProvider {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl VaultProvider {
    /// Connects to Vault: validates `settings`, obtains and looks up the token, reads the role
    /// (when the token may) and the CA chain, and starts token renewal. Must be called within
    /// a Tokio runtime.
    pub async fn connect(settings: &VaultSettings) -> Result<Self, VaultError> {
        Self::connect_with(settings, None).await
    }

    /// Like [`connect`](Self::connect), with the reader of `vault.secret` (a Kubernetes
    /// Secret holding the token), which only the daemon's Kubernetes integration can supply.
    pub async fn connect_with(
        settings: &VaultSettings,
        token_source: Option<Arc<dyn TokenSource>>,
    ) -> Result<Self, VaultError> {
        settings.validate()?;
        let auth = match (settings.auth(), token_source) {
            (Err(SettingsError::NeedsTokenSource), Some(source)) => {
                VaultAuth::Source(SharedTokenSource(source))
            }
            (auth, _) => auth?,
        };
        let address = settings.address()?;
        let http = Arc::new(VaultHttp::new(
            &address,
            settings.namespace()?,
            settings.ca_file.as_deref(),
            settings.request_timeout,
        )?);
        let credentials = Arc::new(Credentials::establish(auth, &http).await?);
        let paths = PkiPaths::new(settings.pki_path()?, settings.role_name()?);

        let role = read_role(&http, &credentials, &paths).await?;
        let anchors = fetch_trust_anchors(&http, &credentials, &paths).await?;
        if anchors.is_empty() {
            return Err(VaultError::NoCa {
                address,
                pki_path: paths.mount.clone(),
            });
        }
        let capabilities = Capabilities {
            max_lifetime: role.as_ref().and_then(RoleData::max_lifetime),
            key_types: role
                .as_ref()
                .map_or_else(|| KeyType::ALL.to_vec(), RoleData::key_types),
            // Vault PKI can always carry URI SANs; a role that forbids them is a policy
            // refusal with its own message (see `pki::rejection_hint`).
            uri_sans: true,
            csr_names: csr_names(role.as_ref()),
            signs_in_process: false,
        };
        if let Some(role) = &role {
            if !role.allows_spiffe_ids() {
                tracing::warn!(
                    address = %address,
                    role = %paths.role,
                    "the Vault role does not allow SPIFFE IDs as URI SANs, so service \
                     certificates will be refused: bao write {} allowed_uri_sans=\"spiffe://*\"",
                    paths.role
                );
            }
            let copied = role.copies_csr_names();
            if !copied.is_empty() {
                tracing::info!(
                    role = %paths.role,
                    settings = %copied.join(", "),
                    "the Vault role takes names from CSRs, so a caller's CSR must ask for \
                     exactly the names meshca decides or it is refused; to have Vault certify \
                     meshca's names whatever a CSR asks: bao write {} use_csr_common_name=false \
                     use_csr_sans=false",
                    paths.role
                );
            }
            if capabilities.key_types.is_empty() {
                tracing::warn!(
                    role = %paths.role,
                    key_type = role.key_type.as_deref().unwrap_or(""),
                    "the Vault role accepts no key type meshca makes (P-256, P-384, RSA): set \
                     key_type=ec, rsa or any on the role"
                );
            }
        }
        let renewer = tokio::spawn(keep_token_fresh(credentials.clone(), http.clone()));
        let lease = credentials.current().lease();
        tracing::info!(
            address = %address,
            pki_path = %paths.mount,
            role = %paths.role_name,
            auth = credentials.method().kind(),
            token_ttl = %if lease.ttl.is_zero() { "never expires".to_owned() } else { format_duration(lease.ttl) },
            max_lifetime = %capabilities.max_lifetime.map_or_else(|| "unknown".to_owned(), format_duration),
            "connected to Vault"
        );
        Ok(Self {
            http,
            credentials,
            paths,
            capabilities,
            intermediates: Mutex::new(None),
            lifetime_cap: Mutex::new(None),
            cap_reported: AtomicBool::new(false),
            renewer,
        })
    }

    /// Vault's address, as used.
    pub fn address(&self) -> &str {
        self.http.address()
    }

    /// The lifetime Vault actually granted when it granted less than asked (the role's or the
    /// mount's max TTL), as last seen. `None` while every leaf got what was asked.
    pub fn observed_lifetime_cap(&self) -> Option<Duration> {
        *self
            .lifetime_cap
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A call with the current token; a 403 with a replaceable token logs in again and
    /// retries once.
    async fn call<E: Endpoint>(
        &self,
        endpoint: &E,
        key_type: Option<KeyType>,
    ) -> Result<Envelope<E::Response>, ProviderError> {
        let path = &endpoint_path(endpoint);
        let token = self.credentials.current();
        let result = match self.http.exec(endpoint, Some(token.header())).await {
            // A refused token is replaced (once for all callers) and the call retried; but a
            // token that is fine and only lacks a policy is not worth a new login each time.
            Err(forbidden @ ApiError::Status { status: 403, .. })
                if self.credentials.can_replace() =>
            {
                match check_token(&self.http, &token).await {
                    Ok(()) => return Err(self.policy_refusal(path)),
                    Err(check) if check.is_transient() => {
                        return Err(self.explain(check, path, key_type).await);
                    }
                    Err(_) => {}
                }
                tracing::info!(
                    address = self.http.address(),
                    path,
                    "Vault refused meshca's token ({}); getting a new one",
                    forbidden.summary()
                );
                let fresh = self
                    .credentials
                    .replace(&self.http, &token, "403 permission denied")
                    .await
                    .map_err(VaultError::into_provider_error)?;
                self.http.exec(endpoint, Some(fresh.header())).await
            }
            other => other,
        };
        match result {
            Ok(envelope) => Ok(envelope),
            Err(e) => Err(self.explain(e, path, key_type).await),
        }
    }

    /// The one place a failed call becomes a [`ProviderError`].
    async fn explain(
        &self,
        error: ApiError,
        path: &str,
        key_type: Option<KeyType>,
    ) -> ProviderError {
        let address = self.http.address();
        match &error {
            ApiError::Unreachable { reason } => ProviderError::Unavailable {
                provider: NAME,
                reason: format!(
                    "cannot reach Vault at {address} ({reason}); retrying — if this persists, \
                     check vault.host, vault.port and vault.protocol"
                ),
            },
            ApiError::Status { .. } if error.is_transient() => ProviderError::Unavailable {
                provider: NAME,
                reason: format!("Vault at {address} answered {} on {path}", error.summary()),
            },
            ApiError::Status { status: 403, .. } => {
                // Either the token is dead, or it lacks a policy for this path: ask Vault.
                match self.credentials.check(&self.http).await {
                    Ok(()) => self.policy_refusal(path),
                    Err(check) if check.is_transient() => ProviderError::Unavailable {
                        provider: NAME,
                        reason: format!("Vault at {address}: {}", check.summary()),
                    },
                    Err(check) => self.token_rejected(&check),
                }
            }
            ApiError::Status { errors, .. } => {
                let hint = key_type
                    .and_then(|k| pki::rejection_hint(errors, &self.paths, k))
                    .or_else(|| pki::rejection_hint(errors, &self.paths, KeyType::P256));
                let mut reason = format!("{path} at {address}: {}", error.summary());
                if let Some(hint) = hint {
                    reason.push_str(": ");
                    reason.push_str(&hint);
                }
                ProviderError::Rejected {
                    provider: NAME,
                    reason,
                }
            }
            ApiError::Malformed { reason } => self.invalid(path, reason.clone()),
        }
    }

    fn policy_refusal(&self, path: &str) -> ProviderError {
        ProviderError::Unauthorized {
            provider: NAME,
            reason: format!(
                "the Vault token is valid but its policies do not allow {path} on {}: grant it \
                 `update` on {path} (see the policy in the meshca-vault README)",
                self.http.address()
            ),
        }
    }

    fn token_rejected(&self, error: &ApiError) -> ProviderError {
        ProviderError::Unauthorized {
            provider: NAME,
            reason: format!(
                "vault token rejected by {} ({}): check {}",
                self.http.address(),
                error.summary(),
                self.credentials.method().settings_hint()
            ),
        }
    }

    fn invalid(&self, path: &str, reason: String) -> ProviderError {
        ProviderError::InvalidResponse {
            provider: NAME,
            reason: format!("{path} at {}: {reason}", self.http.address()),
        }
    }

    fn data<T>(&self, envelope: Envelope<T>, path: &str) -> Result<T, ProviderError> {
        envelope
            .data
            .ok_or_else(|| self.invalid(path, "the answer has no data".to_owned()))
    }

    /// The leaf and its intermediates (no root), after noting a capped lifetime.
    fn chain(
        &self,
        issued: &Issued,
        asked: Duration,
        started: SystemTime,
    ) -> Result<CertificateChain, ProviderError> {
        let (leaf, not_after) = issued
            .leaf()
            .map_err(|reason| self.invalid(&self.paths.sign, reason))?;
        self.note_lifetime(asked, started, not_after);
        let intermediates = self.intermediates(issued.ca_pems())?;
        let mut certificates = Vec::with_capacity(1 + intermediates.len());
        certificates.push(leaf);
        certificates.extend(intermediates.iter().cloned());
        CertificateChain::new(certificates)
            .ok_or_else(|| self.invalid(&self.paths.sign, "empty chain".to_owned()))
    }

    fn intermediates(
        &self,
        ca_pems: &[String],
    ) -> Result<Arc<[CertificateDer<'static>]>, ProviderError> {
        let mut cache = self
            .intermediates
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = cache.as_ref()
            && cached.pems.as_slice() == ca_pems
        {
            return Ok(cached.parsed.clone());
        }
        let parsed: Arc<[CertificateDer<'static>]> = pki::intermediates(ca_pems)
            .map_err(|e| self.invalid(&self.paths.sign, format!("unreadable ca_chain: {e}")))?
            .into();
        *cache = Some(CachedIntermediates {
            pems: ca_pems.to_vec(),
            parsed: parsed.clone(),
        });
        Ok(parsed)
    }

    fn note_lifetime(&self, asked: Duration, started: SystemTime, not_after: SystemTime) {
        if asked.is_zero() {
            return;
        }
        let granted = not_after.duration_since(started).unwrap_or_default();
        if granted + CAP_TOLERANCE >= asked {
            return;
        }
        let granted = Duration::from_secs((granted.as_secs() + 30) / 60 * 60);
        *self
            .lifetime_cap
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(granted);
        if !self.cap_reported.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                address = self.http.address(),
                role = %self.paths.role,
                asked = %format_duration(asked),
                granted = %format_duration(granted),
                "Vault caps certificate lifetimes below what meshca asks: the role's max_ttl \
                 (or the mount's max lease TTL) wins. Raise it (bao write {} max_ttl={}) or \
                 lower certificateProvider.serviceCertValidityDuration to {}",
                self.paths.role,
                format_duration(asked),
                format_duration(granted)
            );
        }
    }
}

#[async_trait::async_trait]
impl CertificateProvider for VaultProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn issue(&self, request: &IssueRequest<'_>) -> Result<CertificateChain, ProviderError> {
        // The issuance pipeline has checked the capabilities: for a role that takes names
        // from CSRs (`FromCsr`), that a caller's CSR asks for exactly the spec's names.
        let key_type = request.key_type();
        // A caller's own CSR is sent as it came (Vault checks its signature again); the names
        // are passed as parameters either way.
        let csr = pem_block("CERTIFICATE REQUEST", &request.csr_der()?);
        let sign = pki::sign_request(&self.paths, request.spec, csr);
        let started = SystemTime::now();
        let answer = self.call(&sign, Some(key_type)).await?;
        let issued = Issued::from(self.data(answer, &self.paths.sign)?);
        self.chain(&issued, request.spec.lifetime, started)
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, ProviderError> {
        let path = &self.paths.ca_chain;
        let answer = self.call(&ca_chain_request(&self.paths), None).await?;
        let chain = CaChain::from(self.data(answer, path)?);
        let anchors = pki::trust_anchors(&chain.certificate)
            .map_err(|e| self.invalid(path, format!("unreadable CA chain: {e}")))?;
        if anchors.is_empty() {
            return Err(ProviderError::Ca {
                reason: format!(
                    "the PKI secrets engine at {}/v1/{} has no CA certificate",
                    self.http.address(),
                    self.paths.mount
                ),
            });
        }
        Ok(TrustBundle::new(anchors))
    }

    async fn check_health(&self) -> Result<(), ProviderError> {
        let token = self.credentials.current();
        match self.credentials.check(&self.http).await {
            Ok(()) => Ok(()),
            Err(ApiError::Status { status: 403, .. }) if self.credentials.can_replace() => {
                self.credentials
                    .replace(&self.http, &token, "403 permission denied")
                    .await
                    .map_err(VaultError::into_provider_error)?;
                self.credentials
                    .check(&self.http)
                    .await
                    .map_err(|e| self.health_error(&e))
            }
            Err(e) => Err(self.health_error(&e)),
        }
    }
}

impl VaultProvider {
    fn health_error(&self, error: &ApiError) -> ProviderError {
        if error.is_transient() {
            ProviderError::Unavailable {
                provider: NAME,
                reason: format!("Vault at {}: {}", self.http.address(), error.summary()),
            }
        } else {
            self.token_rejected(error)
        }
    }
}

/// Where a certificate's names come from for `role`: meshca's parameters (`Decided`) only
/// when the role is known to have both `use_csr_common_name` and `use_csr_sans` off. Otherwise
/// Vault certifies what the CSR asks for, so the issuance pipeline must first check that a
/// caller's CSR asks for exactly meshca's names (`FromCsr`). A role meshca may not read is
/// assumed to have Vault's defaults (both on). Keys meshca makes are unaffected either way:
/// its own CSR asks for exactly the request's names.
fn csr_names(role: Option<&RoleData>) -> CsrNames {
    match role {
        Some(role) if role.copies_csr_names().is_empty() => CsrNames::Decided,
        _ => CsrNames::FromCsr,
    }
}

/// The role, when the token may read it. A missing role or mount is a start-up error; a
/// token without read access to roles only loses the capability details.
async fn read_role(
    http: &VaultHttp,
    credentials: &Credentials,
    paths: &PkiPaths,
) -> Result<Option<RoleData>, VaultError> {
    let token = credentials.current();
    let read = ReadRoleRequest {
        mount: paths.mount.clone(),
        name: paths.role_name.clone(),
    };
    let answer = http.exec(&read, Some(token.header())).await;
    match answer {
        Ok(envelope) => match envelope.data {
            Some(role) => Ok(Some(role.into())),
            None => Err(role_not_found(http, paths)),
        },
        Err(ApiError::Status { status: 403, .. }) => {
            tracing::debug!(
                role = %paths.role,
                "the Vault token may not read its PKI role; lifetime caps and key types will be \
                 learned from Vault's answers"
            );
            Ok(None)
        }
        Err(e @ ApiError::Status { status: 404, .. }) => {
            if e.summary().contains("no handler for route") {
                Err(VaultError::NoPkiEngine {
                    address: http.address().to_owned(),
                    pki_path: paths.mount.clone(),
                    status: e.summary(),
                })
            } else {
                Err(role_not_found(http, paths))
            }
        }
        Err(e) => Err(api_error(http, &paths.role, e)),
    }
}

fn role_not_found(http: &VaultHttp, paths: &PkiPaths) -> VaultError {
    VaultError::RoleNotFound {
        address: http.address().to_owned(),
        pki_path: paths.mount.clone(),
        role: paths.role_name.clone(),
    }
}

async fn fetch_trust_anchors(
    http: &VaultHttp,
    credentials: &Credentials,
    paths: &PkiPaths,
) -> Result<Vec<CertificateDer<'static>>, VaultError> {
    let token = credentials.current();
    let answer = http
        .exec(&ca_chain_request(paths), Some(token.header()))
        .await
        .map_err(|e| match e {
            ApiError::Status { status: 404, .. } if e.summary().contains("no handler") => {
                VaultError::NoPkiEngine {
                    address: http.address().to_owned(),
                    pki_path: paths.mount.clone(),
                    status: e.summary(),
                }
            }
            // OpenBao and recent Vault: "no default issuer currently configured".
            ApiError::Status { status: 400, .. } if e.summary().contains("issuer") => {
                VaultError::NoCa {
                    address: http.address().to_owned(),
                    pki_path: paths.mount.clone(),
                }
            }
            other => api_error(http, &paths.ca_chain, other),
        })?;
    let Some(chain) = answer
        .data
        .map(CaChain::from)
        .filter(|c| !c.certificate.trim().is_empty())
    else {
        return Ok(Vec::new());
    };
    pki::trust_anchors(&chain.certificate).map_err(|reason| VaultError::InvalidResponse {
        address: http.address().to_owned(),
        path: paths.ca_chain.clone(),
        reason,
    })
}

/// `<pki>/cert/ca_chain`: the mount's CA chain (its default issuer's).
fn ca_chain_request(paths: &PkiPaths) -> ReadCertificateRequest {
    ReadCertificateRequest {
        mount: paths.mount.clone(),
        serial: "ca_chain".to_owned(),
    }
}
