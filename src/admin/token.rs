//! The bearer token guarding the admin routes that change state (`admin.tokenFile`).

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Shortest admin token accepted: 32 characters (e.g. 24 random bytes in base64), so that
/// guessing it over the network is hopeless.
pub const MIN_TOKEN_LENGTH: usize = 32;

/// Why the admin token could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The token file could not be read.
    #[error(
        "cannot read the admin token file {path} (admin.tokenFile): {source}; create it with \
         `head -c 32 /dev/urandom | base64 > {path} && chmod 600 {path}`, or unset \
         admin.tokenFile to disable POST /rotate/leaves"
    )]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token is too short to resist guessing.
    #[error(
        "the admin token in {path} (admin.tokenFile) has {length} characters, fewer than \
         {MIN_TOKEN_LENGTH}: write a random one, e.g. `head -c 32 /dev/urandom | base64 > {path}`"
    )]
    TokenTooShort {
        /// The file.
        path: PathBuf,
        /// Characters found (surrounding whitespace excluded).
        length: usize,
    },
}

/// The bearer token guarding the admin routes that change state. Redacted in `Debug`; only
/// its [fingerprint](AdminToken::fingerprint) may be logged.
pub struct AdminToken {
    token: Zeroizing<String>,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdminToken({})", self.fingerprint())
    }
}

impl AdminToken {
    /// Reads the token from `path`: its content without surrounding whitespace (a trailing
    /// newline from `echo` or `base64` is not part of it), at least [`MIN_TOKEN_LENGTH`]
    /// characters.
    pub fn read(path: &Path) -> Result<Self, AdminError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            AdminError::TokenFile {
                path: path.to_owned(),
                source,
            }
        })?);
        let token = text.trim();
        if token.chars().count() < MIN_TOKEN_LENGTH {
            return Err(AdminError::TokenTooShort {
                path: path.to_owned(),
                length: token.chars().count(),
            });
        }
        Ok(Self {
            token: Zeroizing::new(token.to_owned()),
        })
    }

    /// The value to send as `Authorization: Bearer <value>`.
    pub fn bearer(&self) -> &str {
        &self.token
    }

    /// `sha256:` and the first 16 hex digits of the token's SHA-256: names the token in logs
    /// without revealing it.
    pub fn fingerprint(&self) -> String {
        let digest = meshca_provider::x509::sha256(self.token.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// Whether `presented` is this token. Both are hashed first, so the comparison takes the
    /// same time whatever the presented value and wherever it differs.
    pub fn matches(&self, presented: &str) -> bool {
        let expected = meshca_provider::x509::sha256(self.token.as_bytes());
        let given = meshca_provider::x509::sha256(presented.as_bytes());
        expected
            .iter()
            .zip(given.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::admin::AdminSettings;

    fn token_in(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("token");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_token_is_read_trimmed_compared_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "0123456789abcdef0123456789abcdef-admin";
        let token = AdminToken::read(&token_in(dir.path(), &format!("{secret}\n"))).unwrap();
        assert_eq!(token.bearer(), secret);
        assert!(token.matches(secret));
        assert!(!token.matches(&format!("{secret}x")));
        assert!(!token.matches(&secret[1..]));
        assert!(!token.matches(""));
        let fingerprint = token.fingerprint();
        assert!(fingerprint.starts_with("sha256:") && fingerprint.len() == 7 + 16);
        let shown = format!("{token:?} {fingerprint}");
        assert!(
            !shown.contains(secret) && !shown.contains("0123456789"),
            "{shown}"
        );
    }

    #[test]
    fn a_short_or_missing_token_is_refused_with_the_setting_named() {
        let dir = tempfile::tempdir().unwrap();
        let short = AdminToken::read(&token_in(dir.path(), "  short\n")).unwrap_err();
        assert!(matches!(short, AdminError::TokenTooShort { length: 5, .. }));
        assert!(short.to_string().contains("admin.tokenFile"), "{short}");
        let missing = AdminToken::read(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(missing, AdminError::TokenFile { .. }));
        assert!(missing.to_string().contains("admin.tokenFile"), "{missing}");
        let settings = AdminSettings {
            token_file: Some(dir.path().join("absent")),
            per_identity_metrics: false,
        };
        assert!(settings.check().is_err());
        assert_eq!(AdminSettings::default().check().unwrap(), None);
    }
}
