//! CreateCertificate for an authenticated caller: bound what it sent, decide the identity and
//! lifetime, take a signing slot, sign the caller's CSR through the pipeline, answer with the
//! chain in Istio's order.
//!
//! - **Bounds** before anything is used: the CSR PEM ([`MAX_CSR_PEM_BYTES`]) and the metadata
//!   Struct ([`MAX_METADATA_FIELDS`] fields, keys of [`MAX_METADATA_KEY_BYTES`], values of
//!   [`MAX_METADATA_VALUE_BYTES`] encoded).
//! - **Identity**: the caller's own; or the SPIFFE ID in metadata [`IMPERSONATED_IDENTITY`],
//!   in the served trust domain, which the [`ImpersonationCheck`] must allow (one naming the
//!   caller itself is just the caller). The CSR's names are never read: the leaf carries the
//!   SPIFFE ID only.
//! - **Lifetime**: `validity_duration` seconds; 0 → the configured default
//!   (`certificateProvider.serviceCertValidityDuration`), longer → shortened to it, shorter
//!   than the policy's minimum → INVALID_ARGUMENT naming it.
//! - **Response**: each certificate of the chain as its own PEM string (leaf, intermediates),
//!   then, last, every root of the pipeline's trust bundle concatenated in one string:
//!   istio-agent takes the last element as its root certificate file, and during a root
//!   rotation it holds both roots.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshca_provider::{CsrError, IdentityError, LeafSpec, SpiffeId, TrustDomain, format_duration};
use prost::Message as _;
use prost_types::value::Kind;
use tokio::sync::Semaphore;
use tonic::Status;
use tracing::info;

use super::IstioLimits;
use super::caller::{Caller, ImpersonationCheck};
use super::metrics::{IstioMetrics, Outcome};
use super::proto::{IstioCertificateRequest, IstioCertificateResponse};
use crate::issuance::{IssueError, Issued, KeySource, Pipeline};
use crate::lifetime::MIN_LEAF_LIFETIME;

/// The metadata key naming the identity a node agent asks a certificate for (ztunnel).
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
/// The longest CSR PEM accepted: an RSA-4096 request is about 2 KiB.
pub const MAX_CSR_PEM_BYTES: usize = 16 * 1024;
/// Metadata fields accepted in one request.
pub const MAX_METADATA_FIELDS: usize = 32;
/// The longest metadata key accepted.
pub const MAX_METADATA_KEY_BYTES: usize = 128;
/// The largest metadata value accepted, protobuf-encoded.
pub const MAX_METADATA_VALUE_BYTES: usize = 1024;
/// The longest caller-supplied text quoted in a log line or an error.
const QUOTE_BYTES: usize = 128;

/// The CreateCertificate logic, shared by every call.
pub(super) struct IstioCaService {
    pipeline: Arc<Pipeline>,
    impersonation: Arc<dyn ImpersonationCheck>,
    trust_domain: TrustDomain,
    default_lifetime: Duration,
    signings: Semaphore,
    queue_timeout: Duration,
    metrics: Arc<IstioMetrics>,
}

impl IstioCaService {
    pub(super) fn new(
        pipeline: Arc<Pipeline>,
        impersonation: Arc<dyn ImpersonationCheck>,
        trust_domain: TrustDomain,
        default_lifetime: Duration,
        limits: &IstioLimits,
        metrics: Arc<IstioMetrics>,
    ) -> Self {
        Self {
            pipeline,
            impersonation,
            trust_domain,
            default_lifetime,
            signings: Semaphore::new(limits.max_concurrent_signings),
            queue_timeout: limits.signing_queue_timeout,
            metrics,
        }
    }

    pub(super) fn metrics(&self) -> &IstioMetrics {
        &self.metrics
    }

    /// Answers one call of an authenticated `caller`; counts its outcome.
    pub(super) async fn create_certificate(
        &self,
        caller: Caller,
        request: IstioCertificateRequest,
    ) -> Result<IstioCertificateResponse, Status> {
        let result = self.create(&caller, request).await;
        let outcome = match &result {
            Ok(_) => Outcome::Ok,
            Err(status) => Outcome::of_code(status.code()),
        };
        self.metrics.request(outcome);
        result
    }

