//! [`CertManagerProvider`]: one CertificateRequest per issuance, watched until it is Ready.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt as _, pin_mut};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::core::Status;
use meshca_provider::x509::pem_block;
use meshca_provider::{
    Capabilities, CertificateChain, CertificateInfo, CertificateProvider, Clock, CsrNames,
    IssueRequest, KeyType, LeafSpec, ProviderError, SubjectKey, SystemClock, TrustBundle,
    verify_chain,
};
use rustls_pki_types::CertificateDer;

use crate::NAME;
use crate::crd::{CertificateRequest, CertificateRequestSpec, IssuerRef};
use crate::naming::{identity_of, label_value, name_prefix};
use crate::settings::{CertManagerSettings, SettingsError};

/// The label every CertificateRequest meshca creates carries (`app.kubernetes.io/managed-by:
/// meshca`); the garbage collector selects on it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "meshca";
/// The label (and annotation) naming the identity a request is for. The label holds a
/// label-safe form (at most 63 characters); the annotation the identity as written.
pub const IDENTITY_LABEL: &str = "meshca.io/identity";
/// The key usages meshca asks for: both ends of mTLS.
pub const USAGES: [&str; 4] = [
    "digital signature",
    "key encipherment",
    "server auth",
    "client auth",
];
/// The key in the CA bundle Secret holding the trust bundle.
pub const CA_BUNDLE_KEY: &str = "ca.crt";

/// The longest watch asked of the API server in one call (it ends watches by itself anyway).
const MAX_WATCH_SECONDS: u64 = 290;
/// How many distinct `status.ca` roots are remembered as the trust bundle in status.ca mode.
const MAX_STATUS_ROOTS: usize = 4;

/// Why the provider could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertManagerError {
    /// The settings are unusable.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// No Kubernetes client configuration (in-cluster or kubeconfig).
    #[error(
        "cannot set up a Kubernetes client for cert-manager ({reason}): run meshca in a pod with \
         a ServiceAccount, or point KUBECONFIG at a cluster"
    )]
    Client {
        /// kube's reason.
        reason: String,
    },
    /// The CA bundle Secret could not be read at start.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// Issues certificates through cert-manager `CertificateRequest`s (cert-manager.io/v1).
///
/// For each issuance: create a request (the CSR, usages, `issuerRef`, the lifetime as
/// `duration`, meshca's labels), watch it until `Ready=True` — `Denied` or `Failed` end the
/// wait at once — take the chain from `status.certificate` and delete the request (unless
/// `preserveCertificateRequests`). The trust bundle is `ca.crt` of the CA bundle Secret, or,
/// when no Secret is configured, the `status.ca` roots that verified a chain they came with.
///
/// cert-manager certifies what a CSR asks for ([`CsrNames::FromCsr`]): the CSR is meshca's own
/// (asking for exactly the request's names) or a caller's, forwarded as it came only when it
/// asks for exactly the request's names — which the daemon's capability check has established
/// and `issue` makes sure of again before anything is created.
pub struct CertManagerProvider {
    client: kube::Client,
    settings: CertManagerSettings,
    capabilities: Capabilities,
    clock: Arc<dyn Clock>,
    bundle: Mutex<BundleState>,
    last_sweep: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct BundleState {
    /// Roots seen in `status.ca` that verified the chain they came with, newest first
    /// (status.ca mode).
    status_roots: Vec<CertificateDer<'static>>,
}

/// Where a request stands.
enum State {
    /// Ready with a certificate.
    Ready,
    /// Still waiting (pending approval, pending issuance).
    Pending,
}

impl CertManagerProvider {
    /// A provider over `client` (in-cluster or from a kubeconfig). Checks the settings; talks
    /// to nobody. [`connect`](Self::connect) also checks the CA bundle and sweeps stale
    /// requests.
    pub fn new(client: kube::Client, settings: CertManagerSettings) -> Result<Self, SettingsError> {
        settings.validate()?;
        Ok(Self {
            client,
            settings,
            capabilities: Capabilities {
                max_lifetime: None,
                // What cert-manager's CA, Vault and Venafi issuers sign. (Ed25519, which
                // cert-manager also supports, is not a key type meshca makes.)
                key_types: KeyType::ALL.to_vec(),
                // The CA and Vault issuers copy URI SANs from the CSR; ACME issuers cannot.
                uri_sans: true,
                // A CertificateRequest is signed for what its CSR asks.
                csr_names: CsrNames::FromCsr,
                signs_in_process: false,
            },
            clock: Arc::new(SystemClock),
            bundle: Mutex::new(BundleState::default()),
            // The first sweep is start()'s; issuances sweep once per staleRequestAge after it.
            last_sweep: Mutex::new(Some(Instant::now())),
        })
    }

