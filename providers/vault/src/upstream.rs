//! Upstream mode ([`VaultUpstream`]): Vault signs a short-lived intermediate whose key meshca
//! makes and keeps in memory; meshca signs leaves itself with it, through Tresor's leaf code.
//!
//! The anchors are SPIRE's UpstreamAuthority (the server's X.509 CA is minted by an upstream
//! and rotated at half its life) and Consul's Vault CA provider (Vault signs the cluster's
//! intermediate, leaves are signed locally). As in SPIRE, every replica holds its own
//! intermediate: the key never leaves the process that made it (nothing to store, encrypt or
//! share), replicas need no coordination to renew, and every leaf from any replica verifies
//! against the same Vault root. The cost is one `sign-intermediate` per replica per renewal.
//!
//! Renewal: one task ([`keep_intermediate_fresh`]) asks Vault for a new intermediate at the
//! daemon's renewal fraction of the current one's life, with jitter; while Vault is down it
//! retries with capped, jittered backoff and leaves keep being signed by the current
//! intermediate, cut short where it ends. A new intermediate under the same root signs from
//! the moment it is installed: its certificate travels in every chain signed with it, and the
//! trust bundle (Vault's root) is unchanged. One under a root proxies do not trust yet (Vault's
//! issuer replaced) is held back: its root joins the trust bundle first, and it signs only
//! once the daemon has had [`UpstreamPolicy::bundle_lead`] to push that bundle. A replaced
//! root stays in the bundle until the last intermediate under it has ended, so no leaf it
//! signed loses its anchor.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use meshca_provider::x509::{CertificateInfo, certificates_to_pem, pem_block};
use meshca_provider::{
    Capabilities, CertificateChain, CertificateProvider, Clock, IssueRequest, LeafKey, LeafSpec,
    ProviderError, TrustBundle, TrustDomain, format_duration, rfc3339,
};
use meshca_tresor::{SigningAuthority, Tresor};
use rand::Rng as _;
use rustls_pki_types::CertificateDer;
use vaultrs::api::pki::requests::{SignIntermediateIssuerRequest, SignIntermediateRequest};

use crate::NAME;
use crate::error::VaultError;
use crate::pki::ttl_seconds;
use crate::provider::VaultProvider;
use crate::settings::{
    DEFAULT_INTERMEDIATE_COMMON_NAME, SettingsError, TokenSource, UpstreamSettings, VaultSettings,
};

/// How the daemon wants the intermediate scheduled: its renewal settings and leaf lifetimes.
#[derive(Debug, Clone)]
pub struct UpstreamPolicy {
    /// The trust domain, written into the intermediate as the URI SAN `spiffe://<domain>`.
    pub trust_domain: TrustDomain,
    /// Renew at this fraction of the intermediate's life (the cache's `renewal.fraction`).
    pub renew_fraction: f64,
    /// ± this fraction of its life, at random (the cache's `renewal.jitter`).
    pub jitter_fraction: f64,
    /// First retry delay after Vault failed to sign.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// The longest leaf the daemon asks for: the intermediate must outlive it at its latest
    /// renewal point, and `/readyz` reports the intermediate once it no longer does.
    pub longest_leaf: Duration,
    /// How far a leaf's NotBefore is back-dated.
    pub clock_skew: Duration,
    /// How long a new root is in the trust bundle before an intermediate under it signs:
    /// enough for the daemon to re-read the bundle and push it to every proxy.
    pub bundle_lead: Duration,
}

