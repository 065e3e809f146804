//! The Pollen peer wire protocol, version 1 (ALPN `pollen/1`): messages, limits, a pure encoder and a pure
//! decoder.
//!
//! # Specification
//!
//! Peers speak over one QUIC connection per peer pair, authenticated both ways by the fleet CA (see
//! `tls`). Identity is the node name in the peer's certificate; nothing in the protocol restates it.
//!
//! ## Streams
//! - **Control stream**: the first bidirectional stream, opened by the dialing side. Each side first sends
//!   `Hello` (after its `Grant`, when it holds one; see below), then any number of `HaveMap`, `Have`, `Fetching`, `Origin`, `Peers`, `Cancel`,
//!   `Revocations` and `Error` messages. A node the receiver's index does not authorise (its certificate names a node the
//!   signed index does not list, and it shows no valid `Grant`, see below) gets, instead of `Hello`, one
//!   `Error` with code `NotAuthorised`, and the connection is closed with [`CLOSE_REFUSED`]: it learns
//!   nothing about the swarm.
//! - **Request streams**: one bidirectional stream per request, opened by the side that wants data. It
//!   sends one `Request` (a chunk, or a range of up to [`MAX_REQUEST_CHUNKS`] chunks) and finishes its
//!   send side. The server answers, for each chunk in order, a `Data` header immediately followed by
//!   exactly `len` raw payload bytes, or one `Error` (and then finishes). Cancelling a request in flight is
//!   `STOP_SENDING` on the request stream with application code [`STREAM_CANCELLED`]; a `Cancel` message
//!   on the control stream names chunks the server should skip if it has not yet started them.
//!
//! ## Framing
//! Every message is a frame: `len: u32 BE` (the byte count of `type` and `body`), `type: u8`, `body`.
//! Integers are big-endian, an index id is the 32-byte BLAKE3 id of the signed chunk index, and strings
//! are UTF-8 with a length prefix. A frame longer than [`MAX_FRAME_LEN`], a body with trailing or missing
//! bytes, a field over its limit, or an unknown type is a protocol error: the receiver closes the
//! connection with application code [`CLOSE_PROTOCOL`].
//!
//! | type | message  | body |
//! |------|----------|------|
//! | 0x01 | Hello    | `version: u8`, `site_len: u8`, `site` (≤ 64 bytes), `n: u16` (≤ 64), `n × id[32]` |
//! | 0x02 | HaveMap  | `id[32]`, `chunks: u32` (≤ 2^20), `bits` (`ceil(chunks/8)` bytes, MSB first, zero padding) |
//! | 0x03 | Have     | `id[32]`, `n: u16` (1..=1024), `n × chunk: u32` |
//! | 0x04 | Request  | `id[32]`, `first: u32`, `count: u32` (1..=1024) |
//! | 0x05 | Cancel   | `id[32]`, `first: u32`, `count: u32` (1..=1024) |
//! | 0x06 | Data     | `id[32]`, `chunk: u32`, `len: u32` (≤ 64 MiB); then `len` raw bytes outside the frame |
//! | 0x07 | Error    | `code: u16`, `id[32]` (zeros if none), `msg_len: u16` (≤ 512), `msg` |
//! | 0x08 | Peers    | `n: u8` (≤ 32), `n ×` (`family: u8` 4 or 6, address 4 or 16 bytes, `port: u16`) |
//! | 0x09 | Fetching | `id[32]`, `n: u16` (1..=1024), `n × chunk: u32` |
//! | 0x0a | Revocations | `format: u8` (1: DER X.509 CRL), `len: u32` (1..=[`MAX_CRL_LEN`]), `len` bytes |
//! | 0x0b | Origin   | `id[32]`, `reads: u8` (0 or 1) |
//! | 0x0c | Grant    | `id[32]`, `len: u16` (1..=[`MAX_GRANT_LEN`]), `len` bytes: the director's signature |
//!
//! A `HaveMap` replaces everything the receiver knew of the sender's chunks for that index; `Have`s add
//! to it. A sender sends its have-map first and may send it again at any time: it does so when it had to
//! drop control messages for a peer that reads too slowly, with its `Origin` state after it.
//!
//! `Fetching` is the origin hint: "I am fetching these chunks from outside (the origin or another site)";
//! peers that hear it do not fetch the same chunks from outside themselves, and wait for the `Have`.
//!
//! `Origin` says whether the sender reads this index's chunks from the origin at all. A node assumes a
//! peer does until told otherwise; a node that does not (it runs without origin access, or its origin
//! allowance is used up) sends `reads = 0` right after its have-map and again whenever that changes.
//! Peers leave a node that does not read out of the rendezvous choice of who reads each chunk, so
//! nobody waits for a read that will never come.
//!
//! `Grant` admits a node the signed index does not list (it joined the rollout after the index was
//! built): the director key's signature over the index's manifest digest and the node's name (see
//! `pollen_trust::grant`; the name is the one in the sender's certificate). A node that holds a grant
//! and is not listed sends it on the control stream before its `Hello`. A receiver that does not list
//! the sender reads its first frame before it sends anything: a `Grant` that verifies admits the sender
//! for this index, anything else gets the `NotAuthorised` refusal. A dialling node must write before it
//! can read (the acceptor sees the stream once it carries data), so toward an unlisted peer it sends
//! its own `Grant` alone and waits for the peer's before its `Hello`; toward a peer it admitted by grant
//! before, it sends `Hello` and checks the grant that leads the answer; otherwise it refuses at once,
//! and the granted node dials it instead.
//!
//! `Revocations` carries the fleet's CA-signed revocation list as signed, so that it spreads peer to
//! peer and reaches nodes cut off from the control plane. It is sent right after `Hello` when the sender
//! holds a list, and again to every peer whenever the sender installs a newer one. The receiver verifies
//! the signature against the fleet CA and installs the list only if its number is higher than the one it
//! holds (then passes it on); the decoder checks only the framing. The `format` byte versions the
//! payload: a format the receiver does not know is a protocol error, like an unknown type.
//!
//! Error codes: see [`ErrorCode`]. Unknown codes decode as [`ErrorCode::Other`], so that new codes do not
//! break old peers; unknown message types do break the connection, which is why the version is in the
//! ALPN and the `Hello`.
//!
//! Non-goals: negotiation of several versions on one connection (a new version gets a new ALPN), and
//! carrying the chunk bytes inside frames (they follow `Data` raw, so they stream without buffering).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The protocol version in `Hello`.
pub const VERSION: u8 = 1;
/// The ALPN protocol id.
pub const ALPN: &[u8] = b"pollen/1";
/// Largest frame (`type` + `body`), enough for a have-map of 2^20 chunks.
pub const MAX_FRAME_LEN: u32 = 128 * 1024 + 64;
/// Most chunks an index may have on the wire.
pub const MAX_CHUNKS: u32 = 1 << 20;
/// Most chunks in one `Request`, `Cancel`, `Have` or `Fetching`.
pub const MAX_REQUEST_CHUNKS: u32 = 1024;
/// Most index ids in a `Hello`.
pub const MAX_HELLO_INDEXES: usize = 64;
/// Longest site label.
pub const MAX_SITE_LEN: usize = 64;
/// Longest error message.
pub const MAX_ERROR_MSG_LEN: usize = 512;
/// Most addresses in a `Peers` message.
pub const MAX_PEERS: usize = 32;
/// Largest chunk a `Data` header may announce.
pub const MAX_DATA_LEN: u32 = 64 * 1024 * 1024;
/// Largest revocation list in a `Revocations` message, in bytes (about 3000 revoked serials).
pub const MAX_CRL_LEN: u32 = 128 * 1024;
/// Longest grant signature in a `Grant` message.
pub const MAX_GRANT_LEN: usize = pollen_trust::grant::MAX_GRANT_LEN;
/// The `Revocations` payload format: a DER X.509 CRL signed by the fleet CA.
pub const CRL_FORMAT_DER: u8 = 1;
/// Length of the frame header (`len: u32`).
pub const LEN_PREFIX: usize = 4;

