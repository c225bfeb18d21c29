//! Istio CA API requests as istio-agent or a hostile caller sends them: protobuf bytes decoded
//! into an `IstioCertificateRequest` (as the router does once the caller is authenticated),
//! then the metadata's `ImpersonatedIdentity` and the CSR's PEM through the service's own
//! checks. Properties: no panic; an accepted impersonated identity displays as a SPIFFE ID that
//! parses to the same value; a refusal's message is bounded (it quotes caller text); a CSR is
//! only read within `MAX_CSR_PEM_BYTES`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshca::istio::proto::IstioCertificateRequest;
use meshca::istio::{MAX_CSR_PEM_BYTES, impersonated_identity};
use meshca_provider::{SpiffeId, VerifiedCsr};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = IstioCertificateRequest::decode(data) else {
        return;
    };
    match impersonated_identity(request.metadata.as_ref()) {
        Ok(Some(id)) => {
            let again: SpiffeId = id
                .to_string()
                .parse()
                .expect("a displayed SPIFFE ID parses");
            assert_eq!(again, id);
        }
        Ok(None) => {}
        Err(status) => assert!(
            status.message().len() <= 4096,
            "refusal message of {} bytes",
            status.message().len()
        ),
    }
    if request.csr.len() <= MAX_CSR_PEM_BYTES
        && let Ok(der) = meshca_provider::csr::der_from_pem(&request.csr)
    {
        let _ = VerifiedCsr::from_der(&der);
    }
});
