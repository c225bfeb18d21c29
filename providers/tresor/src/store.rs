//! Where the CA lives between restarts: the [`CaStore`] contract, the [`DirectoryStore`], and
//! [`bootstrap`], which reads first, creates only when nothing is there, and adopts what a
//! concurrent creator stored.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use meshca_provider::{Clock, TrustBundle};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

use crate::authority::{AuthorityError, CaProblem, RootOptions, SigningAuthority};
use crate::rotation::{AckReport, Rotation, RotationChange, Swap};

/// Why CA material could not be read, written or used. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file system operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What meshca was doing, e.g. `read`.
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Stored or imported CA material is unusable. Nothing was changed.
    #[error("refusing to use the CA material in {location}: {problem}. Nothing was changed")]
    Invalid {
        /// Where the material came from: a file path, or a Secret and key.
        location: String,
        /// What is wrong with it.
        problem: CaProblem,
    },
    /// One half of the CA (certificate or key) is there, the other is not.
    #[error(
        "{present} exists but {missing} does not, so the CA material is incomplete. Nothing was \
         changed: restore {missing}, or, if an interrupted bootstrap left {present} behind and \
         nothing was ever issued from it, remove it to let meshca create a new root"
    )]
    Incomplete {
        /// The part that exists.
        present: String,
        /// The part that is missing.
        missing: String,
    },
    /// A new root could not be made.
    #[error("could not create a new root CA: {0}")]
    Generate(#[from] AuthorityError),
    /// A CA store path that is not a regular file (a FIFO would block the reader forever).
    #[error(
        "{} is a {kind}, not a regular file: meshca keeps its CA in regular files. Nothing was \
         changed: replace it with the file it should be",
        path.display()
    )]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is instead: `FIFO`, `directory`, `socket`, …
        kind: &'static str,
    },
    /// A file holding CA keys that users other than its owner may read or write.
    #[error(
        "{} holds the CA's private key but its mode is {mode:04o}, open to group or others: \
         refusing to use it. Nothing was changed: fix it with `chmod 600 {}` (for a mounted \
         Kubernetes volume, `defaultMode: 0400`), and consider the key exposed if others could \
         read it",
        path.display(), path.display()
    )]
    KeyNotPrivate {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A create conflict, after which the existing material could not be read back.
    #[error("{store} already holds a CA, but it could not be read back: retry")]
    Vanished {
        /// The store's description.
        store: String,
    },
    /// The root rotation record is unreadable. Nothing was changed.
    #[error(
        "refusing to use the root rotation record in {location}: {reason}. Nothing was changed: \
         restore it from a backup, or, if no rotation should be in progress, move it aside \
         (the stored CA is still the old root)"
    )]
    InvalidRotation {
        /// Where the record lives.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store does not keep a root rotation.
    #[error("{store} cannot hold a root rotation")]
    RotationUnsupported {
        /// The store's description.
        store: String,
    },
    /// A store backend (such as the Kubernetes API) failed.
    #[error("{store}: {reason}")]
    Backend {
        /// The store's description.
        store: String,
        /// What failed and what to check.
        reason: String,
    },
}

/// CA material as stored: the certificate chain (CA certificate first, then each issuer up to
/// and including the root) and the CA's PKCS#8 private key, both PEM, plus where each came
/// from, for error messages. The key is wiped from memory on drop and never shown by `Debug`.
#[derive(Clone)]
pub struct StoredCa {
    certificate_pem: String,
    key_pem: Zeroizing<String>,
    certificate_origin: String,
    key_origin: String,
}

impl StoredCa {
    /// Material from PEM text. Nothing is checked until [`authority`](Self::authority).
    pub fn new(certificate_pem: String, key_pem: Zeroizing<String>) -> Self {
        Self {
            certificate_pem,
            key_pem,
            certificate_origin: "the CA certificate".to_owned(),
            key_origin: "the CA private key".to_owned(),
        }
    }

    /// Names where the certificate and the key came from (a path, a Secret's key), so that
    /// errors point at the right place.
    #[must_use]
    pub fn with_origins(mut self, certificate: impl Into<String>, key: impl Into<String>) -> Self {
        self.certificate_origin = certificate.into();
        self.key_origin = key.into();
        self
    }

