//! Entry points for the fuzz targets in `fuzz/` (see `scripts/fuzz.sh`). Not an API: hidden
//! from the documentation and free to change.

use std::time::Instant;

use meshca_provider::KeyType;

use crate::auth::{Lease, LookupData, next_check};
use crate::http::{ApiError, decode_answer};
use crate::pki::{self, CaChain, Issued, PkiPaths, RoleData};
use vaultrs::api::pki::responses::{ReadCertificateResponse, ReadRoleResponse};

/// Reads `body` as Vault's answer with `status` to each call meshca makes (sign/issue,
/// `cert/ca_chain`, the role, login, `lookup-self`, `renew-self`), through the same code the
/// provider runs on a real answer, down to the certificates, leases and hints it derives.
pub fn read_answers(status: u16, body: &[u8]) {
    let paths = PkiPaths::new("pki", "meshca");
    let sign = |status, body| decode_answer::<Issued>(&paths.sign, status, body);
    if let Err(ApiError::Status { errors, .. }) = sign(status, body) {
        let _ = pki::rejection_hint(&errors, &paths, KeyType::P256);
    }
    if let Ok(Some(mut issued)) = sign(status, body).map(|e| e.data) {
        let ca = issued.ca_certificates();
        let _ = pki::intermediates(&ca);
        let _ = pki::chain_root(&ca);
        let _ = issued.leaf();
        let _ = format!("{issued:?}");
    }
    if let Ok(Some(chain)) = decode_answer::<ReadCertificateResponse>(&paths.ca_chain, status, body)
        .map(|e| e.data.map(CaChain::from))
    {
        let _ = pki::trust_anchors(&chain.certificate);
    }
    if let Ok(Some(role)) = decode_answer::<ReadRoleResponse>(&paths.role, status, body)
        .map(|e| e.data.map(RoleData::from))
    {
        let _ = (
            role.key_types(),
            role.allows_spiffe_ids(),
            role.max_lifetime(),
        );
    }
    let now = Instant::now();
    let check = |lease: Lease| {
        let _ = (lease.renew_at(), lease.remaining(now));
        let _ = next_check(&lease, now, None, false, true);
    };
    if let Ok(answer) =
        decode_answer::<serde::de::IgnoredAny>("auth/kubernetes/login", status, body)
        && let Some(auth) = answer.auth
    {
        let _ = format!("{auth:?}");
        if let Ok(token) = crate::auth::token_from_auth(auth) {
            check(token.lease());
        }
    }
    if let Ok(Some(data)) = decode_answer::<LookupData>("auth/token/lookup-self", status, body)
        .map(|answer| answer.data)
    {
        check(data.lease());
    }
}
