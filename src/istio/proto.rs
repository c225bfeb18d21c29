//! The Istio CA API's wire types, generated at build time from
//! `proto/istio/v1/auth/ca.proto` (build.rs): the messages, the tonic server
//! (`istio_certificate_service_server`) and client (`istio_certificate_service_client`). The
//! `metadata` field is prost-types' `google.protobuf.Struct`.

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    reason = "generated code"
)]

tonic::include_proto!("istio.v1.auth");

/// The well-known types the request's `metadata` is made of, so that clients need no
/// prost-types of their own.
pub use prost_types::{Struct, Value, value::Kind as ValueKind};
