//! The load tool's HTTP/2 client: many gRPC streaming calls on one connection, driven by one
//! task that reads and writes frames itself. What is called, and what each response message
//! asks for, is a [`Protocol`]'s: SDS's `StreamSecrets` (decode a `DiscoveryResponse`, ACK it)
//! or the Workload API's `FetchX509SVID` (the `workload.spiffe.io: true` header; nothing sent
//! back).
//!
//! Why not a client library: the client shares the machine's two cores with the server it
//! measures, so every microsecond it spends per stream is taken from the server's figure.
//! tonic's client cost about 68 µs of CPU per stream, the `h2` crate's about 20 µs (a task and
//! a wake-up per stream, a request queue, per-stream flow-control bookkeeping). This driver
//! does what a proxy's event loop does: one read of everything that arrived on the connection,
//! every frame handled in place, and the answers (ACKs) written back in one write.
//!
//! What goes over the wire is ordinary HTTP/2 (RFC 9113) as Envoy's gRPC client sends it:
//! the connection preface, SETTINGS with Envoy's default flow-control windows (256 MiB per
//! stream and per connection), a HEADERS frame per call (`POST`, `content-type:
//! application/grpc`, `te: trailers`), length-prefixed protobuf messages in DATA frames, an
//! ACK for every response. The server's header blocks are decoded with an HPACK decoder
//! (httlib-hpack) so that a `grpc-status` in trailers or a trailers-only answer is reported with
//! its message; SETTINGS, PING, WINDOW_UPDATE, RST_STREAM and GOAWAY are honoured; DATA is only
//! sent within the server's flow-control windows.

use std::collections::VecDeque;
use std::sync::Arc;

use anyhow::{Context as _, bail, ensure};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use meshca::sds::convert::SECRET_TYPE_URL;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Envoy's default `initial_stream_window_size` and `initial_connection_window_size`: the
/// server never waits for the client's WINDOW_UPDATE frames, as with real proxies.
pub(crate) const ENVOY_WINDOW: u32 = 256 * 1024 * 1024;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The protocol's initial window and largest frame before SETTINGS say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;
const DEFAULT_MAX_FRAME: usize = 16_384;
const FRAME_HEADER: usize = 9;

mod frame {
    pub(crate) const DATA: u8 = 0x0;
    pub(crate) const HEADERS: u8 = 0x1;
    pub(crate) const RST_STREAM: u8 = 0x3;
    pub(crate) const SETTINGS: u8 = 0x4;
    pub(crate) const PUSH_PROMISE: u8 = 0x5;
    pub(crate) const PING: u8 = 0x6;
    pub(crate) const GOAWAY: u8 = 0x7;
    pub(crate) const WINDOW_UPDATE: u8 = 0x8;
    pub(crate) const CONTINUATION: u8 = 0x9;
}

mod flag {
    pub(crate) const END_STREAM: u8 = 0x1;
    pub(crate) const ACK: u8 = 0x1;
    pub(crate) const END_HEADERS: u8 = 0x4;
    pub(crate) const PADDED: u8 = 0x8;
    pub(crate) const PRIORITY: u8 = 0x20;
}

mod setting {
    pub(crate) const ENABLE_PUSH: u16 = 0x2;
    pub(crate) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(crate) const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub(crate) const MAX_FRAME_SIZE: u16 = 0x5;
}

/// The call the streams make and what they do with each response message.
pub(crate) trait Protocol: Send + Sync + 'static {
    /// The gRPC method's path.
    fn path(&self) -> &str;
    /// Request headers beyond those of every gRPC call: (name, value), lowercase.
    fn extra_headers(&self) -> &[(&str, &str)];
    /// Whether the first message is the whole request (a server-streaming call: it is sent
    /// with END_STREAM, as the server waits for it before answering).
    fn one_request(&self) -> bool;
    /// Handles response `message` of stream `index`: returns what the round checks after the
    /// timed phase, and the message to send back, if any.
    fn on_message(&self, index: usize, message: Bytes) -> anyhow::Result<(Vec<u8>, Option<Bytes>)>;
}

/// SDS's `StreamSecrets`, as Envoy calls it: each `DiscoveryResponse` is ACKed with its
/// version and nonce; its one resource (an encoded `Secret`) is what the round checks.
pub(crate) struct Sds;

