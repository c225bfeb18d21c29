//! The Vault calls behind the credentials: logging in, `lookup-self` and `renew-self`, and
//! turning a failed call into a start-up error.

use reqwest::header::HeaderValue;
use rustify::Endpoint;
use serde::de::IgnoredAny;
use zeroize::Zeroize;

use super::kept::{read_secret_file, read_secret_file_of, read_source};
use super::token::{Lease, Token, token_from_auth};
use crate::endpoints::{
    LoginWithApproleRequest, LoginWithKubernetesRequest, LookupSelf, RenewTokenSelfRequest,
};
use crate::error::VaultError;
use crate::http::{ApiError, VaultHttp, endpoint_path};
use crate::settings::{SecretIdSource, VaultAuth};

/// The service-account token file Vault's Kubernetes login reads.
const KUBERNETES_TOKEN_SETTING: &str = "vault.kubernetes.tokenFile";

const LOOKUP_SELF: &str = "auth/token/lookup-self";

/// `lookup-self` with `token`: whether Vault still accepts it.
pub(crate) async fn check_token(http: &VaultHttp, token: &Token) -> Result<(), ApiError> {
    http.exec_as::<_, IgnoredAny>(&LookupSelf {}, Some(&token.header))
        .await
        .map(|_| ())
}

/// A token by the configured method, with its lease.
pub(super) async fn obtain(method: &VaultAuth, http: &VaultHttp) -> Result<Token, VaultError> {
    let invalid = |reason: String| VaultError::TokenRejected {
        address: http.address().to_owned(),
        status: reason,
        settings: method.settings_hint(),
    };
    match method {
        VaultAuth::Token(value) => {
            let token = Token::new(value.clone(), Lease::new(0, false, 0)).map_err(invalid)?;
            token.set_lease(lookup(http, &token.header, method).await?);
            Ok(token)
        }
        VaultAuth::TokenFile(_) | VaultAuth::Source(_) => {
            let value = match method {
                VaultAuth::Source(source) => read_source(source).await?,
                _ => read_secret_file_of(method)?,
            };
            let token = Token::new(value, Lease::new(0, false, 0)).map_err(invalid)?;
            token.set_lease(lookup(http, &token.header, method).await?);
            Ok(token)
        }
        VaultAuth::AppRole {
            role_id,
            secret_id,
            mount,
        } => {
            let secret_id = match secret_id {
                SecretIdSource::Value(secret) => secret.clone(),
                SecretIdSource::File(path) => read_secret_file(path, "vault.appRole.secretIdFile")?,
            };
            let mut request = LoginWithApproleRequest {
                mount: mount.clone(),
                role_id: role_id.clone(),
                secret_id: secret_id.expose().to_owned(),
            };
            let token = login(http, method, &request).await;
            request.secret_id.zeroize();
            token
        }
        VaultAuth::Kubernetes {
            role,
            mount,
            jwt_file,
        } => {
            let jwt = read_secret_file(jwt_file, KUBERNETES_TOKEN_SETTING)?;
            let mut request = LoginWithKubernetesRequest {
                mount: mount.clone(),
                role: role.clone(),
                jwt: jwt.expose().to_owned(),
            };
            let token = login(http, method, &request).await;
            request.jwt.zeroize();
            token
        }
    }
}

/// `auth/<mount>/login` with `request`: a new token and its lease.
async fn login<E: Endpoint>(
    http: &VaultHttp,
    method: &VaultAuth,
    request: &E,
) -> Result<Token, VaultError> {
    let path = endpoint_path(request);
    let answer = http
        .exec_as::<_, IgnoredAny>(request, None)
        .await
        .map_err(|e| match e {
            ApiError::Status { status, .. } if status < 500 && status != 429 => {
                VaultError::LoginRejected {
                    address: http.address().to_owned(),
                    path: path.clone(),
                    status: e.summary(),
                    settings: method.settings_hint(),
                }
            }
            other => api_error(http, &path, other),
        })?;
    let auth = answer.auth.ok_or_else(|| VaultError::InvalidResponse {
        address: http.address().to_owned(),
        path: path.clone(),
        reason: "the login answer has no auth block".to_owned(),
    })?;
    token_from_auth(auth).map_err(|reason| VaultError::TokenRejected {
        address: http.address().to_owned(),
        status: reason,
        settings: method.settings_hint(),
    })
}

/// `lookup-self`: checks the token and learns its lease.
pub(super) async fn lookup(
    http: &VaultHttp,
    header: &HeaderValue,
    method: &VaultAuth,
) -> Result<Lease, VaultError> {
    let answer = http
        .exec(&LookupSelf {}, Some(header))
        .await
        .map_err(|e| match e {
            ApiError::Status { status, .. } if (400..500).contains(&status) && status != 429 => {
                VaultError::TokenRejected {
                    address: http.address().to_owned(),
                    status: e.summary(),
                    settings: method.settings_hint(),
                }
            }
            other => api_error(http, LOOKUP_SELF, other),
        })?;
    let data = answer.data.ok_or_else(|| VaultError::InvalidResponse {
        address: http.address().to_owned(),
        path: LOOKUP_SELF.to_owned(),
        reason: "the lookup answer has no data".to_owned(),
    })?;
    Ok(data.lease())
}

/// `renew-self`: extends the token by its default increment.
pub(super) async fn renew(http: &VaultHttp, header: &HeaderValue) -> Result<Lease, ApiError> {
    let answer = http
        .exec_as::<_, IgnoredAny>(&RenewTokenSelfRequest { increment: None }, Some(header))
        .await?;
    let auth = answer.auth.ok_or_else(|| ApiError::Malformed {
        reason: "the renewal answer has no auth block".to_owned(),
    })?;
    Ok(Lease::new(auth.lease_duration, auth.renewable, 0))
}

/// A failed call as a start-up error.
pub(crate) fn api_error(http: &VaultHttp, path: &str, error: ApiError) -> VaultError {
    let address = http.address().to_owned();
    match error {
        ApiError::Unreachable { reason } => VaultError::Unreachable { address, reason },
        ApiError::Malformed { reason } => VaultError::InvalidResponse {
            address,
            path: path.to_owned(),
            reason,
        },
        status @ ApiError::Status { .. } => VaultError::Api {
            address,
            path: path.to_owned(),
            transient: status.is_transient(),
            status: status.summary(),
        },
    }
}
