//! Compiles the protobuf definitions meshca serves (`proto/`) into Rust at build time, with no
//! system `protoc`: protox parses them (and the well-known types they import) into a
//! FileDescriptorSet, and tonic-prost-build generates the prost messages and the tonic server
//! and client from it. The generated code is included by `src/istio/proto.rs` (package
//! `istio.v1.auth`) and `src/workload_api/proto.rs` (the SPIFFE Workload API, which has no
//! package: prost names its file `_.rs`), the latter with meshca's own codec
//! (`src/sds/transport/codec.rs`).

use std::io;

const PROTO_ROOT: &str = "proto";
/// Each proto, and the codec its generated server and client use.
const PROTOS: &[(&str, &str)] = &[
    ("proto/istio/v1/auth/ca.proto", "tonic_prost::ProstCodec"),
    // Smaller buffers than tonic's default: src/sds/transport/codec.rs says why.
    (
        "proto/spiffe/workload.proto",
        "crate::sds::transport::codec::WorkloadCodec",
    ),
];

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    for (proto, codec) in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
        let descriptors = protox::compile([proto], [PROTO_ROOT]).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("cannot compile {proto}: {e:?}"),
            )
        })?;
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            .codec_path(*codec)
            .compile_fds(descriptors)?;
    }
    Ok(())
}
