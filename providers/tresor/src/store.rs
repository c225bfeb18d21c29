//! Where the CA lives between restarts: the [`CaStore`] contract (implemented by
//! [`DirectoryStore`](crate::DirectoryStore) and the daemon's Kubernetes Secret store), and
//! [`bootstrap`], which reads first, creates only when nothing is there, and adopts what a
//! concurrent creator stored. The material itself is [`StoredCa`] (`material.rs`).

use std::fmt;

use meshca_provider::{Clock, TrustBundle};

use crate::authority::SigningAuthority;
use crate::material::{StoreError, StoredCa};
use crate::options::RootOptions;
use crate::rotation::{AckReport, AckReports, Rotation, RotationChange, Swap};

/// What [`CaStore::create`] did.
#[derive(Debug)]
pub enum Created {
    /// The material was stored.
    Stored,
    /// The store already held CA material, left untouched; this is what was found.
    AlreadyExists(StoredCa),
}

/// How [`bootstrap`] obtained its CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The store already held a CA.
    Loaded,
    /// The store was empty; a new root was made and stored.
    Created,
    /// The store was empty, but another process stored a CA first; that one is used.
    Adopted,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Loaded => "loaded the existing CA",
            Outcome::Created => "created a new root CA",
            Outcome::Adopted => "adopted the CA another instance created",
        })
    }
}

/// Persistent storage for the CA: a directory, or a Kubernetes Secret.
///
/// Obligations of an implementation:
/// - `load` returns what is stored, or `None` when nothing is; it judges readability only
///   (the caller validates with [`StoredCa::authority`]), and reports half-present material
///   as [`StoreError::Incomplete`]. Origins name where each part came from.
/// - `create` MUST NOT overwrite anything: when material exists it returns
///   [`Created::AlreadyExists`] with what it found. Of two concurrent creates, at most one
///   stores; the other sees the winner's material, complete.
/// - Neither ever deletes or changes existing material, on success or on error.
#[async_trait::async_trait]
pub trait CaStore: Send + Sync + fmt::Debug {
    /// Reads the stored CA, if any.
    async fn load(&self) -> Result<Option<StoredCa>, StoreError>;

    /// Stores `ca` unless the store already holds a CA.
    async fn create(&self, ca: &StoredCa) -> Result<Created, StoreError>;

    /// Where the CA lives, for logs: `directory /var/lib/meshca/ca`.
    fn describe(&self) -> String;

    /// The root rotation in progress, if any.
    async fn load_rotation(&self) -> Result<Option<Rotation>, StoreError> {
        Ok(None)
    }

    /// What decides the signing CA: the rotation record when there is one (then the stored CA
    /// is not read: an interrupted finish may have left it half replaced), else the stored CA.
    /// Stores that can read both at once (one Secret) override this to read once.
    async fn load_state(&self) -> Result<(Option<Rotation>, Option<StoredCa>), StoreError> {
        if let Some(rotation) = self.load_rotation().await? {
            return Ok((Some(rotation), None));
        }
        Ok((None, self.load().await?))
    }

    /// Applies `change` if the stored record's revision is `expected` (`None`: no record is
    /// stored); otherwise returns what is stored. [`RotationChange::Finish`] replaces the
    /// stored CA with the record's new root — the one write that may replace CA material, and
    /// only when the stored CA is the record's old or new root.
    async fn change_rotation(
        &self,
        expected: Option<u64>,
        change: RotationChange,
    ) -> Result<Swap, StoreError> {
        let _ = (expected, change);
        Err(StoreError::RotationUnsupported {
            store: self.describe(),
        })
    }

    /// Records what this daemon's proxies acknowledged (replacing its previous report).
    async fn report_acks(&self, report: &AckReport) -> Result<(), StoreError> {
        let _ = report;
        Err(StoreError::RotationUnsupported {
            store: self.describe(),
        })
    }

    /// Every daemon's latest report; unreadable entries are listed apart.
    async fn ack_reports(&self) -> Result<AckReports, StoreError> {
        Ok(AckReports::default())
    }

    /// meshca's JWT-SVID signing keys as last stored (their encoding is the daemon's; the
    /// store keeps them as private material), or `None` when none are stored yet.
    async fn load_jwt_keys(&self) -> Result<Option<StoredJwtKeys>, StoreError> {
        Err(StoreError::JwtKeysUnsupported {
            store: self.describe(),
        })
    }

