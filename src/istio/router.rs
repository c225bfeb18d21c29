//! The gRPC glue of the Istio CA API: routes CreateCertificate, authenticating the caller from
//! the connection and the headers BEFORE the request body is read or decoded, so an
//! unauthenticated caller costs no message buffer and no decoding. (tonic's generated server
//! decodes first and offers only synchronous interceptors, which cannot run a TokenReview.)

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{BoxFuture, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::PATH_CREATE_CERTIFICATE;
use super::auth::Authenticator;
use super::caller::Caller;
use super::metrics::Outcome;
use super::proto::{IstioCertificateRequest, IstioCertificateResponse};
use super::service::IstioCaService;
use crate::sds::{PeerInfo, SdsCodec};

/// The IstioCertificateService as a tower service for tonic's router.
#[derive(Clone)]
pub(super) struct IstioRouter {
    authenticator: Arc<Authenticator>,
    service: Arc<IstioCaService>,
    max_decoding_message_size: usize,
}

impl IstioRouter {
    pub(super) fn new(
        authenticator: Arc<Authenticator>,
        service: Arc<IstioCaService>,
        max_decoding_message_size: usize,
    ) -> Self {
        Self {
            authenticator,
            service,
            max_decoding_message_size,
        }
    }
}

impl NamedService for IstioRouter {
    const NAME: &'static str = "istio.v1.auth.IstioCertificateService";
}

impl<B> tonic::codegen::Service<http::Request<B>> for IstioRouter
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != PATH_CREATE_CERTIFICATE {
            return Box::pin(async move { Ok(Status::unimplemented("").into_http()) });
        }
        let authenticator = self.authenticator.clone();
        let service = self.service.clone();
        let max = self.max_decoding_message_size;
        Box::pin(async move {
            let peer = request.extensions().get::<PeerInfo>().cloned();
            // The connection is not idle while a call waits on a review or an issuance.
            let _busy = peer
                .as_ref()
                .and_then(|p| p.activity.as_ref())
                .map(|a| a.busy());
            let caller = match authenticator
                .authenticate(peer.as_ref(), request.headers())
                .await
            {
                Ok(caller) => caller,
                Err(error) => {
                    let status = Status::new(error.code(), error.to_string());
                    service.metrics().request(Outcome::of_code(status.code()));
                    tracing::debug!(%error, "Istio CA API call refused before its body was read");
                    return Ok(status.into_http());
                }
            };
            service.metrics().caller(caller.kind);
            let mut grpc =
                Grpc::new(SdsCodec::<IstioCertificateResponse, IstioCertificateRequest>::default())
                    .apply_max_message_size_config(Some(max), None);
            let answered = Arc::new(AtomicBool::new(false));
            let call = CreateCertificate {
                service: service.clone(),
                caller,
                answered: answered.clone(),
            };
            let response = grpc.unary(call, request).await;
            // A request refused before the service saw it (too large, not protobuf) is counted
            // here; the service counts every call it answers.
            if !answered.load(Ordering::Acquire) {
                service
                    .metrics()
                    .request(Outcome::of_code(refusal_code(&response)));
            }
            Ok(response)
        })
    }
}

/// The gRPC status of a response answered without the service (tonic puts it in the headers
/// of such a trailers-only response).
fn refusal_code(response: &http::Response<Body>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Unknown, tonic::Code::from)
}

/// One call, its caller already authenticated.
struct CreateCertificate {
    service: Arc<IstioCaService>,
    caller: Caller,
    /// Set once the service has the decoded request (and so counts the call itself).
    answered: Arc<AtomicBool>,
}

impl UnaryService<IstioCertificateRequest> for CreateCertificate {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<Response<IstioCertificateResponse>, Status>;

    fn call(&mut self, request: Request<IstioCertificateRequest>) -> Self::Future {
        let service = self.service.clone();
        let caller = self.caller.clone();
        self.answered.store(true, Ordering::Release);
        Box::pin(async move {
            service
                .create_certificate(caller, request.into_inner())
                .await
                .map(Response::new)
        })
    }
}