    /// Reads a certificate chain file and a key file. Nothing is checked beyond readability
    /// until [`authority`](Self::authority); errors name the file.
    pub fn read_files(certificate_path: &Path, key_path: &Path) -> Result<Self, StoreError> {
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io {
                action: "read",
                path,
                source,
            }
        };
        let not_text = |path: &Path| StoreError::Invalid {
            location: path.display().to_string(),
            problem: CaProblem::Unreadable {
                reason: "the file is not text".into(),
            },
        };
        let certificate = fs::read(certificate_path).map_err(io_error(certificate_path))?;
        let certificate_pem =
            String::from_utf8(certificate).map_err(|_| not_text(certificate_path))?;
        let mut key = Zeroizing::new(fs::read(key_path).map_err(io_error(key_path))?);
        let key_pem = match String::from_utf8(std::mem::take(&mut *key)) {
            Ok(text) => Zeroizing::new(text),
            Err(e) => {
                e.into_bytes().zeroize();
                return Err(StoreError::Invalid {
                    location: key_path.display().to_string(),
                    problem: CaProblem::UnreadableKey {
                        reason: "the file is not text".into(),
                    },
                });
            }
        };
        Ok(Self::new(certificate_pem, key_pem).with_origins(
            certificate_path.display().to_string(),
            key_path.display().to_string(),
        ))
    }

    /// Checks bring-your-own CA material (a root, or an intermediate followed by its chain up
    /// to the root) and returns it normalised for storing: certificates and a PKCS#8 key in
    /// canonical PEM.
    pub fn import(
        certificate_chain_pem: &str,
        key_pem: &str,
        now: SystemTime,
    ) -> Result<Self, StoreError> {
        let offered = Self::new(
            certificate_chain_pem.to_owned(),
            Zeroizing::new(key_pem.to_owned()),
        )
        .with_origins("the imported CA certificate", "the imported CA private key");
        Ok(offered.authority(now)?.to_stored())
    }

    /// Checks the material (see [`SigningAuthority::from_pem`]) and makes it ready to sign.
    /// Errors name the file or Secret key at fault.
    pub fn authority(&self, now: SystemTime) -> Result<SigningAuthority, StoreError> {
        SigningAuthority::from_pem(&self.certificate_pem, &self.key_pem, now).map_err(|problem| {
            let location = match &problem {
                CaProblem::KeyMismatch { .. } => {
                    format!("{} and {}", self.key_origin, self.certificate_origin)
                }
                p if p.concerns_key() => self.key_origin.clone(),
                _ => self.certificate_origin.clone(),
            };
            StoreError::Invalid { location, problem }
        })
    }

    /// The certificate chain, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The private key, PEM. Never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

impl fmt::Debug for StoredCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredCa")
            .field("certificate", &self.certificate_origin)
            .field("key", &self.key_origin)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

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

    /// Every daemon's latest report; unreadable ones are left out.
    async fn ack_reports(&self) -> Result<Vec<AckReport>, StoreError> {
        Ok(Vec::new())
    }
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

/// A CA kept as two files in a directory: `ca.crt` (the certificate chain) and `private.key`
/// (mode 0600). The directory is created with mode 0700 when missing.
///
/// Writes go to temporary files (the key one created with mode 0600) that are synced and then
/// hard-linked into place, which fails rather than replace an existing file. Creators hold an
/// exclusive `flock` on `.meshca-ca.lock` in the directory, and readers a shared one, so a
/// reader never sees a half-written CA and only one of several concurrent creators (threads
/// or processes) stores anything. File operations block the calling thread briefly; the store
/// is used at startup and by the CLI.
#[derive(Debug, Clone)]
pub struct DirectoryStore {
    dir: PathBuf,
}

impl DirectoryStore {
    /// The certificate chain's file name.
    pub const CERTIFICATE_FILE: &'static str = "ca.crt";
    /// The private key's file name.
    pub const KEY_FILE: &'static str = "private.key";
    const LOCK_FILE: &'static str = ".meshca-ca.lock";
    /// The root rotation record's file name (mode 0600: it holds both roots' keys).
    pub const ROTATION_FILE: &'static str = "rotation.json";
    /// The directory of the daemons' acknowledgement reports.
    pub const ACKS_DIR: &'static str = "rotation-acks";

    /// A store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the certificate chain file.
    pub fn certificate_path(&self) -> PathBuf {
        self.dir.join(Self::CERTIFICATE_FILE)
    }

