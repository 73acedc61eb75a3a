//! The floor relay: the CPU floor of the frame-relay architecture, i.e. what an
//! HTTP/2 relay for unary gRPC costs with nothing but the relay in it.
//!
//! A measurement instrument, not a product. The `relay-floor` target of the
//! proxy benchmark runs it as a child process of the bench binary
//! (`proxy --relay-floor-child --listen ADDR --upstreams A,B,C`, under
//! `taskset -c 1` like the other proxies), so its CPU per call can be set
//! next to grpc-edge's and HAProxy's under the same load.
//!
//! # What it is
//!
//! One thread (a current-thread tokio runtime), one HTTP/2 connection to each
//! upstream opened at start, and every client stream sent to the next
//! upstream in turn (round-robin). Each connection has a task that reads
//! whatever the socket holds, handles every complete frame in it, and writes
//! what other connections queued for it in one `write` per wake-up.
//!
//! # What it does per frame
//!
//! - client preface: checked, then skipped;
//! - SETTINGS: acknowledged (their values are not read); PING: answered;
//! - HEADERS (END_STREAM, PADDED, PRIORITY): padding and priority stripped,
//!   the block HPACK-decoded into a scratch buffer and re-encoded for the
//!   connection it leaves on ([`hpack`]), on a new stream of the next upstream
//!   (a client's first HEADERS on a stream) or on the stream it is mapped to
//!   (request trailers, responses); a header block that would need
//!   CONTINUATION closes the connection it came on;
//! - DATA: padding stripped, forwarded with its END_STREAM flag; the bytes
//!   are counted, and a connection-level WINDOW_UPDATE goes back whenever
//!   half of the 16 MiB window is used;
//! - RST_STREAM: forwarded to the other side of the stream, both ways;
//! - END_STREAM from an upstream (or RST_STREAM either way) forgets the pair
//!   of streams; a closed connection resets its streams' partners (CANCEL);
//! - GOAWAY, from either side: closes that connection (an upstream is not
//!   reopened; with none left, new streams are refused);
//! - PRIORITY, WINDOW_UPDATE and unknown frames: ignored.
//!
//! A protocol error (a bad frame, a bad header block, CONTINUATION,
//! PUSH_PROMISE) closes that connection with a message on stderr.
//!
//! # What it leaves out
//!
//! Everything the real relay adds on top of this floor:
//!
//! - flow control beyond large windows: it offers 16 MiB per stream (never
//!   replenished) and per connection, and forwards DATA without looking at
//!   the receiver's windows, so it holds only while those stay larger than
//!   what is in flight; no back-pressure (a slow reader's queue grows);
//! - the peers' SETTINGS (MAX_CONCURRENT_STREAMS, window sizes,
//!   MAX_FRAME_SIZE, HEADER_TABLE_SIZE, MAX_HEADER_LIST_SIZE: it assumes the
//!   defaults and that upstreams take as many streams as clients open);
//! - CONTINUATION (both ways), server push, stream priorities;
//! - validation of requests (pseudo-headers, connection-specific headers,
//!   stream id order and state, content-length), routing by method or host;
//! - balancing beyond round-robin, health checks, reconnecting, retries,
//!   connection pools, more than one thread;
//! - deadlines and timeouts, limits, graceful shutdown (it is killed), TLS,
//!   telemetry (metrics, access logs, tracing), configuration.
//!
//! # Why its numbers are a floor
//!
//! Per call it does only what a frame relay built this way (tokio, one
//! socket per peer, every header block re-encoded) must do: read the
//! request's frames, decode and re-encode its header block, queue the frames
//! for an upstream, and the same backwards for the response, with a
//! stream-id map in between; its system calls (a read per readable socket, a
//! write per wake-up, epoll) are what any such relay makes. Everything the
//! list above adds costs CPU on top, so a real relay of this architecture
//! can come close to this figure but not go below it, and grpc-edge's CPU
//! per call over this figure bounds what such a relay could save. (It is
//! not a floor for every design: one that made fewer system calls per call,
//! for example by batching more, could go lower.)

use std::cell::RefCell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

mod hpack;

