//! The Vault endpoints meshca calls, as rustify endpoints (vaultrs's mechanism): vaultrs's own
//! where its response types read OpenBao's and Vault's answers, meshca's where they do not.
//!
//! | Call | Endpoint | Response read as |
//! |---|---|---|
//! | `<pki>/sign/<role>` | vaultrs `SignCertificateRequest`, through [`SignLeaf`] | meshca's [`Issued`](crate::pki::Issued) (DER) |
//! | `<pki>/cert/ca_chain` | vaultrs `ReadCertificateRequest` | vaultrs `ReadCertificateResponse` |
//! | `auth/token/renew-self` | vaultrs `RenewTokenSelfRequest` | the `auth` block |
//! | `auth/<mount>/login` (AppRole) | vaultrs `LoginWithApproleRequest` | the `auth` block |
//! | `auth/<mount>/login` (Kubernetes) | vaultrs `LoginWithKubernetesRequest` | the `auth` block |
//! | `<pki>/roles/<role>` | vaultrs `ReadRoleRequest` | vaultrs `ReadRoleResponse` |
//! | `LIST <pki>/issuers` | vaultrs `ListIssuersRequest` | vaultrs `ListIssuersResponse` |
//! | `<pki>/issuer/<id>/json` | vaultrs `ReadIssuerCertificateRequest` | vaultrs `ReadIssuerCertificateResponse` |
//! | `<pki>/issuer/<id>/sign/<role>` | [`SignLeaf`] | meshca's [`Issued`](crate::pki::Issued) (DER) |
//! | `POST <pki>/root/generate/internal` (named) | [`GenerateNamedRoot`] | vaultrs `GenerateRootResponse` |
//! | `POST <pki>/config/issuers` | vaultrs `SetDefaultIssuerRequest` | vaultrs `SetDefaultIssuerResponse` |
//! | `PATCH <pki>/issuer/<id>` (the name) | [`RenameIssuer`] | ignored |
//! | `DELETE <pki>/issuer/<id>` | vaultrs `DeleteIssuerRequest` | none |
//! | `auth/token/lookup-self` | [`LookupSelf`] | [`LookupData`] |
//! | `<pki>/root/sign-intermediate` (upstream mode) | vaultrs `SignIntermediateRequest` | vaultrs `SignIntermediateResponse` |
//! | `<pki>/issuer/<ref>/sign-intermediate` (upstream mode) | vaultrs `SignIntermediateIssuerRequest` | vaultrs `SignIntermediateIssuerResponse` |
//!
//! The `auth` block of a login or renewal is read by meshca ([`AuthBlock`](crate::http::AuthBlock))
//! whatever the endpoint: vaultrs's `AuthInfo` holds the token as a `String` it prints in
//! `Debug`; meshca's holds it as a [`Secret`](crate::Secret).
//!
//! vaultrs's `LookupTokenResponse` reads OpenBao's answer (see the tests holding real
//! answers) but carries the token itself (`id`) in a struct that prints it in `Debug`; meshca
//! defines `lookup-self` with rustify's derive and reads only the lease.
//!
//! vaultrs has no endpoint for signing with a named issuer (`<pki>/issuer/<ref>/sign/<role>`,
//! which meshca uses to keep signing with the issuer it trusts everywhere while Vault's default
//! issuer changes): [`SignLeaf`] sends vaultrs's `sign/<role>` request body to that path (or to
//! `sign/<role>` itself when no issuer is pinned). It reads the answer as meshca's
//! [`Issued`](crate::pki::Issued) rather than vaultrs's `SignCertificateResponse`: meshca asks
//! for `format=der` and decodes the base64 DER straight into certificates while the JSON is
//! read, where vaultrs's type holds PEM strings to be unescaped, copied and parsed again; on
//! the one call made per certificate, that is CPU taken from a Vault on the same machine. Its root generation cannot name the issuer (`issuer_name`), which
//! `meshca rotate root` needs: [`GenerateNamedRoot`]; its issuer update is a `POST`, which
//! resets every setting not sent (an operator's `leaf_not_after_behavior`, say): meshca renames
//! with a `PATCH` ([`RenameIssuer`]).

use rustify_derive::Endpoint;

use crate::auth::LookupData;
use crate::pki::Issued;

pub(crate) use vaultrs::api::auth::approle::requests::LoginWithApproleRequest;
pub(crate) use vaultrs::api::auth::kubernetes::requests::LoginWithKubernetesRequest;
pub(crate) use vaultrs::api::pki::requests::{
    DeleteIssuerRequest, ListIssuersRequest, ReadCertificateRequest, ReadIssuerCertificateRequest,
    ReadRoleRequest, SetDefaultIssuerRequest, SignCertificateRequest,
};
pub(crate) use vaultrs::api::token::requests::RenewTokenSelfRequest;