/// QUIC application close code: normal shutdown.
pub const CLOSE_NORMAL: u32 = 0;
/// QUIC application close code: the peer broke the protocol.
pub const CLOSE_PROTOCOL: u32 = 1;
/// QUIC application close code: a second connection to the same peer was dropped.
pub const CLOSE_DUPLICATE: u32 = 2;
/// QUIC application close code: the peer is banned or not authorised.
pub const CLOSE_REFUSED: u32 = 3;
/// QUIC application close code: the peer's certificate (or our own) has been revoked.
pub const CLOSE_REVOKED: u32 = 4;
/// QUIC application close code: the peer's certificate has expired while the connection was open.
pub const CLOSE_EXPIRED: u32 = 5;
/// QUIC stream error code for `STOP_SENDING`/`RESET_STREAM` when a request is cancelled.
pub const STREAM_CANCELLED: u32 = 1;

/// A 32-byte index id.
pub type IndexId = [u8; 32];

/// Named error codes carried by `Error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The sender broke the protocol.
    Protocol,
    /// Unsupported protocol version.
    Version,
    /// The requester is not authorised for this index.
    NotAuthorised,
    /// The server does not know this index.
    UnknownIndex,
    /// A limit was hit (upload slots, streams, rate); retry later or elsewhere.
    Limit,
    /// The server does not have this chunk.
    NotPresent,
    /// The chunk number is outside the index.
    Range,
    /// The server is shutting down.
    ShuttingDown,
    /// The server failed internally (I/O).
    Internal,
    /// A code this version does not know.
    Other(u16),
}

