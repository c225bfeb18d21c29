//! The gRPC glue of the SDS service: routes the three SecretDiscoveryService methods to
//! [`SdsService`] with a codec sized for SDS messages.
//!
//! This is what `envoy-types`' generated `SecretDiscoveryServiceServer` does, with one
//! difference that matters at 10,000 streams: that server builds tonic's default codec, whose
//! encoder and decoder each start with an 8 KiB buffer kept for the stream's lifetime. SDS
//! requests are a few hundred bytes and a response about 2 KiB, so the buffers here start small
//! and grow only for a stream whose messages need it (a trust bundle of many roots, say).
//! Allocating and first-touching 16 KiB per stream was a tenth of the server's time when 10,000
//! proxies connect at once (docs/BENCHMARKS.md).

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::codegen::{BoxFuture, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService, UnaryService};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use super::stream::SdsService;

/// Where a response is encoded; it grows to the largest response of the stream.
const ENCODE_BUFFER: usize = 1024;
/// Where requests are read; it grows to the largest request of the stream.
const DECODE_BUFFER: usize = 512;
/// Encoded bytes handed to the connection once this much is buffered (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

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

/// tonic's prost codec with [`BufferSettings`] for SDS messages: what meshca's SDS server
/// uses, and what a tonic client opening many SDS streams can use as well.
pub struct SdsCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> std::fmt::Debug for SdsCodec<T, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SdsCodec")
    }
}

impl<T, U> Default for SdsCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SdsCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SdsDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        SdsDecoder(ProstCodec::<T, U>::raw_decoder(BufferSettings::new(
            DECODE_BUFFER,
            YIELD_THRESHOLD,
        )))
    }
}

/// tonic's prost decoder, but a message that is not valid protobuf is the caller's error
/// (INVALID_ARGUMENT, counted as a rejected request), not the server's (tonic says INTERNAL).
pub struct SdsDecoder<U>(ProstDecoder<U>);

impl<U> std::fmt::Debug for SdsDecoder<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SdsDecoder")
    }
}

impl<U: prost::Message + Default> Decoder for SdsDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(src).map_err(|status| {
            Status::invalid_argument(format!(
                "the message is not a valid {}: {}",
                std::any::type_name::<U>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("message"),
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
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
