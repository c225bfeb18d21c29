//! The Istio CA API (`istio.v1.auth.IstioCertificateService/CreateCertificate`): istio-agent and
//! ztunnel send a CSR, meshca signs it for the caller's identity through the issuance pipeline.

pub mod caller;
pub mod proto;

pub use caller::{
    Caller, CallerKind, ImpersonationCheck, ImpersonationDenied, NoImpersonation, PodBinding,
};
