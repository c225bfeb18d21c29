//! Tresor: meshca's built-in certificate authority.
//!
//! The entry point is [`Tresor`], a [`CertificateProvider`] that signs leaves in-process with a
//! [`SigningAuthority`] (a root, or a per-cluster intermediate under a shared root). The CA
//! comes from a [`CaStore`] through [`bootstrap`] — read first, create a root only when the
//! store is empty, adopt what a concurrent creator stored, refuse broken material without
//! touching it — or from bring-your-own files through [`StoredCa::import`].
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use meshca_provider::SystemClock;
//! use meshca_tresor::{DirectoryStore, RootOptions, Tresor, bootstrap};
//!
//! let store = DirectoryStore::new("/var/lib/meshca/ca");
//! let (authority, outcome) = bootstrap(&store, &RootOptions::default(), &SystemClock).await?;
//! println!("{outcome}: {}", authority.subject());
//! let tresor = Tresor::new(authority, Arc::new(SystemClock));
//! # let _ = tresor; Ok(()) }
//! ```

#![forbid(unsafe_code)]

// The modules form layers, each using only those below it (tests/module_cycles.rs keeps it
// so): error, options → profile → leaf → authority → material (StoredCa) → rotation (the
// record) → store (CaStore, bootstrap) → directory (DirectoryStore) → rotate (the stage machine) → this file (Tresor).
mod authority;
mod directory;
mod error;
mod leaf;
mod material;
mod options;
mod profile;
pub mod rotate;
mod rotation;
mod store;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use meshca_provider::{
    Capabilities, CertificateChain, CertificateProvider, Clock, CsrNames, DnsName, IssueRequest,
    KeyType, LeafKey, LeafSpec, ProviderError, TrustBundle,
};

pub use authority::SigningAuthority;
pub use directory::DirectoryStore;
pub use error::{AuthorityError, CaProblem};
pub use material::{StoreError, StoredCa};
pub use options::{
    DEFAULT_INTERMEDIATE_LIFETIME, DEFAULT_ROOT_LIFETIME, IntermediateOptions, RootOptions,
};
pub use rotate::{Abort, AckSummary, Advance, RotationError, RotationPolicy};
pub use rotation::{
    AckReport, AckReports, DistributionReport, Rotation, RotationAuthorities, RotationChange,
    Stage, Swap, unix,
};
pub use store::{
    CaStore, Created, JwtKeysDigest, JwtKeysSwap, Outcome, Signing, StoredJwtKeys, bootstrap,
    bootstrap_signing, jwt_keys_digest,
};

/// The provider's name in logs and metrics.
pub const NAME: &str = "tresor";

/// How far a leaf's NotBefore is back-dated by default, for peers whose clocks run slow.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// The built-in CA as a [`CertificateProvider`].
///
/// Signs each leaf directly over the daemon's public key (no CSR), with one signature. The
/// signing authority sits in a swappable slot so that root rotation can replace it while
/// issuance continues; an issuance in flight finishes with the authority it started with.
#[derive(Debug)]
pub struct Tresor {
    active: RwLock<Active>,
    clock: Arc<dyn Clock>,
    clock_skew: Duration,
    capabilities: Capabilities,
}

/// The authority signing now and the bundle handed out as trusted: the authority's own root,
/// or during a root rotation both roots.
#[derive(Debug)]
struct Active {
    authority: Arc<SigningAuthority>,
    bundle: TrustBundle,
}

impl Tresor {
    /// A provider signing with `authority`, stamping validity from `clock`, with the default
    /// clock-skew allowance ([`DEFAULT_CLOCK_SKEW`]).
    pub fn new(authority: SigningAuthority, clock: Arc<dyn Clock>) -> Self {
        Self {
            active: RwLock::new(Active {
                bundle: authority.trust_bundle().clone(),
                authority: Arc::new(authority),
            }),
            clock,
            clock_skew: DEFAULT_CLOCK_SKEW,
            capabilities: Capabilities {
                max_lifetime: None,
                key_types: KeyType::ALL.to_vec(),
                uri_sans: true,
                csr_names: CsrNames::Decided,
                signs_in_process: true,
            },
        }
    }