    async fn create(
        &self,
        caller: &Caller,
        request: IstioCertificateRequest,
    ) -> Result<IstioCertificateResponse, Status> {
        if request.csr.len() > MAX_CSR_PEM_BYTES {
            return Err(Status::invalid_argument(format!(
                "the CSR is {} bytes; at most {MAX_CSR_PEM_BYTES} are accepted (a PEM \
                 certificate request is about 1–2 KiB)",
                request.csr.len()
            )));
        }
        let impersonated = impersonated_identity(request.metadata.as_ref())?;
        let lifetime = self.lifetime(request.validity_duration)?;
        let der = meshca_provider::csr::der_from_pem(&request.csr).map_err(csr_refused)?;
        let target = self.target(caller, impersonated).await?;

        let _slot = tokio::time::timeout(self.queue_timeout, self.signings.acquire())
            .await
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "meshca is signing as many certificates as it may at once \
                     (istio.maxConcurrentSignings) and none finished within {}: retry later",
                    format_duration(self.queue_timeout)
                ))
            })?
            .map_err(|_| Status::unavailable("meshca is shutting down: retry"))?;
        let issued = self
            .pipeline
            .issue(
                LeafSpec::workload(&target, &[], lifetime),
                KeySource::Csr(&der),
            )
            .await
            .map_err(issue_refused)?;
        info!(
            caller = %caller.identity,
            target = %target,
            kind = caller.kind.as_str(),
            serial = %issued.info.serial_hex(),
            not_after = %rfc3339(issued.info.not_after),
            provider = issued.issued_by,
            "Istio CA API issued a certificate"
        );
        Ok(self.response(&issued))
    }

    /// The identity to certify: the caller's, or the one it impersonates if it may.
    async fn target(
        &self,
        caller: &Caller,
        impersonated: Option<SpiffeId>,
    ) -> Result<SpiffeId, Status> {
        let Some(target) = impersonated.filter(|t| *t != caller.identity) else {
            return Ok(caller.identity.clone());
        };
        if target.trust_domain() != &self.trust_domain {
            self.metrics.impersonation(false);
            return Err(Status::permission_denied(format!(
                "{IMPERSONATED_IDENTITY} {target} is in trust domain {}, but this meshca issues \
                 for {} only",
                target.trust_domain(),
                self.trust_domain
            )));
        }
        match self.impersonation.authorize(caller, &target).await {
            Ok(()) => {
                self.metrics.impersonation(true);
                info!(
                    caller = %caller.identity,
                    kind = caller.kind.as_str(),
                    target = %target,
                    "Istio CA API impersonation allowed"
                );
                Ok(target)
            }
            Err(denied) => {
                self.metrics.impersonation(false);
                info!(
                    caller = %caller.identity,
                    kind = caller.kind.as_str(),
                    target = %target,
                    reason = %denied.reason,
                    "Istio CA API impersonation denied"
                );
                Err(Status::permission_denied(denied.to_string()))
            }
        }
    }

    /// The lifetime to ask for: see the module docs.
    fn lifetime(&self, seconds: i64) -> Result<Duration, Status> {
        let requested = match u64::try_from(seconds) {
            Ok(0) => return Ok(self.default_lifetime),
            Ok(seconds) => Duration::from_secs(seconds),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "validity_duration is {seconds}: give the lifetime in seconds, or 0 for \
                     meshca's default ({})",
                    format_duration(self.default_lifetime)
                )));
            }
        };
        if requested < MIN_LEAF_LIFETIME {
            return Err(Status::invalid_argument(format!(
                "validity_duration {seconds}s is shorter than the minimum {}: such a \
                 certificate cannot be renewed before it expires; ask for at least {} seconds",
                format_duration(MIN_LEAF_LIFETIME),
                MIN_LEAF_LIFETIME.as_secs()
            )));
        }
        Ok(requested.min(self.default_lifetime))
    }

    fn response(&self, issued: &Issued) -> IstioCertificateResponse {
        let mut cert_chain: Vec<String> = issued
            .chain
            .certificates()
            .iter()
            .map(|c| meshca_provider::x509::pem_block("CERTIFICATE", c.as_ref()))
            .collect();
        cert_chain.push(self.pipeline.current_trust_bundle().to_pem());
        IstioCertificateResponse { cert_chain }
    }
}

impl std::fmt::Debug for IstioCaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioCaService").finish_non_exhaustive()
    }
}