impl Protocol for Sds {
    fn path(&self) -> &str {
        meshca::sds::PATH_STREAM
    }

    fn extra_headers(&self) -> &[(&str, &str)] {
        &[]
    }

    fn one_request(&self) -> bool {
        false
    }

    fn on_message(&self, index: usize, message: Bytes) -> anyhow::Result<(Vec<u8>, Option<Bytes>)> {
        let mut response = DiscoveryResponse::decode(message)
            .with_context(|| format!("stream {index}: a malformed DiscoveryResponse"))?;
        ensure!(
            response.resources.len() == 1,
            "stream {index}: expected one resource, got {}",
            response.resources.len()
        );
        let secret = std::mem::take(&mut response.resources[0].value);
        let ack = grpc_frame(&DiscoveryRequest {
            version_info: response.version_info,
            response_nonce: response.nonce,
            resource_names: vec!["default".to_owned()],
            type_url: SECRET_TYPE_URL.to_owned(),
            ..DiscoveryRequest::default()
        });
        Ok((secret, Some(ack)))
    }
}

/// The SPIFFE Workload API's `FetchX509SVID`, as go-spiffe and py-spiffe call it: the security
/// header the specification requires; the server streams, the client sends nothing back. The
/// whole `X509SVIDResponse` is what the round checks (decoded there, after the timed phase).
pub(crate) struct WorkloadApi;

/// `FetchX509SVID`'s gRPC path.
pub(crate) const FETCH_X509_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";

impl Protocol for WorkloadApi {
    fn path(&self) -> &str {
        FETCH_X509_SVID
    }

    fn extra_headers(&self) -> &[(&str, &str)] {
        &[(meshca::workload_api::SECURITY_HEADER, "true")]
    }

    fn one_request(&self) -> bool {
        true
    }

    fn on_message(&self, index: usize, message: Bytes) -> anyhow::Result<(Vec<u8>, Option<Bytes>)> {
        ensure!(
            !message.is_empty(),
            "stream {index}: an empty X509SVIDResponse"
        );
        Ok((message.to_vec(), None))
    }
}

/// What a stream reports to the round.
pub(crate) enum Event {
    /// A response arrived; what the [`Protocol`] kept of it is checked after the timed phase,
    /// so that the client's parsing does not take CPU from the server while it is timed.
    Response { stream: usize, payload: Vec<u8> },
    /// The stream ended or could not go on.
    Failed { stream: usize, error: String },
}

/// Anything a connection can run over (loopback TCP or a Unix socket).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One call on the connection.
struct Call {
    /// The round's index of the stream, for events.
    index: usize,
    /// Bytes of a message split across DATA frames, until it is whole.
    partial: BytesMut,
    /// How much more DATA the server lets this stream send.
    send_window: i64,
    /// Bytes received since the last stream WINDOW_UPDATE.
    unacknowledged: u32,
    /// The server's headers have arrived (the next header block is trailers).
    answered: bool,
    ended: bool,
}

/// An HTTP/2 connection after the SETTINGS exchange, ready to open calls.
pub(crate) struct Connection {
    io: Box<dyn Io>,
    protocol: Arc<dyn Protocol>,
    read: BytesMut,
    write: BytesMut,
    decoder: httlib_hpack::Decoder<'static>,
    calls: Vec<Call>,
    /// A header block spread over CONTINUATION frames: its stream, bytes, and END_STREAM.
    continuation: Option<(u32, BytesMut, bool)>,
    /// DATA waiting for the server's flow-control windows: (call, gRPC frame, END_STREAM).
    blocked: VecDeque<(usize, Bytes, bool)>,
    send_window: i64,
    stream_initial_window: i64,
    max_frame: usize,
    max_concurrent_streams: Option<u32>,
    /// Bytes received since the last connection WINDOW_UPDATE.
    unacknowledged: u32,
    settings_received: bool,
    settings_acknowledged: bool,
    /// Why the server said it is closing the connection (GOAWAY), if it did.
    going_away: Option<String>,
    /// Response messages received on the connection.
    responses: usize,
}