impl ErrorCode {
    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Protocol => 1,
            ErrorCode::Version => 2,
            ErrorCode::NotAuthorised => 3,
            ErrorCode::UnknownIndex => 4,
            ErrorCode::Limit => 5,
            ErrorCode::NotPresent => 6,
            ErrorCode::Range => 7,
            ErrorCode::ShuttingDown => 8,
            ErrorCode::Internal => 9,
            ErrorCode::Other(c) => c,
        }
    }

    /// From the wire value.
    pub fn from_u16(c: u16) -> Self {
        match c {
            1 => ErrorCode::Protocol,
            2 => ErrorCode::Version,
            3 => ErrorCode::NotAuthorised,
            4 => ErrorCode::UnknownIndex,
            5 => ErrorCode::Limit,
            6 => ErrorCode::NotPresent,
            7 => ErrorCode::Range,
            8 => ErrorCode::ShuttingDown,
            9 => ErrorCode::Internal,
            c => ErrorCode::Other(c),
        }
    }

    /// The name used in logs and metrics, e.g. `NOT_AUTHORISED`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Protocol => "PROTOCOL",
            ErrorCode::Version => "VERSION",
            ErrorCode::NotAuthorised => "NOT_AUTHORISED",
            ErrorCode::UnknownIndex => "UNKNOWN_INDEX",
            ErrorCode::Limit => "LIMIT",
            ErrorCode::NotPresent => "NOT_PRESENT",
            ErrorCode::Range => "RANGE",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Other(_) => "OTHER",
        }
    }
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// First message on the control stream, both ways.
    Hello {
        /// Protocol version ([`VERSION`]).
        version: u8,
        /// The sender's site label.
        site: String,
        /// The indexes the sender works on.
        indexes: Vec<IndexId>,
    },
    /// The sender's complete have-map for an index.
    HaveMap {
        /// Index id.
        index: IndexId,
        /// The bits (its length is the index's chunk count).
        bits: crate::bitfield::Bitfield,
    },
    /// Chunks the sender has newly verified.
    Have {
        /// Index id.
        index: IndexId,
        /// Chunk numbers.
        chunks: Vec<u32>,
    },
    /// Asks for chunks `first..first+count`.
    Request {
        /// Index id.
        index: IndexId,
        /// First chunk.
        first: u32,
        /// Number of chunks.
        count: u32,
    },
    /// Withdraws chunks `first..first+count` from earlier requests.
    Cancel {
        /// Index id.
        index: IndexId,
        /// First chunk.
        first: u32,
        /// Number of chunks.
        count: u32,
    },
    /// Header of a chunk; `len` raw bytes follow the frame.
    Data {
        /// Index id.
        index: IndexId,
        /// Chunk number.
        chunk: u32,
        /// Byte count that follows.
        len: u32,
    },
    /// A typed error.
    Error {
        /// Named code.
        code: ErrorCode,
        /// The index concerned, or zeros.
        index: IndexId,
        /// Human-readable detail.
        message: String,
    },
    /// A few more peer addresses.
    Peers {
        /// Addresses (QUIC endpoints).
        addrs: Vec<SocketAddr>,
    },
    /// "I am fetching these chunks from outside the site (origin or WAN)."
    Fetching {
        /// Index id.
        index: IndexId,
        /// Chunk numbers.
        chunks: Vec<u32>,
    },
    /// "I do (not) read this index's chunks from the origin."
    Origin {
        /// Index id.
        index: IndexId,
        /// Whether the sender reads from the origin.
        reads: bool,
    },
    /// "The director admits me to this index's swarm": the peer grant of an unlisted node.
    Grant {
        /// Index id.
        index: IndexId,
        /// The raw grant signature (1..=[`MAX_GRANT_LEN`] bytes).
        signature: Vec<u8>,
    },
    /// The fleet's revocation list, as signed by the fleet CA (format [`CRL_FORMAT_DER`]).
    Revocations {
        /// The DER X.509 CRL (1..=[`MAX_CRL_LEN`] bytes).
        crl: Vec<u8>,
    },
}