    /// Stores `contents` as the JWT-SVID signing keys if what is stored is still what the
    /// caller read (`expected`: its [`StoredJwtKeys::digest`], `None` when nothing was
    /// stored); otherwise changes nothing and returns what is stored. Several daemons sharing
    /// one store so agree on one key set.
    async fn swap_jwt_keys(
        &self,
        expected: Option<&JwtKeysDigest>,
        contents: &[u8],
    ) -> Result<JwtKeysSwap, StoreError> {
        let _ = (expected, contents);
        Err(StoreError::JwtKeysUnsupported {
            store: self.describe(),
        })
    }
}

/// The SHA-256 of a stored JWT key set: what a compare-and-swap compares.
pub type JwtKeysDigest = [u8; 32];

/// The JWT-SVID signing keys as a store holds them.
pub struct StoredJwtKeys {
    /// The encoded key set (private keys included).
    pub contents: zeroize::Zeroizing<Vec<u8>>,
}

impl StoredJwtKeys {
    /// The digest a [`CaStore::swap_jwt_keys`] expects for these contents.
    pub fn digest(&self) -> JwtKeysDigest {
        jwt_keys_digest(&self.contents)
    }
}

impl fmt::Debug for StoredJwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredJwtKeys({} bytes, redacted)", self.contents.len())
    }
}

/// The digest of encoded JWT keys.
pub fn jwt_keys_digest(contents: &[u8]) -> JwtKeysDigest {
    let digest = ring::digest::digest(&ring::digest::SHA256, contents);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What [`CaStore::swap_jwt_keys`] did.
#[derive(Debug)]
pub enum JwtKeysSwap {
    /// The new contents are stored.
    Stored,
    /// Another writer changed the keys first: what is stored now (`None`: nothing).
    Stale(Option<StoredJwtKeys>),
}

/// Loads the CA from `store`, or creates a new root there when the store is empty.
///
/// Reads first; creates only when nothing is stored; when a concurrent creator wins, adopts
/// its CA. Refuses — without changing anything — material that is incomplete, unreadable, not
/// a CA, expired, or whose key does not match.
pub async fn bootstrap(
    store: &dyn CaStore,
    options: &RootOptions,
    clock: &dyn Clock,
) -> Result<(SigningAuthority, Outcome), StoreError> {
    if let Some(found) = store.load().await? {
        return Ok((found.authority(clock.now())?, Outcome::Loaded));
    }
    create_root(store, options, clock).await
}

/// Makes a root and stores it, or adopts what a concurrent creator stored first.
async fn create_root(
    store: &dyn CaStore,
    options: &RootOptions,
    clock: &dyn Clock,
) -> Result<(SigningAuthority, Outcome), StoreError> {
    let authority = SigningAuthority::generate_root(options, clock)?;
    match store.create(&authority.to_stored()).await? {
        Created::Stored => Ok((authority, Outcome::Created)),
        Created::AlreadyExists(found) => Ok((found.authority(clock.now())?, Outcome::Adopted)),
    }
}

/// What Tresor signs with and trusts, as the store says now.
#[derive(Debug)]
pub struct Signing {
    /// The authority that signs: the stored CA, or the rotation's issuing root.
    pub authority: SigningAuthority,
    /// The trusted roots: the authority's own, or both roots during a rotation.
    pub bundle: TrustBundle,
    /// The rotation in progress.
    pub rotation: Option<Rotation>,
    /// How the CA was obtained.
    pub outcome: Outcome,
}

/// [`bootstrap`], aware of a root rotation in progress: while a rotation record is stored it
/// decides which root signs, and both roots are trusted.
pub async fn bootstrap_signing(
    store: &dyn CaStore,
    options: &RootOptions,
    clock: &dyn Clock,
) -> Result<Signing, StoreError> {
    let (rotation, stored) = store.load_state().await?;
    if let Some(rotation) = rotation {
        let authorities = rotation.authorities(clock.now())?;
        let bundle = Rotation::trust_bundle(&authorities);
        return Ok(Signing {
            authority: authorities.issuing(rotation.stage),
            bundle,
            rotation: Some(rotation),
            outcome: Outcome::Loaded,
        });
    }
    let (authority, outcome) = match stored {
        Some(found) => (found.authority(clock.now())?, Outcome::Loaded),
        None => create_root(store, options, clock).await?,
    };
    Ok(Signing {
        bundle: authority.trust_bundle().clone(),
        authority,
        rotation: None,
        outcome,
    })
}
