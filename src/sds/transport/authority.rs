//! Rewrites the `:authority` a gRPC client sends over a Unix socket when it is not a valid
//! authority, before h2 sees it.
//!
//! gRPC's C core (grpcio for Python, C++, Ruby…), grpc-java and others send the socket path,
//! percent-encoded (`tmp%2Fworkload-api.sock`), as the `:authority` of calls on a `unix:`
//! target. h2 refuses every such request with RST_STREAM(PROTOCOL_ERROR) (hyperium/h2#487,
//! grpc/grpc#38142): py-spiffe and java-spiffe could not reach the Workload API at all. meshca
//! uses the authority for nothing, so on the listeners that ask for it ([`AuthorityRewrite`])
//! the client's byte stream goes through this reader: after the connection preface, every
//! frame is passed on unchanged except header blocks (HEADERS and its CONTINUATIONs), which are
//! decoded with the client's HPACK state. A block whose `:authority` is valid (or absent) is
//! passed on as it came while no block has been rewritten: h2 then decodes the client's own
//! encoding, its HPACK table in step with the client's (clients that send a valid authority —
//! go-spiffe, rust-spiffe — cost a decode per request and nothing more). The first block with
//! a malformed authority, and every block after it, is given `:authority: localhost` in place
//! of a malformed one and encoded again as literals without indexing: a rewritten block no
//! longer adds to h2's table what it adds to the client's, so no block h2 sees refers to that
//! table from then on. Padding is dropped from rewritten blocks; priority is kept.
//!
//! Bounds: a frame longer than [`MAX_FRAME`] or a header block longer than [`MAX_BLOCK`] closes
//! the connection (h2 would refuse the one, and its header list limit the other), as does a
//! block HPACK cannot decode.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use httlib_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface.
const PREFACE_LEN: usize = 24;
/// The largest frame payload accepted: h2's default SETTINGS_MAX_FRAME_SIZE, which meshca's
/// servers keep.
pub(super) const MAX_FRAME: usize = 16_384;
/// The largest header block (HEADERS and CONTINUATION payloads together) accepted.
pub(super) const MAX_BLOCK: usize = 64 * 1024;
/// What a malformed authority becomes.
const LOCALHOST: &[u8] = b"localhost";

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// A stream whose incoming HTTP/2 header blocks get a valid `:authority`; writes pass through.
pub(crate) struct AuthorityRewrite<S> {
    inner: S,
    /// Preface bytes still to pass through unchanged.
    preface_left: usize,
    /// Bytes read from `inner` not yet made into frames.
    input: Vec<u8>,
    /// Bytes ready for the reader, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// A header block being collected: the HEADERS frame's flags, stream, priority bytes, and
    /// the fragments so far.
    block: Option<Block>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
    /// A block has been rewritten: every later one is too.
    rewriting: bool,
    eof: bool,
}

struct Block {
    flags: u8,
    stream: [u8; 4],
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The block's frames as they came, while it may be passed on so (not `rewriting`).
    raw: Vec<u8>,
}

