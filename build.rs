//! Compiles the protobuf definitions meshca serves (`proto/`) into Rust at build time, with no
//! system `protoc`: protox parses them (and the well-known types they import) into a
//! FileDescriptorSet, and tonic-prost-build generates the prost messages and the tonic server
//! and client from it. The generated code is included by `src/istio/proto.rs` (package
//! `istio.v1.auth`) and `src/workload_api/proto.rs` (the SPIFFE Workload API, which has no
//! package: prost names its file `_.rs`).

use std::io;

const PROTO_ROOT: &str = "proto";
const PROTOS: &[&str] = &[
    "proto/istio/v1/auth/ca.proto",
    "proto/spiffe/workload.proto",
];

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, [PROTO_ROOT]).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot compile {PROTOS:?}: {e:?}"),
        )
    })?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)
}
