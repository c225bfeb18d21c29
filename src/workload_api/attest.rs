//! Who is calling: the caller's selectors, read from its Unix socket connection by an
//! [`Attestor`], matched against the configured [`RegistrationEntry`]s.
//!
//! [`UnixAttestor`] gives SPIRE's Unix workload attestor's selectors: `unix:uid`, `unix:gid`
//! from the kernel's peer credentials (SO_PEERCRED, taken when the connection was made),
//! `unix:path` from `/proc/<pid>/exe`, `unix:sha256` of that executable.
//! [`KubernetesAttestor`](super::kubernetes::KubernetesAttestor) gives SPIRE's Kubernetes
//! ones: pid → `/proc/<pid>/cgroup` → pod UID → the pod on this node from the API server →
//! `k8s:ns`, `k8s:sa`, `k8s:pod-uid`, `k8s:pod-name`, `k8s:pod-label`. [`Attestors`] runs
//! several (`workloadApi.attestors`) and hands on every selector they found.

use std::collections::HashMap;
use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use meshca_provider::SpiffeId;

/// The kernel-reported credentials of a Unix socket peer, taken when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Process id, when the kernel reports one.
    pub pid: Option<i32>,
}

/// One fact about a caller, in SPIRE's `<type>:<key>:<value>` form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Selector {
    /// `unix:uid:<n>`: the process's effective uid.
    Uid(u32),
    /// `unix:gid:<n>`: the process's effective gid.
    Gid(u32),
    /// `unix:path:<path>`: the process's executable, as `/proc/<pid>/exe` names it.
    Path(PathBuf),
    /// `unix:sha256:<hex>`: the SHA-256 of the process's executable.
    Sha256([u8; 32]),
    /// `k8s:ns:<namespace>`: the namespace of the process's pod.
    K8sNamespace(String),
    /// `k8s:sa:<service account>`: the service account its pod runs as.
    K8sServiceAccount(String),
    /// `k8s:pod-uid:<uid>`: its pod's UID.
    K8sPodUid(String),
    /// `k8s:pod-name:<name>`: its pod's name.
    K8sPodName(String),
    /// `k8s:pod-label:<key>:<value>`: a label of its pod (key, value), bounded by
    /// [`Selector::MAX_LABEL_KEY_LEN`] and [`Selector::MAX_LABEL_VALUE_LEN`].
    K8sPodLabel(String, String),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uid(uid) => write!(f, "unix:uid:{uid}"),
            Self::Gid(gid) => write!(f, "unix:gid:{gid}"),
            Self::Path(path) => write!(f, "unix:path:{}", path.display()),
            Self::Sha256(digest) => {
                f.write_str("unix:sha256:")?;
                digest.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            Self::K8sNamespace(namespace) => write!(f, "k8s:ns:{namespace}"),
            Self::K8sServiceAccount(account) => write!(f, "k8s:sa:{account}"),
            Self::K8sPodUid(uid) => write!(f, "k8s:pod-uid:{uid}"),
            Self::K8sPodName(name) => write!(f, "k8s:pod-name:{name}"),
            Self::K8sPodLabel(key, value) => write!(f, "k8s:pod-label:{key}:{value}"),
        }
    }
}