    /// Uses `clock` for chain verification and the age of stale requests (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Builds a client from the environment (the pod's ServiceAccount, else `KUBECONFIG`) and
    /// [`start`](Self::start)s.
    pub async fn connect(settings: &CertManagerSettings) -> Result<Self, CertManagerError> {
        settings.validate()?;
        let client = kube::Client::try_default()
            .await
            .map_err(|e| CertManagerError::Client {
                reason: e.to_string(),
            })?;
        let provider = Self::new(client, settings.clone())?;
        provider.start().await?;
        Ok(provider)
    }

    /// Start-up checks: the CA bundle Secret must be readable and hold a `ca.crt` (when one is
    /// configured), then stale requests are swept (a failed sweep is only logged).
    pub async fn start(&self) -> Result<(), ProviderError> {
        if self.uses_secret() {
            self.secret_bundle().await?;
        }
        if !self.settings.preserve_certificate_requests {
            self.sweep().await;
        }
        Ok(())
    }

    /// The settings in use.
    pub fn settings(&self) -> &CertManagerSettings {
        &self.settings
    }

    fn requests(&self) -> Api<CertificateRequest> {
        Api::namespaced(self.client.clone(), &self.settings.namespace)
    }

    fn uses_secret(&self) -> bool {
        !self.settings.ca_bundle_secret.name.is_empty()
    }

    /// `CertificateRequest <ns>/<name>`.
    fn describe(&self, name: &str) -> String {
        format!("CertificateRequest {}/{name}", self.settings.namespace)
    }

    /// `Secret <ns>/<name> key ca.crt`.
    fn describe_secret(&self) -> String {
        let secret = &self.settings.ca_bundle_secret;
        format!(
            "Secret {}/{} key {CA_BUNDLE_KEY}",
            secret.namespace, secret.name
        )
    }

