//! The gRPC codec of meshca's servers: tonic's prost codec with buffers sized for the messages
//! each API carries, instead of tonic's default 8 KiB each.
//!
//! tonic allocates an encoding buffer for every response stream when it opens and keeps it for
//! the stream's life (the part of it each message did not use stays behind the next message),
//! and a decoding buffer for every request. SDS, Istio CA and Workload API requests are a few
//! hundred bytes and a response a few KiB, so with 10,000 streams open the default buffers were
//! the largest part of the memory per stream, and first touching that memory a noticeable part
//! of the CPU the first certificates cost (`docs/BENCHMARKS.md`). Either buffer still grows, in
//! steps of its size, for a larger message (a trust bundle of many roots, say).
//!
//! One [`SizedCodec`] serves every API; what differs between them is a [`CodecProfile`]:
//! [`SdsMessages`] for the SDS and Istio CA servers ([`SdsCodec`]), [`WorkloadMessages`] for
//! the Workload API's generated server and client ([`WorkloadCodec`], named by `build.rs`).

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Bytes of encoded messages gathered before they are handed to HTTP/2 (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// What one API's codec is sized for, and what it answers a request that is not protobuf.
pub trait CodecProfile: 'static {
    /// The encoding buffer a stream starts with; it grows to the largest response of the
    /// stream.
    const ENCODE_BUFFER_BYTES: usize;
    /// The decoding buffer of a request; it grows to the largest request of the stream.
    const DECODE_BUFFER_BYTES: usize;
    /// Whether a message that is not valid protobuf is the caller's error (INVALID_ARGUMENT,
    /// naming the message type) rather than tonic's INTERNAL.
    const UNDECODABLE_IS_INVALID_ARGUMENT: bool;
}

/// SDS and Istio CA messages: requests of a few hundred bytes, responses of about 2 KiB.
#[derive(Debug, Clone, Copy)]
pub struct SdsMessages;

impl CodecProfile for SdsMessages {
    const ENCODE_BUFFER_BYTES: usize = 1024;
    const DECODE_BUFFER_BYTES: usize = 512;
    const UNDECODABLE_IS_INVALID_ARGUMENT: bool = true;
}

/// Workload API messages: an `X509SVIDResponse` is about 2 KiB per identity, so the encoding
/// buffer holds one message of one or two identities; the decoding buffer every request but a
/// JWT-SVID's with many audiences.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadMessages;

impl CodecProfile for WorkloadMessages {
    const ENCODE_BUFFER_BYTES: usize = 4 * 1024;
    const DECODE_BUFFER_BYTES: usize = 512;
    const UNDECODABLE_IS_INVALID_ARGUMENT: bool = false;
}

/// tonic's prost codec sized for SDS messages (and Istio CA ones): what meshca's SDS and Istio
/// CA servers use, and what a tonic client opening many SDS streams can use as well. A message
/// that is not valid protobuf is INVALID_ARGUMENT.
pub type SdsCodec<T, U> = SizedCodec<T, U, SdsMessages>;

/// [`SdsCodec`]'s decoder.
pub type SdsDecoder<U> = SizedDecoder<U, SdsMessages>;

/// Named by `build.rs` as the codec of the generated Workload API server and client.
pub(crate) type WorkloadCodec<T, U> = SizedCodec<T, U, WorkloadMessages>;

/// tonic's prost codec with [`BufferSettings`] from `P`: encodes `T`, decodes `U`.
pub struct SizedCodec<T, U, P>(Types<T, U, P>);

/// What a [`SizedCodec`] encodes, decodes and is sized by, held without owning any of them (so
/// the codec is `Send`, `Sync` and `Copy` whatever they are).
type Types<T, U, P> = PhantomData<fn() -> (T, U, P)>;

impl<T, U, P> std::fmt::Debug for SizedCodec<T, U, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SizedCodec")
    }
}

impl<T, U, P> Clone for SizedCodec<T, U, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, U, P> Copy for SizedCodec<T, U, P> {}

impl<T, U, P> Default for SizedCodec<T, U, P> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U, P> Codec for SizedCodec<T, U, P>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
    P: CodecProfile,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SizedDecoder<U, P>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(
            P::ENCODE_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        SizedDecoder(
            ProstCodec::<T, U>::raw_decoder(BufferSettings::new(
                P::DECODE_BUFFER_BYTES,
                YIELD_THRESHOLD_BYTES,
            )),
            PhantomData,
        )
    }
}

/// tonic's prost decoder; with [`CodecProfile::UNDECODABLE_IS_INVALID_ARGUMENT`], a message
/// that is not valid protobuf is the caller's error (INVALID_ARGUMENT, counted as a rejected
/// request), not the server's (tonic says INTERNAL).
pub struct SizedDecoder<U, P>(ProstDecoder<U>, PhantomData<fn() -> P>);

impl<U, P> std::fmt::Debug for SizedDecoder<U, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SizedDecoder")
    }
}

impl<U: prost::Message + Default, P: CodecProfile> Decoder for SizedDecoder<U, P> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let decoded = self.0.decode(src);
        if !P::UNDECODABLE_IS_INVALID_ARGUMENT {
            return decoded;
        }
        decoded.map_err(|status| {
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

#[cfg(test)]
mod tests {
    use tonic::codec::Encoder;

    use super::*;

    type Message = prost_types::Duration;

    /// The encoder's and the decoder's settings, as text (`BufferSettings` shows its fields
    /// only through `Debug`).
    fn settings<P: CodecProfile>() -> (String, String) {
        let mut codec = SizedCodec::<Message, Message, P>::default();
        (
            format!("{:?}", codec.encoder().buffer_settings()),
            format!("{:?}", codec.decoder().buffer_settings()),
        )
    }

    fn expected(buffer: usize) -> String {
        format!("{:?}", BufferSettings::new(buffer, 32 * 1024))
    }

    /// The sizes the benchmarks measured (docs/BENCHMARKS.md): SDS 1 KiB / 512 B, the
    /// Workload API 4 KiB / 512 B; tonic's yield threshold for both.
    #[test]
    fn each_profile_keeps_its_buffer_sizes() {
        assert_eq!(settings::<SdsMessages>(), (expected(1024), expected(512)));
        assert_eq!(
            settings::<WorkloadMessages>(),
            (expected(4096), expected(512))
        );
    }
}