/// Why a selector in the configuration cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "selector {text:?} {reason}; meshca understands unix:uid:<n>, unix:gid:<n>, \
     unix:path:<absolute path>, unix:sha256:<64 hex digits>, k8s:ns:<namespace>, \
     k8s:sa:<service account>, k8s:pod-uid:<uid>, k8s:pod-name:<name> and \
     k8s:pod-label:<key>:<value>"
)]
pub struct SelectorError {
    text: String,
    reason: &'static str,
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| SelectorError {
            text: text.to_owned(),
            reason,
        };
        if let Some(rest) = text.strip_prefix("k8s:") {
            let (key, value) = rest.split_once(':').ok_or_else(|| fail("has no value"))?;
            if value.is_empty() {
                return Err(fail("has an empty value"));
            }
            let value = value.to_owned();
            return match key {
                "ns" => Ok(Self::K8sNamespace(value)),
                "sa" => Ok(Self::K8sServiceAccount(value)),
                "pod-uid" => Ok(Self::K8sPodUid(value.to_ascii_lowercase())),
                "pod-name" => Ok(Self::K8sPodName(value)),
                "pod-label" => {
                    let (key, label) = value
                        .split_once(':')
                        .ok_or_else(|| fail("has no label value (k8s:pod-label:<key>:<value>)"))?;
                    if key.is_empty() {
                        return Err(fail("has an empty label key"));
                    }
                    if label.contains(':') {
                        return Err(fail(
                            "has a ':' in its label value, which no Kubernetes label has",
                        ));
                    }
                    if !Self::label_fits(key, label) {
                        return Err(fail(
                            "has a label longer than Kubernetes allows (key 317 bytes, value 63)",
                        ));
                    }
                    Ok(Self::K8sPodLabel(key.to_owned(), label.to_owned()))
                }
                _ => Err(fail("is not a selector meshca knows")),
            };
        }
        let Some(rest) = text.strip_prefix("unix:") else {
            return Err(fail("is neither a unix: nor a k8s: selector"));
        };
        let (key, value) = rest.split_once(':').ok_or_else(|| fail("has no value"))?;
        match key {
            "uid" => value
                .parse()
                .map(Self::Uid)
                .map_err(|_| fail("has a uid that is not a number")),
            "gid" => value
                .parse()
                .map(Self::Gid)
                .map_err(|_| fail("has a gid that is not a number")),
            "path" if value.starts_with('/') => Ok(Self::Path(PathBuf::from(value))),
            "path" => Err(fail("has a path that is not absolute")),
            "sha256" => {
                let mut digest = [0u8; 32];
                let bytes = value.as_bytes();
                if bytes.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(fail("has a digest that is not 64 hex digits"));
                }
                for (i, pair) in bytes.chunks(2).enumerate() {
                    let hex = std::str::from_utf8(pair).map_err(|_| fail("is not ASCII"))?;
                    digest[i] = u8::from_str_radix(hex, 16).map_err(|_| fail("is not hex"))?;
                }
                Ok(Self::Sha256(digest))
            }
            _ => Err(fail("is not a selector meshca knows")),
        }
    }
}

/// A registration entry: callers matching every selector get the SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationEntry {
    /// The identity given.
    pub spiffe_id: SpiffeId,
    /// All of them must match.
    pub selectors: Vec<Selector>,
    /// Sent with the SVID (`hint`), possibly empty.
    pub hint: String,
}

/// The entries a caller with `selectors` matches, in configuration order, each SPIFFE ID once.
pub fn matching<'e>(
    entries: &'e [RegistrationEntry],
    selectors: &[Selector],
) -> Vec<&'e RegistrationEntry> {
    first_per_identity(entries.iter().filter(|e| matches(e, selectors)))
}

fn matches(entry: &RegistrationEntry, selectors: &[Selector]) -> bool {
    entry.selectors.iter().all(|s| selectors.contains(s))
}

fn first_per_identity<'e>(
    candidates: impl Iterator<Item = &'e RegistrationEntry>,
) -> Vec<&'e RegistrationEntry> {
    let mut matched: Vec<&RegistrationEntry> = Vec::new();
    for entry in candidates {
        if !matched.iter().any(|m| m.spiffe_id == entry.spiffe_id) {
            matched.push(entry);
        }
    }
    matched
}

/// The registration entries, indexed by selector: a caller's few selectors lead to the entries
/// that name one of them, so matching costs what the caller's entries cost, not a scan of every
/// entry (10,000 entries made each call scan 10,000; `examples/sds_load --api workload`).
#[derive(Debug, Clone)]
pub struct EntryIndex {
    entries: std::sync::Arc<[RegistrationEntry]>,
    by_selector: std::collections::HashMap<Selector, Vec<usize>>,
}

