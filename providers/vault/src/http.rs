//! vaultrs's endpoints executed on one pooled HTTP/1.1 client: Vault's JSON envelope, and
//! errors sorted into "could not reach" / "Vault said no" / "Vault said something unreadable".
//!
//! The endpoints are vaultrs's (or meshca's, through the same rustify derive: see
//! `endpoints.rs`); their paths, methods and bodies are sent here rather than through
//! `vaultrs::client::VaultClient`, whose settings hold the token (printed by their `Debug`) so
//! that a new token would mean a new client and a new connection pool. Here the token is a
//! sensitive header value set per request: a token change is a header value swap and the
//! connection pool lives as long as the provider. TLS is meshca's own rustls configuration
//! with ring (the CA file, or the system's roots).

use std::error::Error as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use rustify::Endpoint;
use serde::de::DeserializeOwned;

use crate::error::VaultError;

/// How long establishing a TCP (and TLS) connection may take: shorter than a whole request,
/// so an unreachable Vault is reported quickly.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Cap on how much of an unparseable error body goes into a message.
const MAX_BODY_IN_MESSAGE: usize = 200;

static TOKEN_HEADER: HeaderName = HeaderName::from_static("x-vault-token");
static NAMESPACE_HEADER: HeaderName = HeaderName::from_static("x-vault-namespace");
static REQUEST_HEADER: HeaderName = HeaderName::from_static("x-vault-request");

/// Why a call failed, before it is given meaning by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiError {
    /// No answer: connection refused or reset, DNS, TLS, timeout.
    Unreachable { reason: String },
    /// Vault answered with an error status.
    Status { status: u16, errors: Vec<String> },
    /// Vault answered 2xx with a body that is not what the endpoint returns.
    Malformed { reason: String },
}

impl ApiError {
    /// `403 permission denied`, `400 unknown role: x`, or the unreachable reason.
    pub(crate) fn summary(&self) -> String {
        match self {
            ApiError::Unreachable { reason } | ApiError::Malformed { reason } => reason.clone(),
            ApiError::Status { status, errors } => {
                if errors.is_empty() {
                    status.to_string()
                } else {
                    format!("{status} {}", errors.join("; "))
                }
            }
        }
    }

    /// Whether retrying later may help: no answer, a server error, rate limiting.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            ApiError::Unreachable { .. } => true,
            ApiError::Status { status, .. } => *status >= 500 || *status == 429,
            ApiError::Malformed { .. } => false,
        }
    }
}

/// Vault's response envelope; only what meshca reads.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Envelope<T> {
    pub(crate) data: Option<T>,
    pub(crate) auth: Option<AuthBlock>,
    pub(crate) warnings: Option<Vec<String>>,
}

/// The `auth` block of a login or renewal.
#[derive(serde::Deserialize)]
pub(crate) struct AuthBlock {
    pub(crate) client_token: crate::Secret,
    #[serde(default)]
    pub(crate) lease_duration: u64,
    #[serde(default)]
    pub(crate) renewable: bool,
}

impl std::fmt::Debug for AuthBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthBlock")
            .field("lease_duration", &self.lease_duration)
            .field("renewable", &self.renewable)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

/// The HTTP side of the provider.
pub(crate) struct VaultHttp {
    client: reqwest::Client,
    /// `<address>/v1`, which endpoint paths are appended to.
    api_base: String,
    address: String,
    namespace: Option<HeaderValue>,
}

impl std::fmt::Debug for VaultHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultHttp")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl VaultHttp {
    /// A client for `address` (normalised, no trailing slash).
    pub(crate) fn new(
        address: &str,
        namespace: Option<&str>,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, VaultError> {
        let tls = tls_config(address, ca_file)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| VaultError::HttpClient {
                reason: error_chain(&e),
            })?;
        let namespace = namespace
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| VaultError::HttpClient {
                reason: "vault.namespace is not a valid HTTP header value".to_owned(),
            })?;
        Ok(Self {
            client,
            api_base: format!("{address}/v1"),
            address: address.to_owned(),
            namespace,
        })
    }

    /// The address calls go to, for messages.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// Executes `endpoint` with `token` and decodes the envelope with the endpoint's response
    /// type. A 2xx with an empty body (204) gives an envelope with nothing in it.
    pub(crate) async fn exec<E: Endpoint>(
        &self,
        endpoint: &E,
        token: Option<&HeaderValue>,
    ) -> Result<Envelope<E::Response>, ApiError> {
        self.exec_as(endpoint, token).await
    }

    /// Like [`exec`](Self::exec), reading the envelope's `data` as `T` (for the `auth` block of
    /// logins and renewals, `IgnoredAny`).
    pub(crate) async fn exec_as<E: Endpoint, T: DeserializeOwned>(
        &self,
        endpoint: &E,
        token: Option<&HeaderValue>,
    ) -> Result<Envelope<T>, ApiError> {
        let path = endpoint_path(endpoint);
        let encode = |e: rustify::errors::ClientError| ApiError::Malformed {
            reason: format!("could not encode the request to {path}: {e}"),
        };
        let query = endpoint.query().map_err(encode)?;
        let body = endpoint
            .body()
            .map_err(encode)?
            .filter(|body| !body.is_empty());
        // The URL is written here rather than by rustify's request builder, which parses it
        // three times and opens a tracing span per request (a few percent of a loopback sign
        // in the benchmark). The PKI mount and role are checked to be URL-safe at start.
        let mut url = format!("{}/{path}", self.api_base);
        if let Some(query) = query {
            url.push('?');
            url.push_str(&query);
        }
        let mut request = self
            .client
            .request(endpoint.method().into(), url)
            .header(REQUEST_HEADER.clone(), HeaderValue::from_static("true"));
        if let Some(token) = token {
            request = request.header(TOKEN_HEADER.clone(), token.clone());
        }
        if let Some(namespace) = &self.namespace {
            request = request.header(NAMESPACE_HEADER.clone(), namespace.clone());
        }
        if let Some(body) = body {
            // Vault takes a PATCH body only as a JSON merge patch.
            let content_type = match endpoint.method() {
                rustify::enums::RequestMethod::PATCH => "application/merge-patch+json",
                _ => "application/json",
            };
            request = request
                .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
                .body(body);
        }
        let response = request.send().await.map_err(|e| ApiError::Unreachable {
            reason: error_chain(&e),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| ApiError::Unreachable {
            reason: error_chain(&e),
        })?;
        decode_answer(&path, status.as_u16(), &bytes)
    }
}

