//! [`VaultProvider`]: the [`CertificateProvider`] over a PKI secrets engine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use meshca_provider::x509::pem_block;
use meshca_provider::{
    Capabilities, CertificateChain, CertificateInfo, CertificateProvider, CsrNames, IssueRequest,
    KeyType, ProviderError, TrustBundle, format_duration,
};
use rustify::Endpoint;
use rustls_pki_types::CertificateDer;

use crate::NAME;
use crate::auth::{Credentials, api_error, check_token, keep_token_fresh};
use crate::endpoints::{
    ListIssuersRequest, ReadCertificateRequest, ReadIssuerCertificateRequest, ReadRoleRequest,
    SignLeaf,
};
use crate::error::VaultError;
use crate::http::{ApiError, Envelope, VaultHttp, endpoint_path};
use crate::issuers::{IssuerInfo, IssuerSwitch, Issuers, Listed, url_safe};
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
///   [`observed_lifetime_cap`](Self::observed_lifetime_cap);
/// - when the token may list the mount's issuers (`LIST <pkiPath>/issuers`), the trust bundle
///   is the root of every issuer in the mount, not only the default's, and leaves are signed
///   by one issuer named in the path (`<pkiPath>/issuer/<id>/sign/<role>`): a new default
///   issuer is trusted at once but signs only once the daemon [adopts](Self::adopt) it (see
///   [`issuer_switch`](Self::issuer_switch)). Otherwise the bundle is `cert/ca_chain`'s and
///   `sign/<role>` signs. Either way, a root that signed a leaf meshca issued stays in the
///   bundle until that leaf expires.
pub struct VaultProvider {
    http: Arc<VaultHttp>,
    credentials: Arc<Credentials>,
    pub(crate) paths: PkiPaths,
    capabilities: Capabilities,
    /// Vault sends the same CA chain with every leaf; it is sorted once per distinct chain.
    intermediates: Mutex<Option<CachedIntermediates>>,
    lifetime_cap: Mutex<Option<Duration>>,
    cap_reported: AtomicBool,
    /// The mount's issuers, the one meshca signs with and the roots remembered.
    issuers: Mutex<Issuers>,
    /// Whether the issuer-pinned sign path may be used (cleared when the token's policy
    /// refuses it while `sign/<role>` works).
    pinning: AtomicBool,
    /// Whether "cannot list the issuers" was said already.
    unlisted_reported: AtomicBool,
    renewer: tokio::task::JoinHandle<()>,
}

/// The intermediates picked out of the `ca_chain` Vault last sent.
struct CachedIntermediates {
    ca: Vec<CertificateDer<'static>>,
    parsed: Arc<[CertificateDer<'static>]>,
    /// The root they lead to, remembered with every leaf's NotAfter.
    root: Option<CertificateDer<'static>>,
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
        Self::connect_checking(settings, token_source, true).await
    }

    /// [`connect_with`](Self::connect_with), reading the PKI role only when `uses_role`
    /// (upstream mode signs intermediates, which no role governs).
    pub(crate) async fn connect_checking(
        settings: &VaultSettings,
        token_source: Option<Arc<dyn TokenSource>>,
        uses_role: bool,
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

        let role = if uses_role {
            read_role(&http, &credentials, &paths).await?
        } else {
            None
        };
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
        let provider = Self {
            http,
            credentials,
            paths,
            capabilities,
            intermediates: Mutex::new(None),
            lifetime_cap: Mutex::new(None),
            cap_reported: AtomicBool::new(false),
            issuers: Mutex::new(Issuers::new(
                role.as_ref().and_then(|r| r.issuer_ref.as_deref()),
            )),
            pinning: AtomicBool::new(true),
            unlisted_reported: AtomicBool::new(false),
            renewer,
        };
        if let Err(error) = provider.read_issuers().await {
            tracing::warn!(%error, "cannot read the PKI mount's issuers yet; retrying with the trust bundle");
        }
        Ok(provider)
    }

    /// The mount's target issuer (its default, or the role's `issuer_ref`) when meshca signs
    /// with another one, as of the last trust bundle read: the new root is in the bundle, and
    /// the daemon [adopts](Self::adopt) it once its proxies trust it. `None` when they are the
    /// same, or the mount's issuers cannot be listed.
    pub fn issuer_switch(&self) -> Option<IssuerSwitch> {
        self.issuers().switch()
    }

    /// The root rotation `meshca rotate root` keeps in the mount's issuer names, as of the last
    /// trust bundle read (no call to Vault); `None` when there is none or the issuers cannot be
    /// listed.
    pub fn cached_root_rotation(&self) -> Option<crate::VaultRotation> {
        self.issuers().rotation()
    }