impl Connection {
    /// Sends the preface and SETTINGS and waits until the server's SETTINGS arrived and ours
    /// were acknowledged, so that no part of the handshake falls into a timed phase.
    pub(crate) async fn handshake(
        io: Box<dyn Io>,
        protocol: Arc<dyn Protocol>,
    ) -> anyhow::Result<Self> {
        let mut connection = Self {
            io,
            protocol,
            // Both grow to what the connection's streams need: with one stream per connection
            // (10,000 connections), 64 KiB each up front cost more page faults than the rest
            // of the client's work.
            read: BytesMut::new(),
            write: BytesMut::new(),
            decoder: httlib_hpack::Decoder::default(),
            calls: Vec::new(),
            continuation: None,
            blocked: VecDeque::new(),
            send_window: DEFAULT_WINDOW,
            stream_initial_window: DEFAULT_WINDOW,
            max_frame: DEFAULT_MAX_FRAME,
            max_concurrent_streams: None,
            unacknowledged: 0,
            settings_received: false,
            settings_acknowledged: false,
            going_away: None,
            responses: 0,
        };
        connection.write.put_slice(PREFACE);
        let settings = [
            (setting::ENABLE_PUSH, 0),
            (setting::INITIAL_WINDOW_SIZE, ENVOY_WINDOW),
        ];
        put_frame_header(
            &mut connection.write,
            6 * settings.len(),
            frame::SETTINGS,
            0,
            0,
        );
        for (id, value) in settings {
            connection.write.put_u16(id);
            connection.write.put_u32(value);
        }
        put_window_update(
            &mut connection.write,
            0,
            ENVOY_WINDOW - DEFAULT_WINDOW as u32,
        );
        let (discard, _) = mpsc::unbounded_channel();
        while !(connection.settings_received && connection.settings_acknowledged) {
            connection.flush().await?;
            if !connection.read_more().await? {
                bail!("the server closed the connection during the HTTP/2 handshake");
            }
            connection
                .handle_frames(&discard)
                .context("HTTP/2 handshake")?;
        }
        connection.flush().await?;
        Ok(connection)
    }

    /// Frames a call of the [`Protocol`]'s method for each `(index, first message)` in the write buffer
    /// (sent by [`Connection::run`]): HEADERS, then the first request as DATA.
    pub(crate) fn open(
        &mut self,
        authority: &str,
        calls: Vec<(usize, Bytes)>,
    ) -> anyhow::Result<()> {
        let total = self.calls.len() + calls.len();
        if let Some(limit) = self.max_concurrent_streams {
            ensure!(
                total <= limit as usize,
                "the server allows {limit} concurrent streams per connection, {total} asked for: \
                 use more --connections"
            );
        }
        ensure!(
            2 * total < 1 << 31,
            "too many streams for one HTTP/2 connection"
        );
        let headers = request_headers(
            self.protocol.path(),
            authority,
            self.protocol.extra_headers(),
        );
        for (index, first) in calls {
            let call = self.calls.len();
            self.calls.push(Call {
                index,
                partial: BytesMut::new(),
                send_window: self.stream_initial_window,
                unacknowledged: 0,
                answered: false,
                ended: false,
            });
            put_frame_header(
                &mut self.write,
                headers.len(),
                frame::HEADERS,
                flag::END_HEADERS,
                stream_id(call),
            );
            self.write.put_slice(&headers);
            let end = self.protocol.one_request();
            self.send_data(call, first, end)?;
        }
        Ok(())
    }

    /// Sends what [`Connection::open`] framed, then answers every response as the
    /// [`Protocol`] says until the connection ends, reporting each response and each failed stream on `events`.
    /// Returns how many response messages the connection carried.
    pub(crate) async fn run(mut self, events: mpsc::UnboundedSender<Event>) -> usize {
        let failure = loop {
            if let Err(error) = self.flush().await {
                break format!("{error:#}");
            }
            match self.read_more().await {
                Ok(true) => {}
                Ok(false) => {
                    break self
                        .going_away
                        .take()
                        .unwrap_or_else(|| "the server closed the connection".to_owned());
                }
                Err(error) => break format!("{error:#}"),
            }
            if let Err(error) = self.handle_frames(&events) {
                break format!("{error:#}");
            }
        };
        for call in self.calls.iter().filter(|c| !c.ended) {
            let _ = events.send(Event::Failed {
                stream: call.index,
                error: failure.clone(),
            });
        }
        self.responses
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.write.is_empty() {
            self.io
                .write_all(&self.write)
                .await
                .context("cannot write to the server")?;
            self.write.clear();
        }
        Ok(())
    }