    /// The request to create for `spec` with `csr_der`.
    fn request_object(&self, spec: &LeafSpec, csr_der: &[u8]) -> CertificateRequest {
        let identity = identity_of(spec);
        CertificateRequest {
            api_version: CertificateRequest::API_VERSION.to_owned(),
            kind: CertificateRequest::KIND.to_owned(),
            metadata: ObjectMeta {
                generate_name: Some(name_prefix(&identity)),
                namespace: Some(self.settings.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                    (IDENTITY_LABEL.to_owned(), label_value(&identity)),
                ])),
                annotations: Some(BTreeMap::from([(IDENTITY_LABEL.to_owned(), identity)])),
                ..ObjectMeta::default()
            },
            spec: CertificateRequestSpec {
                request: ByteString(pem_block("CERTIFICATE REQUEST", csr_der).into_bytes()),
                issuer_ref: IssuerRef {
                    name: self.settings.issuer_name.clone(),
                    kind: self.settings.issuer_kind.clone(),
                    group: self.settings.issuer_group.clone(),
                },
                duration: Some(meshca_provider::format_duration(spec.lifetime))
                    .filter(|_| !spec.lifetime.is_zero()),
                is_ca: false,
                usages: USAGES.iter().map(|u| (*u).to_owned()).collect(),
            },
            status: None,
        }
    }

    /// Watches `name` from `current` until it is Ready; remembers the last condition seen in
    /// `last_seen` for the timeout message.
    async fn wait_until_ready(
        &self,
        name: &str,
        created: CertificateRequest,
        last_seen: &Mutex<Option<String>>,
    ) -> Result<CertificateRequest, ProviderError> {
        let api = self.requests();
        let mut idle_backoff = Duration::from_millis(200);
        let mut current = created;
        loop {
            note(last_seen, &current);
            if let State::Ready = self.state(name, &current)? {
                return Ok(current);
            }
            let version = current
                .metadata
                .resource_version
                .clone()
                .unwrap_or_default();
            let params = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(
                    u32::try_from(MAX_WATCH_SECONDS.min(self.settings.timeout.as_secs().max(1)))
                        .unwrap_or(290),
                )
                .disable_bookmarks();
            let mut events = 0_usize;
            match api.watch(&params, &version).await {
                Ok(stream) => {
                    pin_mut!(stream);
                    while let Some(event) = stream.next().await {
                        events += 1;
                        match event {
                            Ok(WatchEvent::Added(object) | WatchEvent::Modified(object)) => {
                                note(last_seen, &object);
                                if let State::Ready = self.state(name, &object)? {
                                    return Ok(object);
                                }
                            }
                            Ok(WatchEvent::Deleted(_)) => {
                                return Err(ProviderError::Rejected {
                                    provider: NAME,
                                    reason: format!(
                                        "{} was deleted before it was Ready: is something else \
                                         deleting meshca's requests (another meshca with a \
                                         shorter certManager.staleRequestAge)?",
                                        self.describe(name)
                                    ),
                                });
                            }
                            // Not asked for; the re-read after the stream sets the version.
                            Ok(WatchEvent::Bookmark(_)) => {}
                            Ok(WatchEvent::Error(status)) if status.code == 410 => {
                                tracing::debug!(
                                    request = name,
                                    "watch expired (410 Gone): re-reading"
                                );
                                break;
                            }
                            Ok(WatchEvent::Error(status)) => {
                                return Err(self.status_error(
                                    "watch",
                                    "certificaterequests",
                                    &status,
                                ));
                            }
                            Err(error) => {
                                // A broken stream is resumed from a fresh read, like an ended one.
                                tracing::debug!(request = name, %error, "watch stream broke: re-reading");
                                break;
                            }
                        }
                    }
                }
                Err(kube::Error::Api(status)) if status.code == 410 => {
                    tracing::debug!(
                        request = name,
                        "resourceVersion too old (410 Gone): re-reading"
                    );
                }
                Err(error) => return Err(self.api_error("watch", "certificaterequests", error)),
            }
            if events == 0 {
                // A watch that ends at once, again and again, must not turn into a busy loop.
                tokio::time::sleep(idle_backoff).await;
                idle_backoff = (idle_backoff * 2).min(Duration::from_secs(5));
            }
            current = match api.get_opt(name).await {
                Ok(Some(object)) => object,
                Ok(None) => {
                    return Err(ProviderError::Rejected {
                        provider: NAME,
                        reason: format!(
                            "{} disappeared before it was Ready (404 on re-read): is something \
                             else deleting meshca's requests?",
                            self.describe(name)
                        ),
                    });
                }
                Err(error) => return Err(self.api_error("get", "certificaterequests", error)),
            };
        }
    }

    /// Reads a request's conditions: Denied and Failed end the wait.
    fn state(&self, name: &str, request: &CertificateRequest) -> Result<State, ProviderError> {
        if let Some(denied) = request.condition("Denied").filter(|c| c.is_true()) {
            return Err(ProviderError::Rejected {
                provider: NAME,
                reason: format!(
                    "{} was denied ({}): an approver refused it; check cert-manager's approver \
                     (approver-policy rules for {}) and the identity's names",
                    self.describe(name),
                    denied.describe(),
                    self.settings.issuer()
                ),
            });
        }
        if let Some(invalid) = request.condition("InvalidRequest").filter(|c| c.is_true()) {
            return Err(ProviderError::Rejected {
                provider: NAME,
                reason: format!(
                    "{} is invalid for {} ({})",
                    self.describe(name),
                    self.settings.issuer(),
                    invalid.describe()
                ),
            });
        }
        let ready = request.condition("Ready");
        let certificate = request
            .status
            .as_ref()
            .and_then(|s| s.certificate.as_ref())
            .is_some_and(|c| !c.0.is_empty());
        if ready.is_some_and(|c| c.is_true()) && certificate {
            return Ok(State::Ready);
        }
        let failed_condition =
            ready.filter(|c| !c.is_true() && c.reason.as_deref() == Some("Failed"));
        let failure_time = request
            .status
            .as_ref()
            .and_then(|s| s.failure_time.as_ref());
        if failed_condition.is_some() || failure_time.is_some() {
            let detail = failed_condition.map_or_else(
                || format!("failureTime {}", failure_time.map_or("", String::as_str)),
                |c| c.describe(),
            );
            return Err(ProviderError::Rejected {
                provider: NAME,
                reason: format!(
                    "{} failed at {} ({detail}); check the issuer's status ({})",
                    self.describe(name),
                    self.settings.issuer(),
                    self.settings.describe_issuer_command()
                ),
            });
        }
        Ok(State::Pending)
    }

    /// The chain a Ready request carries, without roots.
    ///
    /// The daemon validates every chain against [`trust_bundle`](CertificateProvider::trust_bundle)
    /// (re-reading it once when the issuer is unknown, as after a rotation), so the chain is not
    /// verified here against the Secret's bundle. In status.ca mode it is: that verification is
    /// what makes a `status.ca` root part of the trust bundle — a root is adopted only when it
    /// signs the chain it came with.
    async fn chain_of(
        &self,
        name: &str,
        request: &CertificateRequest,
    ) -> Result<CertificateChain, ProviderError> {
        let invalid = |reason: String| ProviderError::InvalidResponse {
            provider: NAME,
            reason: format!("{}: {reason}", self.describe(name)),
        };
        let status = request.status.clone().unwrap_or_default();
        let certificate = status.certificate.unwrap_or_default();
        let text = std::str::from_utf8(&certificate.0)
            .map_err(|_| invalid("status.certificate is not PEM text".to_owned()))?;
        let chain = CertificateChain::from_pem(text)
            .map_err(|e| invalid(format!("status.certificate is unusable: {e}")))?;
        let chain =
            without_roots(&chain).map_err(|e| invalid(format!("status.certificate: {e}")))?;
        if !self.uses_secret() {
            let ca = status.ca.unwrap_or_default();
            let ca_text = std::str::from_utf8(&ca.0).unwrap_or_default();
            let bundle = TrustBundle::from_pem(ca_text).map_err(|e| {
                invalid(format!(
                    "certManager.caBundleSecret is not set, so the trust bundle is status.ca, \
                     but {} reported none usable ({e}); configure certManager.caBundleSecret",
                    self.settings.issuer()
                ))
            })?;
            verify_chain(&chain, &bundle, self.clock.now()).map_err(|e| {
                invalid(format!(
                    "the certificate from {} does not verify against its own status.ca ({e}); \
                     check the issuer's CA chain",
                    self.settings.issuer()
                ))
            })?;
            self.remember_status_roots(&bundle);
        }
        Ok(chain)
    }

    fn remember_status_roots(&self, bundle: &TrustBundle) {
        let mut state = self.bundle.lock().unwrap_or_else(PoisonError::into_inner);
        for root in bundle.roots().iter().rev() {
            state.status_roots.retain(|r| r != root);
            state.status_roots.insert(0, root.clone());
        }
        state.status_roots.truncate(MAX_STATUS_ROOTS);
    }

    /// The CA bundle Secret's `ca.crt`, read now.
    async fn secret_bundle(&self) -> Result<TrustBundle, ProviderError> {
        let secret_settings = &self.settings.ca_bundle_secret;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &secret_settings.namespace);
        let secret = api
            .get_opt(&secret_settings.name)
            .await
            .map_err(|e| self.api_error("get", "secrets", e))?
            .ok_or_else(|| ProviderError::Ca {
                reason: format!(
                    "the CA bundle Secret {}/{} does not exist: create it with `meshca \
                     bootstrap` (it writes the issuer's root as ca.crt), or set \
                     certManager.caBundleSecret.name to \"\" to trust each request's status.ca",
                    secret_settings.namespace, secret_settings.name
                ),
            })?;
        let value = secret
            .data
            .and_then(|mut data| data.remove(CA_BUNDLE_KEY))
            .ok_or_else(|| ProviderError::Ca {
                reason: format!(
                    "{} is missing: the Secret must hold the issuer's root certificate (PEM) \
                     under {CA_BUNDLE_KEY}",
                    self.describe_secret()
                ),
            })?;
        std::str::from_utf8(&value.0)
            .map_err(|_| "the value is not text".to_owned())
            .and_then(|text| TrustBundle::from_pem(text).map_err(|e| e.to_string()))
            .map_err(|reason| ProviderError::Ca {
                reason: format!("{} is unusable: {reason}", self.describe_secret()),
            })
    }

    /// Deletes `name`; a failure is logged (the garbage collector catches what is left).
    async fn delete(&self, name: &str) {
        match self.requests().delete(name, &DeleteParams::default()).await {
            Ok(_) => tracing::debug!(request = name, "deleted the CertificateRequest"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => tracing::warn!(
                request = %self.describe(name),
                error = %self.api_error("delete", "certificaterequests", error),
                "could not delete the CertificateRequest; the garbage collector will retry"
            ),
        }
    }

    /// Deletes meshca's CertificateRequests older than `certManager.staleRequestAge` (left
    /// by a crash or a failed delete). Returns how many were deleted.
    pub async fn collect_garbage(&self) -> Result<usize, ProviderError> {
        *self
            .last_sweep
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let params = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let list = self
            .requests()
            .list(&params)
            .await
            .map_err(|e| self.api_error("list", "certificaterequests", e))?;
        let now = self.clock.now();
        let mut deleted = 0;
        for item in list.items {
            let (Some(name), Some(created)) = (
                item.metadata.name.as_deref(),
                item.metadata.creation_timestamp.as_ref(),
            ) else {
                continue;
            };
            let created = SystemTime::from(created.0);
            let age = now.duration_since(created).unwrap_or_default();
            if age <= self.settings.stale_request_age {
                continue;
            }
            match self.requests().delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    deleted += 1;
                    tracing::info!(
                        request = %self.describe(name),
                        age_seconds = age.as_secs(),
                        "deleted a stale CertificateRequest"
                    );
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(self.api_error("delete", "certificaterequests", error)),
            }
        }
        Ok(deleted)
    }

    /// A sweep whose failure is only logged.
    async fn sweep(&self) {
        match self.collect_garbage().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "collected stale CertificateRequests"),
            Err(error) => tracing::warn!(%error, "could not collect stale CertificateRequests"),
        }
    }

    /// Whether a periodic sweep is due (at most once per `staleRequestAge`).
    fn sweep_due(&self) -> bool {
        if self.settings.preserve_certificate_requests {
            return false;
        }
        let last = self
            .last_sweep
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.is_none_or(|at| at.elapsed() >= self.settings.stale_request_age)
    }

    /// An error from the API server, with what to check.
    fn api_error(&self, verb: &str, resource: &str, error: kube::Error) -> ProviderError {
        match error {
            kube::Error::Api(status) => self.status_error(verb, resource, &status),
            kube::Error::SerdeError(e) => ProviderError::InvalidResponse {
                provider: NAME,
                reason: format!(
                    "the API server's answer to {verb} {resource} is not what cert-manager \
                     serves ({e}): check that cert-manager.io/v1 is installed"
                ),
            },
            other => ProviderError::Unavailable {
                provider: NAME,
                reason: format!(
                    "could not {verb} {resource}: {other}; check that the Kubernetes API server \
                     is reachable from meshca"
                ),
            },
        }
    }

    fn status_error(&self, verb: &str, resource: &str, status: &Status) -> ProviderError {
        let namespace = if resource == "secrets" {
            &self.settings.ca_bundle_secret.namespace
        } else {
            &self.settings.namespace
        };
        let answer = format!("{} {}: {}", status.code, status.reason, status.message);
        match status.code {
            401 => ProviderError::Unauthorized {
                provider: NAME,
                reason: format!(
                    "the Kubernetes API server refused meshca's credentials on {verb} {resource} \
                     ({answer}): check the ServiceAccount token mounted into the pod, or the \
                     kubeconfig"
                ),
            },
            403 => ProviderError::Unauthorized {
                provider: NAME,
                reason: format!(
                    "RBAC forbids {verb} on {resource} in namespace {namespace} ({answer}): \
                     meshca's ServiceAccount needs create, get, list, watch and delete on \
                     certificaterequests.cert-manager.io in {} and get on secrets in {} \
                     (a Role and RoleBinding; see the meshca-cert-manager README)",
                    self.settings.namespace, self.settings.ca_bundle_secret.namespace
                ),
            },
            404 if resource == "certificaterequests" => ProviderError::Rejected {
                provider: NAME,
                reason: format!(
                    "{verb} {resource} in namespace {namespace}: {answer}: check that \
                     cert-manager is installed (CRD certificaterequests.cert-manager.io) and \
                     that namespace {namespace} exists (certManager.namespace)"
                ),
            },
            429 | 500.. => ProviderError::Unavailable {
                provider: NAME,
                reason: format!(
                    "the Kubernetes API server answered {verb} {resource} with {answer}; \
                     retrying"
                ),
            },
            _ => ProviderError::Rejected {
                provider: NAME,
                reason: format!(
                    "the Kubernetes API server refused {verb} {resource} in namespace \
                     {namespace}: {answer}"
                ),
            },
        }
    }

    fn timed_out(&self, name: &str, last_seen: Option<String>) -> ProviderError {
        let state = last_seen.map_or_else(
            || "no condition reported yet".to_owned(),
            |s| format!("last condition: {s}"),
        );
        ProviderError::Unavailable {
            provider: NAME,
            reason: format!(
                "{} was not Ready within {} ({state}): check that {} exists and is Ready, that \
                 cert-manager is running, and that the request was approved; set \
                 certManager.preserveCertificateRequests: true to keep requests for `kubectl \
                 describe`, or raise certManager.timeout",
                self.describe(name),
                meshca_provider::format_duration(self.settings.timeout),
                self.settings.issuer()
            ),
        }
    }
}