    /// Signs with `switch.to` from now on; `false` (nothing changed) when it is no longer the
    /// mount's target issuer.
    pub fn adopt(&self, switch: &IssuerSwitch) -> bool {
        self.issuers().adopt(switch)
    }

    /// The issuer meshca signs with, when the mount's issuers can be listed.
    pub fn signing_issuer(&self) -> Option<IssuerInfo> {
        self.issuers().signing().cloned()
    }

    pub(crate) fn issuers(&self) -> std::sync::MutexGuard<'_, Issuers> {
        // The state holds no invariant a panicking holder could break halfway.
        self.issuers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists the mount's issuers and reads the certificate of each new one. A listing Vault
    /// refuses (the token's policy, or a Vault without multi-issuer) leaves the mount unlisted:
    /// the bundle then comes from `cert/ca_chain`.
    pub(crate) async fn read_issuers(&self) -> Result<(), ProviderError> {
        let path = format!("{}/issuers", self.paths.mount);
        let list = ListIssuersRequest {
            mount: self.paths.mount.clone(),
        };
        let listing = match self.call(&list, None).await {
            Ok(answer) => {
                let data = self.data(answer, &path)?;
                data.keys
                    .iter()
                    .map(|id| {
                        let info = data.key_info.get(id);
                        Listed {
                            id: id.clone(),
                            name: info.map(|i| i.issuer_name.clone()).unwrap_or_default(),
                            is_default: info.is_some_and(|i| i.is_default),
                        }
                    })
                    .collect::<Vec<_>>()
            }
            Err(error @ (ProviderError::Unauthorized { .. } | ProviderError::Rejected { .. })) => {
                self.issuers().unlisted();
                if !self.unlisted_reported.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        %error,
                        "cannot list the PKI mount's issuers: the trust bundle is the default \
                         issuer's chain, so a new default issuer set in Vault reaches proxies \
                         before they trust its root. Grant the token `list` on {path}, `read` \
                         on {}/issuer/* and `update` on {}/issuer/+/sign/{} (see the \
                         meshca-vault README)",
                        self.paths.mount,
                        self.paths.mount,
                        self.paths.role_name
                    );
                }
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        let unread = self.issuers().list(&listing);
        for id in unread {
            if !url_safe(&id) {
                tracing::warn!(issuer = %id, "Vault listed an issuer ID that is not a plain ID; ignored");
                continue;
            }
            match self.read_issuer(&id).await {
                Ok(issuer) => self.issuers().insert(issuer),
                // Deleted between the listing and the read: the next listing will not have it.
                Err(ProviderError::Rejected { reason, .. }) => {
                    tracing::debug!(issuer = %id, %reason, "issuer not readable");
                }
                Err(error) => return Err(error),
            }
        }
        if let Some(adopted) = self.issuers().adopt_if_unset() {
            tracing::info!(
                address = self.http.address(),
                pki_path = %self.paths.mount,
                issuer = %adopted,
                "signing with Vault issuer {adopted}"
            );
        }
        Ok(())
    }

    /// One issuer's ID, name and root.
    async fn read_issuer(&self, id: &str) -> Result<IssuerInfo, ProviderError> {
        let path = format!("{}/issuer/{id}/json", self.paths.mount);
        let read = ReadIssuerCertificateRequest {
            mount: self.paths.mount.clone(),
            issuer: id.to_owned(),
        };
        let data = self.data(self.call(&read, None).await?, &path)?;
        let chain = if data.ca_chain.is_empty() {
            data.certificate.clone()
        } else {
            data.ca_chain.join("\n")
        };
        let root = pki::trust_anchors(&chain)
            .map_err(|e| self.invalid(&path, format!("unreadable issuer chain: {e}")))?
            .into_iter()
            .next()
            .ok_or_else(|| self.invalid(&path, "the issuer has no certificate".to_owned()))?;
        let root_not_after = CertificateInfo::parse(&root)
            .map_err(|e| self.invalid(&path, format!("unreadable issuer root: {e}")))?
            .not_after;
        Ok(IssuerInfo {
            id: id.to_owned(),
            name: data.issuer_name,
            root,
            root_not_after,
        })
    }