    /// Reads what has arrived; `false` at the end of the connection.
    async fn read_more(&mut self) -> anyhow::Result<bool> {
        // Room for at least a frame, and for a few responses of each stream at once on a
        // connection that carries many.
        let room = (4 * 1024 * self.calls.len()).clamp(DEFAULT_MAX_FRAME, 256 * 1024);
        if self.read.capacity() - self.read.len() < room / 2 {
            self.read.reserve(room);
        }
        let read = self
            .io
            .read_buf(&mut self.read)
            .await
            .context("cannot read from the server")?;
        Ok(read > 0)
    }

    /// Handles every whole frame in the read buffer.
    fn handle_frames(&mut self, events: &mpsc::UnboundedSender<Event>) -> anyhow::Result<()> {
        while self.read.len() >= FRAME_HEADER {
            let length = usize::from(self.read[0]) << 16
                | usize::from(self.read[1]) << 8
                | usize::from(self.read[2]);
            ensure!(
                length <= DEFAULT_MAX_FRAME,
                "the server sent a {length}-byte frame, larger than the 16 KiB this client allows"
            );
            if self.read.len() < FRAME_HEADER + length {
                break;
            }
            let kind = self.read[3];
            let flags = self.read[4];
            let stream =
                u32::from_be_bytes([self.read[5], self.read[6], self.read[7], self.read[8]])
                    & 0x7fff_ffff;
            self.read.advance(FRAME_HEADER);
            let payload = self.read.split_to(length).freeze();
            self.handle_frame(kind, flags, stream, payload, events)?;
        }
        Ok(())
    }

