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
    /// Too many resource names in one request or one delta stream.
    #[error(
        "{count} resource names requested on one stream, the limit is {limit}: split them over \
         several streams or raise the SDS max-names-per-request limit"
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
         raise the SDS max-streams limit"
    )]
    TooManyStreams {
        /// The configured limit.
        limit: usize,
    },
    /// The certificate source could not produce a certificate.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A stream sent no request in time.
    #[error(
        "no request on the SDS stream within {timeout:?}: send a DiscoveryRequest right after opening it"
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
            Self::Name(NameError::Malformed { .. }) | Self::WrongType { .. } => {
                Code::InvalidArgument
            }
            Self::TooManyNames { .. } | Self::TooManyStreams { .. } => Code::ResourceExhausted,
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