/// The `ImpersonatedIdentity` of a request's metadata, after bounding the whole Struct (field
/// count, key and value sizes): `None` when absent or empty, INVALID_ARGUMENT (saying what is
/// wrong) when over a bound or not a SPIFFE ID string. Public for the fuzz target.
pub fn impersonated_identity(
    metadata: Option<&prost_types::Struct>,
) -> Result<Option<SpiffeId>, Status> {
    let Some(metadata) = metadata else {
        return Ok(None);
    };
    if metadata.fields.len() > MAX_METADATA_FIELDS {
        return Err(Status::invalid_argument(format!(
            "the metadata has {} fields; at most {MAX_METADATA_FIELDS} are accepted",
            metadata.fields.len()
        )));
    }
    for (key, value) in &metadata.fields {
        if key.len() > MAX_METADATA_KEY_BYTES {
            return Err(Status::invalid_argument(format!(
                "a metadata key is {} bytes; at most {MAX_METADATA_KEY_BYTES} are accepted",
                key.len()
            )));
        }
        let size = value.encoded_len();
        if size > MAX_METADATA_VALUE_BYTES {
            return Err(Status::invalid_argument(format!(
                "metadata {} is {size} bytes; at most {MAX_METADATA_VALUE_BYTES} are accepted",
                quote(key)
            )));
        }
    }
    let Some(value) = metadata.fields.get(IMPERSONATED_IDENTITY) else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(id)) if id.is_empty() => Ok(None),
        Some(Kind::StringValue(id)) => id.parse::<SpiffeId>().map(Some).map_err(|e| {
            Status::invalid_argument(format!(
                "metadata {IMPERSONATED_IDENTITY} {} is not a SPIFFE ID \
                 (spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>): {}",
                quote(id),
                identity_problem(&e)
            ))
        }),
        _ => Err(Status::invalid_argument(format!(
            "metadata {IMPERSONATED_IDENTITY} must be a string holding a SPIFFE ID"
        ))),
    }
}

/// What is wrong with a SPIFFE ID, without the ID: the error's own text repeats the whole input
/// (escaped, so up to six times its size), which the caller's quote, cut to [`QUOTE_BYTES`],
/// already shows.
fn identity_problem(error: &IdentityError) -> String {
    match error {
        IdentityError::NotSpiffe { .. } => "it must start with spiffe://".to_owned(),
        IdentityError::InvalidTrustDomain { reason, .. } => format!("its trust domain: {reason}"),
        IdentityError::InvalidNamespace { reason, .. } => format!("its namespace: {reason}"),
        IdentityError::InvalidServiceAccount { reason, .. } => {
            format!("its service account: {reason}")
        }
        _ => "the path must be /ns/<namespace>/sa/<service-account>".to_owned(),
    }
}

fn csr_refused(error: CsrError) -> Status {
    Status::invalid_argument(format!(
        "the certificate signing request was refused: {error}"
    ))
}

/// The status of an issuance the pipeline refused or could not make: the caller's mistakes
/// (its CSR, its lifetime) are INVALID_ARGUMENT, what the backend will not do
/// FAILED_PRECONDITION with the reason, a backend down or slow UNAVAILABLE. Failures of
/// meshca's own (its credentials, its CA, an unusable chain from the backend) are logged and
/// reported as UNAVAILABLE without their details. No reason carries key material.
fn issue_refused(error: IssueError) -> Status {
    use meshca_provider::ProviderError;
    match &error {
        IssueError::Csr(_) | IssueError::Lifetime(_) | IssueError::NoNames => {
            Status::invalid_argument(error.to_string())
        }
        IssueError::Provider {
            source: ProviderError::Csr(_),
            ..
        } => Status::invalid_argument(error.to_string()),
        IssueError::Provider {
            source: ProviderError::Unsupported { .. } | ProviderError::Rejected { .. },
            ..
        } => Status::failed_precondition(error.to_string()),
        IssueError::Provider {
            source: ProviderError::Unavailable { .. },
            ..
        }
        | IssueError::Timeout { .. }
        | IssueError::TrustBundle { .. } => Status::unavailable(error.to_string()),
        _ => {
            tracing::warn!(%error, "Istio CA API issuance failed");
            Status::unavailable(
                "meshca could not issue the certificate (the reason is in meshca's log): retry \
                 later",
            )
        }
    }
}