/// The path of `endpoint` under `/v1/`, as Vault's documentation writes it (vaultrs writes some
/// with a leading slash, or a tab).
pub(crate) fn endpoint_path<E: Endpoint>(endpoint: &E) -> String {
    endpoint.path().trim().trim_start_matches('/').to_owned()
}

/// Reads Vault's answer to `path`: the envelope of a 2xx (empty for an empty body, as a 204
/// has), else the status with Vault's error messages.
pub(crate) fn decode_answer<T: DeserializeOwned>(
    path: &str,
    status: u16,
    bytes: &[u8],
) -> Result<Envelope<T>, ApiError> {
    if !(200..300).contains(&status) {
        return Err(ApiError::Status {
            status,
            errors: error_messages(bytes),
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Envelope {
            data: None,
            auth: None,
            warnings: None,
        });
    }
    let envelope: Envelope<T> = serde_json::from_slice(bytes).map_err(|e| ApiError::Malformed {
        reason: format!("the answer to {path} is not what Vault returns there: {e}"),
    })?;
    if let Some(warnings) = envelope.warnings.as_deref().filter(|w| !w.is_empty()) {
        // Vault warns, for instance, that common_name is ignored on roles that take names
        // from the CSR: harmless on every call, so not worth more than debug.
        tracing::debug!(path, ?warnings, "Vault answered with warnings");
    }
    Ok(envelope)
}

/// Vault's `{"errors": [...]}`, or a short, printable excerpt of a body that is not that (a
/// proxy's HTML page, say).
fn error_messages(body: &[u8]) -> Vec<String> {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return parsed.errors;
    }
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_BODY_IN_MESSAGE)
        .collect();
    if excerpt.trim().is_empty() {
        Vec::new()
    } else {
        vec![excerpt.trim().to_owned()]
    }
}

/// The whole chain of an error's causes, deepest last, without repeats: reqwest's own message
/// ("error sending request for url …") says little, the cause ("Connection refused") says what
/// to fix.
pub(crate) fn error_chain(error: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    if error.is_timeout() {
        parts.push("timed out".to_owned());
    }
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts
            .iter()
            .any(|p| p.contains(&text) || text.contains(p.as_str()))
        {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        parts.push(error.to_string());
    }
    parts.join(": ")
}

/// rustls with ring (like the rest of meshca), trusting `ca_file` when given and the system's
/// roots otherwise. HTTP/1.1 only: one request per connection at a time keeps Vault's load
/// spread over the pool.
fn tls_config(address: &str, ca_file: Option<&Path>) -> Result<rustls::ClientConfig, VaultError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| VaultError::HttpClient {
            reason: e.to_string(),
        })?;
    let mut config = match ca_file {
        Some(path) => {
            let ca_error = |reason: String| VaultError::CaFile {
                path: path.to_owned(),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| ca_error(e.to_string()))?;
            let certificates = meshca_provider::x509::certificates_from_pem(&text)
                .map_err(|e| ca_error(e.to_string()))?;
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|e| ca_error(format!("unusable CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        // Plain HTTP never verifies a certificate; don't touch the system trust store for it.
        None if address.starts_with("http://") => builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        None => {
            let verifier = rustls_platform_verifier::Verifier::new(provider).map_err(|e| {
                VaultError::HttpClient {
                    reason: format!("cannot load the system's trusted CAs ({e}): set vault.caFile"),
                }
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read_as_vault_writes_them() {
        assert_eq!(
            error_messages(br#"{"errors":["permission denied"]}"#),
            ["permission denied"]
        );
        assert!(error_messages(br#"{"errors":[]}"#).is_empty());
        assert!(error_messages(b"").is_empty());
        let html = format!("<html>{}</html>", "x".repeat(500));
        let messages = error_messages(html.as_bytes());
        assert_eq!(messages.len(), 1);
        assert!(messages[0].len() <= MAX_BODY_IN_MESSAGE);
    }

    #[test]
    fn transient_errors_are_the_retryable_ones() {
        let status = |status| ApiError::Status {
            status,
            errors: vec![],
        };
        assert!(status(503).is_transient());
        assert!(status(500).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(403).is_transient());
        assert!(!status(400).is_transient());
        assert!(
            ApiError::Unreachable {
                reason: "refused".into()
            }
            .is_transient()
        );
        assert_eq!(
            ApiError::Status {
                status: 403,
                errors: vec!["permission denied".into()]
            }
            .summary(),
            "403 permission denied"
        );
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = VaultHttp::new(
            "https://vault:8200",
            None,
            Some(Path::new("/nonexistent/ca.pem")),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        assert!(err.to_string().contains("vault.caFile"), "{err}");
    }
}
