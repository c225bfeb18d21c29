//! The gRPC glue of the SDS service: routes the three SecretDiscoveryService methods to
//! [`SdsService`] with a codec sized for SDS messages.
//!
//! This is what `envoy-types`' generated `SecretDiscoveryServiceServer` does, with one
//! difference that matters at 10,000 streams: that server builds tonic's default codec, whose
//! encoder and decoder each start with an 8 KiB buffer kept for the stream's lifetime. SDS
//! requests are a few hundred bytes and a response about 2 KiB, so the buffers here start small
//! (1 KiB and 512 bytes, `transport/codec.rs`) and grow only for a stream whose messages need
//! it (a trust bundle of many roots, say). Allocating and first-touching 16 KiB per stream was
//! a tenth of the server's time when 10,000 proxies connect at once (docs/BENCHMARKS.md).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService, UnaryService};
use tonic::{Request, Response, Status, Streaming};

use super::stream::SdsService;
use super::transport::codec::SdsCodec;

/// The `StreamSecrets` method's path.
pub const PATH_STREAM: &str = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets";
const PATH_DELTA: &str = "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets";
const PATH_FETCH: &str = "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets";

/// The SecretDiscoveryService as a tower service for tonic's router.
#[derive(Clone)]
pub(crate) struct SdsRouter {
    service: Arc<SdsService>,
    max_decoding_message_size: usize,
}

impl SdsRouter {
    pub(crate) fn new(service: Arc<SdsService>, max_decoding_message_size: usize) -> Self {
        Self {
            service,
            max_decoding_message_size,
        }
    }

    fn grpc<T, U>(&self) -> Grpc<SdsCodec<T, U>>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        Grpc::new(SdsCodec::default())
            .apply_max_message_size_config(Some(self.max_decoding_message_size), None)
    }
}

impl NamedService for SdsRouter {
    const NAME: &'static str = "envoy.service.secret.v3.SecretDiscoveryService";
}

impl<B> tonic::codegen::Service<http::Request<B>> for SdsRouter
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
        let service = self.service.clone();
        match request.uri().path() {
            PATH_STREAM => {
                let mut grpc = self.grpc();
                Box::pin(async move { Ok(grpc.streaming(Stream(service), request).await) })
            }
            PATH_DELTA => {
                let mut grpc = self.grpc();
                Box::pin(async move { Ok(grpc.streaming(Delta(service), request).await) })
            }
            PATH_FETCH => {
                let mut grpc = self.grpc();
                Box::pin(async move { Ok(grpc.unary(Fetch(service), request).await) })
            }
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

struct Stream(Arc<SdsService>);

impl StreamingService<DiscoveryRequest> for Stream {
    type Response = DiscoveryResponse;
    type ResponseStream = <SdsService as SecretDiscoveryService>::StreamSecretsStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DiscoveryRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.stream_secrets(request).await })
    }
}

struct Delta(Arc<SdsService>);

impl StreamingService<DeltaDiscoveryRequest> for Delta {
    type Response = DeltaDiscoveryResponse;
    type ResponseStream = <SdsService as SecretDiscoveryService>::DeltaSecretsStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.delta_secrets(request).await })
    }
}

struct Fetch(Arc<SdsService>);

impl UnaryService<DiscoveryRequest> for Fetch {
    type Response = DiscoveryResponse;
    type Future = BoxFuture<Response<DiscoveryResponse>, Status>;

    fn call(&mut self, request: Request<DiscoveryRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.fetch_secrets(request).await })
    }
}