/// `GET auth/token/lookup-self`, read as the token's lease only.
#[derive(Endpoint)]
#[endpoint(path = "auth/token/lookup-self", response = "LookupData")]
pub(crate) struct LookupSelf {}

/// `POST <pki>/root/generate/internal`: a new root issuer (its key kept in Vault) named
/// `issuer_name`; Vault refuses a name already in use.
#[derive(Debug, Endpoint)]
#[endpoint(
    path = "{self.mount}/root/generate/internal",
    method = "POST",
    response = "vaultrs::api::pki::responses::GenerateRootResponse"
)]
pub(crate) struct GenerateNamedRoot {
    #[endpoint(skip)]
    pub(crate) mount: String,
    pub(crate) common_name: String,
    pub(crate) issuer_name: String,
    pub(crate) key_type: String,
    pub(crate) key_bits: u64,
    pub(crate) ttl: String,
}

/// `PATCH <pki>/issuer/<issuer>`: renames an issuer, leaving its other settings as they are.
#[derive(Debug, Endpoint)]
#[endpoint(
    path = "{self.mount}/issuer/{self.issuer}",
    method = "PATCH",
    response = "serde::de::IgnoredAny"
)]
pub(crate) struct RenameIssuer {
    #[endpoint(skip)]
    pub(crate) mount: String,
    #[endpoint(skip)]
    pub(crate) issuer: String,
    pub(crate) issuer_name: String,
}

/// `POST <pki>/issuer/<issuer>/sign/<role>`: vaultrs's `sign/<role>` request signed by the
/// issuer named, whatever the mount's default (or the role's `issuer_ref`) is; without an
/// issuer, `POST <pki>/sign/<role>`. The answer is read as meshca's [`Issued`].
#[derive(Debug)]
pub(crate) struct SignLeaf<'a> {
    /// An issuer ID as Vault lists it (checked URL-safe by the caller), or none for the
    /// role's issuer.
    pub(crate) issuer: Option<&'a str>,
    /// The request as `sign/<role>` takes it.
    pub(crate) sign: &'a SignCertificateRequest,
}