/// Records the request's most telling condition for a timeout message.
fn note(last_seen: &Mutex<Option<String>>, request: &CertificateRequest) {
    let condition = request
        .condition("Ready")
        .or_else(|| request.condition("Approved"));
    if let Some(condition) = condition {
        *last_seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(format!(
            "{}={} {}",
            condition.type_,
            condition.status,
            condition.describe()
        ));
    }
}

/// Deletes the request if the issuance is abandoned mid-way (the daemon's own timeout drops
/// the future): a spawned delete, since `Drop` cannot wait.
struct DeleteOnDrop {
    api: Option<Api<CertificateRequest>>,
    name: String,
}

impl DeleteOnDrop {
    fn disarm(&mut self) {
        self.api = None;
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let (Some(api), Ok(runtime)) = (self.api.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        runtime.spawn(async move {
            if let Err(error) = api.delete(&name, &DeleteParams::default()).await {
                tracing::warn!(request = name, %error, "could not delete an abandoned CertificateRequest");
            }
        });
    }
}

#[async_trait::async_trait]
impl CertificateProvider for CertManagerProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn issue(&self, request: &IssueRequest<'_>) -> Result<CertificateChain, ProviderError> {
        // The issuance pipeline has checked the capabilities, and so that a caller's CSR asks
        // for exactly the request's names. cert-manager signs whatever the CSR says, so a CSR
        // that slipped past that check would become a certificate for names meshca never
        // decided: checked again here, before anything is created (one comparison).
        if let SubjectKey::Caller(csr) = request.key {
            csr.requests_exactly(request.spec)?;
        }
        let csr = request.csr_der()?;
        let object = self.request_object(request.spec, &csr);
        let created = self
            .requests()
            .create(&PostParams::default(), &object)
            .await
            .map_err(|e| self.api_error("create", "certificaterequests", e))?;
        let name = created
            .metadata
            .name
            .clone()
            .ok_or_else(|| ProviderError::InvalidResponse {
                provider: NAME,
                reason: "the API server created a CertificateRequest without a name".to_owned(),
            })?;
        tracing::debug!(request = %self.describe(&name), issuer = %self.settings.issuer(), "created");
        let mut guard = DeleteOnDrop {
            api: (!self.settings.preserve_certificate_requests).then(|| self.requests()),
            name: name.clone(),
        };
        let last_seen = Mutex::new(None);
        let outcome = tokio::time::timeout(
            self.settings.timeout,
            self.wait_until_ready(&name, created, &last_seen),
        )
        .await
        .unwrap_or_else(|_| {
            Err(self.timed_out(
                &name,
                last_seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take(),
            ))
        });
        guard.disarm();
        if !self.settings.preserve_certificate_requests {
            self.delete(&name).await;
        }
        let chain = match outcome {
            Ok(ready) => self.chain_of(&name, &ready).await,
            Err(error) => Err(error),
        };
        if self.sweep_due() {
            self.sweep().await;
        }
        chain
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, ProviderError> {
        if self.uses_secret() {
            return self.secret_bundle().await;
        }
        // status.ca mode: the roots seen so far (empty before the first issuance; the daemon
        // re-reads the bundle when a chain does not verify against what it has).
        let state = self.bundle.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(TrustBundle::new(state.status_roots.clone()))
    }

    async fn check_health(&self) -> Result<(), ProviderError> {
        let params = ListParams::default()
            .labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"))
            .limit(1);
        self.requests()
            .list(&params)
            .await
            .map(|_| ())
            .map_err(|e| self.api_error("list", "certificaterequests", e))
    }
}

impl fmt::Debug for CertManagerProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertManagerProvider")
            .field("issuer", &self.settings.issuer())
            .field("namespace", &self.settings.namespace)
            .finish_non_exhaustive()
    }
}

/// The chain without self-signed certificates (roots), which chains must not carry. The leaf
/// is kept whatever it is.
fn without_roots(chain: &CertificateChain) -> Result<CertificateChain, String> {
    let mut certificates = vec![chain.leaf().clone()];
    for certificate in chain.intermediates() {
        let info = CertificateInfo::parse(certificate).map_err(|e| e.to_string())?;
        if info.subject != info.issuer {
            certificates.push(certificate.clone());
        }
    }
    CertificateChain::new(certificates).ok_or_else(|| "empty chain".to_owned())
}