/// The hidden first argument that makes the bench binary run the relay.
pub const CHILD_FLAG: &str = "--relay-floor-child";

const USAGE: &str = "usage: proxy --relay-floor-child --listen ADDR --upstreams ADDR,ADDR,...";

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE: the default, never raised, so also what it sends.
const MAX_FRAME: usize = 16_384;
/// The stream and connection windows it offers.
const BIG_WINDOW: u32 = 1 << 24;
const READ_CHUNK: usize = 32 * 1024;
/// The highest stream id (31 bits).
const MAX_STREAM_ID: u32 = 0x7fff_ffff;

// Frame types.
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

// Settings and error codes.
const SETTINGS_ENABLE_PUSH: u16 = 2;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 4;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;

/// Runs the relay with the arguments after [`CHILD_FLAG`]; returns only on error.
pub fn main(args: &[String]) -> ExitCode {
    let (listen, upstreams) = match parse_args(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("relay-floor: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("relay-floor: cannot build the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, serve(listen, upstreams)) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("relay-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: &[String]) -> Result<(SocketAddr, Vec<SocketAddr>), String> {
    let mut listen = None;
    let mut upstreams = Vec::new();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let addr = |a: &str| a.trim().parse::<SocketAddr>().map_err(|e| format!("{flag} {a:?}: {e}"));
        match flag.as_str() {
            "--listen" => listen = Some(addr(value)?),
            "--upstreams" => upstreams = value.split(',').map(addr).collect::<Result<_, _>>()?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let listen = listen.ok_or("--listen is missing")?;
    if upstreams.is_empty() {
        return Err("--upstreams is missing".into());
    }
    Ok((listen, upstreams))
}

/// Connects to the upstreams, then accepts clients for ever.
async fn serve(listen: SocketAddr, upstreams: Vec<SocketAddr>) -> Result<Infallible, String> {
    let relay: Shared = Rc::default();
    for addr in upstreams {
        let sock = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to upstream {addr}: {e}"))?;
        let _ = sock.set_nodelay(true);
        let mut conn = Conn::new(true);
        conn.out.extend_from_slice(PREFACE);
        settings(
            &mut conn.out,
            &[(SETTINGS_ENABLE_PUSH, 0), (SETTINGS_INITIAL_WINDOW_SIZE, BIG_WINDOW)],
        );
        window_update(&mut conn.out, BIG_WINDOW);
        let id = spawn(&relay, conn, sock, false);
        relay.borrow_mut().upstreams.push(id);
    }
    // Listening only now: accepting connections means ready.
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                eprintln!("relay-floor: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let mut conn = Conn::new(false);
        settings(
            &mut conn.out,
            &[
                (SETTINGS_MAX_CONCURRENT_STREAMS, 1000),
                (SETTINGS_INITIAL_WINDOW_SIZE, BIG_WINDOW),
            ],
        );
        window_update(&mut conn.out, BIG_WINDOW);
        spawn(&relay, conn, sock, true);
    }
}

type Shared = Rc<RefCell<Relay>>;

/// Every connection's state, owned by the one thread.
#[derive(Default)]
struct Relay {
    /// Indexed by connection id; a closed connection's slot is reused.
    conns: Vec<Option<Conn>>,
    /// Ids of the upstream connections still open.
    upstreams: Vec<usize>,
    /// Round-robin position.
    next_upstream: usize,
    /// The header block being relayed, decoded.
    fields: hpack::Fields,
}

struct Conn {
    /// A connection to a backend (else from a client).
    upstream: bool,
    /// Frames queued for this connection's socket.
    out: Vec<u8>,
    /// Wakes this connection's task when another queued frames for it.
    wake: Rc<Notify>,
    /// Encodes header blocks sent here; decodes those received here.
    encoder: hpack::Encoder,
    decoder: hpack::Decoder,
    /// Stream id here → (the other connection, the stream id there).
    streams: HashMap<u32, (usize, u32)>,
    /// The next stream id this relay opens here (upstreams only).
    next_stream: u32,
    /// DATA bytes received since the last connection WINDOW_UPDATE.
    unacked: u32,
}

impl Conn {
    fn new(upstream: bool) -> Self {
        Conn {
            upstream,
            out: Vec::with_capacity(64 * 1024),
            wake: Rc::new(Notify::new()),
            encoder: hpack::Encoder::new(),
            decoder: hpack::Decoder::new(),
            streams: HashMap::new(),
            next_stream: 1,
            unacked: 0,
        }
    }
}

/// Why a connection ends.
enum Close {
    /// The peer closed it: EOF, a socket error, or its GOAWAY.
    Peer(String),
    /// It broke the protocol, or used something this relay leaves out.
    Protocol(String),
}

fn protocol(message: impl Into<String>) -> Close {
    Close::Protocol(message.into())
}

/// Adds the connection and starts its task; returns its id.
fn spawn(relay: &Shared, conn: Conn, sock: TcpStream, client: bool) -> usize {
    let wake = conn.wake.clone();
    let id = {
        let mut r = relay.borrow_mut();
        match r.conns.iter().position(Option::is_none) {
            Some(id) => {
                r.conns[id] = Some(conn);
                id
            }
            None => {
                r.conns.push(Some(conn));
                r.conns.len() - 1
            }
        }
    };
    let relay = relay.clone();
    tokio::task::spawn_local(async move {
        let peer = sock.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
        let end = pump(&relay, id, &wake, sock, client).await;
        let mut r = relay.borrow_mut();
        let upstream = r.conns[id].as_ref().is_some_and(|c| c.upstream);
        let side = if upstream { "upstream" } else { "client" };
        match end {
            Close::Protocol(e) => eprintln!("relay-floor: closing {side} {peer}: {e}"),
            Close::Peer(e) if upstream => eprintln!("relay-floor: upstream {peer} closed: {e}"),
            Close::Peer(_) => {}
        }
        r.close(id);
    });
    id
}

/// One connection's loop: write what is queued, wait for input or for more
/// to write, handle every complete frame read.
async fn pump(relay: &Shared, id: usize, wake: &Notify, mut sock: TcpStream, mut preface: bool) -> Close {
    let io = |e: std::io::Error| Close::Peer(e.to_string());
    let mut input = BytesMut::with_capacity(2 * READ_CHUNK);
    let mut spare = Vec::with_capacity(64 * 1024);
    loop {
        let out = match relay.borrow_mut().conns[id].as_mut() {
            Some(conn) => std::mem::replace(&mut conn.out, spare),
            None => return Close::Peer("gone".into()),
        };
        if !out.is_empty()
            && let Err(e) = sock.write_all(&out).await
        {
            return io(e);
        }
        spare = out;
        spare.clear();
        tokio::select! {
            biased;
            ready = sock.readable() => if let Err(e) = ready { return io(e) },
            () = wake.notified() => continue,
        }
        input.reserve(READ_CHUNK);
        match sock.try_read_buf(&mut input) {
            Ok(0) => return Close::Peer("end of stream".into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return io(e),
        }
        if preface {
            let n = input.len().min(PREFACE.len());
            if input[..n] != PREFACE[..n] {
                return protocol("no HTTP/2 client preface");
            }
            if n < PREFACE.len() {
                continue;
            }
            input.advance(PREFACE.len());
            preface = false;
        }
        let mut r = relay.borrow_mut();
        while input.len() >= FRAME_HEAD {
            let len = usize::from(input[0]) << 16 | usize::from(input[1]) << 8 | usize::from(input[2]);
            if len > MAX_FRAME {
                return protocol(format!("{len}-byte frame, above SETTINGS_MAX_FRAME_SIZE"));
            }
            if input.len() < FRAME_HEAD + len {
                break;
            }
            let (kind, flags) = (input[3], input[4]);
            let stream = u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & MAX_STREAM_ID;
            let payload = &input[FRAME_HEAD..FRAME_HEAD + len];
            if let Err(close) = r.on_frame(id, kind, flags, stream, payload) {
                return close;
            }
            input.advance(FRAME_HEAD + len);
        }
    }
}

impl Relay {
    fn conn(&mut self, id: usize) -> Result<&mut Conn, Close> {
        self.conns[id].as_mut().ok_or_else(|| protocol("connection state gone"))
    }

    fn on_frame(&mut self, id: usize, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<(), Close> {
        match kind {
            DATA => self.data(id, flags, stream, payload),
            HEADERS => self.headers(id, flags, stream, payload),
            RST_STREAM => {
                let code: [u8; 4] = payload.try_into().map_err(|_| protocol("RST_STREAM not 4 bytes"))?;
                if let Some((peer, peer_stream)) = self.conn(id)?.streams.remove(&stream) {
                    self.queue_on(peer, |p| {
                        p.streams.remove(&peer_stream);
                        rst_stream(&mut p.out, peer_stream, u32::from_be_bytes(code));
                    });
                }
                Ok(())
            }
            SETTINGS if flags & ACK == 0 => {
                if !payload.len().is_multiple_of(6) {
                    return Err(protocol("SETTINGS not a multiple of 6 bytes"));
                }
                frame_head(&mut self.conn(id)?.out, 0, SETTINGS, ACK, 0);
                Ok(())
            }
            PING if flags & ACK == 0 => {
                if payload.len() != 8 {
                    return Err(protocol("PING not 8 bytes"));
                }
                let out = &mut self.conn(id)?.out;
                frame_head(out, 8, PING, ACK, 0);
                out.extend_from_slice(payload);
                Ok(())
            }
            GOAWAY => Err(Close::Peer("GOAWAY".into())),
            PUSH_PROMISE => Err(protocol("PUSH_PROMISE although SETTINGS_ENABLE_PUSH is 0")),
            CONTINUATION => Err(protocol("CONTINUATION frames are left out of the floor relay")),
            // SETTINGS and PING acknowledgements, PRIORITY, WINDOW_UPDATE, unknown types.
            _ => Ok(()),
        }
    }

    fn headers(&mut self, id: usize, flags: u8, stream: u32, payload: &[u8]) -> Result<(), Close> {
        if flags & END_HEADERS == 0 {
            return Err(protocol("HEADERS without END_HEADERS (CONTINUATION is left out)"));
        }
        if stream == 0 {
            return Err(protocol("HEADERS on stream 0"));
        }
        let block = unpad(flags, payload, true)?;
        // Decode the whole block first: the connection's HPACK state must see
        // it even when the stream goes nowhere, and a bad block must not
        // leave a half-encoded one on the other side.
        let Relay { conns, fields, .. } = self;
        let me = conns[id].as_mut().ok_or_else(|| protocol("connection state gone"))?;
        fields.clear();
        me.decoder
            .decode(block, fields)
            .map_err(|e| protocol(format!("HPACK: {e}")))?;
        if fields.encoded_len_bound() > MAX_FRAME {
            return Err(protocol(
                "header block too large for one frame (CONTINUATION is left out)",
            ));
        }
        let upstream = me.upstream;
        let route = match me.streams.get(&stream) {
            Some(&route) => Some(route),
            None if !upstream => self.open_upstream_stream(id, stream),
            // A response on a stream already reset or finished.
            None => None,
        };
        let Some((peer, peer_stream)) = route else {
            if !upstream {
                rst_stream(&mut self.conn(id)?.out, stream, REFUSED_STREAM);
            }
            return Ok(());
        };
        let end_stream = flags & END_STREAM;
        let Relay { conns, fields, .. } = self;
        if let Some(p) = conns[peer].as_mut() {
            let start = p.out.len();
            frame_head(&mut p.out, 0, HEADERS, END_HEADERS | end_stream, peer_stream);
            for (name, value) in fields.iter() {
                p.encoder.encode(name, value, &mut p.out);
            }
            let len = (p.out.len() - start - FRAME_HEAD) as u32;
            p.out[start..start + 3].copy_from_slice(&len.to_be_bytes()[1..]);
            p.wake.notify_one();
        }
        if upstream && end_stream != 0 {
            self.forget(id, stream, peer, peer_stream);
        }
        Ok(())
    }

    /// Maps a client's new stream to a new stream on the next upstream.
    fn open_upstream_stream(&mut self, client: usize, stream: u32) -> Option<(usize, u32)> {
        if self.upstreams.is_empty() {
            return None;
        }
        let upstream = self.upstreams[self.next_upstream % self.upstreams.len()];
        self.next_upstream = self.next_upstream.wrapping_add(1);
        let up = self.conns[upstream].as_mut()?;
        let up_stream = up.next_stream;
        if up_stream > MAX_STREAM_ID {
            return None;
        }
        up.next_stream += 2;
        up.streams.insert(up_stream, (client, stream));
        self.conns[client]
            .as_mut()?
            .streams
            .insert(stream, (upstream, up_stream));
        Some((upstream, up_stream))
    }

    fn data(&mut self, id: usize, flags: u8, stream: u32, payload: &[u8]) -> Result<(), Close> {
        if stream == 0 {
            return Err(protocol("DATA on stream 0"));
        }
        let data = unpad(flags, payload, false)?;
        let me = self.conn(id)?;
        // Flow control counts the whole payload, padding included.
        me.unacked += payload.len() as u32;
        if me.unacked > BIG_WINDOW / 2 {
            let n = std::mem::take(&mut me.unacked);
            window_update(&mut me.out, n);
        }
        let upstream = me.upstream;
        let Some(&(peer, peer_stream)) = me.streams.get(&stream) else {
            return Ok(());
        };
        let end_stream = flags & END_STREAM;
        self.queue_on(peer, |p| {
            frame_head(&mut p.out, data.len(), DATA, end_stream, peer_stream);
            p.out.extend_from_slice(data);
        });
        if upstream && end_stream != 0 {
            self.forget(id, stream, peer, peer_stream);
        }
        Ok(())
    }

    /// Queues frames on connection `peer` (when it is still open) and wakes it.
    fn queue_on(&mut self, peer: usize, queue: impl FnOnce(&mut Conn)) {
        if let Some(p) = self.conns[peer].as_mut() {
            queue(p);
            p.wake.notify_one();
        }
    }

    /// Drops a finished pair of streams from both maps.
    fn forget(&mut self, id: usize, stream: u32, peer: usize, peer_stream: u32) {
        for (conn, s) in [(id, stream), (peer, peer_stream)] {
            if let Some(c) = self.conns[conn].as_mut() {
                c.streams.remove(&s);
            }
        }
    }

    /// Frees a closed connection's slot and resets its streams' partners.
    fn close(&mut self, id: usize) {
        let Some(conn) = self.conns[id].take() else {
            return;
        };
        self.upstreams.retain(|&u| u != id);
        for (peer, peer_stream) in conn.streams.into_values() {
            self.queue_on(peer, |p| {
                p.streams.remove(&peer_stream);
                rst_stream(&mut p.out, peer_stream, CANCEL);
            });
        }
    }
}

/// A DATA or HEADERS payload without its padding (and, for HEADERS, its
/// priority fields).
fn unpad(flags: u8, payload: &[u8], headers: bool) -> Result<&[u8], Close> {
    let (pad, mut rest) = match flags & PADDED {
        0 => (0, payload),
        _ => {
            let (&pad, rest) = payload
                .split_first()
                .ok_or_else(|| protocol("PADDED frame without a pad length"))?;
            (usize::from(pad), rest)
        }
    };
    if headers && flags & PRIORITY != 0 {
        rest = rest
            .get(5..)
            .ok_or_else(|| protocol("HEADERS too short for its PRIORITY fields"))?;
    }
    let len = rest
        .len()
        .checked_sub(pad)
        .ok_or_else(|| protocol("padding longer than the frame"))?;
    Ok(&rest[..len])
}

fn frame_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

fn settings(out: &mut Vec<u8>, pairs: &[(u16, u32)]) {
    frame_head(out, pairs.len() * 6, SETTINGS, 0, 0);
    for (id, value) in pairs {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// A connection-level WINDOW_UPDATE.
fn window_update(out: &mut Vec<u8>, increment: u32) {
    frame_head(out, 4, WINDOW_UPDATE, 0, 0);
    out.extend_from_slice(&increment.to_be_bytes());
}

fn rst_stream(out: &mut Vec<u8>, stream: u32, code: u32) {
    frame_head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&code.to_be_bytes());
}