/// Why bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Frame length zero or above [`MAX_FRAME_LEN`].
    #[error("frame length {0} out of bounds")]
    FrameLength(u32),
    /// Unknown message type.
    #[error("unknown message type {0:#04x}")]
    UnknownType(u8),
    /// The body ended early.
    #[error("truncated {0} body")]
    Truncated(&'static str),
    /// The body has bytes after the last field.
    #[error("{0} body has {1} trailing bytes")]
    Trailing(&'static str, usize),
    /// A field is over its limit or otherwise invalid.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

const T_HELLO: u8 = 0x01;
const T_HAVE_MAP: u8 = 0x02;
const T_HAVE: u8 = 0x03;
const T_REQUEST: u8 = 0x04;
const T_CANCEL: u8 = 0x05;
const T_DATA: u8 = 0x06;
const T_ERROR: u8 = 0x07;
const T_PEERS: u8 = 0x08;
const T_FETCHING: u8 = 0x09;
const T_REVOCATIONS: u8 = 0x0a;
const T_ORIGIN: u8 = 0x0b;
const T_GRANT: u8 = 0x0c;

impl Message {
    /// Appends the framed encoding to `out`. Panics if a field breaks a limit (a caller bug: the engine
    /// builds messages within the limits, see [`chunk_lists`] for splitting).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Message::Hello {
                version,
                site,
                indexes,
            } => {
                assert!(site.len() <= MAX_SITE_LEN && indexes.len() <= MAX_HELLO_INDEXES);
                out.push(T_HELLO);
                out.push(*version);
                out.push(site.len() as u8);
                out.extend_from_slice(site.as_bytes());
                out.extend_from_slice(&(indexes.len() as u16).to_be_bytes());
                for id in indexes {
                    out.extend_from_slice(id);
                }
            }
            Message::HaveMap { index, bits } => {
                assert!(bits.len() <= MAX_CHUNKS);
                out.push(T_HAVE_MAP);
                out.extend_from_slice(index);
                out.extend_from_slice(&bits.len().to_be_bytes());
                out.extend_from_slice(bits.as_bytes());
            }
            Message::Have { index, chunks } | Message::Fetching { index, chunks } => {
                assert!(!chunks.is_empty() && chunks.len() <= MAX_REQUEST_CHUNKS as usize);
                out.push(if matches!(self, Message::Have { .. }) {
                    T_HAVE
                } else {
                    T_FETCHING
                });
                out.extend_from_slice(index);
                out.extend_from_slice(&(chunks.len() as u16).to_be_bytes());
                for c in chunks {
                    out.extend_from_slice(&c.to_be_bytes());
                }
            }
            Message::Request { index, first, count } | Message::Cancel { index, first, count } => {
                assert!((1..=MAX_REQUEST_CHUNKS).contains(count));
                out.push(if matches!(self, Message::Request { .. }) {
                    T_REQUEST
                } else {
                    T_CANCEL
                });
                out.extend_from_slice(index);
                out.extend_from_slice(&first.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Message::Data { index, chunk, len } => {
                assert!(*len <= MAX_DATA_LEN);
                out.push(T_DATA);
                out.extend_from_slice(index);
                out.extend_from_slice(&chunk.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
            Message::Error { code, index, message } => {
                // Messages are informative; cut at a char boundary rather than fail.
                let mut end = message.len().min(MAX_ERROR_MSG_LEN);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                out.push(T_ERROR);
                out.extend_from_slice(&code.to_u16().to_be_bytes());
                out.extend_from_slice(index);
                out.extend_from_slice(&(end as u16).to_be_bytes());
                out.extend_from_slice(&message.as_bytes()[..end]);
            }
            Message::Peers { addrs } => {
                assert!(addrs.len() <= MAX_PEERS);
                out.push(T_PEERS);
                out.push(addrs.len() as u8);
                for a in addrs {
                    match a.ip() {
                        IpAddr::V4(ip) => {
                            out.push(4);
                            out.extend_from_slice(&ip.octets());
                        }
                        IpAddr::V6(ip) => {
                            out.push(6);
                            out.extend_from_slice(&ip.octets());
                        }
                    }
                    out.extend_from_slice(&a.port().to_be_bytes());
                }
            }
            Message::Origin { index, reads } => {
                out.push(T_ORIGIN);
                out.extend_from_slice(index);
                out.push(u8::from(*reads));
            }
            Message::Grant { index, signature } => {
                assert!(!signature.is_empty() && signature.len() <= MAX_GRANT_LEN);
                out.push(T_GRANT);
                out.extend_from_slice(index);
                out.extend_from_slice(&(signature.len() as u16).to_be_bytes());
                out.extend_from_slice(signature);
            }
            Message::Revocations { crl } => {
                assert!(!crl.is_empty() && crl.len() <= MAX_CRL_LEN as usize);
                out.push(T_REVOCATIONS);
                out.push(CRL_FORMAT_DER);
                out.extend_from_slice(&(crl.len() as u32).to_be_bytes());
                out.extend_from_slice(crl);
            }
        }
        let len = (out.len() - start - LEN_PREFIX) as u32;
        debug_assert!(len <= MAX_FRAME_LEN);
        out[start..start + LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    }

    /// The framed encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

/// Splits a chunk list into pieces of at most [`MAX_REQUEST_CHUNKS`] for `Have`/`Fetching`.
pub fn chunk_lists(chunks: &[u32]) -> impl Iterator<Item = Vec<u32>> + '_ {
    chunks.chunks(MAX_REQUEST_CHUNKS as usize).map(|c| c.to_vec())
}

/// Reads the length prefix of a frame: `Ok(None)` if fewer than 4 bytes are there, else the body length,
/// checked against the limit.
pub fn frame_len(buf: &[u8]) -> Result<Option<u32>, DecodeError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(DecodeError::FrameLength(len));
    }
    Ok(Some(len))
}

/// Decodes one frame from the front of `buf`. `Ok(None)` means more bytes are needed; otherwise returns
/// the message and the number of bytes consumed. Pure: no I/O, no allocation beyond the message itself.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some(len) = frame_len(buf)? else {
        return Ok(None);
    };
    let total = LEN_PREFIX + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let msg = decode_body(&buf[LEN_PREFIX..total])?;
    Ok(Some((msg, total)))
}

