//! The JWT-SVID keys over HTTP, on the admin listener: the JWKS at `/keys` and, when
//! `jwtSvid.issuer` is set, OIDC discovery at `/.well-known/openid-configuration`, both also
//! under the issuer URL's path (an issuer `https://host/oidc` is served at `/oidc/keys` and
//! `/oidc/.well-known/openid-configuration`), so a verifier such as Vault/OpenBao's JWT auth
//! method can be pointed at either the JWKS (`jwks_url`) or the issuer
//! (`oidc_discovery_url`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::JwtAuthority;
use super::jwks::{DISCOVERY_PATH, KEYS_PATH, KeyUse, discovery, jwks};

/// The routes publishing `authority`'s keys; `max_age` is how long verifiers may cache them
/// (a new key is published at least this long before it signs: `keyActivationDelay`).
pub fn router(authority: Arc<JwtAuthority>, issuer: Option<&str>, max_age: Duration) -> Router {
    let cache_control = HeaderValue::from_str(&format!("public, max-age={}", max_age.as_secs()))
        .unwrap_or(HeaderValue::from_static("no-cache"));
    let keys = {
        let cache_control = cache_control.clone();
        move || {
            let body = jwks(&authority.keys(), KeyUse::Signature).to_string();
            let cache_control = cache_control.clone();
            async move { json(body, cache_control) }
        }
    };
    let document = issuer.map(|issuer| discovery(issuer).to_string());
    let discovery = move || {
        let document = document.clone();
        let cache_control = cache_control.clone();
        async move {
            match document {
                Some(body) => json(body, cache_control),
                None => (
                    axum::http::StatusCode::NOT_FOUND,
                    "no OIDC discovery: jwtSvid.issuer is not set (the keys are at /keys)\n",
                )
                    .into_response(),
            }
        }
    };
    let mut router = Router::new()
        .route(KEYS_PATH, get(keys.clone()))
        .route(DISCOVERY_PATH, get(discovery.clone()));
    if let Some(prefix) = issuer.and_then(issuer_path) {
        router = router
            .route(&format!("{prefix}{KEYS_PATH}"), get(keys))
            .route(&format!("{prefix}{DISCOVERY_PATH}"), get(discovery));
    }
    router
}

fn json(body: String, cache_control: HeaderValue) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, cache_control),
        ],
        body,
    )
        .into_response()
}

/// The path of an issuer URL (`/oidc` of `https://host/oidc`), when it has one.
fn issuer_path(issuer: &str) -> Option<&str> {
    let rest = issuer.split_once("://")?.1;
    let path = &rest[rest.find('/')?..];
    (path.len() > 1).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::issuer_path;

    #[test]
    fn the_issuer_path_is_what_follows_the_host() {
        assert_eq!(issuer_path("https://meshca.example"), None);
        assert_eq!(issuer_path("https://meshca.example/oidc"), Some("/oidc"));
        assert_eq!(issuer_path("http://127.0.0.1:9090/a/b"), Some("/a/b"));
    }
}