    /// Path of the private key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(Self::KEY_FILE)
    }

    /// Reads both files if both exist; `None` if neither does.
    fn read_existing(&self) -> Result<Option<StoredCa>, StoreError> {
        let (certificate, key) = (self.certificate_path(), self.key_path());
        match (exists(&certificate)?, exists(&key)?) {
            (false, false) => Ok(None),
            (true, true) => {
                check_store_file(&certificate, false)?;
                check_store_file(&key, true)?;
                StoredCa::read_files(&certificate, &key).map(Some)
            }
            (true, false) => Err(StoreError::Incomplete {
                present: certificate.display().to_string(),
                missing: key.display().to_string(),
            }),
            (false, true) => Err(StoreError::Incomplete {
                present: key.display().to_string(),
                missing: certificate.display().to_string(),
            }),
        }
    }

    /// Takes the store's lock; it is released when the returned file is dropped.
    fn lock_exclusive(&self) -> Result<File, StoreError> {
        let path = self.dir.join(Self::LOCK_FILE);
        let file = open_lock_file(&path).map_err(|source| StoreError::Io {
            action: "open the lock file",
            path: path.clone(),
            source,
        })?;
        file.lock().map_err(|source| StoreError::Io {
            action: "lock",
            path,
            source,
        })?;
        Ok(file)
    }

    /// Takes the store's lock shared. `None` when the lock file cannot be made because the
    /// directory is read-only: then no writer can be at work either.
    fn lock_shared(&self) -> Result<Option<File>, StoreError> {
        let path = self.dir.join(Self::LOCK_FILE);
        let file = match open_lock_file(&path) {
            Ok(file) => file,
            Err(e) if is_read_only(&e) => match File::open(&path) {
                Ok(file) => file,
                Err(_) => return Ok(None),
            },
            Err(source) => {
                return Err(StoreError::Io {
                    action: "open the lock file",
                    path,
                    source,
                });
            }
        };
        file.lock_shared().map_err(|source| StoreError::Io {
            action: "lock",
            path,
            source,
        })?;
        Ok(Some(file))
    }

    fn create_locked(&self, ca: &StoredCa) -> Result<Created, StoreError> {
        if let Some(found) = self.read_existing()? {
            return Ok(Created::AlreadyExists(found));
        }
        let key_path = self.key_path();
        let certificate_path = self.certificate_path();
        let key_temp = TempFile::write(&self.dir, Self::KEY_FILE, ca.key_pem().as_bytes(), 0o600)?;
        let certificate_temp = TempFile::write(
            &self.dir,
            Self::CERTIFICATE_FILE,
            ca.certificate_pem().as_bytes(),
            0o644,
        )?;
        // The key goes first: an interrupted create leaves at most a key that never signed
        // anything, which the next load reports as incomplete rather than using.
        if let Err(source) = fs::hard_link(&key_temp.path, &key_path) {
            return self.after_link_failure(&key_path, source);
        }
        if let Err(source) = fs::hard_link(&certificate_temp.path, &certificate_path) {
            // Roll back our own half: the key file this call just linked.
            let _ = fs::remove_file(&key_path);
            return self.after_link_failure(&certificate_path, source);
        }
        drop(key_temp);
        drop(certificate_temp);
        sync_dir(&self.dir)?;
        Ok(Created::Stored)
    }

    /// A writer that ignored the lock got there first, or the link failed outright.
    fn after_link_failure(&self, path: &Path, source: io::Error) -> Result<Created, StoreError> {
        if source.kind() == io::ErrorKind::AlreadyExists
            && let Some(found) = self.read_existing()?
        {
            return Ok(Created::AlreadyExists(found));
        }
        Err(StoreError::Io {
            action: "create",
            path: path.to_path_buf(),
            source,
        })
    }

    fn rotation_path(&self) -> PathBuf {
        self.dir.join(Self::ROTATION_FILE)
    }

    fn read_rotation(&self) -> Result<Option<Rotation>, StoreError> {
        let path = self.rotation_path();
        if !exists(&path)? {
            return Ok(None);
        }
        // It holds both roots' keys.
        check_store_file(&path, true)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        Rotation::from_json(&bytes, &path.display().to_string()).map(Some)
    }

    /// Writes `contents` to `name` in the directory, replacing what is there, atomically.
    fn replace_file(&self, name: &str, contents: &[u8], mode: u32) -> Result<(), StoreError> {
        replace_file_in(&self.dir, name, contents, mode)
    }

    fn remove_file(path: &Path) -> Result<(), StoreError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                action: "remove",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn change_rotation_locked(
        &self,
        expected: Option<u64>,
        change: RotationChange,
    ) -> Result<Swap, StoreError> {
        let current = self.read_rotation()?;
        if current.as_ref().map(|r| r.revision) != expected {
            return Ok(Swap::Stale(current.map(Box::new)));
        }
        match change {
            RotationChange::Begin(record) | RotationChange::Update(record) => {
                self.replace_file(Self::ROTATION_FILE, &record.to_json(), 0o600)?;
            }
            RotationChange::Finish => {
                let Some(record) = current else {
                    return Ok(Swap::Stale(None));
                };
                // The one overwrite of CA material: only our own old (or, after an
                // interrupted finish, new) root is replaced.
                let stored = fs::read_to_string(self.certificate_path()).map_err(|source| {
                    StoreError::Io {
                        action: "read",
                        path: self.certificate_path(),
                        source,
                    }
                })?;
                if !same_certificates(&stored, record.old.certificate_pem())
                    && !same_certificates(&stored, record.new.certificate_pem())
                {
                    return Err(StoreError::Invalid {
                        location: self.certificate_path().display().to_string(),
                        problem: CaProblem::Unreadable {
                            reason: "it is neither the old nor the new root of the rotation in \
                                     progress, so finishing the rotation will not replace it"
                                .into(),
                        },
                    });
                }
                self.replace_file(Self::KEY_FILE, record.new.key_pem().as_bytes(), 0o600)?;
                self.replace_file(
                    Self::CERTIFICATE_FILE,
                    record.new.certificate_pem().as_bytes(),
                    0o644,
                )?;
                Self::remove_file(&self.rotation_path())?;
                self.remove_ack_reports()?;
            }
            RotationChange::Abort => {
                Self::remove_file(&self.rotation_path())?;
                self.remove_ack_reports()?;
            }
        }
        sync_dir(&self.dir)?;
        Ok(Swap::Applied)
    }

    fn remove_ack_reports(&self) -> Result<(), StoreError> {
        let dir = self.dir.join(Self::ACKS_DIR);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                action: "remove",
                path: dir,
                source,
            }),
        }
    }
}

