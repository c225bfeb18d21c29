//! The Workload API's gRPC codec: prost's, with smaller buffers than tonic's default. tonic
//! allocates an encoding buffer for every response stream when it opens and keeps it for the
//! stream's life (the part of it each message did not use stays behind the next message), and
//! a decoding buffer for every request: 8 KiB each by default, sized for large messages. A
//! Workload API request is a few bytes and an `X509SVIDResponse` about 2 KiB per identity, so
//! with 10,000 streams open the default buffers were the largest part of the memory per
//! stream, and first touching that memory a noticeable part of the CPU the first SVIDs cost
//! (`docs/BENCHMARKS.md`, workload-api-bench). Either buffer still grows, in steps of its size,
//! for a larger message.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The encoding buffer a stream starts with: one message of one or two identities.
const ENCODE_BUFFER_BYTES: usize = 4 * 1024;
/// The decoding buffer of a request: every request but a JWT-SVID's with many audiences.
const DECODE_BUFFER_BYTES: usize = 512;
/// Bytes of encoded messages gathered before they are handed to HTTP/2 (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// Named by `build.rs` as the codec of the generated Workload API server and client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkloadCodec<T, U>(std::marker::PhantomData<fn() -> (T, U)>);

impl<T, U> Default for WorkloadCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> Codec for WorkloadCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(
            ENCODE_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(
            DECODE_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }
}