impl<S> AuthorityRewrite<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            preface_left: PREFACE_LEN,
            input: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            block: None,
            decoder: Decoder::default(),
            encoder: Encoder::default(),
            rewriting: false,
            eof: false,
        }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves whatever whole frames `input` holds to `out`, rewriting header blocks.
    fn process(&mut self) -> io::Result<()> {
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.input.len());
            self.out.extend(self.input.drain(..n));
            self.preface_left -= n;
            if self.preface_left > 0 {
                return Ok(());
            }
        }
        // The frames are read in place; what they took is dropped from `input` once, after.
        let input = std::mem::take(&mut self.input);
        let mut taken = 0;
        let result = self.frames(&input, &mut taken);
        self.input = input;
        self.input.drain(..taken);
        result
    }

    /// [`process`](Self::process) after the preface: the whole frames of `input` from `taken`,
    /// which each one taken moves past.
    fn frames(&mut self, input: &[u8], taken: &mut usize) -> io::Result<()> {
        loop {
            let rest = &input[*taken..];
            let Some(header) = rest.get(..9) else {
                return Ok(());
            };
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let (kind, flags) = (header[3], header[4]);
            let mut stream = [0u8; 4];
            stream.copy_from_slice(&header[5..9]);
            if len > MAX_FRAME {
                return Err(refused(format!("a {len}-byte frame (at most {MAX_FRAME})")));
            }
            let Some(frame) = rest.get(..9 + len) else {
                return Ok(());
            };
            *taken += frame.len();
            let payload = &frame[9..];
            match (kind, self.block.as_mut()) {
                (HEADERS, None) => {
                    let (priority, fragment) = split_headers(flags, payload)?;
                    self.block = Some(Block {
                        flags,
                        stream,
                        priority,
                        fragment: fragment.to_vec(),
                        raw: if self.rewriting {
                            Vec::new()
                        } else {
                            frame.to_vec()
                        },
                    });
                }
                (CONTINUATION, Some(block)) if block.stream == stream => {
                    block.fragment.extend_from_slice(payload);
                    if block.fragment.len() > MAX_BLOCK {
                        return Err(refused(format!("a header block over {MAX_BLOCK} bytes")));
                    }
                    if !self.rewriting {
                        block.raw.extend_from_slice(frame);
                    }
                }
                (_, Some(_)) => {
                    return Err(refused("a frame inside a header block".to_owned()));
                }
                (_, None) => {
                    self.out.extend_from_slice(frame);
                    continue;
                }
            }
            if flags & END_HEADERS != 0
                && let Some(block) = self.block.take()
            {
                self.emit(block)?;
            }
        }
    }

    /// Decodes a whole header block; passes it on as it came, or (from the first malformed
    /// `:authority` on) replaces a malformed `:authority` and writes the block again as HEADERS
    /// (and CONTINUATION frames if it does not fit one).
    fn emit(&mut self, block: Block) -> io::Result<()> {
        let mut encoded = block.fragment;
        // httlib-hpack indexes past the end of a truncated integer or an empty string
        // (a panic, not an error): the block's structure is checked first.
        if !well_formed(&encoded) {
            return Err(refused("a malformed header block".to_owned()));
        }
        let mut fields = Vec::new();
        self.decoder
            .decode(&mut encoded, &mut fields)
            .map_err(|e| refused(format!("an undecodable header block ({e:?})")))?;
        if !self.rewriting
            && !fields
                .iter()
                .any(|(name, value, _)| name == b":authority" && !valid_authority(value))
        {
            self.out.extend_from_slice(&block.raw);
            return Ok(());
        }
        self.rewriting = true;
        let mut rewritten = Vec::with_capacity(MAX_FRAME);
        for (name, value, flags) in fields {
            let value = if name == b":authority" && !valid_authority(&value) {
                LOCALHOST.to_vec()
            } else {
                value
            };
            // Never indexed stays never indexed; nothing is added to h2's table.
            let flags = flags & Decoder::NEVER_INDEXED;
            self.encoder
                .encode((name, value, flags), &mut rewritten)
                .map_err(|e| refused(format!("a header that cannot be encoded again ({e:?})")))?;
        }
        let mut first = true;
        let mut rest: &[u8] = &rewritten;
        loop {
            let room = if first && block.priority.is_some() {
                MAX_FRAME - 5
            } else {
                MAX_FRAME
            };
            let (piece, after) = rest.split_at(rest.len().min(room));
            let last = after.is_empty();
            let (kind, mut flags) = if first {
                (HEADERS, block.flags & !(PADDED | END_HEADERS))
            } else {
                (CONTINUATION, 0)
            };
            if last {
                flags |= END_HEADERS;
            }
            let priority = if first { block.priority } else { None };
            let len = piece.len() + priority.map_or(0, |p| p.len());
            self.out.extend_from_slice(&[
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
                kind,
                flags,
            ]);
            self.out.extend_from_slice(&block.stream);
            if let Some(priority) = priority {
                self.out.extend_from_slice(&priority);
            }
            self.out.extend_from_slice(piece);
            if last {
                return Ok(());
            }
            first = false;
            rest = after;
        }
    }
}