impl rustify::Endpoint for SignLeaf<'_> {
    type Response = Issued;
    const REQUEST_BODY_TYPE: rustify::enums::RequestType =
        <SignCertificateRequest as rustify::Endpoint>::REQUEST_BODY_TYPE;
    const RESPONSE_BODY_TYPE: rustify::enums::ResponseType =
        <SignCertificateRequest as rustify::Endpoint>::RESPONSE_BODY_TYPE;

    fn path(&self) -> String {
        match self.issuer {
            Some(issuer) => format!(
                "{}/issuer/{issuer}/sign/{}",
                self.sign.mount, self.sign.role
            ),
            None => self.sign.path(),
        }
    }

    fn method(&self) -> rustify::enums::RequestMethod {
        self.sign.method()
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        self.sign.body()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Real answers of OpenBao 2.7.2 (dev server), in `openbao-2.7.2/`.

    use std::time::Duration;

    use vaultrs::api::pki::responses::{
        ListIssuersResponse, ReadCertificateResponse, ReadIssuerCertificateResponse,
        ReadRoleResponse, SignCertificateResponse,
    };
    use vaultrs::api::token::responses::LookupTokenResponse;

    use super::*;
    use crate::http::decode_answer;
    use crate::pki::RoleData;

    const SIGN: &str = include_str!("openbao-2.7.2/sign.json");
    const CA_CHAIN: &str = include_str!("openbao-2.7.2/ca_chain.json");
    const ROLE: &str = include_str!("openbao-2.7.2/role.json");
    const LOOKUP_SELF: &str = include_str!("openbao-2.7.2/lookup_self.json");
    const RENEW_SELF: &str = include_str!("openbao-2.7.2/renew_self.json");
    const APPROLE_LOGIN: &str = include_str!("openbao-2.7.2/approle_login.json");
    const ISSUERS: &str = include_str!("openbao-2.7.2/issuers.json");
    const ISSUER: &str = include_str!("openbao-2.7.2/issuer.json");
    const ISSUER_SIGN: &str = include_str!("openbao-2.7.2/issuer_sign.json");
    const ISSUER_SIGN_DER: &str = include_str!("openbao-2.7.2/issuer_sign_der.json");
    const SIGN_INTERMEDIATE: &str = include_str!("openbao-2.7.2/sign_intermediate.json");
    const ISSUER_SIGN_INTERMEDIATE: &str =
        include_str!("openbao-2.7.2/issuer_sign_intermediate.json");

    #[test]
    fn vaultrs_types_read_openbaos_sign_intermediate_answers() {
        use vaultrs::api::pki::responses::{
            SignIntermediateIssuerResponse, SignIntermediateResponse,
        };
        let signed = decode_answer::<SignIntermediateResponse>(
            "pki/root/sign-intermediate",
            200,
            SIGN_INTERMEDIATE.as_bytes(),
        )
        .unwrap()
        .data
        .unwrap();
        assert!(
            signed
                .certificate
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        // OpenBao's ca_chain here starts with the signed certificate itself, then the root.
        let chain = signed.ca_chain.unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0], signed.certificate);
        assert_eq!(chain[1], signed.issuing_ca);

        let signed = decode_answer::<SignIntermediateIssuerResponse>(
            "pki/issuer/default/sign-intermediate",
            200,
            ISSUER_SIGN_INTERMEDIATE.as_bytes(),
        )
        .unwrap()
        .data
        .unwrap();
        assert!(signed.expiration > 0);
        assert_eq!(signed.ca_chain.last(), Some(&signed.issuing_ca));
    }

    #[test]
    fn vaultrs_types_read_openbaos_issuer_answers() {
        let listed = decode_answer::<ListIssuersResponse>("pki/issuers", 200, ISSUERS.as_bytes())
            .unwrap()
            .data
            .unwrap();
        assert_eq!(listed.keys.len(), 2);
        let default = listed
            .key_info
            .iter()
            .filter(|(_, info)| info.is_default)
            .map(|(id, info)| (id.as_str(), info.issuer_name.as_str()))
            .collect::<Vec<_>>();
        assert_eq!(default, [("27c109d0-40ee-1a3c-77a8-465e7d337408", "first")]);
        let issuer = decode_answer::<ReadIssuerCertificateResponse>(
            "pki/issuer/x/json",
            200,
            ISSUER.as_bytes(),
        )
        .unwrap()
        .data
        .unwrap();
        assert_eq!(issuer.issuer_id, "bf8af85e-b643-129a-fa59-325442272a00");
        // An unnamed issuer: OpenBao answers an empty name.
        assert_eq!(issuer.issuer_name, "");
        assert_eq!(
            crate::pki::trust_anchors(&issuer.ca_chain.join("\n"))
                .unwrap()
                .len(),
            1
        );
        // The issuer-pinned sign answers like sign/<role>, signed by the issuer named.
        let signed = decode_answer::<SignCertificateResponse>(
            "pki/issuer/x/sign/meshca",
            200,
            ISSUER_SIGN.as_bytes(),
        )
        .unwrap()
        .data
        .unwrap();
        assert_eq!(signed.issuing_ca.trim(), issuer.certificate.trim());
    }

    #[test]
    fn sign_leaf_is_the_sign_request_on_the_issuers_path() {
        use rustify::Endpoint as _;
        let sign = SignCertificateRequest {
            mount: "pki".into(),
            role: "meshca".into(),
            csr: Some("CSR".into()),
            ..Default::default()
        };
        let pinned = SignLeaf {
            issuer: Some("bf8af85e-b643-129a-fa59-325442272a00"),
            sign: &sign,
        };
        assert_eq!(
            pinned.path(),
            "pki/issuer/bf8af85e-b643-129a-fa59-325442272a00/sign/meshca"
        );
        assert_eq!(pinned.body().unwrap(), sign.body().unwrap());
        assert!(matches!(
            pinned.method(),
            rustify::enums::RequestMethod::POST
        ));
        let unpinned = SignLeaf {
            issuer: None,
            sign: &sign,
        };
        assert_eq!(unpinned.path(), sign.path());
        assert_eq!(unpinned.body().unwrap(), sign.body().unwrap());
    }

    #[test]
    fn a_der_sign_answer_is_read_straight_into_der() {
        // OpenBao 2.7.2's answer to issuer/<id>/sign/meshca with format=der.
        let mut issued =
            decode_answer::<Issued>("pki/issuer/x/sign/meshca", 200, ISSUER_SIGN_DER.as_bytes())
                .unwrap()
                .data
                .unwrap();
        let ca = issued.ca_certificates();
        assert_eq!(ca.len(), 1);
        assert_eq!(issued.issuing_ca.as_ref().unwrap().0, ca);
        assert!(crate::pki::is_self_signed(&ca[0]).unwrap());
        let (leaf, not_after) = issued.leaf().unwrap();
        let info = meshca_provider::CertificateInfo::parse(&leaf).unwrap();
        // The stated expiration is the leaf's NotAfter.
        assert_eq!(info.not_after, not_after);
        assert_eq!(
            not_after,
            std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_652_403)
        );
        assert_eq!(
            info.issuer,
            meshca_provider::CertificateInfo::parse(&ca[0])
                .unwrap()
                .subject
        );
        assert!(!crate::pki::is_self_signed(&leaf).unwrap());

        // The PEM answers (format=pem) read as the same kind of certificates.
        for (path, answer) in [
            ("pki/sign/meshca", SIGN),
            ("pki/issuer/x/sign/meshca", ISSUER_SIGN),
        ] {
            let pem = decode_answer::<SignCertificateResponse>(path, 200, answer.as_bytes())
                .unwrap()
                .data
                .unwrap();
            let mut issued = decode_answer::<Issued>(path, 200, answer.as_bytes())
                .unwrap()
                .data
                .unwrap();
            let ca = issued.ca_certificates();
            let (leaf, _) = issued.leaf().unwrap();
            assert_eq!(
                [leaf],
                meshca_provider::x509::certificates_from_pem(&pem.certificate)
                    .unwrap()
                    .as_slice()
            );
            let expected: Vec<_> = pem
                .ca_chain
                .unwrap()
                .iter()
                .flat_map(|c| meshca_provider::x509::certificates_from_pem(c).unwrap())
                .collect();
            assert_eq!(ca, expected);
        }
    }

    #[test]
    fn a_sign_answer_that_is_neither_der_nor_pem_is_malformed() {
        let answer = br#"{"data":{"certificate":"not base64!","expiration":1}}"#;
        assert!(matches!(
            decode_answer::<Issued>("pki/sign/meshca", 200, answer),
            Err(crate::http::ApiError::Malformed { .. })
        ));
        // Empty: no certificate, said when the leaf is asked for.
        let answer = br#"{"data":{"certificate":"","issuing_ca":"","expiration":1}}"#;
        let mut issued = decode_answer::<Issued>("pki/sign/meshca", 200, answer)
            .unwrap()
            .data
            .unwrap();
        assert!(issued.ca_certificates().is_empty());
        assert!(issued.leaf().unwrap_err().contains("no certificate"));
    }

    #[test]
    fn vaultrs_types_read_openbaos_sign_and_ca_chain_answers() {
        let signed =
            decode_answer::<SignCertificateResponse>("pki/sign/meshca", 200, SIGN.as_bytes())
                .unwrap()
                .data
                .unwrap();
        assert!(
            signed
                .certificate
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert_eq!(signed.ca_chain.as_ref().map(Vec::len), Some(1));
        assert!(signed.expiration > 0);
        let chain =
            decode_answer::<ReadCertificateResponse>("pki/cert/ca_chain", 200, CA_CHAIN.as_bytes())
                .unwrap()
                .data
                .unwrap();
        assert!(chain.certificate.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn vaultrs_type_reads_openbaos_role_answer() {
        let role: RoleData =
            decode_answer::<ReadRoleResponse>("pki/roles/meshca", 200, ROLE.as_bytes())
                .unwrap()
                .data
                .unwrap()
                .into();
        assert!(role.allows_spiffe_ids());
        assert!(role.copies_csr_names().is_empty());
        assert_eq!(role.key_type.as_deref(), Some("ec"));
        assert_eq!(role.key_types().len(), 2);
        // max_ttl 0: the role sets none.
        assert_eq!(role.max_lifetime(), None);
    }

    #[test]
    fn a_lookup_answer_is_read_for_its_lease_without_the_token() {
        // vaultrs's type reads it, token and all.
        let full = decode_answer::<LookupTokenResponse>(
            "auth/token/lookup-self",
            200,
            LOOKUP_SELF.as_bytes(),
        )
        .unwrap()
        .data
        .unwrap();
        assert_eq!(full.id, "s.zNH7607zF7bvrF2hxAWbCaCD");
        let lease =
            decode_answer::<LookupData>("auth/token/lookup-self", 200, LOOKUP_SELF.as_bytes())
                .unwrap()
                .data
                .unwrap()
                .lease();
        assert_eq!(lease.ttl, Duration::from_secs(3599));
        assert_eq!(lease.first_ttl, Duration::from_secs(3600));
        assert!(lease.renewable);
    }

    #[test]
    fn login_and_renewal_answers_give_a_token_kept_secret() {
        for (answer, token) in [
            (RENEW_SELF, "s.zNH7607zF7bvrF2hxAWbCaCD"),
            (APPROLE_LOGIN, "s.XdjKx8p1CuW2exLRFyY118jG"),
        ] {
            let auth = decode_answer::<serde::de::IgnoredAny>(
                "auth/approle/login",
                200,
                answer.as_bytes(),
            )
            .unwrap()
            .auth
            .unwrap();
            assert_eq!(auth.lease_duration, 3600);
            assert!(auth.renewable);
            assert_eq!(auth.client_token.expose(), token);
            let printed = format!("{auth:?}");
            assert!(!printed.contains(token), "{printed}");
        }
    }
}
