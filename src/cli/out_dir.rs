//! `meshca issue --out-dir`: `cert.pem`, `key.pem` and `ca.pem` replaced together or not at
//! all.
//!
//! The three files live in a version directory `..meshca-<time>-<random>`; `..data` is a
//! symlink to the current version, and `cert.pem`, `key.pem`, `ca.pem` are symlinks to
//! `..data/<name>` (the layout kubelet gives Secret volumes, which Envoy's `watched_directory`
//! and most file watchers expect). A new set is written and synced into a fresh version
//! directory, then one `rename` of a new `..data` link over the old one switches all three at
//! once: a reader, or a crash, sees the old set or the new one — never a key from one and a
//! certificate from the other. Anything that fails before that rename leaves the old set as it
//! was; the version directory it was writing is removed.
//!
//! A directory written by an older meshca holds three regular files: they are first moved,
//! unchanged, into a version directory of their own (each step keeps the same contents behind
//! every name), and the new set replaces them as above.
//!
//! Writers of one directory take an exclusive `flock` on `..meshca.lock` in it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context as _, bail};

/// The link to the current version directory.
const DATA_LINK: &str = "..data";
/// Prefix of the version directories (and of temporary links).
const VERSION_PREFIX: &str = "..meshca-";
/// The writers' lock file.
const LOCK_FILE: &str = "..meshca.lock";

/// One file of the set: its name in the directory, contents and mode.
#[derive(Debug, Clone, Copy)]
pub struct OutFile<'a> {
    /// `cert.pem`, `key.pem`, `ca.pem`.
    pub name: &'static str,
    /// What to write.
    pub contents: &'a [u8],
    /// Its permission bits (0600 for a key).
    pub mode: u32,
}

/// An output directory, checked: see the module docs.
#[derive(Debug)]
pub struct OutDir {
    dir: PathBuf,
    names: Vec<&'static str>,
}

impl OutDir {
    /// Checks, without changing anything, that `dir` is (or can become) a directory and that
    /// each of `names` in it is absent, a file or a symlink — before anything is issued, so a
    /// bad directory costs nothing. [`write`](Self::write) creates and locks it.
    pub fn prepare(dir: &Path, names: &[&'static str]) -> anyhow::Result<Self> {
        let out = Self {
            dir: dir.to_path_buf(),
            names: names.to_vec(),
        };
        // The nearest part of the path that exists must be a directory.
        let existing = dir
            .ancestors()
            .find(|p| p.as_os_str().is_empty() || fs::symlink_metadata(p).is_ok())
            .unwrap_or(Path::new("."));
        let existing = if existing.as_os_str().is_empty() {
            Path::new(".")
        } else {
            existing
        };
        let is_dir = fs::metadata(existing)
            .with_context(|| format!("cannot inspect {}", existing.display()))?
            .is_dir();
        if !is_dir {
            bail!(
                "cannot use --out-dir {}: {} is not a directory. Nothing was written",
                dir.display(),
                existing.display()
            );
        }
        if existing == dir {
            out.check_names()?;
        }
        Ok(out)
    }

    /// Each name absent, a file or a symlink.
    fn check_names(&self) -> anyhow::Result<()> {
        for name in &self.names {
            let path = self.dir.join(name);
            match fs::symlink_metadata(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot inspect {}", path.display()));
                }
                Ok(meta) if meta.is_file() || meta.is_symlink() => {}
                Ok(meta) => bail!(
                    "{} is a {}, not a file: meshca issue writes cert.pem, key.pem and ca.pem in \
                     {}; move it away or choose another --out-dir. Nothing was written",
                    path.display(),
                    if meta.is_dir() {
                        "directory"
                    } else {
                        "special file"
                    },
                    self.dir.display()
                ),
            }
        }
        Ok(())
    }