impl UpstreamSettings {
    /// Refuses an intermediate lifetime that, renewed at `renew_fraction` ± `jitter_fraction`
    /// of its life, would leave less than `longest_leaf` at the latest renewal point: leaves
    /// would then be cut short at every renewal even with Vault up.
    pub fn check_covers(
        &self,
        longest_leaf: Duration,
        renew_fraction: f64,
        jitter_fraction: f64,
    ) -> Result<(), SettingsError> {
        let left = 1.0 - renew_fraction - jitter_fraction;
        let minimum = if left > 0.0 {
            longest_leaf.div_f64(left)
        } else {
            Duration::MAX
        };
        if self.intermediate_ttl >= minimum {
            return Ok(());
        }
        Err(SettingsError::Invalid {
            key: "vault.upstream.intermediateTtl",
            value: format_duration(self.intermediate_ttl),
            reason: format!(
                "renewed at {:.0}% (± {:.0}%) of its life, the intermediate would have less than \
                 the longest leaf ({}) left when it is renewed: set it to at least {}, or \
                 shorten certificateProvider.serviceCertValidityDuration",
                renew_fraction * 100.0,
                jitter_fraction * 100.0,
                format_duration(longest_leaf),
                format_duration(Duration::from_secs(minimum.as_secs_f64().ceil() as u64)),
            ),
        })
    }
}

/// Leaves signed by meshca with an intermediate that Vault signs and meshca renews.
///
/// Built by [`connect`](Self::connect), which has Vault sign the first intermediate before
/// returning. `issue` signs locally (Tresor's leaf code; no Vault call); `trust_bundle` is
/// Vault's root(s), from memory, so both keep working while Vault is unreachable.
pub struct VaultUpstream {
    shared: Arc<Shared>,
    renewer: tokio::task::JoinHandle<()>,
}

struct Shared {
    vault: VaultProvider,
    settings: UpstreamSettings,
    policy: UpstreamPolicy,
    tresor: Tresor,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Wakes the renewal task when the schedule changes under it (an intermediate held back).
    rescheduled: tokio::sync::Notify,
}

struct State {
    /// When the signing intermediate is to be renewed (jitter drawn once per intermediate).
    renew_at: SystemTime,
    /// An intermediate under a root not yet in proxies' bundles, and when it starts signing.
    pending: Option<(SigningAuthority, SystemTime)>,
    /// Roots no longer signing, trusted until the last intermediate under them ends.
    retired: Vec<(CertificateDer<'static>, SystemTime)>,
    /// The last renewal failure, for `/readyz`; cleared by a success.
    last_error: Option<String>,
    /// Vault's issuing chain ends no later than this (its earliest NotAfter, as last seen).
    ceiling: Option<SystemTime>,
}

impl std::fmt::Debug for VaultUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let authority = self.shared.tresor.authority();
        f.debug_struct("VaultUpstream")
            .field("vault", &self.shared.vault)
            .field("intermediate", &authority.subject())
            .field("not_after", &authority.not_after())
            .finish_non_exhaustive()
    }
}

impl Drop for VaultUpstream {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl VaultUpstream {
    /// Connects to Vault as [`VaultProvider::connect_with`] does (no PKI role is read: none
    /// governs intermediates), has it sign the first intermediate, and starts renewing it.
    /// Must be called within a Tokio runtime.
    pub async fn connect(
        settings: &VaultSettings,
        token_source: Option<Arc<dyn TokenSource>>,
        policy: UpstreamPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, VaultError> {
        settings.upstream.check_covers(
            policy.longest_leaf,
            policy.renew_fraction,
            policy.jitter_fraction,
        )?;
        check_issuer_ref(&settings.upstream.issuer)?;
        if settings.upstream.common_name.trim().is_empty() {
            return Err(SettingsError::Invalid {
                key: "vault.upstream.commonName",
                value: settings.upstream.common_name.clone(),
                reason: format!(
                    "the intermediate needs a subject common name, e.g. \
                     {DEFAULT_INTERMEDIATE_COMMON_NAME}"
                ),
            }
            .into());
        }
        let vault = VaultProvider::connect_checking(settings, token_source, false).await?;
        let address = vault.address().to_owned();
        // The mount's root bounds the first intermediate when it has only one (with several
        // issuers, which one signs is Vault's default); later ones are bounded by the chain
        // Vault sent with the last.
        let mut ceiling = None;
        if settings.upstream.issuer.is_empty()
            && let Ok(bundle) = vault.trust_bundle().await
            && let [root] = bundle.roots()
        {
            ceiling = CertificateInfo::parse(root).ok().map(|info| info.not_after);
        }
        let first = request_intermediate(
            &vault,
            &settings.upstream,
            &policy.trust_domain,
            clock.now(),
            &mut ceiling,
        )
        .await
        .map_err(|e| VaultError::Intermediate {
            address: address.clone(),
            transient: e.is_transient(),
            reason: e.to_string(),
        })?;
        let renew_at = renew_at(&first, &policy);
        tracing::info!(
            address = %address,
            intermediate = first.subject(),
            not_after = %rfc3339(first.not_after()),
            renew_at = %rfc3339(renew_at),
            root = %first.trust_bundle().fingerprints().join(","),
            "vault upstream: intermediate signed by Vault; leaves are signed by meshca"
        );
        let tresor = Tresor::new(first, clock.clone()).with_clock_skew(policy.clock_skew);
        let shared = Arc::new(Shared {
            vault,
            settings: settings.upstream.clone(),
            policy,
            tresor,
            clock,
            state: Mutex::new(State {
                renew_at,
                pending: None,
                retired: Vec::new(),
                last_error: None,
                ceiling,
            }),
            rescheduled: tokio::sync::Notify::new(),
        });
        let renewer = tokio::spawn(keep_intermediate_fresh(shared.clone()));
        Ok(Self { shared, renewer })
    }

    /// The intermediate signing now.
    pub fn intermediate(&self) -> Arc<SigningAuthority> {
        self.shared.tresor.authority()
    }

    /// Renews the intermediate now (what the renewal task does when it is due), returning
    /// whether the new one signs already (`false`: held back until its new root is trusted).
    pub async fn renew_now(&self) -> Result<bool, ProviderError> {
        self.shared.renew().await
    }
}

#[async_trait::async_trait]
impl CertificateProvider for VaultUpstream {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> &Capabilities {
        self.shared.tresor.capabilities()
    }

