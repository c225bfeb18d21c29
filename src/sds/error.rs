//! Why an SDS call was refused, and the one place that turns it into a gRPC status.

use tonic::{Code, Status};

use super::auth::{AuthError, TokenError};
use super::names::NameError;
use super::source::SourceError;

/// Why an SDS call or request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The caller could not be authenticated.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// A resource name is malformed, or names another identity's certificate.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The request is for another resource type.
    #[error(
        "this is the secret discovery service: type_url {type_url:?} is not served; use {expected}"
    )]
    WrongType {
        /// The type URL asked for.
        type_url: String,
        /// The one served.
        expected: &'static str,
    },
    /// Too many resource names in one request or one delta stream (delta: subscriptions and
    /// unsubscriptions together, and `initial_resource_versions`).
    #[error(
        "{count} resource names in one request or held by one stream, the limit is {limit}: \
         split them over several streams or raise sds.maxNamesPerRequest"
    )]
    TooManyNames {
        /// Names asked for.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The server holds as many streams as it is allowed to.
    #[error(
        "this meshca SDS server already serves {limit} streams: retry later, add replicas, or \
         raise sds.maxStreams"
    )]
    TooManyStreams {
        /// The configured limit.
        limit: usize,
    },
    /// The caller's identity holds as many streams as one identity may.
    #[error(
        "{identity} already holds {limit} SDS streams (all its proxies together): close unused \
         streams or raise sds.maxStreamsPerIdentity"
    )]
    TooManyStreamsForIdentity {
        /// The caller.
        identity: String,
        /// The configured limit.
        limit: usize,
    },
    /// The request's Envoy node is larger than meshca accepts.
    #[error(
        "the request's node.{field} is {size} bytes, the limit is {limit}: Envoy node ids are \
         short and meshca reads only NAMESPACE and SERVICE_ACCOUNT from the metadata"
    )]
    NodeTooLarge {
        /// `id` or the whole node (`metadata and the rest`).
        field: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A request could not be read: not a valid protobuf message of the method's type
    /// (INVALID_ARGUMENT), or larger than sds.maxMessageBytes (OUT_OF_RANGE).
    #[error("unreadable SDS request: {reason}")]
    Unreadable {
        /// The gRPC code tonic's decoder chose.
        code: Code,
        /// Why.
        reason: String,
    },
    /// The certificate source could not produce a certificate.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A stream sent no request in time.
    #[error(
        "no request on the SDS stream within {}: send a DiscoveryRequest right after opening it",
        meshca_provider::format_duration(*.timeout)
    )]
    NoFirstRequest {
        /// The configured limit.
        timeout: std::time::Duration,
    },
    /// The server is draining.
    #[error("meshca SDS is shutting down: reconnect (another replica will serve)")]
    ShuttingDown,
}

impl RequestError {
    /// The gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::Unauthenticated(AuthError::Token(TokenError::Unavailable { .. })) => {
                Code::Unavailable
            }
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::Name(NameError::NotYours { .. }) => Code::PermissionDenied,
            Self::Name(NameError::Malformed { .. })
            | Self::WrongType { .. }
            | Self::NodeTooLarge { .. } => Code::InvalidArgument,
            Self::Unreadable { code, .. } => *code,
            Self::TooManyNames { .. }
            | Self::TooManyStreams { .. }
            | Self::TooManyStreamsForIdentity { .. } => Code::ResourceExhausted,
            Self::NoFirstRequest { .. } => Code::DeadlineExceeded,
            Self::Source(SourceError::Refused { .. }) => Code::FailedPrecondition,
            Self::Source(_) | Self::ShuttingDown => Code::Unavailable,
        }
    }
}

impl From<RequestError> for Status {
    fn from(error: RequestError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}