    /// Signs `sign` with the issuer meshca signs with (`sign/<role>` when none is known).
    async fn sign(
        &self,
        sign: &vaultrs::api::pki::requests::SignCertificateRequest,
        key_type: KeyType,
    ) -> Result<Envelope<Issued>, ProviderError> {
        let unpinned = SignLeaf { issuer: None, sign };
        let pinned = self
            .pinning
            .load(Ordering::Relaxed)
            .then(|| self.issuers().signing().map(|issuer| issuer.id.clone()))
            .flatten();
        let Some(issuer) = pinned else {
            return self.call(&unpinned, Some(key_type)).await;
        };
        let request = SignLeaf {
            issuer: Some(&issuer),
            sign,
        };
        match self.call(&request, Some(key_type)).await {
            Ok(answer) => Ok(answer),
            // Refused while sign/<role> works: the token's policy lacks the issuer's path.
            Err(refused @ ProviderError::Unauthorized { .. }) => {
                let answer = self.call(&unpinned, Some(key_type)).await?;
                if self.pinning.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %refused,
                        "the Vault token may sign with {} but not with a named issuer: meshca \
                         signs with whatever issuer is Vault's default, so a default issuer \
                         changed in Vault reaches proxies before they trust its root. Grant \
                         `update` on {}/issuer/+/sign/{}",
                        self.paths.sign,
                        self.paths.mount,
                        self.paths.role_name
                    );
                }
                Ok(answer)
            }
            // The issuer left the mount: the target signs (adopted at the next listing).
            Err(ProviderError::Rejected { reason, .. })
                if reason
                    .to_ascii_lowercase()
                    .contains("unable to find pki issuer") =>
            {
                self.issuers().drop_signing();
                tracing::warn!(
                    issuer = %issuer,
                    "the Vault issuer meshca signed with is gone from {}; signing with the \
                     mount's default issuer",
                    self.paths.mount
                );
                self.call(&unpinned, Some(key_type)).await
            }
            Err(error) => Err(error),
        }
    }

    /// Vault's address, as used.
    pub fn address(&self) -> &str {
        self.http.address()
    }

    /// The PKI secrets engine's mount path.
    pub(crate) fn pki_mount(&self) -> &str {
        &self.paths.mount
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
    pub(crate) async fn call<E: Endpoint>(
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

    pub(crate) fn invalid(&self, path: &str, reason: String) -> ProviderError {
        ProviderError::InvalidResponse {
            provider: NAME,
            reason: format!("{path} at {}: {reason}", self.http.address()),
        }
    }

    pub(crate) fn data<T>(&self, envelope: Envelope<T>, path: &str) -> Result<T, ProviderError> {
        envelope
            .data
            .ok_or_else(|| self.invalid(path, "the answer has no data".to_owned()))
    }

    /// The leaf and its intermediates (no root), after noting a capped lifetime.
    fn chain(
        &self,
        mut issued: Issued,
        asked: Duration,
        started: SystemTime,
    ) -> Result<CertificateChain, ProviderError> {
        let (leaf, not_after) = issued
            .leaf()
            .map_err(|reason| self.invalid(&self.paths.sign, reason))?;
        self.note_lifetime(asked, started, not_after);
        let (intermediates, root) = self.intermediates(issued.ca_certificates())?;
        if let Some(root) = root {
            self.issuers().remember(&root, not_after);
        }
        let mut certificates = Vec::with_capacity(1 + intermediates.len());
        certificates.push(leaf);
        certificates.extend(intermediates.iter().cloned());
        CertificateChain::new(certificates)
            .ok_or_else(|| self.invalid(&self.paths.sign, "empty chain".to_owned()))
    }

    /// The intermediates among `ca`, and the root they lead to.
    #[allow(clippy::type_complexity)]
    fn intermediates(
        &self,
        ca: Vec<CertificateDer<'static>>,
    ) -> Result<
        (
            Arc<[CertificateDer<'static>]>,
            Option<CertificateDer<'static>>,
        ),
        ProviderError,
    > {
        let mut cache = self
            .intermediates
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = cache.as_ref()
            && cached.ca == ca
        {
            return Ok((cached.parsed.clone(), cached.root.clone()));
        }
        let unreadable =
            |e: String| self.invalid(&self.paths.sign, format!("unreadable ca_chain: {e}"));
        let parsed: Arc<[CertificateDer<'static>]> =
            pki::intermediates(&ca).map_err(unreadable)?.into();
        let root = pki::chain_root(&ca).map_err(unreadable)?;
        *cache = Some(CachedIntermediates {
            ca,
            parsed: parsed.clone(),
            root: root.clone(),
        });
        Ok((parsed, root))
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
        let answer = self.sign(&sign, key_type).await?;
        let issued = self.data(answer, &self.paths.sign)?;
        self.chain(issued, request.spec.lifetime, started)
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, ProviderError> {
        self.read_issuers().await?;
        let fallback = if self.issuers().is_listed() {
            Vec::new()
        } else {
            let path = &self.paths.ca_chain;
            let answer = self.call(&ca_chain_request(&self.paths), None).await?;
            let chain = CaChain::from(self.data(answer, path)?);
            pki::trust_anchors(&chain.certificate)
                .map_err(|e| self.invalid(path, format!("unreadable CA chain: {e}")))?
        };
        let anchors = self.issuers().bundle(SystemTime::now(), fallback);
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