/// Decodes the `type` + `body` of one frame (without its length prefix).
pub fn decode_body(frame: &[u8]) -> Result<Message, DecodeError> {
    let (&ty, body) = frame.split_first().ok_or(DecodeError::FrameLength(0))?;
    let name = match ty {
        T_HELLO => "hello",
        T_HAVE_MAP => "have-map",
        T_HAVE => "have",
        T_REQUEST => "request",
        T_CANCEL => "cancel",
        T_DATA => "data",
        T_ERROR => "error",
        T_PEERS => "peers",
        T_FETCHING => "fetching",
        T_REVOCATIONS => "revocations",
        T_ORIGIN => "origin",
        T_GRANT => "grant",
        other => return Err(DecodeError::UnknownType(other)),
    };
    let mut r = Reader { buf: body, name };
    let msg = match ty {
        T_HELLO => {
            let version = r.u8()?;
            let site_len = r.u8()? as usize;
            if site_len > MAX_SITE_LEN {
                return Err(DecodeError::Invalid("site length"));
            }
            let site = std::str::from_utf8(r.take(site_len)?)
                .map_err(|_| DecodeError::Invalid("site utf-8"))?
                .to_owned();
            let n = r.u16()? as usize;
            if n > MAX_HELLO_INDEXES {
                return Err(DecodeError::Invalid("hello index count"));
            }
            let mut indexes = Vec::with_capacity(n);
            for _ in 0..n {
                indexes.push(r.id()?);
            }
            Message::Hello {
                version,
                site,
                indexes,
            }
        }
        T_HAVE_MAP => {
            let index = r.id()?;
            let chunks = r.u32()?;
            if chunks > MAX_CHUNKS {
                return Err(DecodeError::Invalid("have-map chunk count"));
            }
            let raw = r.take(crate::bitfield::byte_len(chunks))?;
            let bits = crate::bitfield::Bitfield::from_bytes(chunks, raw)
                .ok_or(DecodeError::Invalid("have-map padding"))?;
            Message::HaveMap { index, bits }
        }
        T_HAVE | T_FETCHING => {
            let index = r.id()?;
            let n = r.u16()? as u32;
            if n == 0 || n > MAX_REQUEST_CHUNKS {
                return Err(DecodeError::Invalid("chunk list length"));
            }
            let mut chunks = Vec::with_capacity(n as usize);
            for _ in 0..n {
                chunks.push(r.u32()?);
            }
            if ty == T_HAVE {
                Message::Have { index, chunks }
            } else {
                Message::Fetching { index, chunks }
            }
        }
        T_REQUEST | T_CANCEL => {
            let index = r.id()?;
            let first = r.u32()?;
            let count = r.u32()?;
            if count == 0 || count > MAX_REQUEST_CHUNKS || first.checked_add(count).is_none() {
                return Err(DecodeError::Invalid("chunk range"));
            }
            if ty == T_REQUEST {
                Message::Request { index, first, count }
            } else {
                Message::Cancel { index, first, count }
            }
        }
        T_DATA => {
            let index = r.id()?;
            let chunk = r.u32()?;
            let len = r.u32()?;
            if len > MAX_DATA_LEN {
                return Err(DecodeError::Invalid("data length"));
            }
            Message::Data { index, chunk, len }
        }
        T_ERROR => {
            let code = ErrorCode::from_u16(r.u16()?);
            let index = r.id()?;
            let n = r.u16()? as usize;
            if n > MAX_ERROR_MSG_LEN {
                return Err(DecodeError::Invalid("error message length"));
            }
            let message = std::str::from_utf8(r.take(n)?)
                .map_err(|_| DecodeError::Invalid("error message utf-8"))?
                .to_owned();
            Message::Error { code, index, message }
        }
        T_PEERS => {
            let n = r.u8()? as usize;
            if n > MAX_PEERS {
                return Err(DecodeError::Invalid("peer count"));
            }
            let mut addrs = Vec::with_capacity(n);
            for _ in 0..n {
                let ip = match r.u8()? {
                    4 => {
                        let b = r.take(4)?;
                        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                    }
                    6 => {
                        let mut o = [0u8; 16];
                        o.copy_from_slice(r.take(16)?);
                        IpAddr::V6(Ipv6Addr::from(o))
                    }
                    _ => return Err(DecodeError::Invalid("address family")),
                };
                addrs.push(SocketAddr::new(ip, r.u16()?));
            }
            Message::Peers { addrs }
        }
        T_REVOCATIONS => {
            if r.u8()? != CRL_FORMAT_DER {
                return Err(DecodeError::Invalid("revocation list format"));
            }
            let n = r.u32()?;
            if n == 0 || n > MAX_CRL_LEN {
                return Err(DecodeError::Invalid("revocation list length"));
            }
            Message::Revocations {
                crl: r.take(n as usize)?.to_vec(),
            }
        }
        T_ORIGIN => {
            let index = r.id()?;
            let reads = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::Invalid("origin flag")),
            };
            Message::Origin { index, reads }
        }
        T_GRANT => {
            let index = r.id()?;
            let n = r.u16()? as usize;
            if n == 0 || n > MAX_GRANT_LEN {
                return Err(DecodeError::Invalid("grant length"));
            }
            Message::Grant {
                index,
                signature: r.take(n)?.to_vec(),
            }
        }
        _ => unreachable!("type checked above"),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::Trailing(name, r.buf.len()));
    }
    Ok(msg)
}

struct Reader<'a> {
    buf: &'a [u8],
    name: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(self.name));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn id(&mut self) -> Result<IndexId, DecodeError> {
        let mut id = [0u8; 32];
        id.copy_from_slice(self.take(32)?);
        Ok(id)
    }
}