impl EntryIndex {
    /// Indexes `entries` (each has at least one selector: the configuration requires it).
    pub fn new(entries: Vec<RegistrationEntry>) -> Self {
        let mut by_selector: std::collections::HashMap<Selector, Vec<usize>> =
            std::collections::HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            for selector in &entry.selectors {
                let indices = by_selector.entry(selector.clone()).or_default();
                if indices.last() != Some(&i) {
                    indices.push(i);
                }
            }
        }
        Self {
            entries: entries.into(),
            by_selector,
        }
    }

    /// As [`matching`]: the entries a caller with `selectors` matches, in configuration order,
    /// each SPIFFE ID once.
    pub fn matching(&self, selectors: &[Selector]) -> Vec<&RegistrationEntry> {
        let mut candidates: Vec<usize> = selectors
            .iter()
            .filter_map(|s| self.by_selector.get(s))
            .flatten()
            .copied()
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        first_per_identity(
            candidates
                .into_iter()
                .map(|i| &self.entries[i])
                .filter(|e| matches(e, selectors)),
        )
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Why a caller could not be attested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The connection is not a Unix socket, or the kernel reported no credentials.
    #[error("the caller's credentials are unknown: {0}")]
    NoCredentials(&'static str),
}

/// Reads a caller's selectors from its connection.
#[async_trait]
pub trait Attestor: Send + Sync + 'static {
    /// The selectors of the process behind `peer`. Selectors that cannot be read (the process
    /// has exited, `/proc` is not readable) are left out, so entries needing them do not match.
    async fn attest(&self, peer: PeerCredentials) -> Result<Vec<Selector>, AttestError>;
}

impl Selector {
    /// The longest label key Kubernetes accepts: a DNS subdomain prefix (253), `/`, a name (63).
    pub const MAX_LABEL_KEY_LEN: usize = 253 + 1 + 63;
    /// The longest label value Kubernetes accepts.
    pub const MAX_LABEL_VALUE_LEN: usize = 63;

    /// Whether a pod label `key`=`value` is within what Kubernetes accepts, and so may be a
    /// `k8s:pod-label` selector (what the attestor keeps and what an entry may name).
    pub fn label_fits(key: &str, value: &str) -> bool {
        !key.is_empty()
            && key.len() <= Self::MAX_LABEL_KEY_LEN
            && value.len() <= Self::MAX_LABEL_VALUE_LEN
            && !key.contains(':')
            && !value.contains(':')
    }

    /// Whether only the Kubernetes attestor gives it (`k8s:`).
    pub fn is_kubernetes(&self) -> bool {
        matches!(
            self,
            Self::K8sNamespace(_)
                | Self::K8sServiceAccount(_)
                | Self::K8sPodUid(_)
                | Self::K8sPodName(_)
                | Self::K8sPodLabel(..)
        )
    }
}

/// Several attestors (`workloadApi.attestors`), asked in turn: the caller's selectors are all
/// of theirs. One that fails fails the call (the caller is not half-attested).
#[derive(Clone)]
pub struct Attestors(pub Vec<std::sync::Arc<dyn Attestor>>);

impl fmt::Debug for Attestors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Attestors").field(&self.0.len()).finish()
    }
}

#[async_trait]
impl Attestor for Attestors {
    async fn attest(&self, peer: PeerCredentials) -> Result<Vec<Selector>, AttestError> {
        let mut selectors = Vec::new();
        for attestor in &self.0 {
            selectors.extend(attestor.attest(peer).await?);
        }
        Ok(selectors)
    }
}