/// Writes `contents` to `dir/name`, replacing what is there, atomically.
fn replace_file_in(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), StoreError> {
    let temp = TempFile::write(dir, name, contents, mode)?;
    let path = dir.join(name);
    fs::rename(&temp.path, &path).map_err(|source| StoreError::Io {
        action: "replace",
        path,
        source,
    })
}

/// Whether two PEM texts hold the same certificates (ignoring line wrapping and comments).
fn same_certificates(a: &str, b: &str) -> bool {
    use meshca_provider::x509::certificates_from_pem;
    matches!(
        (certificates_from_pem(a), certificates_from_pem(b)),
        (Ok(a), Ok(b)) if a == b
    )
}

#[async_trait::async_trait]
impl CaStore for DirectoryStore {
    async fn load(&self) -> Result<Option<StoredCa>, StoreError> {
        if !exists(&self.dir)? {
            return Ok(None);
        }
        let _lock = self.lock_shared()?;
        self.read_existing()
    }

    async fn create(&self, ca: &StoredCa) -> Result<Created, StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| StoreError::Io {
                action: "create the directory",
                path: self.dir.clone(),
                source,
            })?;
        let _lock = self.lock_exclusive()?;
        self.create_locked(ca)
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    async fn load_rotation(&self) -> Result<Option<Rotation>, StoreError> {
        if !exists(&self.dir)? {
            return Ok(None);
        }
        let _lock = self.lock_shared()?;
        self.read_rotation()
    }

    async fn change_rotation(
        &self,
        expected: Option<u64>,
        change: RotationChange,
    ) -> Result<Swap, StoreError> {
        let _lock = self.lock_exclusive()?;
        self.change_rotation_locked(expected, change)
    }

    async fn report_acks(&self, report: &AckReport) -> Result<(), StoreError> {
        let dir = self.dir.join(Self::ACKS_DIR);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StoreError::Io {
                action: "create the directory",
                path: dir.clone(),
                source,
            })?;
        let name = format!("{}.json", AckReport::key_safe(&report.replica));
        replace_file_in(&dir, &name, &report.to_json(), 0o644)
    }

    async fn ack_reports(&self) -> Result<Vec<AckReport>, StoreError> {
        let dir = self.dir.join(Self::ACKS_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path: dir,
                    source,
                });
            }
        };
        Ok(entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|bytes| AckReport::from_json(&bytes))
            .collect())
    }
}

