//! The `SpiffeWorkloadAPI` gRPC service: each method admits its caller (`admission.rs`: the
//! header, attestation, entries, a stream slot — before anything is issued), then hands it to
//! its stream (`stream.rs`), or answers it (`jwt.rs`: the JWT-SVID methods).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::admission::{Shared, Streamed};
use super::proto::spiffe_workload_api_server::SpiffeWorkloadApi;
use super::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest,
    X509svidResponse,
};
use super::{jwt, stream};
use crate::sds::transport::PeerInfo;

/// The tonic service.
#[derive(Clone)]
pub(crate) struct WorkloadApiService {
    shared: Arc<Shared>,
}

impl WorkloadApiService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApiService {
    type FetchX509SVIDStream = Streamed<X509svidResponse>;
    type FetchX509BundlesStream = Streamed<X509BundlesResponse>;
    type FetchJWTBundlesStream = Streamed<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let admitted = self
            .shared
            .admit(request.metadata(), request.extensions().get::<PeerInfo>())
            .await?;
        let stream = stream::x509_svids(self.shared.clone(), admitted)
            .await
            .map_err(|(reason, status)| self.shared.refuse(reason, None, status))?;
        Ok(Response::new(stream))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let admitted = self
            .shared
            .admit(request.metadata(), request.extensions().get::<PeerInfo>())
            .await?;
        Ok(Response::new(stream::x509_bundles(
            self.shared.clone(),
            admitted.slot,
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let jwt = self.shared.jwt()?;
        let (_, entries) = self
            .shared
            .attest(request.metadata(), request.extensions().get::<PeerInfo>())
            .await?;
        let JwtsvidRequest {
            audience,
            spiffe_id,
        } = request.into_inner();
        jwt::svids(&self.shared, jwt, &entries, audience, &spiffe_id).map(Response::new)
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.shared.jwt()?;
        let admitted = self
            .shared
            .admit(request.metadata(), request.extensions().get::<PeerInfo>())
            .await?;
        jwt::bundles(self.shared.clone(), admitted.slot).map(Response::new)
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let jwt = self.shared.jwt()?;
        self.shared
            .attest(request.metadata(), request.extensions().get::<PeerInfo>())
            .await?;
        let ValidateJwtsvidRequest { audience, svid } = request.into_inner();
        jwt::validate(&self.shared, jwt, &audience, &svid).map(Response::new)
    }
}
