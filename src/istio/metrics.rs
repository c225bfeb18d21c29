//! Counters of the Istio CA API, exported on `/metrics` (names prefixed `meshca_istio_`):
//! requests by result and by caller kind, impersonations allowed and denied, TLS handshakes
//! refused. Plain atomics, read at scrape time.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

use super::caller::CallerKind;
use crate::sds::SdsStats;

/// How a CreateCertificate call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A certificate was returned.
    Ok,
    /// No or a bad credential.
    Unauthenticated,
    /// Another identity without the right to it, or outside the trust domain.
    PermissionDenied,
    /// A malformed or refused request.
    Invalid,
    /// The backend could not be reached or answered too late, or a token could not be checked.
    Unavailable,
    /// No signing slot in time.
    Exhausted,
    /// A message over `istio.maxMessageBytes`.
    TooLarge,
}

impl Outcome {
    const ALL: [Self; 7] = [
        Self::Ok,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::Invalid,
        Self::Unavailable,
        Self::Exhausted,
        Self::TooLarge,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::Invalid => "invalid",
            Self::Unavailable => "unavailable",
            Self::Exhausted => "exhausted",
            Self::TooLarge => "too_large",
        }
    }

    /// The outcome a refusal with `code` counts as.
    pub(crate) fn of_code(code: tonic::Code) -> Self {
        match code {
            tonic::Code::Ok => Self::Ok,
            tonic::Code::Unauthenticated => Self::Unauthenticated,
            tonic::Code::PermissionDenied => Self::PermissionDenied,
            tonic::Code::ResourceExhausted => Self::Exhausted,
            // What a message over istio.maxMessageBytes gets.
            tonic::Code::OutOfRange => Self::TooLarge,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Internal => {
                Self::Unavailable
            }
            _ => Self::Invalid,
        }
    }
}

/// The Istio CA API's counters.
#[derive(Debug, Default)]
pub struct IstioMetrics {
    requests: [AtomicU64; Outcome::ALL.len()],
    client_certificate: AtomicU64,
    token: AtomicU64,
    impersonations_allowed: AtomicU64,
    impersonations_denied: AtomicU64,
    /// The transport's counters: TLS handshakes refused or abandoned (`unauthenticated`).
    pub(crate) transport: Arc<SdsStats>,
}

/// A copy of [`IstioMetrics`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IstioMetricsSnapshot {
    /// Certificates returned.
    pub ok: u64,
    /// Calls refused with UNAUTHENTICATED.
    pub unauthenticated: u64,
    /// Calls refused with PERMISSION_DENIED.
    pub permission_denied: u64,
    /// Calls refused as invalid (INVALID_ARGUMENT, FAILED_PRECONDITION, …).
    pub invalid: u64,
    /// Calls failed as UNAVAILABLE (backend down or slow, token not checkable).
    pub unavailable: u64,
    /// Calls refused with RESOURCE_EXHAUSTED (no signing slot in time).
    pub exhausted: u64,
    /// Calls refused with OUT_OF_RANGE (a message over `istio.maxMessageBytes`).
    pub too_large: u64,
    /// Authenticated calls by a client certificate.
    pub client_certificate: u64,
    /// Authenticated calls by a token.
    pub token: u64,
    /// Impersonations allowed.
    pub impersonations_allowed: u64,
    /// Impersonations denied.
    pub impersonations_denied: u64,
    /// TLS handshakes refused or abandoned.
    pub handshakes_refused: u64,
    /// TLS handshakes shed: closed unprocessed because more were waiting than could be served
    /// within `istio.handshakeTimeout`.
    pub handshakes_shed: u64,
    /// TLS handshakes given up after `istio.handshakeTimeout` (counted in `handshakes_refused`
    /// too).
    pub handshakes_timed_out: u64,
}

impl IstioMetrics {
    pub(crate) fn request(&self, outcome: Outcome) {
        let index = Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or_default();
        self.requests[index].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn caller(&self, kind: CallerKind) {
        let counter = match kind {
            CallerKind::ClientCertificate => &self.client_certificate,
            CallerKind::Token => &self.token,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn impersonation(&self, allowed: bool) {
        let counter = if allowed {
            &self.impersonations_allowed
        } else {
            &self.impersonations_denied
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> IstioMetricsSnapshot {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let [
            ok,
            unauthenticated,
            permission_denied,
            invalid,
            unavailable,
            exhausted,
            too_large,
        ] = self.requests.each_ref().map(read);
        IstioMetricsSnapshot {
            ok,
            unauthenticated,
            permission_denied,
            invalid,
            unavailable,
            exhausted,
            too_large,
            client_certificate: read(&self.client_certificate),
            token: read(&self.token),
            impersonations_allowed: read(&self.impersonations_allowed),
            impersonations_denied: read(&self.impersonations_denied),
            handshakes_refused: read(&self.transport.unauthenticated),
            handshakes_shed: read(&self.transport.handshakes_shed),
            handshakes_timed_out: read(&self.transport.handshakes_timed_out),
        }
    }

    /// A Prometheus collector reading these counters at scrape time (for the admin
    /// listener's registry, whose prefix is `meshca`).
    pub fn collector(self: &Arc<Self>) -> Box<dyn Collector> {
        Box::new(Scrape(self.clone()))
    }
}

#[derive(Debug)]
struct Scrape(Arc<IstioMetrics>);

type Labels = Vec<(&'static str, &'static str)>;

fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> fmt::Result {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, value) in series {
        if labels.is_empty() {
            return ConstCounter::new(*value).encode(family);
        }
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = self.0.snapshot();
        let e = &mut encoder;
        let requests: Vec<(Labels, u64)> = Outcome::ALL
            .iter()
            .zip([
                s.ok,
                s.unauthenticated,
                s.permission_denied,
                s.invalid,
                s.unavailable,
                s.exhausted,
                s.too_large,
            ])
            .map(|(o, v)| (vec![("result", o.as_str())], v))
            .collect();
        family(
            e,
            "istio_requests",
            "Istio CA API CreateCertificate calls, by result.",
            &requests,
        )?;
        family(
            e,
            "istio_authenticated_requests",
            "Istio CA API calls whose caller was authenticated, by how.",
            &[
                (
                    vec![("kind", CallerKind::ClientCertificate.as_str())],
                    s.client_certificate,
                ),
                (vec![("kind", CallerKind::Token.as_str())], s.token),
            ],
        )?;
        family(
            e,
            "istio_impersonations",
            "Requests for another identity's certificate (ImpersonatedIdentity), by decision.",
            &[
                (vec![("result", "allowed")], s.impersonations_allowed),
                (vec![("result", "denied")], s.impersonations_denied),
            ],
        )?;
        family(
            e,
            "istio_tls_handshakes_refused",
            "TLS handshakes on the Istio CA listener that failed or timed out.",
            &[(Vec::new(), s.handshakes_refused)],
        )?;
        family(
            e,
            "istio_tls_handshakes_shed",
            "Istio CA connections refused unprocessed after their ClientHello (a TLS \
             internal_error alert, then closed): more TLS handshakes were waiting than could be \
             served within istio.handshakeTimeout.",
            &[(Vec::new(), s.handshakes_shed)],
        )?;
        family(
            e,
            "istio_tls_handshakes_timed_out",
            "TLS handshakes on the Istio CA listener given up after istio.handshakeTimeout \
             (also counted as refused).",
            &[(Vec::new(), s.handshakes_timed_out)],
        )?;
        Ok(())
    }
}
