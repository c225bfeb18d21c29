//! CA material as stored — [`StoredCa`]: a certificate chain and its key, PEM, with where each
//! came from — and [`StoreError`], why it could not be read, written or used. Below the stores
//! and the rotation record, which both keep it, and above [`SigningAuthority`], which it
//! becomes once checked.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use zeroize::{Zeroize, Zeroizing};

use crate::authority::SigningAuthority;
use crate::error::{AuthorityError, CaProblem};

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
    /// The store does not keep JWT-SVID signing keys.
    #[error("{store} cannot hold JWT-SVID signing keys")]
    JwtKeysUnsupported {
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

// Defined here rather than in `authority.rs`, next to the type it makes, so that the signing
// authority does not depend on how it is stored.
impl SigningAuthority {
    /// The material to persist in a [`CaStore`](crate::CaStore).
    pub fn to_stored(&self) -> StoredCa {
        StoredCa::new(self.certificate_chain_pem(), self.private_key_pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_key() {
        let stored = StoredCa::new(
            "cert".into(),
            Zeroizing::new("-----BEGIN PRIVATE KEY-----\nSECRET\n".into()),
        );
        assert!(!format!("{stored:?}").contains("SECRET"));
    }
}
