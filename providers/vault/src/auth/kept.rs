//! Tokens and secret IDs kept outside meshca: a file (a Vault Agent sink, a mounted Secret)
//! or a [`TokenSource`](crate::settings::TokenSource).

use std::path::Path;

use crate::error::VaultError;
use crate::settings::{Secret, SharedTokenSource, VaultAuth};

/// The token as kept now, for methods that keep one outside meshca (a file, a Secret);
/// `None` for the others.
pub(super) async fn read_kept_token(method: &VaultAuth) -> Option<Result<Secret, VaultError>> {
    match method {
        VaultAuth::TokenFile(path) => Some(read_secret_file(path, "vault.tokenFile")),
        VaultAuth::Source(source) => Some(read_source(source).await),
        _ => None,
    }
}

pub(super) fn read_secret_file_of(method: &VaultAuth) -> Result<Secret, VaultError> {
    match method {
        VaultAuth::TokenFile(path) => read_secret_file(path, "vault.tokenFile"),
        other => Err(VaultError::TokenSource {
            origin: other.settings_hint(),
            reason: "this method keeps no token file".to_owned(),
        }),
    }
}

pub(super) async fn read_source(source: &SharedTokenSource) -> Result<Secret, VaultError> {
    let failed = |reason: String| VaultError::TokenSource {
        origin: source.0.describe(),
        reason,
    };
    let token = source.0.read().await.map_err(failed)?;
    let trimmed = token.expose().trim();
    if trimmed.is_empty() {
        return Err(failed("the token is empty".to_owned()));
    }
    Ok(Secret::new(trimmed))
}

/// A token or secret ID from a file, trimmed (sinks and Secrets often end with a newline).
pub(super) fn read_secret_file(path: &Path, setting: &'static str) -> Result<Secret, VaultError> {
    let failed = |reason: String| VaultError::CredentialFile {
        setting,
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let secret = Secret::new(text.trim());
    if secret.expose().is_empty() {
        return Err(failed("the file is empty".to_owned()));
    }
    Ok(secret)
}