    fn handle_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        mut payload: Bytes,
        events: &mpsc::UnboundedSender<Event>,
    ) -> anyhow::Result<()> {
        if self.continuation.is_some() && kind != frame::CONTINUATION {
            bail!("the server interleaved a frame of type {kind} inside a header block");
        }
        match kind {
            frame::DATA => {
                let call = self.call(stream)?;
                self.received(call, payload.len() as u32);
                let data = unpad(flags, payload)?;
                self.on_data(call, data, events)?;
                if flags & flag::END_STREAM != 0 {
                    self.end(call, "the server ended the stream without trailers", events);
                }
            }
            frame::HEADERS => {
                let mut block = unpad(flags, payload)?;
                if flags & flag::PRIORITY != 0 {
                    ensure!(
                        block.len() >= 5,
                        "a HEADERS frame too short for its priority"
                    );
                    block.advance(5);
                }
                let end_stream = flags & flag::END_STREAM != 0;
                if flags & flag::END_HEADERS == 0 {
                    self.continuation = Some((stream, BytesMut::from(&block[..]), end_stream));
                } else {
                    self.on_headers(stream, &block, end_stream, events)?;
                }
            }
            frame::CONTINUATION => {
                let Some((first, mut block, end_stream)) = self.continuation.take() else {
                    bail!("the server sent CONTINUATION without a header block");
                };
                ensure!(first == stream, "CONTINUATION for another stream");
                block.extend_from_slice(&payload);
                if flags & flag::END_HEADERS == 0 {
                    self.continuation = Some((stream, block, end_stream));
                } else {
                    self.on_headers(stream, &block, end_stream, events)?;
                }
            }
            frame::RST_STREAM => {
                ensure!(payload.len() == 4, "a malformed RST_STREAM");
                let code = payload.get_u32();
                let call = self.call(stream)?;
                self.end(
                    call,
                    &format!("the server reset the stream (HTTP/2 error {code:#x})"),
                    events,
                );
            }
            frame::SETTINGS if flags & flag::ACK != 0 => self.settings_acknowledged = true,
            frame::SETTINGS => {
                ensure!(
                    payload.len().is_multiple_of(6),
                    "a malformed SETTINGS frame"
                );
                while payload.has_remaining() {
                    let id = payload.get_u16();
                    let value = payload.get_u32();
                    self.apply_setting(id, value)?;
                }
                self.settings_received = true;
                put_frame_header(&mut self.write, 0, frame::SETTINGS, flag::ACK, 0);
                self.send_blocked();
            }
            frame::PING if flags & flag::ACK == 0 => {
                ensure!(payload.len() == 8, "a malformed PING");
                put_frame_header(&mut self.write, 8, frame::PING, flag::ACK, 0);
                self.write.put_slice(&payload);
            }
            frame::GOAWAY => {
                // Streams up to the last one the server names go on (a graceful shutdown ends
                // them itself); later ones were never processed.
                ensure!(payload.len() >= 8, "a malformed GOAWAY");
                let last = payload.get_u32() & 0x7fff_ffff;
                let code = payload.get_u32();
                let reason = format!(
                    "the server is closing the connection (GOAWAY, HTTP/2 error {code:#x}) {}",
                    String::from_utf8_lossy(&payload)
                );
                for call in 0..self.calls.len() {
                    if stream_id(call) > last {
                        self.end(call, &reason, events);
                    }
                }
                self.going_away = Some(reason);
            }
            frame::WINDOW_UPDATE => {
                ensure!(payload.len() == 4, "a malformed WINDOW_UPDATE");
                let increment = i64::from(payload.get_u32() & 0x7fff_ffff);
                if stream == 0 {
                    self.send_window += increment;
                } else {
                    let call = self.call(stream)?;
                    self.calls[call].send_window += increment;
                }
                self.send_blocked();
            }
            frame::PUSH_PROMISE => bail!("the server pushed a stream although push is disabled"),
            // PING acknowledgements, PRIORITY and unknown frame types need no answer.
            _ => {}
        }
        Ok(())
    }

    fn apply_setting(&mut self, id: u16, value: u32) -> anyhow::Result<()> {
        match id {
            setting::INITIAL_WINDOW_SIZE => {
                let delta = i64::from(value) - self.stream_initial_window;
                self.stream_initial_window = i64::from(value);
                for call in &mut self.calls {
                    call.send_window += delta;
                }
            }
            setting::MAX_FRAME_SIZE => self.max_frame = value as usize,
            setting::MAX_CONCURRENT_STREAMS => {
                self.max_concurrent_streams = Some(value);
                ensure!(
                    self.calls.len() <= value as usize,
                    "the server lowered its concurrent streams to {value}, {} are open",
                    self.calls.len()
                );
            }
            // Header table size: this client never indexes, so the server's table is unused.
            _ => {}
        }
        Ok(())
    }

    /// The call of an HTTP/2 stream id this client opened.
    fn call(&self, stream: u32) -> anyhow::Result<usize> {
        let call = (stream as usize).wrapping_sub(1) / 2;
        ensure!(
            stream % 2 == 1 && call < self.calls.len(),
            "the server sent a frame for stream {stream}, which this client never opened"
        );
        Ok(call)
    }

    /// Counts received DATA against the windows this client granted, and grants them again
    /// once half is used.
    fn received(&mut self, call: usize, length: u32) {
        self.unacknowledged += length;
        if self.unacknowledged >= ENVOY_WINDOW / 2 {
            put_window_update(&mut self.write, 0, self.unacknowledged);
            self.unacknowledged = 0;
        }
        let state = &mut self.calls[call];
        state.unacknowledged += length;
        if state.unacknowledged >= ENVOY_WINDOW / 2 && !state.ended {
            let increment = std::mem::take(&mut state.unacknowledged);
            put_window_update(&mut self.write, stream_id(call), increment);
        }
    }

    /// Reads whole gRPC messages of `call`, each handled by the [`Protocol`].
    fn on_data(
        &mut self,
        call: usize,
        mut data: Bytes,
        events: &mpsc::UnboundedSender<Event>,
    ) -> anyhow::Result<()> {
        if self.calls[call].ended {
            return Ok(());
        }
        // A DATA frame usually carries exactly one whole message, read in place; only the
        // pieces of a message split across frames are gathered in `partial`.
        if !self.calls[call].partial.is_empty() {
            self.calls[call].partial.extend_from_slice(&data);
            data = self.calls[call].partial.split().freeze();
        }
        while let Some(message) = next_message(&mut data)? {
            let index = self.calls[call].index;
            let (payload, answer) = self.protocol.on_message(index, message)?;
            self.responses += 1;
            let _ = events.send(Event::Response {
                stream: index,
                payload,
            });
            if let Some(answer) = answer {
                self.send_data(call, answer, false)?;
            }
        }
        self.calls[call].partial.extend_from_slice(&data);
        Ok(())
    }

    /// A decoded header block: the response's headers, or trailers that end the stream.
    fn on_headers(
        &mut self,
        stream: u32,
        block: &[u8],
        end_stream: bool,
        events: &mpsc::UnboundedSender<Event>,
    ) -> anyhow::Result<()> {
        // Every block goes through the decoder, whatever its stream: HPACK's table is shared
        // by the whole connection.
        let mut encoded = block.to_vec();
        let mut headers = Vec::new();
        self.decoder
            .decode(&mut encoded, &mut headers)
            .map_err(|e| anyhow::anyhow!("the server's header block does not decode: {e:?}"))?;
        let call = self.call(stream)?;
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _, _)| n == name.as_bytes())
                .map(|(_, v, _)| String::from_utf8_lossy(v).into_owned())
        };
        if !self.calls[call].answered {
            self.calls[call].answered = true;
            let status = value(":status").unwrap_or_default();
            if status != "200" {
                self.end(call, &format!("HTTP status {status}"), events);
                return Ok(());
            }
        }
        if end_stream || value("grpc-status").is_some() {
            let reason = match value("grpc-status").as_deref() {
                None | Some("0") => "the server ended the stream".to_owned(),
                Some(code) => format!(
                    "the server ended the stream with gRPC status {code}: {}",
                    value("grpc-message").unwrap_or_default()
                ),
            };
            self.end(call, &reason, events);
        }
        Ok(())
    }

    fn end(&mut self, call: usize, reason: &str, events: &mpsc::UnboundedSender<Event>) {
        let state = &mut self.calls[call];
        if !std::mem::replace(&mut state.ended, true) {
            let _ = events.send(Event::Failed {
                stream: state.index,
                error: reason.to_owned(),
            });
        }
    }

    /// Writes `message` as one DATA frame of `call` if the server's windows allow it, else
    /// queues it (in order) for the next WINDOW_UPDATE.
    /// `end`: the last DATA of the call (END_STREAM).
    fn send_data(&mut self, call: usize, message: Bytes, end: bool) -> anyhow::Result<()> {
        ensure!(
            message.len() <= self.max_frame,
            "a {}-byte request does not fit one frame",
            message.len()
        );
        if !self.blocked.is_empty() || !self.try_send(call, &message, end) {
            self.blocked.push_back((call, message, end));
        }
        Ok(())
    }

    fn try_send(&mut self, call: usize, message: &Bytes, end: bool) -> bool {
        let length = message.len() as i64;
        let state = &mut self.calls[call];
        if state.ended {
            return true;
        }
        if length > self.send_window || length > state.send_window {
            return false;
        }
        self.send_window -= length;
        state.send_window -= length;
        put_frame_header(
            &mut self.write,
            message.len(),
            frame::DATA,
            if end { flag::END_STREAM } else { 0 },
            stream_id(call),
        );
        self.write.put_slice(message);
        true
    }

    fn send_blocked(&mut self) {
        while let Some((call, message, end)) = self.blocked.pop_front() {
            if !self.try_send(call, &message, end) {
                self.blocked.push_front((call, message, end));
                break;
            }
        }
    }
}