fn exists(path: &Path) -> Result<bool, StoreError> {
    match fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StoreError::Io {
            action: "inspect",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Checks, before it is opened, that a file of the store is a regular file (opening a FIFO
/// for reading would block until a writer comes), and for a file holding keys that neither
/// group nor others have any access to it. Symlinks are followed: a store may be a mounted
/// volume.
fn check_store_file(path: &Path, holds_keys: bool) -> Result<(), StoreError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = fs::metadata(path).map_err(|source| StoreError::Io {
        action: "inspect",
        path: path.to_path_buf(),
        source,
    })?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let kind = if kind.is_fifo() {
            "FIFO"
        } else if kind.is_dir() {
            "directory"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "device"
        } else {
            "special file"
        };
        return Err(StoreError::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if holds_keys && mode & 0o077 != 0 {
        return Err(StoreError::KeyNotPrivate {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

fn is_read_only(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
    )
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            action: "sync",
            path: dir.to_path_buf(),
            source,
        })
}

/// A synced temporary file next to its final name, removed on drop (the final name is a hard
/// link, so it stays).
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn write(dir: &Path, final_name: &str, contents: &[u8], mode: u32) -> Result<Self, StoreError> {
        let mut suffix = [0u8; 8];
        SystemRandom::new()
            .fill(&mut suffix)
            .map_err(|_| StoreError::Generate(AuthorityError::Random))?;
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let path = dir.join(format!(".{final_name}.tmp-{}-{suffix}", std::process::id()));
        let io_error = |source| StoreError::Io {
            action: "write",
            path: path.clone(),
            source,
        };
        // Created with its final mode: a key is never readable by others, not even briefly.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io_error)?;
        let temp = Self { path: path.clone() };
        file.write_all(contents).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
        Ok(temp)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use meshca_provider::SystemClock;

    #[tokio::test]
    async fn an_empty_directory_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::new(dir.path().join("missing"));
        assert!(store.load().await.unwrap().is_none());
        let store = DirectoryStore::new(dir.path());
        assert!(store.load().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn create_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::new(dir.path());
        let first = SigningAuthority::generate_root(&RootOptions::default(), &SystemClock)
            .unwrap()
            .to_stored();
        let second = SigningAuthority::generate_root(&RootOptions::default(), &SystemClock)
            .unwrap()
            .to_stored();
        assert!(matches!(
            store.create(&first).await.unwrap(),
            Created::Stored
        ));
        match store.create(&second).await.unwrap() {
            Created::AlreadyExists(found) => {
                assert_eq!(found.certificate_pem(), first.certificate_pem());
            }
            Created::Stored => panic!("second create overwrote the first"),
        }
        let on_disk = fs::read_to_string(store.certificate_path()).unwrap();
        assert_eq!(on_disk, first.certificate_pem());
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn debug_hides_the_key() {
        let stored = StoredCa::new(
            "cert".into(),
            Zeroizing::new("-----BEGIN PRIVATE KEY-----\nSECRET\n".into()),
        );
        assert!(!format!("{stored:?}").contains("SECRET"));
    }

    #[tokio::test]
    async fn a_key_open_to_others_is_refused_with_the_chmod_that_fixes_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::new(dir.path());
        let root = SigningAuthority::generate_root(&RootOptions::default(), &SystemClock)
            .unwrap()
            .to_stored();
        store.create(&root).await.unwrap();
        let key = store.key_path();
        let before = fs::read(&key).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            let err = store.load().await.unwrap_err();
            assert!(matches!(err, StoreError::KeyNotPrivate { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("chmod 600 {}", key.display()))
                    && text.contains(&format!("{mode:04o}")),
                "{text}"
            );
            assert_eq!(fs::read(&key).unwrap(), before);
            assert_eq!(
                fs::metadata(&key).unwrap().permissions().mode() & 0o777,
                mode,
                "the mode was left as found"
            );
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(store.load().await.unwrap().is_some());
    }

    #[test]
    fn a_directory_where_the_key_should_be_is_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("private.key")).unwrap();
        let err = check_store_file(&dir.path().join("private.key"), true).unwrap_err();
        assert!(
            err.to_string()
                .contains("is a directory, not a regular file"),
            "{err}"
        );
    }
}