    /// Creates the directory if needed and takes its lock (released when the file is
    /// dropped).
    fn create_and_lock(&self) -> anyhow::Result<File> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .with_context(|| format!("cannot create --out-dir {}", self.dir.display()))?;
        let lock_path = self.dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| {
                format!(
                    "cannot write in --out-dir {}: choose a directory this user may write",
                    self.dir.display()
                )
            })?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        Ok(lock)
    }

    /// The path `name` is visible at.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Replaces the set with `files` (whose names are those given to
    /// [`prepare`](Self::prepare)), all at once.
    pub fn write(&self, files: &[OutFile<'_>]) -> anyhow::Result<()> {
        let _lock = self.create_and_lock()?;
        // Again under the lock: the directory may have changed while the certificate was made.
        self.check_names()?;
        let version = self.new_version_dir()?;
        let written = self
            .fill(&version, files)
            .and_then(|()| self.adopt_unversioned_files());
        if let Err(error) = written {
            let _ = fs::remove_dir_all(self.dir.join(&version));
            return Err(error);
        }
        if let Err(error) = self.replace_with_link(DATA_LINK, Path::new(&version)) {
            let _ = fs::remove_dir_all(self.dir.join(&version));
            return Err(error);
        }
        // The new set is in place (even if what follows fails, `version` must stay).
        sync_dir(&self.dir)?;
        self.link_names()?;
        self.remove_versions_except(&version);
        sync_dir(&self.dir)
    }

    /// A new, empty version directory; its name relative to the output directory.
    fn new_version_dir(&self) -> anyhow::Result<String> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let name = format!("{VERSION_PREFIX}{nanos}-{:08x}", rand::random::<u32>());
        fs::DirBuilder::new()
            .mode(0o755)
            .create(self.dir.join(&name))
            .with_context(|| format!("cannot create a directory in {}", self.dir.display()))?;
        Ok(name)
    }

    fn fill(&self, version: &str, files: &[OutFile<'_>]) -> anyhow::Result<()> {
        let version = self.dir.join(version);
        for file in files {
            let path = version.join(file.name);
            let result = (|| {
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(file.mode)
                    .open(&path)?;
                // The umask may have taken bits away; set exactly what was asked.
                out.set_permissions(fs::Permissions::from_mode(file.mode))?;
                out.write_all(file.contents)?;
                out.sync_all()
            })();
            result.with_context(|| format!("cannot write {}", path.display()))?;
        }
        sync_dir(&version)
    }

    /// Moves a set written without the versioned layout (regular files) into a version
    /// directory of its own, so that the swap that follows replaces it as a whole. Each name
    /// keeps its contents throughout.
    fn adopt_unversioned_files(&self) -> anyhow::Result<()> {
        let foreign: Vec<&str> = self
            .names
            .iter()
            .copied()
            .filter(|name| !self.is_linked(name))
            .collect();
        let present: Vec<&str> = foreign
            .iter()
            .copied()
            .filter(|name| fs::symlink_metadata(self.dir.join(name)).is_ok())
            .collect();
        if present.is_empty() {
            return Ok(());
        }
        let old = self.new_version_dir()?;
        let copied = (|| -> anyhow::Result<()> {
            for name in &present {
                let from = self.dir.join(name);
                let to = self.dir.join(&old).join(name);
                fs::copy(&from, &to).with_context(|| {
                    format!("cannot keep {} while replacing it", from.display())
                })?;
                File::open(&to)
                    .and_then(|f| f.sync_all())
                    .with_context(|| format!("cannot sync {}", to.display()))?;
            }
            sync_dir(&self.dir.join(&old))?;
            self.point_data_at(&old)
        })();
        if let Err(error) = copied {
            let _ = fs::remove_dir_all(self.dir.join(&old));
            return Err(error);
        }
        // From here on names may point into `old`: it stays, whatever fails.
        self.link_names()
    }

    /// Whether `name` is already the link `..data/<name>`.
    fn is_linked(&self, name: &str) -> bool {
        fs::read_link(self.dir.join(name))
            .is_ok_and(|target| target == Path::new(DATA_LINK).join(name))
    }

    /// Points `..data` at `version` with one rename.
    fn point_data_at(&self, version: &str) -> anyhow::Result<()> {
        self.replace_with_link(DATA_LINK, Path::new(version))?;
        sync_dir(&self.dir)
    }

    /// Makes every name the link `..data/<name>`.
    fn link_names(&self) -> anyhow::Result<()> {
        for name in &self.names {
            if !self.is_linked(name) {
                self.replace_with_link(name, &Path::new(DATA_LINK).join(name))?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Creates a symlink to `target` under a temporary name and renames it over `name`.
    fn replace_with_link(&self, name: &str, target: &Path) -> anyhow::Result<()> {
        let temp = self.dir.join(format!(
            "{VERSION_PREFIX}link-{:08x}",
            rand::random::<u32>()
        ));
        let path = self.dir.join(name);
        std::os::unix::fs::symlink(target, &temp)
            .and_then(|()| fs::rename(&temp, &path))
            .inspect_err(|_| {
                let _ = fs::remove_file(&temp);
            })
            .with_context(|| format!("cannot replace {}", path.display()))
    }

    /// Removes version directories and temporary links other than `keep` (left behind by
    /// the previous set, or by an interrupted run). Best effort: the new set is already live.
    fn remove_versions_except(&self, keep: &str) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with(VERSION_PREFIX) || name == keep {
                continue;
            }
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => {
                    let _ = fs::remove_dir_all(&path);
                }
                Ok(_) => {
                    let _ = fs::remove_file(&path);
                }
                Err(_) => {}
            }
        }
    }
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NAMES: [&str; 3] = ["cert.pem", "key.pem", "ca.pem"];

    fn set(tag: &str) -> Vec<(String, u32)> {
        NAMES
            .iter()
            .map(|n| {
                (
                    format!("{tag} {n}"),
                    if *n == "key.pem" { 0o600 } else { 0o644 },
                )
            })
            .collect()
    }

    fn write(dir: &Path, tag: &str) -> anyhow::Result<()> {
        let contents = set(tag);
        let files: Vec<OutFile<'_>> = NAMES
            .iter()
            .zip(&contents)
            .map(|(name, (text, mode))| OutFile {
                name,
                contents: text.as_bytes(),
                mode: *mode,
            })
            .collect();
        OutDir::prepare(dir, &NAMES)?.write(&files)
    }

    fn read(dir: &Path) -> Vec<String> {
        NAMES
            .iter()
            .map(|n| fs::read_to_string(dir.join(n)).unwrap())
            .collect()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_new_set_replaces_the_old_one_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        write(&dir, "one").unwrap();
        assert_eq!(read(&dir), ["one cert.pem", "one key.pem", "one ca.pem"]);
        let key_mode = fs::metadata(dir.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        write(&dir, "two").unwrap();
        assert_eq!(read(&dir), ["two cert.pem", "two key.pem", "two ca.pem"]);
        // One version directory is left: the live one.
        let versions: Vec<_> = entries(&dir)
            .into_iter()
            .filter(|n| n.starts_with(VERSION_PREFIX))
            .collect();
        assert_eq!(versions.len(), 1, "{:?}", entries(&dir));
    }

    #[test]
    fn a_failed_swap_leaves_regular_files_from_an_older_meshca_as_they_were() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for (name, (text, _)) in NAMES.iter().zip(set("old")) {
            fs::write(dir.join(name), text).unwrap();
        }
        // `..data` cannot be replaced by a link: the swap fails after the new files are written.
        fs::create_dir(dir.join(DATA_LINK)).unwrap();
        fs::write(dir.join(DATA_LINK).join("x"), "x").unwrap();
        let err = write(dir, "new").unwrap_err();
        assert!(format!("{err:#}").contains("..data"), "{err:#}");
        assert_eq!(read(dir), ["old cert.pem", "old key.pem", "old ca.pem"]);
        for name in NAMES {
            assert!(fs::symlink_metadata(dir.join(name)).unwrap().is_file());
        }
        assert!(
            !entries(dir).iter().any(|n| n.starts_with(VERSION_PREFIX)),
            "{:?}",
            entries(dir)
        );

        // Once the obstacle is gone, the old files are adopted and replaced.
        fs::remove_dir_all(dir.join(DATA_LINK)).unwrap();
        write(dir, "new").unwrap();
        assert_eq!(read(dir), ["new cert.pem", "new key.pem", "new ca.pem"]);
    }

    #[test]
    fn a_directory_in_the_way_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write(dir, "one").unwrap();
        let before = entries(dir);
        fs::remove_file(dir.join("ca.pem")).unwrap();
        fs::create_dir(dir.join("ca.pem")).unwrap();
        let err = OutDir::prepare(dir, &NAMES).unwrap_err().to_string();
        assert!(err.contains("ca.pem is a directory"), "{err}");
        assert_eq!(entries(dir), before);

        // Checking creates nothing; a file on the path is named.
        let absent = dir.join("new").join("sub");
        OutDir::prepare(&absent, &NAMES).unwrap();
        assert!(!dir.join("new").exists());
        let err = OutDir::prepare(&dir.join("cert.pem").join("sub"), &NAMES)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }
}