/// The HTTP/2 stream id of the `call`-th call: client streams are odd, in opening order.
fn stream_id(call: usize) -> u32 {
    u32::try_from(2 * call + 1).expect("checked when the calls were opened")
}

fn put_frame_header(buffer: &mut BytesMut, length: usize, kind: u8, flags: u8, stream: u32) {
    let length = u32::try_from(length).expect("a frame shorter than 16 MiB");
    buffer.put_slice(&length.to_be_bytes()[1..]);
    buffer.put_u8(kind);
    buffer.put_u8(flags);
    buffer.put_u32(stream);
}

fn put_window_update(buffer: &mut BytesMut, stream: u32, increment: u32) {
    put_frame_header(buffer, 4, frame::WINDOW_UPDATE, 0, stream);
    buffer.put_u32(increment);
}

/// The payload of a DATA or HEADERS frame without its padding.
fn unpad(flags: u8, mut payload: Bytes) -> anyhow::Result<Bytes> {
    if flags & flag::PADDED == 0 {
        return Ok(payload);
    }
    ensure!(!payload.is_empty(), "a padded frame without its pad length");
    let padding = usize::from(payload.get_u8());
    ensure!(padding <= payload.len(), "a frame padded beyond its length");
    payload.truncate(payload.len() - padding);
    Ok(payload)
}