/// Caller-supplied text, quoted with control characters escaped, in at most [`QUOTE_BYTES`]
/// bytes of escaped text: the bound holds after escaping (a control character takes up to ten
/// bytes escaped), so no input makes a refusal long.
fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(QUOTE_BYTES + 8);
    quoted.push('"');
    let mut cut = false;
    let mut escaped = String::new();
    for c in text.chars() {
        escaped.clear();
        escaped.extend(c.escape_debug());
        if quoted.len() + escaped.len() > QUOTE_BYTES {
            cut = true;
            break;
        }
        quoted.push_str(&escaped);
    }
    quoted.push('"');
    if cut {
        quoted.push('…');
    }
    quoted
}

pub(super) fn rfc3339(at: SystemTime) -> String {
    crate::cli::inspect::rfc3339(at)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use prost_types::{Struct, Value};

    use super::*;

    fn string(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.to_owned())),
        }
    }

    #[test]
    fn metadata_is_bounded_before_it_is_read() {
        let many: BTreeMap<String, Value> = (0..=MAX_METADATA_FIELDS)
            .map(|i| (format!("k{i}"), string("v")))
            .collect();
        let error = impersonated_identity(Some(&Struct { fields: many })).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        let big = BTreeMap::from([("k".to_owned(), string(&"x".repeat(2000)))]);
        let error = impersonated_identity(Some(&Struct { fields: big })).unwrap_err();
        assert!(
            error.message().contains("at most 1024"),
            "{}",
            error.message()
        );
        let long_key = BTreeMap::from([("k".repeat(200), string("v"))]);
        assert!(impersonated_identity(Some(&Struct { fields: long_key })).is_err());
    }

    #[test]
    fn impersonated_identity_is_a_spiffe_id_string() {
        let id = "spiffe://cluster.local/ns/a/sa/b";
        let fields = BTreeMap::from([(IMPERSONATED_IDENTITY.to_owned(), string(id))]);
        assert_eq!(
            impersonated_identity(Some(&Struct { fields }))
                .unwrap()
                .unwrap()
                .to_string(),
            id
        );
        let fields = BTreeMap::from([(IMPERSONATED_IDENTITY.to_owned(), string("\u{1b}[31mx"))]);
        let error = impersonated_identity(Some(&Struct { fields })).unwrap_err();
        assert!(!error.message().contains('\u{1b}'), "{}", error.message());
        let fields = BTreeMap::from([(
            IMPERSONATED_IDENTITY.to_owned(),
            Value {
                kind: Some(Kind::NumberValue(1.0)),
            },
        )]);
        assert!(impersonated_identity(Some(&Struct { fields })).is_err());
        assert_eq!(impersonated_identity(None).unwrap(), None);
    }

    #[test]
    fn a_refused_impersonated_identity_is_quoted_once_and_bounded() {
        // Within the value bound (1 KiB encoded), but each control character escapes to six:
        // an error repeating the input would be about 6 KiB.
        let hostile = format!("spiffe://cluster.local/ns/{}", "\u{1}".repeat(990));
        let fields = BTreeMap::from([(IMPERSONATED_IDENTITY.to_owned(), string(&hostile))]);
        let error = impersonated_identity(Some(&Struct { fields })).unwrap_err();
        let message = error.message();
        // The quote holds at most 128 bytes of escaped text.
        assert!(message.len() < 400, "{} bytes: {message}", message.len());
        assert!(!message.chars().any(char::is_control), "{message}");
        assert!(
            message.contains("/ns/<namespace>/sa/<service-account>"),
            "{message}"
        );
        let fields = BTreeMap::from([(
            IMPERSONATED_IDENTITY.to_owned(),
            string("spiffe://cluster.local/ns/Bad\n/sa/b"),
        )]);
        let error = impersonated_identity(Some(&Struct { fields })).unwrap_err();
        assert!(
            error.message().contains("its namespace: only lowercase"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn quotes_are_cut_on_a_character_boundary() {
        let text = "é".repeat(100);
        let quoted = quote(&text);
        assert!(quoted.ends_with('…'));
        assert!(quoted.len() < 140);
        let quoted = quote(&"\u{1}".repeat(100));
        assert!(quoted.len() < 140, "{quoted}");
        assert!(!quoted.chars().any(char::is_control), "{quoted}");
        assert_eq!(quote("ns/a\"b"), r#""ns/a\"b""#);
    }
}
