//! The SPIFFE Workload API's wire types, generated at build time from
//! `proto/spiffe/workload.proto` (build.rs): the messages, the tonic server
//! (`spiffe_workload_api_server`) and client (`spiffe_workload_api_client`). The proto has no
//! package, as upstream's, so prost writes them to `_.rs` and the service's gRPC name is
//! `SpiffeWorkloadAPI`.

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    reason = "generated code"
)]

tonic::include_proto!("_");

/// The private key an [`X509svid`] carries is wiped when the message is dropped: the server
/// drops each response once tonic has encoded it. (A client's copy is the client's business.)
impl Drop for X509svid {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.x509_svid_key);
    }
}