/// Rewrites a whole client byte stream at once (what [`AuthorityRewrite`] does as it reads):
/// bytes after the last whole frame are passed on as they are, a header block still waiting
/// for its END_HEADERS is not. For the fuzz target.
pub fn rewrite_client_bytes(input: &[u8]) -> io::Result<Vec<u8>> {
    let mut rewrite = AuthorityRewrite::new(());
    rewrite.input = input.to_vec();
    rewrite.process()?;
    let mut out = rewrite.out;
    out.extend(rewrite.input);
    Ok(out)
}

/// The priority fields and the header block fragment of a HEADERS payload, without padding.
fn split_headers(flags: u8, payload: &[u8]) -> io::Result<(Option<[u8; 5]>, &[u8])> {
    let malformed = || refused("a malformed HEADERS frame".to_owned());
    let mut payload = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        let (&pad, rest) = payload.split_first().ok_or_else(malformed)?;
        padding = usize::from(pad);
        payload = rest;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let fields = payload.get(..5).ok_or_else(malformed)?;
        let mut bytes = [0u8; 5];
        bytes.copy_from_slice(fields);
        priority = Some(bytes);
        payload = &payload[5..];
    }
    let end = payload.len().checked_sub(padding).ok_or_else(malformed)?;
    Ok((priority, &payload[..end]))
}

/// Whether an HPACK header block is a sequence of complete representations (RFC 7541, 6):
/// every integer ends within the block in at most 4 bytes, every string's bytes are there.
fn well_formed(mut block: &[u8]) -> bool {
    /// An integer with an `n`-bit prefix; the rest of the block after it.
    fn integer(block: &[u8], prefix: u8) -> Option<(u32, &[u8])> {
        let (&first, mut rest) = block.split_first()?;
        let mask = (1u16 << prefix) as u32 - 1;
        let mut value = u32::from(first) & mask;
        if value < mask {
            return Some((value, rest));
        }
        for shift in [0, 7, 14] {
            let (&byte, after) = rest.split_first()?;
            rest = after;
            value += u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some((value, rest));
            }
        }
        None
    }
    fn string(block: &[u8]) -> Option<&[u8]> {
        let (len, rest) = integer(block, 7)?;
        rest.get(usize::try_from(len).ok()?..)
    }
    while let Some(&first) = block.first() {
        let (prefix, literal) = match first {
            b if b & 0x80 != 0 => (7, false),
            b if b & 0x40 != 0 => (6, true),
            b if b & 0x20 != 0 => (5, false),
            _ => (4, true),
        };
        let Some((index, rest)) = integer(block, prefix) else {
            return false;
        };
        block = rest;
        if literal {
            if index == 0 {
                let Some(rest) = string(block) else {
                    return false;
                };
                block = rest;
            }
            let Some(rest) = string(block) else {
                return false;
            };
            block = rest;
        }
    }
    true
}

/// Whether h2 would take `value` as an authority: `host[:port]` characters only (RFC 3986
/// reg-name, IP literals, port), nothing percent-encoded, no path.
fn valid_authority(value: &[u8]) -> bool {
    !value.is_empty()
        && value.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'[' | b']')
        })
}

