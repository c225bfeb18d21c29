//! The contract between the meshca daemon and its certificate backends.
//!
//! The entry point is [`CertificateProvider`]: the daemon describes the certificate it wants in
//! a [`LeafSpec`], names the key to certify — a [`LeafKey`] it made, or a caller's key proven
//! by a [`VerifiedCsr`] ([`SubjectKey`]) — and a provider turns that [`IssueRequest`] into a
//! signed [`CertificateChain`] and reports its [`TrustBundle`]. The names always come from the
//! spec: a backend that certifies what a CSR asks for declares [`CsrNames::FromCsr`], and
//! [`Capabilities::check`] then refuses a caller's CSR that asks for anything else before the
//! backend sees it. Everything a backend and the daemon
//! must agree on lives here — identities ([`SpiffeId`]), DNS names ([`DnsName`]), Go-style
//! durations, key types, X.509 parsing helpers, verified PKCS#10 requests ([`VerifiedCsr`]) —
//! and nothing that wires a runtime.

#![forbid(unsafe_code)]
// The provider contract is this crate's whole purpose: every public item says what it means.
#![warn(missing_docs)]

pub mod clock;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod csr;
pub mod dns;
pub mod duration;
pub mod identity;
pub mod keys;
pub mod provider;
pub mod spec;
#[cfg(feature = "verify")]
pub mod verify;
pub mod x509;

pub use clock::{Clock, SystemClock, rfc3339};
pub use csr::{CsrError, CsrSignatureAlgorithm, MAX_CSR_LEN, VerifiedCsr};
pub use dns::{DnsName, DnsNameError, DnsNameProblem};
pub use duration::{DurationError, format_duration, parse_duration};
pub use identity::{DEFAULT_TRUST_DOMAIN, IdentityError, SpiffeId, TrustDomain};
pub use keys::{KeyError, KeyType, LeafKey};
pub use provider::{
    Capabilities, CertificateProvider, CsrNames, IssueRequest, ProviderError, SharedProvider,
    SubjectKey,
};
pub use spec::LeafSpec;
#[cfg(feature = "verify")]
pub use verify::{ChainError, verify_chain};
pub use x509::{
    CertificateChain, CertificateInfo, CertificateSummary, IssuerName, KeyPurposes, PemError,
    TrustBundle, X509Error,
};