    async fn issue(&self, request: &IssueRequest<'_>) -> Result<CertificateChain, ProviderError> {
        let authority = self.shared.tresor.authority();
        let now = self.shared.clock.now();
        // Whole seconds, as the leaf's NotAfter is written, one spare.
        let left = authority
            .not_after()
            .duration_since(now)
            .map(|d| Duration::from_secs(d.as_secs().saturating_sub(1)))
            .unwrap_or_default();
        if left.is_zero() {
            return Err(self.shared.expired(&authority));
        }
        if request.spec.lifetime <= left {
            return self.shared.tresor.issue(request).await;
        }
        // The contract lets a provider shorten a lifetime: during a long Vault outage a leaf
        // ending with the intermediate beats no leaf.
        let spec = LeafSpec {
            lifetime: left,
            ..request.spec.clone()
        };
        self.shared
            .tresor
            .issue(&IssueRequest {
                spec: &spec,
                key: request.key,
            })
            .await
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, ProviderError> {
        Ok(self.shared.bundle())
    }

    async fn check_health(&self) -> Result<(), ProviderError> {
        let authority = self.shared.tresor.authority();
        let now = self.shared.clock.now();
        let left = authority
            .not_after()
            .duration_since(now)
            .unwrap_or_default();
        if left.is_zero() {
            return Err(self.shared.expired(&authority));
        }
        if left >= self.shared.policy.longest_leaf {
            return Ok(());
        }
        let state = self.shared.state();
        Err(ProviderError::Unavailable {
            provider: NAME,
            reason: format!(
                "meshca's intermediate {} ends in {}, sooner than a leaf lasts ({}): leaves are \
                 cut short until Vault at {} signs a new one{}",
                authority.subject(),
                format_duration(Duration::from_secs(left.as_secs())),
                format_duration(self.shared.policy.longest_leaf),
                self.shared.vault.address(),
                state
                    .last_error
                    .as_ref()
                    .map(|e| format!(" (last attempt: {e})"))
                    .unwrap_or_default(),
            ),
        })
    }
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expired(&self, authority: &SigningAuthority) -> ProviderError {
        let state = self.state();
        ProviderError::Unavailable {
            provider: NAME,
            reason: format!(
                "meshca's intermediate {} ended at {} and Vault at {} has not signed a new \
                 one{}",
                authority.subject(),
                rfc3339(authority.not_after()),
                self.vault.address(),
                state
                    .last_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default(),
            ),
        }
    }

    /// The signing intermediate's root, a pending intermediate's root, and retired roots
    /// still anchoring leaves.
    fn bundle(&self) -> TrustBundle {
        let mut bundle = self.tresor.trusted_bundle();
        let now = self.clock.now();
        let mut state = self.state();
        state.retired.retain(|(_, until)| *until > now);
        if let Some((pending, _)) = &state.pending {
            bundle.push(pending.root().clone());
        }
        for (root, _) in &state.retired {
            bundle.push(root.clone());
        }
        bundle
    }

    /// Has Vault sign a new intermediate and installs it, or holds it back under a new root.
    async fn renew(&self) -> Result<bool, ProviderError> {
        let mut ceiling = self.state().ceiling;
        let result = request_intermediate(
            &self.vault,
            &self.settings,
            &self.policy.trust_domain,
            self.clock.now(),
            &mut ceiling,
        )
        .await;
        let mut state = self.state();
        state.ceiling = ceiling;
        let fresh = match result {
            Ok(fresh) => fresh,
            Err(e) => {
                state.last_error = Some(e.to_string());
                return Err(e);
            }
        };
        state.last_error = None;
        let current = self.tresor.authority();
        if current.trust_bundle().contains(fresh.root()) {
            drop(state);
            self.install(fresh);
            return Ok(true);
        }
        // Vault's issuer now chains to another root: trust it first, sign under it later,
        // but before the current intermediate can no longer cover a leaf.
        let latest = current
            .not_after()
            .checked_sub(self.policy.longest_leaf)
            .unwrap_or(current.not_after());
        let at = (self.clock.now() + self.policy.bundle_lead).min(latest);
        tracing::info!(
            intermediate = fresh.subject(),
            new_root = %fresh.trust_bundle().fingerprints().join(","),
            signs_from = %rfc3339(at),
            "vault upstream: Vault's issuer chains to a new root; it joins the trust bundle now \
             and the new intermediate signs once proxies have had time to receive it"
        );
        state.pending = Some((fresh, at));
        drop(state);
        self.rescheduled.notify_one();
        Ok(false)
    }

    /// Puts `fresh` in charge of every later leaf; a replaced root stays trusted while leaves
    /// under it may live.
    fn install(&self, fresh: SigningAuthority) {
        let renew_at = renew_at(&fresh, &self.policy);
        let subject = fresh.subject().to_owned();
        let not_after = fresh.not_after();
        let previous = self.tresor.replace_authority(fresh);
        let mut state = self.state();
        state.renew_at = renew_at;
        if !self.tresor.trusted_bundle().contains(previous.root()) {
            state
                .retired
                .push((previous.root().clone(), previous.not_after()));
        }
        tracing::info!(
            intermediate = %subject,
            not_after = %rfc3339(not_after),
            renew_at = %rfc3339(renew_at),
            "vault upstream: new intermediate signing"
        );
    }

    /// How long until the next thing to do: install a pending intermediate, or renew.
    fn next_step(&self) -> Duration {
        let now = self.clock.now();
        let state = self.state();
        let at = match &state.pending {
            Some((_, at)) => *at,
            None => state.renew_at,
        };
        at.duration_since(now).unwrap_or_default()
    }

    /// Installs the pending intermediate if its time has come.
    fn install_due_pending(&self) -> bool {
        let now = self.clock.now();
        let due = {
            let mut state = self.state();
            match &state.pending {
                Some((_, at)) if *at <= now => state.pending.take(),
                _ => None,
            }
        };
        match due {
            Some((fresh, _)) => {
                self.install(fresh);
                true
            }
            None => false,
        }
    }
}

/// The renewal task: sleeps until the intermediate is due, renews it, and retries with capped,
/// jittered backoff while Vault cannot sign.
async fn keep_intermediate_fresh(shared: Arc<Shared>) {
    let mut backoff = shared.policy.backoff_initial;
    loop {
        tokio::select! {
            () = tokio::time::sleep(shared.next_step()) => {}
            () = shared.rescheduled.notified() => continue,
        }
        if shared.install_due_pending() {
            continue;
        }
        match shared.renew().await {
            Ok(_) => backoff = shared.policy.backoff_initial,
            Err(e) => {
                let authority = shared.tresor.authority();
                let left = authority
                    .not_after()
                    .duration_since(shared.clock.now())
                    .unwrap_or_default();
                tracing::warn!(
                    intermediate = authority.subject(),
                    left = %format_duration(Duration::from_secs(left.as_secs())),
                    retry_in = %format_duration(backoff),
                    "vault upstream: renewing the intermediate failed; leaves are still signed \
                     with the current one: {e}"
                );
                let spread = rand::rng().random_range(0.5..=1.0);
                tokio::time::sleep(backoff.mul_f64(spread)).await;
                backoff = (backoff * 2).min(shared.policy.backoff_max);
            }
        }
    }
}

/// When to renew `authority`: at the renewal fraction of its life, ± the jitter, drawn once.
fn renew_at(authority: &SigningAuthority, policy: &UpstreamPolicy) -> SystemTime {
    let not_after = authority.not_after();
    let not_before = CertificateInfo::parse(authority.certificate())
        .map(|info| info.not_before)
        .unwrap_or(not_after);
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let spread = rand::rng().random_range(-1.0..=1.0);
    renew_point(
        not_before,
        life,
        policy.renew_fraction,
        policy.jitter_fraction,
        spread,
    )
}

/// `not_before + life × (fraction + jitter × spread)`, `spread` in −1..=1.
fn renew_point(
    not_before: SystemTime,
    life: Duration,
    fraction: f64,
    jitter: f64,
    spread: f64,
) -> SystemTime {
    let at = (fraction + jitter * spread).clamp(0.0, 1.0);
    not_before + life.mul_f64(at)
}

/// Refuses an issuer reference that is not a single path segment.
fn check_issuer_ref(issuer: &str) -> Result<(), SettingsError> {
    if issuer
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Ok(());
    }
    Err(SettingsError::Invalid {
        key: "vault.upstream.issuer",
        value: issuer.to_owned(),
        reason: "an issuer's name or ID under the PKI mount (letters, digits, - _ .), or empty \
                 for the mount's default issuer"
            .to_owned(),
    })
}

/// Makes a key, has Vault sign an intermediate over it, and loads the result as a signing
/// authority (chain checked up to a self-signed root, key matched). `ceiling` is Vault's
/// issuing chain's earliest NotAfter, as last seen: the lifetime asked is cut to it, and it is
/// updated from the answer.
async fn request_intermediate(
    vault: &VaultProvider,
    settings: &UpstreamSettings,
    trust_domain: &TrustDomain,
    now: SystemTime,
    ceiling: &mut Option<SystemTime>,
) -> Result<SigningAuthority, ProviderError> {
    let key = LeafKey::generate(settings.key_type)?;
    let common_name = settings.common_name.trim().to_owned();
    let csr_spec = LeafSpec {
        common_name: Some(common_name.clone()),
        spiffe_id: None,
        dns_names: Vec::new(),
        lifetime: settings.intermediate_ttl,
    };
    let csr = pem_block("CERTIFICATE REQUEST", &key.csr_der(&csr_spec)?);
    let mut lifetime = settings.intermediate_ttl;
    if let Some(left) = ceiling.and_then(|c| c.duration_since(now).ok()) {
        lifetime = lifetime.min(left);
    }
    let ttl = ttl_seconds(lifetime);
    let uri = format!("spiffe://{trust_domain}");
    let mount = vault.pki_mount().to_owned();
    let (path, certificate, chain) = if settings.issuer.is_empty() {
        let request = SignIntermediateRequest {
            mount,
            csr: Some(csr),
            common_name: Some(common_name),
            ttl,
            format: Some("pem".to_owned()),
            max_path_length: Some(0),
            uri_sans: Some(uri),
            use_csr_values: Some(false),
            ..SignIntermediateRequest::default()
        };
        let path = crate::http::endpoint_path(&request);
        let answer = vault.call(&request, None).await?;
        let signed = vault.data(answer, &path)?;
        let chain = signed
            .ca_chain
            .filter(|chain| !chain.is_empty())
            .unwrap_or_else(|| vec![signed.issuing_ca.clone()]);
        (path, signed.certificate, chain)
    } else {
        let request = SignIntermediateIssuerRequest {
            mount,
            issuer: settings.issuer.clone(),
            csr,
            common_name,
            ttl,
            format: Some("pem".to_owned()),
            max_path_length: Some(0),
            uri_sans: Some(uri),
            use_csr_values: Some(false),
            ..SignIntermediateIssuerRequest::default()
        };
        let path = crate::http::endpoint_path(&request);
        let answer = vault.call(&request, None).await?;
        let signed = vault.data(answer, &path)?;
        let chain = if signed.ca_chain.is_empty() {
            vec![signed.issuing_ca.clone()]
        } else {
            signed.ca_chain
        };
        (path, signed.certificate, chain)
    };
    let pem = chain_pem(&certificate, &chain)
        .map_err(|reason| vault.invalid(&path, format!("unreadable certificate: {reason}")))?;
    let authority =
        SigningAuthority::from_pem(&pem, &key.private_key_pem(), now).map_err(|problem| {
            vault.invalid(
                &path,
                format!("the signed intermediate cannot sign leaves: {problem}"),
            )
        })?;
    *ceiling = issuing_ceiling(&authority);
    Ok(authority)
}

/// The intermediate first, then Vault's chain above it (Vault's `ca_chain` starts with the
/// signed certificate itself on `root/sign-intermediate`: it is skipped), as one PEM text.
fn chain_pem(certificate: &str, chain: &[String]) -> Result<String, String> {
    let mut ders: Vec<CertificateDer<'static>> = Vec::with_capacity(chain.len() + 1);
    for pem in std::iter::once(certificate).chain(chain.iter().map(String::as_str)) {
        for der in meshca_provider::x509::certificates_from_pem(pem).map_err(|e| e.to_string())? {
            if !ders.contains(&der) {
                ders.push(der);
            }
        }
    }
    Ok(certificates_to_pem(&ders))
}

/// The earliest NotAfter of the chain above `authority`'s certificate: no intermediate Vault
/// signs can outlive it.
fn issuing_ceiling(authority: &SigningAuthority) -> Option<SystemTime> {
    std::iter::once(authority.root())
        .chain(authority.chain())
        .filter_map(|der| CertificateInfo::parse(der).ok())
        .map(|info| info.not_after)
        .min()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_intermediate_too_short_for_the_longest_leaf_is_refused_at_load() {
        let mut settings = UpstreamSettings {
            intermediate_ttl: Duration::from_secs(24 * 3600),
            ..UpstreamSettings::default()
        };
        // Renewed at 50% ± 10%: at worst 40% of 24h (9.6h) is left, enough for 1h leaves.
        settings
            .check_covers(Duration::from_secs(3600), 0.5, 0.1)
            .unwrap();
        // 24h leaves need 60h.
        let refused = settings
            .check_covers(Duration::from_secs(24 * 3600), 0.5, 0.1)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("vault.upstream.intermediateTtl"),
            "{refused}"
        );
        assert!(refused.contains("at least 60h"), "{refused}");
        settings.intermediate_ttl = Duration::from_secs(60 * 3600);
        settings
            .check_covers(Duration::from_secs(24 * 3600), 0.5, 0.1)
            .unwrap();
    }

    #[test]
    fn renewal_falls_at_the_fraction_within_the_jitter() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let life = Duration::from_secs(1000);
        for (spread, expected) in [(-1.0, 400), (0.0, 500), (1.0, 600)] {
            assert_eq!(
                renew_point(start, life, 0.5, 0.1, spread),
                start + Duration::from_secs(expected)
            );
        }
        // Never before it starts nor after it ends.
        assert_eq!(renew_point(start, life, 0.95, 0.1, 1.0), start + life);
    }

    #[test]
    fn an_issuer_reference_is_one_path_segment() {
        check_issuer_ref("").unwrap();
        check_issuer_ref("meshca-2026").unwrap();
        check_issuer_ref("fe510141-5039-8247-117a-86f31b661e59").unwrap();
        assert!(check_issuer_ref("../sys").is_err());
    }
}
