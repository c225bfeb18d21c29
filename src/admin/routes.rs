//! The admin HTTP routes: `/healthz`, `/readyz`, `/metrics`, and `POST /rotate/leaves` behind
//! [`require_token`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{ConnectInfo, Extension, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use meshca_provider::SpiffeId;
use tokio::net::TcpListener;

use super::{AdminState, AdminToken, MIN_TOKEN_LENGTH};

/// The admin routes. Every route that changes state is in `mutating`, behind
/// [`require_token`]; the others answer GET (and HEAD) only.
pub fn router(state: Arc<AdminState>) -> Router {
    let mutating = Router::new()
        .route("/rotate/leaves", post(rotate_leaves))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(mutating)
        .with_state(state)
}

/// Serves the admin routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(state), shutdown).await
}

/// Serves `routes` (the admin routes and any merged into them, such as the JWT-SVID keys) on
/// `listener` until `shutdown` resolves.
pub async fn serve_router(
    listener: TcpListener,
    routes: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        routes.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Who asked for a state change: put in the request by [`require_token`] for the log.
#[derive(Debug, Clone)]
struct Caller {
    /// The peer's address ("unknown" when the listener does not record it).
    remote: String,
    /// The fingerprint of the token it presented.
    token: String,
}

/// Lets a request through only with `Authorization: Bearer <the token in admin.tokenFile>`.
/// No token configured: 403 saying how to configure one. No or another token: 401. Refusals
/// are counted (`meshca_admin_unauthorized_total`) and logged at debug level only, so that a
/// flood of bad requests does not become a flood of log lines.
async fn require_token(
    State(state): State<Arc<AdminState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |ConnectInfo(a)| a.to_string());
    let route = format!("{} {}", request.method(), request.uri().path());
    let Some(path) = state.settings.token_file.as_deref() else {
        state.unauthorized.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%remote, %route, "admin request refused: no admin.tokenFile configured");
        return (
            StatusCode::FORBIDDEN,
            format!(
                "{route} is disabled: this daemon has no admin token. Set admin.tokenFile to a \
                 file holding a random token of at least {MIN_TOKEN_LENGTH} characters (e.g. \
                 `head -c 32 /dev/urandom | base64 > FILE`), restart, and send it as \
                 `Authorization: Bearer <token>` (`meshca rotate leaves` reads admin.tokenFile)\n"
            ),
        )
            .into_response();
    };
    let token = match AdminToken::read(path) {
        Ok(token) => token,
        Err(e) => {
            tracing::error!(%remote, %route, "admin request refused: {e}");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the daemon cannot read its admin token (admin.tokenFile): see its log\n",
            )
                .into_response();
        }
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let refusal = match presented {
        None => Some(
            "this route needs `Authorization: Bearer <token>`, the token in the \
                      daemon's admin.tokenFile",
        ),
        Some(given) if !token.matches(given) => {
            Some("the bearer token is not the one in the daemon's admin.tokenFile")
        }
        Some(_) => None,
    };
    if let Some(why) = refusal {
        state.unauthorized.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%remote, %route, "admin request refused: {why}");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"meshca-admin\"")],
            format!("{why}\n"),
        )
            .into_response();
    }
    request.extensions_mut().insert(Caller {
        remote,
        token: token.fingerprint(),
    });
    next.run(request).await
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    match state.unready_reason() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// `POST /rotate/leaves[?identity=ns/sa]`: re-issue now (a suspected key leak) and push.
async fn rotate_leaves(
    State(state): State<Arc<AdminState>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<RotateQuery>,
) -> Response {
    let identity = match query.identity.as_deref().filter(|i| !i.is_empty()) {
        None => None,
        Some(text) => match SpiffeId::from_short(text, &state.trust_domain)
            .or_else(|_| text.parse::<SpiffeId>())
        {
            Ok(id) => Some(id),
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("identity {text:?}: {e}: give <namespace>/<service-account>\n"),
                )
                    .into_response();
            }
        },
    };
    let held = state
        .cache
        .certificates()
        .iter()
        .filter(|(key, _)| identity.as_ref().is_none_or(|id| *id == key.identity))
        .count();
    state.cache.renew_now(identity.as_ref());
    let whose = identity.map_or_else(|| "every identity".to_owned(), |id| id.to_string());
    tracing::warn!(
        certificates = held,
        identity = %whose,
        remote = %caller.remote,
        token = %caller.token,
        "forced re-issue requested"
    );
    (
        StatusCode::ACCEPTED,
        format!("re-issuing {held} certificate(s) of {whose}; proxies get them as they arrive\n"),
    )
        .into_response()
}

#[derive(Debug, serde::Deserialize)]
struct RotateQuery {
    identity: Option<String>,
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    match state.metrics_text() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}