/// Merges consecutive `Have` messages (and consecutive `Fetching` messages) of the same index into as
/// few messages as the per-message limit allows, keeping every other message, and the order, as is. A
/// sender that coalesces what it queued in a few milliseconds sends one frame, not one packet, per burst
/// of completed chunks.
pub fn coalesce(msgs: Vec<Message>) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(msgs.len());
    for m in msgs {
        match (out.last_mut(), m) {
            (
                Some(Message::Have {
                    index: a,
                    chunks: have,
                }),
                Message::Have { index: b, chunks },
            ) if *a == b && have.len() + chunks.len() <= MAX_REQUEST_CHUNKS as usize => have.extend(chunks),
            (
                Some(Message::Fetching {
                    index: a,
                    chunks: fetching,
                }),
                Message::Fetching { index: b, chunks },
            ) if *a == b && fetching.len() + chunks.len() <= MAX_REQUEST_CHUNKS as usize => {
                fetching.extend(chunks)
            }
            (_, m) => out.push(m),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitfield::Bitfield;

    /// Parses annotated hex: whitespace-separated hex bytes, `#` starts a comment to end of line, and
    /// `ID(xx)` stands for 32 bytes of `xx`.
    fn hex(annotated: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for line in annotated.lines() {
            let line = line.split('#').next().unwrap_or("");
            for tok in line.split_whitespace() {
                if let Some(b) = tok.strip_prefix("ID(").and_then(|t| t.strip_suffix(')')) {
                    out.extend(std::iter::repeat_n(u8::from_str_radix(b, 16).unwrap(), 32));
                } else {
                    out.push(u8::from_str_radix(tok, 16).unwrap());
                }
            }
        }
        out
    }

    fn golden(msg: Message, annotated: &str) {
        let bytes = hex(annotated);
        assert_eq!(msg.to_bytes(), bytes, "encoding of {msg:?}");
        let (decoded, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(decoded, msg);
        assert_eq!(used, bytes.len());
        // Every strict prefix asks for more bytes and never errors or yields a message.
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), Ok(None), "prefix {cut}");
        }
    }

    #[test]
    fn golden_hello() {
        golden(
            Message::Hello {
                version: 1,
                site: "s1".into(),
                indexes: vec![[0xaa; 32]],
            },
            "00 00 00 27   # len 39
             01            # type hello
             01            # version 1
             02 73 31      # site \"s1\"
             00 01         # one index
             ID(aa)",
        );
    }

    #[test]
    fn golden_have_map() {
        let mut bits = Bitfield::new(10);
        bits.set(0);
        bits.set(9);
        golden(
            Message::HaveMap {
                index: [0x11; 32],
                bits,
            },
            "00 00 00 27   # len 39
             02 ID(11)     # have-map, index
             00 00 00 0a   # 10 chunks
             80 40         # chunks 0 and 9",
        );
    }

    #[test]
    fn golden_have_fetching_request_cancel() {
        golden(
            Message::Have {
                index: [0x22; 32],
                chunks: vec![7, 0x0102_0304],
            },
            "00 00 00 2b  03 ID(22)  00 02  00 00 00 07  01 02 03 04",
        );
        golden(
            Message::Fetching {
                index: [0x22; 32],
                chunks: vec![5],
            },
            "00 00 00 27  09 ID(22)  00 01  00 00 00 05",
        );
        golden(
            Message::Request {
                index: [0x33; 32],
                first: 4,
                count: 2,
            },
            "00 00 00 29  04 ID(33)  00 00 00 04  00 00 00 02",
        );
        golden(
            Message::Cancel {
                index: [0x33; 32],
                first: 5,
                count: 1,
            },
            "00 00 00 29  05 ID(33)  00 00 00 05  00 00 00 01",
        );
    }

    #[test]
    fn golden_data_error_peers() {
        golden(
            Message::Data {
                index: [0x44; 32],
                chunk: 3,
                len: 0x0004_0000,
            },
            "00 00 00 29  06 ID(44)  00 00 00 03  00 04 00 00   # chunk 3, 256 KiB follow",
        );
        golden(
            Message::Error {
                code: ErrorCode::NotAuthorised,
                index: [0; 32],
                message: "no".into(),
            },
            "00 00 00 27  07  00 03 # NOT_AUTHORISED
             ID(00)  00 02 6e 6f",
        );
        golden(
            Message::Peers {
                addrs: vec!["127.0.0.1:7000".parse().unwrap(), "[::1]:80".parse().unwrap()],
            },
            "00 00 00 1c  08  02
             04 7f 00 00 01 1b 58                                  # 127.0.0.1:7000
             06 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 50  # [::1]:80",
        );
    }

    #[test]
    fn golden_origin() {
        golden(
            Message::Origin {
                index: [0x55; 32],
                reads: false,
            },
            "00 00 00 22   # len 34
             0b ID(55)     # origin, index
             00            # does not read",
        );
        golden(
            Message::Origin {
                index: [0x55; 32],
                reads: true,
            },
            "00 00 00 22  0b ID(55)  01",
        );
        // Only 0 and 1 are flags; a missing or extra byte is malformed.
        let mut b = Message::Origin {
            index: [0x55; 32],
            reads: true,
        }
        .to_bytes();
        *b.last_mut().unwrap() = 2;
        assert_eq!(decode(&b), Err(DecodeError::Invalid("origin flag")));
        b.pop();
        b[3] -= 1;
        assert_eq!(decode(&b), Err(DecodeError::Truncated("origin")));
        let mut long = Message::Origin {
            index: [0x55; 32],
            reads: true,
        }
        .to_bytes();
        long.push(0);
        long[3] += 1;
        assert_eq!(decode(&long), Err(DecodeError::Trailing("origin", 1)));
    }

    #[test]
    fn golden_grant() {
        golden(
            Message::Grant {
                index: [0x66; 32],
                signature: vec![0x30, 0x06, 0x02, 0x01],
            },
            "00 00 00 27   # len 39
             0c ID(66)     # grant, index
             00 04         # 4 signature bytes
             30 06 02 01",
        );
        // The longest signature fits; a zero or overlong length, a short body or a trailing byte do not.
        let max = Message::Grant {
            index: [0x66; 32],
            signature: vec![0x30; MAX_GRANT_LEN],
        };
        let b = max.to_bytes();
        assert_eq!(decode(&b).unwrap().unwrap(), (max, b.len()));
        let mut zero = Message::Grant {
            index: [0x66; 32],
            signature: vec![1],
        }
        .to_bytes();
        zero[3] -= 1;
        zero.pop();
        zero[38] = 0;
        assert_eq!(decode(&zero), Err(DecodeError::Invalid("grant length")));
        let mut over = Vec::new();
        over.extend_from_slice(&(35 + MAX_GRANT_LEN as u32 + 1).to_be_bytes());
        over.push(0x0c);
        over.extend_from_slice(&[0x66; 32]);
        over.extend_from_slice(&(MAX_GRANT_LEN as u16 + 1).to_be_bytes());
        over.extend_from_slice(&vec![0x30; MAX_GRANT_LEN + 1]);
        assert_eq!(decode(&over), Err(DecodeError::Invalid("grant length")));
        let mut short = Message::Grant {
            index: [0x66; 32],
            signature: vec![1, 2],
        }
        .to_bytes();
        short.pop();
        short[3] -= 1;
        assert_eq!(decode(&short), Err(DecodeError::Truncated("grant")));
        let mut long = Message::Grant {
            index: [0x66; 32],
            signature: vec![1, 2],
        }
        .to_bytes();
        long.push(0);
        long[3] += 1;
        assert_eq!(decode(&long), Err(DecodeError::Trailing("grant", 1)));
    }

    #[test]
    fn golden_revocations() {
        golden(
            Message::Revocations {
                crl: vec![0x30, 0x03, 0x02, 0x01, 0x07],
            },
            "00 00 00 0b   # len 11
             0a            # type revocations
             01            # format: DER X.509 CRL
             00 00 00 05   # 5 bytes
             30 03 02 01 07",
        );
        // The largest list fits in a frame.
        let big = Message::Revocations {
            crl: vec![0x30; MAX_CRL_LEN as usize],
        };
        let b = big.to_bytes();
        assert_eq!(decode(&b).unwrap().unwrap(), (big, b.len()));
    }

    #[test]
    fn rejects_bad_revocations() {
        // unknown format
        assert_eq!(
            decode(&hex("00 00 00 07 0a 02 00 00 00 01 30")),
            Err(DecodeError::Invalid("revocation list format"))
        );
        // empty list
        assert_eq!(
            decode(&hex("00 00 00 06 0a 01 00 00 00 00")),
            Err(DecodeError::Invalid("revocation list length"))
        );
        // over the limit (the frame itself is within bounds)
        let mut b = hex("00 00 00 06 0a 01");
        b.extend_from_slice(&(MAX_CRL_LEN + 1).to_be_bytes());
        assert_eq!(decode(&b), Err(DecodeError::Invalid("revocation list length")));
        // announced length longer than the frame
        assert_eq!(
            decode(&hex("00 00 00 07 0a 01 00 00 00 02 30")),
            Err(DecodeError::Truncated("revocations"))
        );
        // trailing byte after the list
        assert_eq!(
            decode(&hex("00 00 00 08 0a 01 00 00 00 01 30 00")),
            Err(DecodeError::Trailing("revocations", 1))
        );
    }

    #[test]
    fn rejects_bad_frames() {
        assert_eq!(decode(&hex("00 00 00 00")), Err(DecodeError::FrameLength(0)));
        assert_eq!(
            decode(&hex("00 10 00 00")),
            Err(DecodeError::FrameLength(0x10_0000))
        );
        assert_eq!(
            decode(&hex("00 00 00 01 7f")),
            Err(DecodeError::UnknownType(0x7f))
        );
        // request with count 0
        let mut b = Message::Request {
            index: [0; 32],
            first: 0,
            count: 1,
        }
        .to_bytes();
        *b.last_mut().unwrap() = 0;
        assert_eq!(decode(&b), Err(DecodeError::Invalid("chunk range")));
        // trailing byte inside the frame
        let mut b = Message::Request {
            index: [0; 32],
            first: 0,
            count: 1,
        }
        .to_bytes();
        b.push(0);
        b[3] += 1;
        assert_eq!(decode(&b), Err(DecodeError::Trailing("request", 1)));
        // truncated body (length says fewer bytes than the fields need)
        assert_eq!(
            decode(&hex("00 00 00 02 04 00")),
            Err(DecodeError::Truncated("request"))
        );
        // data length over the limit
        let mut b = Message::Data {
            index: [0; 32],
            chunk: 0,
            len: 0,
        }
        .to_bytes();
        let n = b.len();
        b[n - 4..].copy_from_slice(&(MAX_DATA_LEN + 1).to_be_bytes());
        assert_eq!(decode(&b), Err(DecodeError::Invalid("data length")));
        // have-map with a padding bit set
        assert_eq!(
            decode(&hex("00 00 00 27 02 ID(00) 00 00 00 0a ff ff")),
            Err(DecodeError::Invalid("have-map padding"))
        );
        // bad utf-8 site
        assert_eq!(
            decode(&hex("00 00 00 06 01 01 01 ff 00 00")),
            Err(DecodeError::Invalid("site utf-8"))
        );
        // range that overflows u32
        let b = Message::Request {
            index: [0; 32],
            first: u32::MAX,
            count: 1,
        }
        .to_bytes();
        assert_eq!(decode(&b), Err(DecodeError::Invalid("chunk range")));
    }

    #[test]
    fn two_frames_back_to_back() {
        let mut b = Vec::new();
        Message::Have {
            index: [1; 32],
            chunks: vec![1],
        }
        .encode(&mut b);
        Message::Peers { addrs: vec![] }.encode(&mut b);
        let (m1, n1) = decode(&b).unwrap().unwrap();
        let (m2, n2) = decode(&b[n1..]).unwrap().unwrap();
        assert!(matches!(m1, Message::Have { .. }));
        assert_eq!(m2, Message::Peers { addrs: vec![] });
        assert_eq!(n1 + n2, b.len());
    }

    #[test]
    fn error_codes_round_trip_and_long_messages_are_cut() {
        for c in 0..20u16 {
            assert_eq!(ErrorCode::from_u16(c).to_u16(), c);
        }
        let long = "é".repeat(400);
        let b = Message::Error {
            code: ErrorCode::Limit,
            index: [0; 32],
            message: long,
        }
        .to_bytes();
        let (m, _) = decode(&b).unwrap().unwrap();
        let Message::Error { message, .. } = m else {
            panic!("not an error")
        };
        assert_eq!(message.len(), 512);
    }

    proptest::proptest! {
        /// The decoder never panics and never reads past what it was given.
        #[test]
        fn decoder_total_on_garbage(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Ok(Some((_, used))) = decode(&bytes) {
                proptest::prop_assert!(used <= bytes.len());
            }
        }

        /// Encode then decode is the identity for valid messages.
        #[test]
        fn round_trip(first in 0u32..1_000_000, count in 1u32..=1024, chunks in proptest::collection::vec(0u32..1_000_000, 1..50), site in "[a-z0-9-]{0,64}", crl in proptest::collection::vec(proptest::num::u8::ANY, 1..300)) {
            let msgs = [
                Message::Request { index: [9; 32], first, count },
                Message::Have { index: [8; 32], chunks: chunks.clone() },
                Message::Fetching { index: [7; 32], chunks },
                Message::Hello { version: VERSION, site, indexes: vec![[1; 32], [2; 32]] },
                Message::Revocations { crl },
            ];
            for m in msgs {
                let b = m.to_bytes();
                proptest::prop_assert_eq!(decode(&b).unwrap().unwrap(), (m, b.len()));
            }
        }
    }

    #[test]
    fn coalesce_merges_runs_of_haves_and_fetching_in_order() {
        let id = [7u8; 32];
        let other = [8u8; 32];
        let have = |c: &[u32]| Message::Have {
            index: id,
            chunks: c.to_vec(),
        };
        let fetching = |c: &[u32]| Message::Fetching {
            index: id,
            chunks: c.to_vec(),
        };
        let peers = Message::Peers { addrs: Vec::new() };
        let out = coalesce(vec![
            have(&[1]),
            have(&[2, 3]),
            fetching(&[9]),
            fetching(&[10]),
            have(&[4]),
            peers.clone(),
            have(&[5]),
            Message::Have {
                index: other,
                chunks: vec![6],
            },
        ]);
        assert_eq!(
            out,
            vec![
                have(&[1, 2, 3]),
                fetching(&[9, 10]),
                have(&[4]),
                peers,
                have(&[5]),
                Message::Have {
                    index: other,
                    chunks: vec![6]
                },
            ]
        );
        // The per-message limit holds.
        let many: Vec<Message> = (0..MAX_REQUEST_CHUNKS + 10).map(|c| have(&[c])).collect();
        let out = coalesce(many);
        assert_eq!(out.len(), 2);
        for m in &out {
            let mut buf = Vec::new();
            m.encode(&mut buf);
            assert_eq!(decode(&buf).unwrap().unwrap().0, *m, "each one decodes");
        }
    }
}