/// SPIRE's Unix workload attestor: uid and gid always; the executable's path when the
/// process can be read in `/proc` (meshca needs to be root, or the caller's user, to read
/// another process's `exe` link); its SHA-256 only when `hash_executables` (some entry uses
/// `unix:sha256`).
///
/// The `/proc` reads (the process's owner, its `exe` link, its start time) are made on the
/// calling task: procfs answers them from kernel memory, never from a disk, in microseconds,
/// while a blocking-pool thread per call cost more than the reads themselves (10,000 callers at
/// once started hundreds of threads: `docs/BENCHMARKS.md`, workload-api-bench). Hashing reads
/// the executable from its file system, so it runs on the blocking pool, and only once per
/// process and file: the digest is kept under the process's pid and start time and the file's
/// identity, so a pid reused by a new process, or a process that executes another file (or the
/// same file rewritten), is hashed afresh. A file changed less
/// than [`SETTLED`] before it was hashed is hashed on every call: file times are coarse (a
/// clock tick), and a rewrite within the same tick would leave them as they were.
#[derive(Debug, Clone)]
pub struct UnixAttestor {
    /// Where `/proc` is (tests point it elsewhere).
    pub proc_root: PathBuf,
    /// Whether to compute `unix:sha256`.
    pub hash_executables: bool,
    digests: Arc<ExecutableDigests>,
    /// How long before hashing a file must have last changed for its digest to be kept.
    settled: Duration,
}

/// See [`UnixAttestor`]: far longer than a file-time tick.
const SETTLED: Duration = Duration::from_secs(1);

impl UnixAttestor {
    /// Reads the processes under `proc_root`, hashing their executables if `hash_executables`.
    pub fn new(proc_root: impl Into<PathBuf>, hash_executables: bool) -> Self {
        Self {
            proc_root: proc_root.into(),
            hash_executables,
            digests: Arc::default(),
            settled: SETTLED,
        }
    }

    /// Reads `/proc`; hashes executables when any of `entries` needs it.
    pub fn for_entries(entries: &[RegistrationEntry]) -> Self {
        Self::new(
            "/proc",
            entries
                .iter()
                .flat_map(|e| &e.selectors)
                .any(|s| matches!(s, Selector::Sha256(_))),
        )
    }

    /// The SHA-256 of the file `process` (`/proc/<pid>`) executes, from the cache when this
    /// process ran this very file before, else read on the blocking pool.
    async fn digest(&self, process: &Path, key: ProcessExecutable) -> Result<[u8; 32], String> {
        if let Some(digest) = self.digests.cached(&key) {
            return Ok(digest);
        }
        let exe = process.join("exe");
        let hashed_at = SystemTime::now();
        let read = tokio::task::spawn_blocking(move || hash_file(&exe, &key)).await;
        let digest = read.map_err(|e| format!("the hashing task failed: {e}"))??;
        if hashed_at
            .checked_sub(self.settled)
            .is_some_and(|settled| key.changed_before(settled))
        {
            self.digests.remember(key, digest);
        }
        Ok(digest)
    }
}

#[async_trait]
impl Attestor for UnixAttestor {
    async fn attest(&self, peer: PeerCredentials) -> Result<Vec<Selector>, AttestError> {
        // Room for all four (uid, gid, path, sha256): growing the vector mid-attestation was
        // ≈ 2% of the server's CPU for a Workload API stream's first SVID (docs/BENCHMARKS.md).
        let mut selectors = Vec::with_capacity(4);
        selectors.extend([Selector::Uid(peer.uid), Selector::Gid(peer.gid)]);
        let Some(pid) = peer.pid.filter(|pid| *pid > 0) else {
            return Ok(selectors);
        };
        let process = self.proc_root.join(pid.to_string());
        let (path, key) = match executable(&process, pid, peer.uid, self.hash_executables) {
            Ok(read) => read,
            Err(reason) => {
                tracing::debug!(pid, %reason, "Workload API caller: no unix:path selector");
                return Ok(selectors);
            }
        };
        selectors.push(Selector::Path(path));
        if let Some(key) = key {
            match self.digest(&process, key).await {
                Ok(digest) => selectors.push(Selector::Sha256(digest)),
                Err(reason) => {
                    tracing::debug!(pid, %reason, "Workload API caller: no unix:sha256 selector");
                }
            }
        }
        Ok(selectors)
    }
}

