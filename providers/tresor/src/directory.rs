//! [`DirectoryStore`]: the CA kept as two files in a directory, written so that a reader never
//! sees half a CA and concurrent creators cannot overwrite each other.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::{AuthorityError, CaProblem};
use crate::material::{StoreError, StoredCa};
use crate::rotation::{AckReport, AckReports, Rotation, RotationChange, Swap};
use crate::store::{CaStore, Created, JwtKeysDigest, JwtKeysSwap, StoredJwtKeys};

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
    /// The JWT-SVID signing keys' file name (mode 0600).
    pub const JWT_KEYS_FILE: &'static str = "jwt-keys.json";

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

    /// The JWT keys file, checked like the CA key (a regular file, not readable by others).
    fn read_jwt_keys(&self) -> Result<Option<StoredJwtKeys>, StoreError> {
        let path = self.dir.join(Self::JWT_KEYS_FILE);
        if !exists(&path)? {
            return Ok(None);
        }
        check_store_file(&path, true)?;
        let contents = fs::read(&path).map_err(|source| StoreError::Io {
            action: "read",
            path,
            source,
        })?;
        Ok(Some(StoredJwtKeys {
            contents: Zeroizing::new(contents),
        }))
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
        create_private_dir(&self.dir)?;
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
        create_private_dir(&dir)?;
        let name = format!("{}.json", AckReport::key_safe(&report.replica));
        replace_file_in(&dir, &name, &report.to_json(), 0o644)
    }

    async fn load_jwt_keys(&self) -> Result<Option<StoredJwtKeys>, StoreError> {
        if !exists(&self.dir)? {
            return Ok(None);
        }
        let _lock = self.lock_shared()?;
        self.read_jwt_keys()
    }

    async fn swap_jwt_keys(
        &self,
        expected: Option<&JwtKeysDigest>,
        contents: &[u8],
    ) -> Result<JwtKeysSwap, StoreError> {
        create_private_dir(&self.dir)?;
        let _lock = self.lock_exclusive()?;
        let current = self.read_jwt_keys()?;
        if current.as_ref().map(StoredJwtKeys::digest).as_ref() != expected {
            return Ok(JwtKeysSwap::Stale(current));
        }
        self.replace_file(Self::JWT_KEYS_FILE, contents, 0o600)?;
        Ok(JwtKeysSwap::Stored)
    }

    async fn ack_reports(&self) -> Result<AckReports, StoreError> {
        let dir = self.dir.join(Self::ACKS_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(AckReports::default()),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path: dir,
                    source,
                });
            }
        };
        let mut reports = AckReports::default();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") {
                continue;
            }
            let path = entry.path();
            match read_report(&path) {
                Ok(bytes) => reports.push(&path.display().to_string(), &bytes),
                Err(why) => reports
                    .unreadable
                    .push(format!("{}: {why}", path.display())),
            }
        }
        Ok(reports)
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

/// A report file's contents, at most one byte over [`AckReport::MAX_BYTES`] (enough to tell
/// it is too large): never a FIFO or device (which could block or never end).
fn read_report(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    check_store_file(path, false).map_err(|e| match e {
        StoreError::NotRegularFile { kind, .. } => format!("a {kind}, not a regular file"),
        other => other.to_string(),
    })?;
    let file = File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut bytes = Vec::new();
    file.take(AckReport::MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    Ok(bytes)
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

/// Creates `dir` (and its parents) with mode 0700 when missing.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::Io {
            action: "create the directory",
            path: dir.to_path_buf(),
            source,
        })
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
    use crate::{RootOptions, SigningAuthority};
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