/// The header block of a gRPC call of `path`, HPACK-encoded without the dynamic table (so
/// that one block serves every stream): static-table entries and literals "without indexing".
fn request_headers(path: &str, authority: &str, extra: &[(&str, &str)]) -> Bytes {
    let mut block = BytesMut::new();
    block.put_u8(0x80 | 3); // :method POST
    block.put_u8(0x80 | 6); // :scheme http
    put_literal(&mut block, 4, path); // :path
    put_literal(&mut block, 1, authority); // :authority
    put_literal(&mut block, 31, "application/grpc"); // content-type
    for (name, value) in [("te", "trailers")].iter().chain(extra) {
        block.put_u8(0); // a literal name
        put_string(&mut block, name);
        put_string(&mut block, value);
    }
    block.freeze()
}

/// A "literal header field without indexing" whose name is static-table entry `name_index`.
fn put_literal(block: &mut BytesMut, name_index: usize, value: &str) {
    put_integer(block, 0x00, 4, name_index);
    put_string(block, value);
}

/// A string literal, not Huffman-coded.
fn put_string(block: &mut BytesMut, value: &str) {
    put_integer(block, 0x00, 7, value.len());
    block.put_slice(value.as_bytes());
}

/// An HPACK integer with an `prefix_bits`-bit prefix, the byte's other bits set to `first`.
fn put_integer(block: &mut BytesMut, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        block.put_u8(first | value as u8);
        return;
    }
    block.put_u8(first | max as u8);
    value -= max;
    while value >= 0x80 {
        block.put_u8((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    block.put_u8(value as u8);
}

/// A gRPC message on the wire: uncompressed flag, big-endian length, protobuf bytes.
pub(crate) fn grpc_frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut frame = BytesMut::with_capacity(5 + len);
    frame.put_u8(0);
    frame.put_u32(u32::try_from(len).expect("a small message"));
    message.encode(&mut frame).expect("capacity reserved");
    frame.freeze()
}

/// The next whole gRPC message at the front of `buffer`, if it has arrived.
fn next_message(buffer: &mut Bytes) -> anyhow::Result<Option<Bytes>> {
    if buffer.len() < 5 {
        return Ok(None);
    }
    ensure!(buffer[0] == 0, "the server sent a compressed message");
    let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < 5 + len {
        return Ok(None);
    }
    buffer.advance(5);
    Ok(Some(buffer.split_to(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_decode_as_a_grpc_call() {
        let mut block = request_headers(
            meshca::sds::PATH_STREAM,
            "127.0.0.1:15000",
            &[(meshca::workload_api::SECURITY_HEADER, "true")],
        )
        .to_vec();
        let mut headers = Vec::new();
        httlib_hpack::Decoder::default()
            .decode(&mut block, &mut headers)
            .unwrap();
        let text: Vec<(String, String)> = headers
            .into_iter()
            .map(|(n, v, _)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect();
        let expected = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", meshca::sds::PATH_STREAM),
            (":authority", "127.0.0.1:15000"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("workload.spiffe.io", "true"),
        ];
        assert_eq!(
            text,
            expected.map(|(n, v)| (n.to_owned(), v.to_owned())).to_vec()
        );
    }

    #[test]
    fn integers_past_their_prefix_continue_in_later_bytes() {
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut block = BytesMut::new();
        put_integer(&mut block, 0, 5, 1337);
        assert_eq!(&block[..], &[0x1f, 0x9a, 0x0a]);
    }

    #[test]
    fn messages_split_across_reads_wait_for_their_rest() {
        let whole = grpc_frame(&DiscoveryRequest {
            version_info: "1".to_owned(),
            ..DiscoveryRequest::default()
        });
        let mut start = whole.slice(..4);
        assert!(next_message(&mut start).unwrap().is_none());
        let mut all = whole.clone();
        let message = next_message(&mut all).unwrap().unwrap();
        assert_eq!(DiscoveryRequest::decode(message).unwrap().version_info, "1");
        assert!(all.is_empty());
    }
}