/// One process running one file: what a cached digest is kept under. The pid and the start
/// time (`/proc/<pid>/stat`, clock ticks after boot) tell a process from a later one given
/// the same pid; the executable's device, inode, size and modification and change times tell
/// the file it runs now from another one it may have executed since (`execve` keeps the pid
/// and the start time), and from the same file rewritten (which moves its change time, and
/// no caller can set that back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ProcessExecutable {
    pid: i32,
    start_time: u64,
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl ProcessExecutable {
    fn new(pid: i32, start_time: u64, file: &std::fs::Metadata) -> Self {
        Self {
            pid,
            start_time,
            device: file.dev(),
            inode: file.ino(),
            size: file.size(),
            modified: (file.mtime(), file.mtime_nsec()),
            changed: (file.ctime(), file.ctime_nsec()),
        }
    }

    fn same_file(&self, file: &std::fs::Metadata) -> bool {
        *self == Self::new(self.pid, self.start_time, file)
    }

    /// Whether the file last changed before `time`.
    fn changed_before(&self, time: SystemTime) -> bool {
        let (seconds, nanoseconds) = self.changed;
        match (u64::try_from(seconds), u32::try_from(nanoseconds)) {
            (Ok(seconds), Ok(nanoseconds)) => {
                SystemTime::UNIX_EPOCH + Duration::new(seconds, nanoseconds) < time
            }
            // Before 1970: long settled.
            (Err(_), _) => true,
            (Ok(_), Err(_)) => false,
        }
    }
}

/// Digests of the executables of processes already attested, at most
/// [`MAX_CACHED_DIGESTS`]: past that an arbitrary one is dropped (and hashed again if its
/// process calls again).
#[derive(Debug, Default)]
struct ExecutableDigests {
    digests: Mutex<HashMap<ProcessExecutable, [u8; 32]>>,
}

/// Processes whose executable's digest is kept (40 bytes of key and 32 of digest each).
const MAX_CACHED_DIGESTS: usize = 4096;

impl ExecutableDigests {
    fn cached(&self, key: &ProcessExecutable) -> Option<[u8; 32]> {
        self.lock().get(key).copied()
    }

