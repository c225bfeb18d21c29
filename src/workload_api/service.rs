//! The `SpiffeWorkloadAPI` gRPC service: each method admits its caller (`admission.rs`: the
//! header, attestation, entries, a stream slot — before anything is issued), then hands it to
//! its stream (`stream.rs`). The JWT-SVID methods answer UNIMPLEMENTED.

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::admission::{Shared, Streamed};
use super::metrics::Refusal;
use super::proto::spiffe_workload_api_server::SpiffeWorkloadApi;
use super::proto::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest,
    X509svidResponse,
};
use super::stream;
use crate::sds::transport::PeerInfo;

/// What the JWT-SVID methods answer until they are wired to meshca's JWT-SVID keys.
const JWT_NOT_SERVED: &str = "JWT-SVIDs are not served over the Workload API yet \
                              (FetchJWTSVID, FetchJWTBundles and ValidateJWTSVID are not \
                              implemented); X.509-SVIDs are: FetchX509SVID, FetchX509Bundles";

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
        Err(self.jwt(request.metadata()))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(self.jwt(request.metadata()))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(self.jwt(request.metadata()))
    }
}

impl WorkloadApiService {
    /// The JWT-SVID methods' answer: the header is checked as for every call, then
    /// UNIMPLEMENTED saying so.
    fn jwt(&self, metadata: &MetadataMap) -> Status {
        if let Err(status) = self.shared.check_header(metadata) {
            return status;
        }
        self.shared.refuse(
            Refusal::Unimplemented,
            None,
            Status::unimplemented(JWT_NOT_SERVED),
        )
    }
}