    /// Sets how far NotBefore is back-dated.
    #[must_use]
    pub fn with_clock_skew(mut self, clock_skew: Duration) -> Self {
        self.clock_skew = clock_skew;
        self
    }

    /// Trusts `bundle` (which must contain the authority's root) instead of the authority's
    /// root alone: how a daemon starts in the middle of a root rotation.
    #[must_use]
    pub fn with_trust_bundle(self, bundle: TrustBundle) -> Self {
        self.active
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .bundle = bundle;
        self
    }

    /// The authority currently signing.
    pub fn authority(&self) -> Arc<SigningAuthority> {
        // Only the Arc is cloned: this runs for every leaf signed.
        let active = self.active.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&active.authority)
    }

    /// Puts `authority` in charge of every later issuance, trusting its root only, and returns
    /// the one it replaces.
    pub fn replace_authority(&self, authority: SigningAuthority) -> Arc<SigningAuthority> {
        let bundle = authority.trust_bundle().clone();
        self.switch(authority, bundle)
    }

    /// Puts `authority` in charge of every later issuance and `bundle` (which must contain
    /// its root) in the trust bundle; returns the authority it replaces. Root rotation uses
    /// this to sign with one root while trusting two.
    pub fn switch(
        &self,
        authority: SigningAuthority,
        bundle: TrustBundle,
    ) -> Arc<SigningAuthority> {
        let mut slot = self.active.write().unwrap_or_else(PoisonError::into_inner);
        let previous = std::mem::replace(
            &mut *slot,
            Active {
                authority: Arc::new(authority),
                bundle,
            },
        );
        previous.authority
    }

    /// The roots handed out as trusted (what [`trust_bundle`](CertificateProvider::trust_bundle)
    /// returns, without the async wrapper).
    pub fn trusted_bundle(&self) -> TrustBundle {
        // The slot is only ever replaced whole, so a poisoned lock still holds a good value.
        let active = self.active.read().unwrap_or_else(PoisonError::into_inner);
        active.bundle.clone()
    }

    /// Signs a certificate for `spec` over `key`'s public key, now. This is what
    /// [`issue`](CertificateProvider::issue) does, without the async wrapper.
    pub fn sign(&self, spec: &LeafSpec, key: &LeafKey) -> Result<CertificateChain, ProviderError> {
        self.capabilities
            .check(&IssueRequest::generated(spec, key))?;
        self.authority()
            .sign_leaf(spec, key, self.clock.now(), self.clock_skew)
            .map_err(provider_error)
    }

    /// Signs a server certificate (webhook, gateway): CN and SANs `dns_names`, no SPIFFE ID.
    pub fn sign_server(
        &self,
        dns_names: Vec<DnsName>,
        lifetime: Duration,
        key: &LeafKey,
    ) -> Result<CertificateChain, ProviderError> {
        self.sign(&LeafSpec::server(dns_names, lifetime), key)
    }
}

#[async_trait::async_trait]
impl CertificateProvider for Tresor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn issue(&self, request: &IssueRequest<'_>) -> Result<CertificateChain, ProviderError> {
        // The issuance pipeline has checked the capabilities. A caller's key is signed
        // directly: only its public key is read from the CSR, the names are the spec's.
        self.authority()
            .sign_leaf(request.spec, request.key, self.clock.now(), self.clock_skew)
            .map_err(provider_error)
    }

    async fn trust_bundle(&self) -> Result<TrustBundle, ProviderError> {
        Ok(self.trusted_bundle())
    }

    async fn check_health(&self) -> Result<(), ProviderError> {
        let authority = self.authority();
        if self.clock.now() > authority.not_after() {
            return Err(provider_error(AuthorityError::CaExpired {
                subject: authority.subject().to_owned(),
                not_after: authority::display_time(authority.not_after()),
            }));
        }
        Ok(())
    }
}

fn provider_error(error: AuthorityError) -> ProviderError {
    match error {
        AuthorityError::InvalidName { .. } | AuthorityError::InvalidValidity { .. } => {
            ProviderError::Rejected {
                provider: NAME,
                reason: error.to_string(),
            }
        }
        AuthorityError::Key(key) => ProviderError::Key(key),
        other => ProviderError::Ca {
            reason: other.to_string(),
        },
    }
}