    fn remember(&self, key: ProcessExecutable, digest: [u8; 32]) {
        let mut digests = self.lock();
        if digests.len() >= MAX_CACHED_DIGESTS && !digests.contains_key(&key) {
            let evicted = digests.keys().next().copied();
            if let Some(evicted) = evicted {
                digests.remove(&evicted);
            }
        }
        digests.insert(key, digest);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProcessExecutable, [u8; 32]>> {
        // A panic while holding the lock cannot leave the map half-written.
        self.digests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Checks that `/proc/<pid>` (`process`) still belongs to the caller's `uid`: a pid whose
/// process has exited and been reused by another user's is not the caller.
pub(super) fn owned_by(process: &Path, uid: u32) -> Result<(), String> {
    let owner = std::fs::metadata(process)
        .map_err(|e| format!("{}: {e}", process.display()))?
        .uid();
    if owner == uid {
        Ok(())
    } else {
        Err(format!(
            "{} belongs to uid {owner}, not the caller's {uid}: the process has gone",
            process.display()
        ))
    }
}
/// The executable of the process at `process` (`/proc/<pid>`), and, if `hash`, what its
/// digest is kept under. The process must still belong to `uid` (a pid reused by another
/// user's process after the caller exited is not read as the caller's).
fn executable(
    process: &Path,
    pid: i32,
    uid: u32,
    hash: bool,
) -> Result<(PathBuf, Option<ProcessExecutable>), String> {
    let started = if hash {
        Some(start_time(process)?)
    } else {
        None
    };
    owned_by(process, uid)?;
    let exe = process.join("exe");
    let path = std::fs::read_link(&exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    let Some(started) = started else {
        return Ok((path, None));
    };
    // `metadata` follows the link to the very file the process runs.
    let file = std::fs::metadata(&exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    if start_time(process)? != started {
        return Err(format!(
            "{} is another process than when it was first read",
            process.display()
        ));
    }
    Ok((path, Some(ProcessExecutable::new(pid, started, &file))))
}

/// When the process at `process` started (`/proc/<pid>/stat` field 22, clock ticks after
/// boot): with the pid, what tells it from a later process given the same pid.
fn start_time(process: &Path) -> Result<u64, String> {
    let path = process.join("stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The command name (field 2) is in parentheses and may hold spaces and parentheses: the
    // fields that follow come after the last `)`, the state (field 3) first.
    stat.rsplit_once(')')
        .and_then(|(_, fields)| fields.split_ascii_whitespace().nth(22 - 3))
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| format!("{}: no start time in {stat:?}", path.display()))
}

/// The SHA-256 of `exe` (`/proc/<pid>/exe`), which must still be the file `key` names.
fn hash_file(exe: &Path, key: &ProcessExecutable) -> Result<[u8; 32], String> {
    // Opening `exe` opens the very file the process runs, even if the path was replaced since.
    let mut file = std::fs::File::open(exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    let opened = file
        .metadata()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    if !key.same_file(&opened) {
        return Err(format!(
            "{} is another file than when it was first read",
            exe.display()
        ));
    }
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        if n == 0 {
            break;
        }
        context.update(&buffer[..n]);
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(context.finish().as_ref());
    Ok(digest)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use meshca_provider::TrustDomain;

    fn entry(id: &str, selectors: &[&str]) -> RegistrationEntry {
        RegistrationEntry {
            spiffe_id: SpiffeId::from_short(id, &TrustDomain::default()).unwrap(),
            selectors: selectors.iter().map(|s| s.parse().unwrap()).collect(),
            hint: String::new(),
        }
    }

    #[test]
    fn the_index_matches_what_a_scan_of_every_entry_matches() {
        let entries = vec![
            entry("a/one", &["unix:uid:1", "unix:path:/bin/one"]),
            entry("a/two", &["unix:gid:2"]),
            entry("a/one", &["unix:uid:1"]),
            entry("a/three", &["unix:uid:1", "unix:gid:3"]),
            entry("a/four", &["unix:uid:4"]),
            entry("a/two", &["unix:uid:1", "unix:gid:2"]),
        ];
        let index = EntryIndex::new(entries.clone());
        assert_eq!(index.len(), 6);
        let callers: [&[&str]; 5] = [
            &["unix:uid:1", "unix:gid:2", "unix:path:/bin/one"],
            &["unix:uid:1", "unix:gid:3"],
            &["unix:uid:4", "unix:gid:2"],
            &["unix:uid:5", "unix:gid:5"],
            &["unix:uid:1"],
        ];
        for caller in callers {
            let selectors: Vec<Selector> = caller.iter().map(|s| s.parse().unwrap()).collect();
            let scanned: Vec<(String, usize)> = matching(&entries, &selectors)
                .iter()
                .map(|e| (e.spiffe_id.to_string(), e.selectors.len()))
                .collect();
            let indexed: Vec<(String, usize)> = index
                .matching(&selectors)
                .iter()
                .map(|e| (e.spiffe_id.to_string(), e.selectors.len()))
                .collect();
            assert_eq!(indexed, scanned, "caller {caller:?}");
        }
    }

    #[test]
    fn selectors_read_and_print_as_spire_writes_them() {
        for text in [
            "unix:uid:1000",
            "unix:gid:0",
            "unix:path:/usr/bin/env",
            "unix:sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            "k8s:ns:default",
            "k8s:sa:frontend",
            "k8s:pod-uid:6b1e6a4c-2f5d-4c1e-9a57-0d6f5e0c2b11",
            "k8s:pod-name:frontend-7d4b9c-x2kqz",
            "k8s:pod-label:app:web",
            "k8s:pod-label:app.kubernetes.io/name:frontend",
            // Kubernetes allows an empty label value.
            "k8s:pod-label:canary:",
        ] {
            assert_eq!(text.parse::<Selector>().unwrap().to_string(), text);
        }
        for bad in [
            "uid:1000",
            "unix:uid",
            "unix:uid:-1",
            "unix:user:root",
            "unix:path:bin/env",
            "unix:sha256:abc",
            "k8s:ns:",
            "k8s:namespace:default",
            "k8s:pod-labels:app:web",
            "k8s:pod-label:app",
            "k8s:pod-label::web",
            "k8s:pod-label:app:a:b",
        ] {
            let error = bad.parse::<Selector>().unwrap_err().to_string();
            assert!(
                error.contains(bad) && error.contains("unix:uid:<n>") && error.contains("k8s:sa:"),
                "{error}"
            );
        }
        // Label bounds: Kubernetes' own, so an entry naming a longer label could never match.
        let longest = format!(
            "k8s:pod-label:{}/{}:{}",
            "p".repeat(253),
            "n".repeat(63),
            "v".repeat(63)
        );
        assert_eq!(longest.parse::<Selector>().unwrap().to_string(), longest);
        for too_long in [
            format!("k8s:pod-label:app:{}", "v".repeat(64)),
            format!("k8s:pod-label:{}:web", "k".repeat(318)),
        ] {
            let error = too_long.parse::<Selector>().unwrap_err().to_string();
            assert!(error.contains("longer than Kubernetes allows"), "{error}");
        }
    }

    #[test]
    fn every_selector_of_an_entry_must_match_and_several_entries_may() {
        let entries = [
            entry("a/web", &["unix:uid:1000"]),
            entry("a/web-admin", &["unix:uid:1000", "unix:gid:0"]),
            entry("a/tool", &["unix:uid:1000", "unix:path:/usr/bin/tool"]),
            entry("a/web", &["unix:gid:1000"]),
        ];
        let ids = |selectors: &[Selector]| {
            matching(&entries, selectors)
                .iter()
                .map(|e| e.spiffe_id.short())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(&[Selector::Uid(1000), Selector::Gid(1000)]),
            ["a/web"],
            "one identity once, though two entries give it"
        );
        assert_eq!(
            ids(&[
                Selector::Uid(1000),
                Selector::Gid(0),
                Selector::Path("/usr/bin/tool".into())
            ]),
            ["a/web", "a/web-admin", "a/tool"]
        );
        assert!(ids(&[Selector::Uid(1001), Selector::Gid(0)]).is_empty());
    }

    /// A `/proc` of one process, `pid`, started at `start`, running `exe`, owned by this user.
    fn fake_process(proc_root: &Path, pid: i32, start: u64, exe: &Path) {
        let process = proc_root.join(pid.to_string());
        std::fs::create_dir_all(&process).unwrap();
        let fields: Vec<String> = (4..=21).map(|n| n.to_string()).collect();
        std::fs::write(
            process.join("stat"),
            format!(
                "{pid} (a (tricky) name) S {} {start} 0 0\n",
                fields.join(" ")
            ),
        )
        .unwrap();
        let link = process.join("exe");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(exe, &link).unwrap();
    }

    fn sha256_selector(content: &[u8]) -> Selector {
        let digest = ring::digest::digest(&ring::digest::SHA256, content);
        Selector::Sha256(digest.as_ref().try_into().unwrap())
    }

    #[tokio::test]
    async fn a_digest_is_reused_only_by_the_process_and_file_it_was_read_from() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        let program = dir.path().join("program");
        std::fs::write(&program, b"one").unwrap();
        fake_process(&proc_root, 42, 1000, &program);
        let me = std::fs::metadata(dir.path()).unwrap();
        let peer = PeerCredentials {
            uid: me.uid(),
            gid: me.gid(),
            pid: Some(42),
        };
        let attestor = UnixAttestor {
            // The files here were written just now.
            settled: Duration::ZERO,
            ..UnixAttestor::new(&proc_root, true)
        };
        let expected = |content: &[u8]| {
            vec![
                Selector::Uid(peer.uid),
                Selector::Gid(peer.gid),
                Selector::Path(program.clone()),
                sha256_selector(content),
            ]
        };
        let hashed = || attestor.digests.lock().len();

        assert_eq!(attestor.attest(peer).await.unwrap(), expected(b"one"));
        assert_eq!(attestor.attest(peer).await.unwrap(), expected(b"one"));
        assert_eq!(
            hashed(),
            1,
            "the same process running the same file: hashed once"
        );

        // The process exits and its pid goes to a new process (another start time) running
        // another program at the same path: attested afresh, not given the old digest.
        std::fs::remove_file(&program).unwrap();
        std::fs::write(&program, b"two").unwrap();
        fake_process(&proc_root, 42, 2000, &program);
        assert_eq!(attestor.attest(peer).await.unwrap(), expected(b"two"));
        assert_eq!(hashed(), 2);

        // Only the start time differs (the same file): still a new process, hashed again.
        fake_process(&proc_root, 42, 3000, &program);
        assert_eq!(attestor.attest(peer).await.unwrap(), expected(b"two"));
        assert_eq!(hashed(), 3);

        // The same process executes its file again after it was rewritten in place (execve
        // keeps the pid and the start time; the file's times move, and here its size too, so
        // that a rewrite within one file-time tick shows).
        std::fs::write(&program, b"seven").unwrap();
        assert_eq!(attestor.attest(peer).await.unwrap(), expected(b"seven"));
        assert_eq!(hashed(), 4);

        // A process that has gone: uid and gid only.
        std::fs::remove_dir_all(proc_root.join("42")).unwrap();
        assert_eq!(
            attestor.attest(peer).await.unwrap(),
            [Selector::Uid(peer.uid), Selector::Gid(peer.gid)]
        );
    }

    #[tokio::test]
    async fn a_file_changed_just_before_it_was_hashed_is_hashed_on_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        let program = dir.path().join("program");
        std::fs::write(&program, b"one").unwrap();
        fake_process(&proc_root, 7, 1000, &program);
        let me = std::fs::metadata(dir.path()).unwrap();
        let peer = PeerCredentials {
            uid: me.uid(),
            gid: me.gid(),
            pid: Some(7),
        };
        let attestor = UnixAttestor {
            settled: Duration::from_secs(3600),
            ..UnixAttestor::new(&proc_root, true)
        };
        for _ in 0..2 {
            let selectors = attestor.attest(peer).await.unwrap();
            assert_eq!(selectors.last(), Some(&sha256_selector(b"one")));
        }
        assert_eq!(attestor.digests.lock().len(), 0, "nothing kept");
    }

    #[test]
    fn the_digest_cache_is_bounded() {
        let digests = ExecutableDigests::default();
        let key = |pid| ProcessExecutable {
            pid,
            start_time: 1,
            device: 1,
            inode: 1,
            size: 1,
            modified: (1, 0),
            changed: (1, 0),
        };
        for pid in 0..i32::try_from(MAX_CACHED_DIGESTS).unwrap() + 10 {
            digests.remember(key(pid), [1; 32]);
        }
        assert_eq!(digests.lock().len(), MAX_CACHED_DIGESTS);
        let last = i32::try_from(MAX_CACHED_DIGESTS).unwrap() + 9;
        assert_eq!(digests.cached(&key(last)), Some([1; 32]));
    }

    #[tokio::test]
    async fn the_unix_attestor_reads_this_process() {
        let me = std::fs::metadata("/proc/self").unwrap();
        let peer = PeerCredentials {
            uid: me.uid(),
            gid: me.gid(),
            pid: Some(i32::try_from(std::process::id()).unwrap()),
        };
        let exe = std::env::current_exe().unwrap();
        let attestor = UnixAttestor::new("/proc", true);
        let selectors = attestor.attest(peer).await.unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, &std::fs::read(&exe).unwrap());
        assert_eq!(
            selectors,
            [
                Selector::Uid(peer.uid),
                Selector::Gid(peer.gid),
                Selector::Path(exe),
                Selector::Sha256(digest.as_ref().try_into().unwrap()),
            ]
        );
        // Another uid than the process's: the pid is not believed to be the caller's.
        let other = PeerCredentials {
            uid: peer.uid.wrapping_add(1),
            ..peer
        };
        assert_eq!(
            attestor.attest(other).await.unwrap(),
            [Selector::Uid(other.uid), Selector::Gid(peer.gid)]
        );
    }
}