fn refused(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 client sent {what}"),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // End of input: what is left is an incomplete frame, passed on for h2 to
                    // judge.
                    this.eof = true;
                    let rest = std::mem::take(&mut this.input);
                    this.out.extend(rest);
                }
                Poll::Ready(Ok(())) => {
                    this.input.extend_from_slice(read.filled());
                    if let Err(e) = this.process() {
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A request's headers as gRPC's C core encodes them: the authority indexed on the first
    /// request (with Huffman), referred to by its dynamic index afterwards.
    fn block(encoder: &mut Encoder<'_>, authority: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", authority),
            (b"workload.spiffe.io", b"true"),
        ] {
            let flags = Encoder::HUFFMAN_VALUE | Encoder::WITH_INDEXING | Encoder::BEST_FORMAT;
            encoder
                .encode((name.to_vec(), value.to_vec(), flags), &mut out)
                .unwrap();
        }
        out
    }

    async fn through(input: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&input).await.unwrap();
        drop(client);
        let mut out = Vec::new();
        AuthorityRewrite::new(server)
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }

    /// A header field, or a frame's payload as `("payload", bytes)`.
    type Field = (Vec<u8>, Vec<u8>);

    /// The frames of `bytes` after the preface (kind, flags, fields), header blocks decoded.
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, Vec<Field>)> {
        assert_eq!(&bytes[..24], PREFACE);
        let mut decoder = Decoder::default();
        let mut rest = &bytes[24..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let payload = rest[9..9 + len].to_vec();
            rest = &rest[9 + len..];
            let fields = if kind == HEADERS {
                let mut block = payload[if flags & PRIORITY != 0 { 5 } else { 0 }..].to_vec();
                let mut fields = Vec::new();
                decoder.decode(&mut block, &mut fields).unwrap();
                fields.into_iter().map(|(n, v, _)| (n, v)).collect()
            } else {
                vec![(b"payload".to_vec(), payload)]
            };
            out.push((kind, flags, fields));
        }
        out
    }

    fn authority(fields: &[Field]) -> &[u8] {
        &fields.iter().find(|(n, _)| n == b":authority").unwrap().1
    }

    #[tokio::test]
    async fn a_percent_encoded_socket_path_becomes_localhost_on_every_request() {
        let mut encoder = Encoder::default();
        let bad = b"tmp%2Fmeshca%2Fworkload-api.sock";
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 100])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, 1, &block(&mut encoder, bad)));
        input.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0])); // DATA, END_STREAM
        // The second request refers to the indexed authority; it is split over a CONTINUATION
        // and padded.
        let second = block(&mut encoder, bad);
        let (a, b) = second.split_at(3);
        let mut padded = vec![4u8];
        padded.extend_from_slice(a);
        padded.extend_from_slice(&[0; 4]);
        input.extend(frame(HEADERS, PADDED, 3, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        let once = rewrite_client_bytes(&input).unwrap();
        assert_eq!(
            rewrite_client_bytes(&once).unwrap(),
            once,
            "stable (the fuzz property)"
        );
        let read = through(input).await;
        assert_eq!(read, once, "the stream and the one-shot rewrite agree");
        let output = frames(&read);
        assert_eq!(output.len(), 4);
        assert_eq!(output[0].0, 0x4, "SETTINGS as it was");
        assert_eq!(output[0].2[0].1, [0, 4, 0, 0, 0, 100]);
        for index in [1, 3] {
            let (kind, flags, fields) = &output[index];
            assert_eq!((*kind, *flags), (HEADERS, END_HEADERS));
            assert_eq!(authority(fields), b"localhost");
            assert_eq!(fields.len(), 5);
            assert_eq!(
                fields[2],
                (
                    b":path".to_vec(),
                    b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec()
                )
            );
        }
        assert_eq!(output[2].2[0].1, [0, 0, 0, 0, 0], "DATA as it was");
    }

    #[tokio::test]
    async fn a_valid_authority_is_kept_and_bad_input_closes_the_connection() {
        let mut encoder = Encoder::default();
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            HEADERS,
            END_HEADERS | 0x1,
            1,
            &block(&mut encoder, b"localhost:80"),
        ));
        let output = frames(&through(input).await);
        assert_eq!(authority(&output[0].2), b"localhost:80");
        assert_eq!(output[0].1, END_HEADERS | 0x1, "END_STREAM kept");

        for bad in [
            frame(0x0, 0, 1, &vec![0; MAX_FRAME + 1]),
            frame(
                HEADERS,
                END_HEADERS,
                1,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
            [frame(HEADERS, 0, 1, &[0x82]), frame(0x0, 0, 1, &[1])].concat(),
            frame(HEADERS, PADDED, 1, &[9, 0x82]),
        ] {
            let (mut client, server) = tokio::io::duplex(1 << 20);
            client.write_all(&[PREFACE, &bad].concat()).await.unwrap();
            drop(client);
            let mut out = Vec::new();
            let error = AuthorityRewrite::new(server)
                .read_to_end(&mut out)
                .await
                .unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        }
    }

    #[tokio::test]
    async fn valid_blocks_pass_as_they_came_until_one_is_rewritten_then_every_one_is() {
        let mut encoder = Encoder::default();
        let bad = b"tmp%2Fmeshca%2Fworkload-api.sock";
        let first = frame(HEADERS, END_HEADERS, 1, &block(&mut encoder, b"localhost"));
        // Refers to the fields the first indexed: only in step with the client's table does
        // it decode.
        let second = frame(HEADERS, END_HEADERS, 3, &block(&mut encoder, b"localhost"));
        let mut input = [PREFACE, &first, &second].concat();
        let read = through(input.clone()).await;
        assert_eq!(read, input, "passed on byte for byte");

        input.extend(frame(HEADERS, END_HEADERS, 5, &block(&mut encoder, bad)));
        // Valid again, but indexed by the client after a block h2 saw rewritten.
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            7,
            &block(&mut encoder, b"localhost"),
        ));
        let read = through(input.clone()).await;
        assert_eq!(
            read[..24 + first.len() + second.len()],
            input[..24 + first.len() + second.len()]
        );
        assert_eq!(rewrite_client_bytes(&read).unwrap(), read, "stable");
        let output = frames(&read);
        assert_eq!(output.len(), 4);
        for (_, _, fields) in &output {
            assert_eq!(fields.len(), 5);
            assert_eq!(authority(fields), b"localhost");
            assert_eq!(
                fields[2],
                (
                    b":path".to_vec(),
                    b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec()
                )
            );
        }
        // The last two were encoded again: nothing in them refers to h2's dynamic table.
        let after = &read[24 + first.len() + second.len()..];
        let mut fresh = Decoder::default();
        let mut rest = after;
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let mut block = rest[9..9 + len].to_vec();
            let mut fields = Vec::new();
            fresh.decode(&mut block, &mut fields).unwrap();
            assert_eq!(fields.len(), 5);
            rest = &rest[9 + len..];
        }
    }

    #[tokio::test]
    async fn random_header_blocks_are_refused_or_passed_never_a_panic() {
        use rand::Rng as _;
        let mut rng = rand::rng();
        for round in 0..20_000 {
            let len = rng.random_range(0..64);
            let mut block: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if round % 2 == 0 {
                // A well-formed literal with a random (Huffman or not) name and value.
                let name: Vec<u8> = (0..rng.random_range(1..20)).map(|_| rng.random()).collect();
                let value: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
                let h = if rng.random() { 0x80 } else { 0 };
                block = [
                    &[0x40, h | name.len() as u8][..],
                    &name,
                    &[h | value.len() as u8],
                    &value,
                ]
                .concat();
            }
            let flags = rng.random::<u8>() & (END_HEADERS | PADDED | PRIORITY | 0x1);
            let (mut client, server) = tokio::io::duplex(1 << 16);
            client
                .write_all(&[PREFACE, &frame(HEADERS, flags, 1, &block)].concat())
                .await
                .unwrap();
            drop(client);
            let mut out = Vec::new();
            let _ = AuthorityRewrite::new(server).read_to_end(&mut out).await;
        }
    }
}
