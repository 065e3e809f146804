//! The chunk index: what the director signs for one rollout of one payload.
//!
//! A [`ChunkIndex`] names a payload (its SHA-256, which is also its OCI layer digest, its size and its
//! media type), cuts it into chunks with one BLAKE3 hash each, and carries the director's decision about it:
//! the install target, the rollout identity, a monotonically increasing sequence number (rollback
//! protection), an explicit downgrade flag, an optional expiry and the nodes authorised to fetch it.
//!
//! This module is pure: no I/O, no clock, no keys. Signing and fetching live in other modules; the data
//! plane uses [`ChunkIndex::verify_chunk`] on every chunk it receives, and checks the whole-payload SHA-256
//! at the end.
//!
//! # Wire encoding (version 1)
//!
//! One canonical encoding per value, all integers big-endian, every string UTF-8 with a `u16` length prefix:
//!
//! | field | encoding |
//! | --- | --- |
//! | magic | the 4 bytes `PLIX` |
//! | version | `u8`, `1` |
//! | payload digest | 32 bytes (SHA-256 of the payload) |
//! | payload size | `u64` |
//! | payload media type | string |
//! | chunking scheme | `u8`, `0` = fixed size (the only scheme of version 1) |
//! | chunk size | `u32` |
//! | chunk count | `u32`, then that many 32-byte BLAKE3 hashes |
//! | target path | string |
//! | keep versions | `u32` |
//! | rollout | string, `namespace/name` |
//! | sequence | `u64`, at least 1 |
//! | downgrade | `u8`, `0` or `1` |
//! | expiry | `u8` `0` (none) or `1` followed by a `u64` (unix seconds) |
//! | peer count | `u32`, then that many strings, strictly ascending (sorted, no duplicates) |
//!
//! The decoder rejects anything else: another magic or version, an unknown chunking scheme, trailing bytes,
//! a chunk count that does not equal `ceil(size / chunk_size)`, and every value outside the limits below.
//!
//! # Limits
//!
//! | what | limit |
//! | --- | --- |
//! | encoded index | [`MAX_ENCODED_LEN`] = 64 MiB |
//! | chunks | [`MAX_CHUNKS`] = 1,048,576 |
//! | chunk size | [`MIN_CHUNK_SIZE`] = 4 KiB to [`MAX_CHUNK_SIZE`] = 64 MiB |
//! | any string | [`MAX_STRING_LEN`] = 4 KiB (media type, node names: 255 and 253 bytes) |
//! | peers | [`MAX_PEERS`] = 4,096 |
//! | keep versions | [`MAX_KEEP_VERSIONS`] = 100 |
//!
//! # Chunking
//!
//! A [`Chunker`] is a pure function from a byte stream to chunk boundaries. Version 1 of the wire knows one
//! scheme, fixed-size chunks ([`FixedChunker`]); the store and the wire protocol address chunks only through
//! [`ChunkIndex::chunk_range`] and [`ChunkIndex::chunk_len`], so a content-defined scheme (for delta rollouts)
//! can be added as a new chunking-scheme byte carrying the chunk lengths, without changing either.
//!
//! Non-goals: compression, delta encoding, signatures (see the signing and verify modules).

use std::fmt;
use std::ops::Range;

use sha2::Digest as _;

/// Magic bytes opening every encoded index.
pub const MAGIC: [u8; 4] = *b"PLIX";
/// The encoding version this module writes and the only one it reads.
pub const VERSION: u8 = 1;
/// Largest encoded index the decoder accepts (64 MiB).
pub const MAX_ENCODED_LEN: usize = 64 * 1024 * 1024;
/// Most chunks one index may have.
pub const MAX_CHUNKS: u32 = 1 << 20;
/// Smallest chunk size (4 KiB).
pub const MIN_CHUNK_SIZE: u32 = 4 * 1024;
/// Largest chunk size (64 MiB).
pub const MAX_CHUNK_SIZE: u32 = 64 * 1024 * 1024;
/// Longest string field, in bytes (4 KiB).
pub const MAX_STRING_LEN: usize = 4096;
/// Longest media type, in bytes (RFC 6838 allows 127 + 1 + 127).
pub const MAX_MEDIA_TYPE_LEN: usize = 255;
/// Longest node name, in bytes (a Kubernetes node name is a DNS subdomain).
pub const MAX_NODE_NAME_LEN: usize = 253;
/// Most authorised peers one index may list.
pub const MAX_PEERS: u32 = 4096;
/// Most previous versions an index may ask a node to keep.
pub const MAX_KEEP_VERSIONS: u32 = 100;
/// Smallest chunk size [`auto_chunk_size`] picks (64 KiB).
pub const AUTO_MIN_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest chunk size [`auto_chunk_size`] picks (4 MiB).
pub const AUTO_MAX_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// Chunk count [`auto_chunk_size`] aims to stay under.
pub const AUTO_TARGET_CHUNKS: u64 = 4096;

/// A 32-byte hash (SHA-256 or BLAKE3).
pub type Hash32 = [u8; 32];

/// The payload an index describes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PayloadRef {
    /// SHA-256 of the whole payload: the OCI layer (blob) digest.
    pub digest: Hash32,
    /// Payload size in bytes.
    pub size: u64,
    /// Media type of the payload layer.
    pub media_type: String,
}

impl PayloadRef {
    /// The digest in OCI form, `sha256:<hex>`.
    pub fn oci_digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.digest))
    }
}

/// Where and how a node installs the payload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetSpec {
    /// Relative path under the node's install root: `/`-separated, no empty, `.` or `..` component.
    pub path: String,
    /// How many previous versions the node keeps for rollback.
    pub keep_versions: u32,
}

/// The director-signed description of one payload for one rollout. See the module docs for the encoding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChunkIndex {
    /// The payload.
    pub payload: PayloadRef,
    /// Size of every chunk but the last, which holds the remainder.
    pub chunk_size: u32,
    /// BLAKE3 hash of each chunk, in order.
    pub chunks: Vec<Hash32>,
    /// Where the node installs the payload.
    pub target: TargetSpec,
    /// The rollout identity, `namespace/name`.
    pub rollout: String,
    /// Monotonically increasing per target; a node refuses a lower one unless `downgrade` is set.
    pub sequence: u64,
    /// The director explicitly allows installing this over a higher sequence.
    pub downgrade: bool,
    /// Unix seconds after which nodes refuse the index.
    pub expires_at: Option<u64>,
    /// Node names authorised to fetch and serve this index, strictly ascending; empty means any fleet member.
    pub peers: Vec<String>,
}

/// Why an encoded index, or an index value, was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    /// The encoding is larger than [`MAX_ENCODED_LEN`].
    #[error("index is {len} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input ended inside a field.
    #[error("index truncated inside {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The input does not start with [`MAGIC`].
    #[error("not a Pollen chunk index (bad magic)")]
    BadMagic,
    /// The version byte is not [`VERSION`].
    #[error("unsupported chunk index version {0}")]
    UnsupportedVersion(u8),
    /// The chunking-scheme byte is not a known scheme.
    #[error("unknown chunking scheme {0}")]
    UnknownChunking(u8),
    /// Bytes follow the last field.
    #[error("{0} trailing bytes after the index")]
    TrailingBytes(usize),
    /// The chunk size is outside [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
    #[error("chunk size {0} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    ChunkSize(u32),
    /// More than [`MAX_CHUNKS`] chunks.
    #[error("{0} chunks, more than the {MAX_CHUNKS} limit")]
    TooManyChunks(u64),
    /// The chunk count is not `ceil(size / chunk_size)`.
    #[error(
        "payload of {size} bytes in {chunk_size}-byte chunks needs {expected} chunks, index has {actual}"
    )]
    ChunkCount {
        /// Payload size.
        size: u64,
        /// Chunk size.
        chunk_size: u32,
        /// `ceil(size / chunk_size)`.
        expected: u64,
        /// Chunks listed.
        actual: u64,
    },
    /// A string field is longer than its limit.
    #[error("{field} is {len} bytes, more than the {max}-byte limit")]
    StringTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A boolean or option tag byte is neither 0 nor 1.
    #[error("{field} flag byte is {value}, not 0 or 1")]
    InvalidFlag {
        /// The field.
        field: &'static str,
        /// The byte found.
        value: u8,
    },
    /// A field holds a value its rules forbid.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More than [`MAX_PEERS`] peers.
    #[error("{0} peers, more than the {MAX_PEERS} limit")]
    TooManyPeers(u64),
    /// The peer list is not strictly ascending (unsorted or duplicated).
    #[error("peer list is not sorted and unique")]
    PeersNotSorted,
}

/// Why a chunk failed [`ChunkIndex::verify_chunk`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    /// The chunk number is past the last chunk.
    #[error("chunk {index} out of range (index has {count} chunks)")]
    OutOfRange {
        /// Requested chunk.
        index: u32,
        /// Chunks in the index.
        count: u32,
    },
    /// The bytes are not the chunk's length.
    #[error("chunk {index} is {actual} bytes, expected {expected}")]
    Length {
        /// The chunk.
        index: u32,
        /// Its length per the index.
        expected: u32,
        /// Bytes given.
        actual: usize,
    },
    /// The BLAKE3 hash differs from the index.
    #[error("chunk {index} hash mismatch")]
    HashMismatch {
        /// The chunk.
        index: u32,
    },
}

impl ChunkIndex {
    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        // Bounded by MAX_CHUNKS for every valid index.
        u32::try_from(self.chunks.len()).unwrap_or(u32::MAX)
    }

    /// Byte range of chunk `i` in the payload. Panics if `i` is out of range.
    pub fn chunk_range(&self, i: u32) -> Range<u64> {
        assert!(i < self.chunk_count(), "chunk {i} out of range");
        let start = u64::from(i) * u64::from(self.chunk_size);
        let end = (start + u64::from(self.chunk_size)).min(self.payload.size);
        start..end
    }

    /// Length of chunk `i`. Panics if `i` is out of range.
    pub fn chunk_len(&self, i: u32) -> u32 {
        let r = self.chunk_range(i);
        // A chunk is at most chunk_size (u32) long.
        (r.end - r.start) as u32
    }

    /// Checks `bytes` against chunk `i`: its length, then one BLAKE3 hash and a comparison.
    pub fn verify_chunk(&self, i: u32, bytes: &[u8]) -> Result<(), ChunkError> {
        let count = self.chunk_count();
        if i >= count {
            return Err(ChunkError::OutOfRange { index: i, count });
        }
        let expected = self.chunk_len(i);
        if bytes.len() != expected as usize {
            return Err(ChunkError::Length {
                index: i,
                expected,
                actual: bytes.len(),
            });
        }
        if blake3::hash(bytes).as_bytes() != &self.chunks[i as usize] {
            return Err(ChunkError::HashMismatch { index: i });
        }
        Ok(())
    }

    /// The index identity: BLAKE3 of its canonical encoding.
    pub fn id(&self) -> Hash32 {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// Whether `node` may fetch and serve this index (an empty peer list authorises every fleet member).
    pub fn authorises(&self, node: &str) -> bool {
        self.peers.is_empty() || self.peers.binary_search_by(|p| p.as_str().cmp(node)).is_ok()
    }

    /// Checks every rule the decoder enforces, so that `decode(encode(x)) == x` holds for a valid `x`.
    pub fn validate(&self) -> Result<(), IndexError> {
        check_media_type(&self.payload.media_type)?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(IndexError::ChunkSize(self.chunk_size));
        }
        let actual = self.chunks.len() as u64;
        if actual > u64::from(MAX_CHUNKS) {
            return Err(IndexError::TooManyChunks(actual));
        }
        let expected = self.payload.size.div_ceil(u64::from(self.chunk_size));
        if expected != actual {
            return Err(IndexError::ChunkCount {
                size: self.payload.size,
                chunk_size: self.chunk_size,
                expected,
                actual,
            });
        }
        check_target_path(&self.target.path)?;
        if self.target.keep_versions > MAX_KEEP_VERSIONS {
            return Err(IndexError::InvalidField {
                field: "keep_versions",
                reason: "more than 100",
            });
        }
        check_rollout(&self.rollout)?;
        if self.sequence == 0 {
            return Err(IndexError::InvalidField {
                field: "sequence",
                reason: "must be at least 1",
            });
        }
        if self.peers.len() as u64 > u64::from(MAX_PEERS) {
            return Err(IndexError::TooManyPeers(self.peers.len() as u64));
        }
        for p in &self.peers {
            check_node_name(p)?;
        }
        if self.peers.windows(2).any(|w| w[0] >= w[1]) {
            return Err(IndexError::PeersNotSorted);
        }
        Ok(())
    }

    /// The canonical encoding (see the module docs). Only a value that passes [`validate`](Self::validate)
    /// decodes back; encoding never fails.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.chunks.len() * 32 + self.peers.len() * 32);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.payload.digest);
        out.extend_from_slice(&self.payload.size.to_be_bytes());
        put_str(&mut out, &self.payload.media_type);
        out.push(0); // chunking scheme: fixed
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_be_bytes());
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        put_str(&mut out, &self.target.path);
        out.extend_from_slice(&self.target.keep_versions.to_be_bytes());
        put_str(&mut out, &self.rollout);
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.push(u8::from(self.downgrade));
        match self.expires_at {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&t.to_be_bytes());
            }
        }
        out.extend_from_slice(&(self.peers.len() as u32).to_be_bytes());
        for p in &self.peers {
            put_str(&mut out, p);
        }
        out
    }

    /// Decodes and validates an index; rejects anything not produced by [`encode`](Self::encode) of a valid
    /// value.
    pub fn decode(bytes: &[u8]) -> Result<ChunkIndex, IndexError> {
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(IndexError::TooLarge {
                len: bytes.len(),
                max: MAX_ENCODED_LEN,
            });
        }
        let mut r = Reader { buf: bytes };
        if r.take(4, "magic")? != MAGIC {
            return Err(IndexError::BadMagic);
        }
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(IndexError::UnsupportedVersion(version));
        }
        let digest: Hash32 = r.take(32, "payload digest")?.try_into().expect("32 bytes");
        let size = r.u64("payload size")?;
        let media_type = r.string("media type", MAX_MEDIA_TYPE_LEN)?;
        check_media_type(&media_type)?;
        let scheme = r.u8("chunking scheme")?;
        if scheme != 0 {
            return Err(IndexError::UnknownChunking(scheme));
        }
        let chunk_size = r.u32("chunk size")?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(IndexError::ChunkSize(chunk_size));
        }
        let count = r.u32("chunk count")?;
        if count > MAX_CHUNKS {
            return Err(IndexError::TooManyChunks(u64::from(count)));
        }
        let expected = size.div_ceil(u64::from(chunk_size));
        if expected != u64::from(count) {
            return Err(IndexError::ChunkCount {
                size,
                chunk_size,
                expected,
                actual: u64::from(count),
            });
        }
        let raw = r.take(count as usize * 32, "chunk hashes")?;
        let chunks = raw
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        let path = r.string("target path", MAX_STRING_LEN)?;
        check_target_path(&path)?;
        let keep_versions = r.u32("keep versions")?;
        if keep_versions > MAX_KEEP_VERSIONS {
            return Err(IndexError::InvalidField {
                field: "keep_versions",
                reason: "more than 100",
            });
        }
        let rollout = r.string("rollout", MAX_STRING_LEN)?;
        check_rollout(&rollout)?;
        let sequence = r.u64("sequence")?;
        if sequence == 0 {
            return Err(IndexError::InvalidField {
                field: "sequence",
                reason: "must be at least 1",
            });
        }
        let downgrade = r.flag("downgrade")?;
        let expires_at = if r.flag("expiry")? {
            Some(r.u64("expiry")?)
        } else {
            None
        };
        let npeers = r.u32("peer count")?;
        if npeers > MAX_PEERS {
            return Err(IndexError::TooManyPeers(u64::from(npeers)));
        }
        let mut peers: Vec<String> = Vec::with_capacity(npeers as usize);
        for _ in 0..npeers {
            let p = r.string("peer", MAX_NODE_NAME_LEN)?;
            check_node_name(&p)?;
            if peers.last().is_some_and(|last| *last >= p) {
                return Err(IndexError::PeersNotSorted);
            }
            peers.push(p);
        }
        if !r.buf.is_empty() {
            return Err(IndexError::TrailingBytes(r.buf.len()));
        }
        Ok(ChunkIndex {
            payload: PayloadRef {
                digest,
                size,
                media_type,
            },
            chunk_size,
            chunks,
            target: TargetSpec { path, keep_versions },
            rollout,
            sequence,
            downgrade,
            expires_at,
            peers,
        })
    }
}

impl fmt::Display for ChunkIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "index {} rollout {} seq {}{} payload {} ({} bytes, {} chunks of {}) -> {}",
            hex::encode(self.id()),
            self.rollout,
            self.sequence,
            if self.downgrade { " (downgrade)" } else { "" },
            self.payload.oci_digest(),
            self.payload.size,
            self.chunk_count(),
            self.chunk_size,
            self.target.path
        )
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Lengths are bounded by MAX_STRING_LEN for every valid index.
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], IndexError> {
        if self.buf.len() < n {
            return Err(IndexError::Truncated { field });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, IndexError> {
        Ok(self.take(1, field)?[0])
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, IndexError> {
        Ok(u32::from_be_bytes(
            self.take(4, field)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, IndexError> {
        Ok(u64::from_be_bytes(
            self.take(8, field)?.try_into().expect("8 bytes"),
        ))
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, IndexError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(IndexError::InvalidFlag { field, value }),
        }
    }
    fn string(&mut self, field: &'static str, max: usize) -> Result<String, IndexError> {
        let len = usize::from(u16::from_be_bytes(
            self.take(2, field)?.try_into().expect("2 bytes"),
        ));
        if len > max {
            return Err(IndexError::StringTooLong { field, len, max });
        }
        let raw = self.take(len, field)?;
        String::from_utf8(raw.to_vec()).map_err(|_| IndexError::InvalidUtf8 { field })
    }
}

fn check_media_type(s: &str) -> Result<(), IndexError> {
    const F: &str = "media type";
    if s.len() > MAX_MEDIA_TYPE_LEN {
        return Err(IndexError::StringTooLong {
            field: F,
            len: s.len(),
            max: MAX_MEDIA_TYPE_LEN,
        });
    }
    let Some((ty, sub)) = s.split_once('/') else {
        return Err(IndexError::InvalidField {
            field: F,
            reason: "not type/subtype",
        });
    };
    let ok = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if !ok(ty) || !ok(sub) {
        return Err(IndexError::InvalidField {
            field: F,
            reason: "not an RFC 6838 type/subtype",
        });
    }
    Ok(())
}

/// Path components a target path must not use: the names of a node's install layout.
pub const RESERVED_PATH_NAMES: [&str; 2] = ["current", "versions"];

/// Checks a target path: relative, plain components, no reserved name ([`RESERVED_PATH_NAMES`]).
pub fn check_target_path(s: &str) -> Result<(), IndexError> {
    const F: &str = "target path";
    if s.len() > MAX_STRING_LEN {
        return Err(IndexError::StringTooLong {
            field: F,
            len: s.len(),
            max: MAX_STRING_LEN,
        });
    }
    if s.is_empty() {
        return Err(IndexError::InvalidField {
            field: F,
            reason: "empty",
        });
    }
    if s.chars().any(char::is_control) {
        return Err(IndexError::InvalidField {
            field: F,
            reason: "control character",
        });
    }
    if s.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(IndexError::InvalidField {
            field: F,
            reason: "not a relative path of plain components (no leading '/', '//', '.', '..')",
        });
    }
    // A node installs `a/b` into `a/b/current` and `a/b/versions/`: a component with one of those
    // names would land inside another target's install directory.
    if s.split('/').any(|c| RESERVED_PATH_NAMES.contains(&c)) {
        return Err(IndexError::InvalidField {
            field: F,
            reason: "uses a reserved name ('current' or 'versions') as a component",
        });
    }
    Ok(())
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NODE_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn check_rollout(s: &str) -> Result<(), IndexError> {
    const F: &str = "rollout";
    if s.len() > MAX_STRING_LEN {
        return Err(IndexError::StringTooLong {
            field: F,
            len: s.len(),
            max: MAX_STRING_LEN,
        });
    }
    match s.split_once('/') {
        Some((ns, name)) if is_dns_subdomain(ns) && ns.len() <= 63 && is_dns_subdomain(name) => Ok(()),
        _ => Err(IndexError::InvalidField {
            field: F,
            reason: "not namespace/name (DNS names)",
        }),
    }
}

fn check_node_name(s: &str) -> Result<(), IndexError> {
    if s.len() > MAX_NODE_NAME_LEN {
        return Err(IndexError::StringTooLong {
            field: "peer",
            len: s.len(),
            max: MAX_NODE_NAME_LEN,
        });
    }
    if !is_dns_subdomain(s) {
        return Err(IndexError::InvalidField {
            field: "peer",
            reason: "not a DNS subdomain node name",
        });
    }
    Ok(())
}

/// The chunk size picked for a payload of `size` bytes when none is given: the smallest power of two from
/// [`AUTO_MIN_CHUNK_SIZE`] (64 KiB) up to [`AUTO_MAX_CHUNK_SIZE`] (4 MiB) that keeps the payload within
/// [`AUTO_TARGET_CHUNKS`] (4,096) chunks. So 4 MiB gets 64 chunks of 64 KiB, 1 GiB gets 4,096 chunks of
/// 256 KiB, and anything above 16 GiB gets 4 MiB chunks (more than 4,096 of them).
pub fn auto_chunk_size(size: u64) -> u32 {
    let mut cs = AUTO_MIN_CHUNK_SIZE;
    while cs < AUTO_MAX_CHUNK_SIZE && size.div_ceil(u64::from(cs)) > AUTO_TARGET_CHUNKS {
        cs *= 2;
    }
    cs
}

/// The chunk size an index of a `size`-byte payload is built with: `requested`, else [`auto_chunk_size`].
pub fn chunk_size_for(requested: Option<u32>, size: u64) -> u32 {
    requested.unwrap_or_else(|| auto_chunk_size(size))
}

/// A pure function from a byte stream to chunk boundaries (the seam for content-defined chunking).
///
/// The builder feeds the stream in pieces; for each piece the chunker says where, if anywhere, the current
/// chunk ends. It must not look at anything but the bytes and its own state, so that the same stream always
/// gives the same boundaries.
pub trait Chunker {
    /// `so_far` bytes of the current chunk have been seen; `data` follows them. Returns `Some(n)` if the
    /// current chunk ends after `data[..n]` (`1 <= n <= data.len()`), or `None` if all of `data` belongs to it.
    fn cut(&mut self, so_far: u64, data: &[u8]) -> Option<usize>;
    /// Called after every cut, to start the next chunk from a clean state.
    fn reset(&mut self) {}
    /// The fixed chunk size this chunker produces, which version 1 of the index encoding requires.
    fn fixed_size(&self) -> u32;
}

/// Fixed-size chunks: every chunk `size` bytes, the last one the remainder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedChunker {
    size: u32,
}

impl FixedChunker {
    /// A chunker of `size`-byte chunks; `None` outside [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
    pub fn new(size: u32) -> Option<Self> {
        (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE)
            .contains(&size)
            .then_some(FixedChunker { size })
    }
    /// The chunker [`auto_chunk_size`] picks for a payload of `payload_size` bytes.
    pub fn auto(payload_size: u64) -> Self {
        FixedChunker {
            size: auto_chunk_size(payload_size),
        }
    }
}

impl Chunker for FixedChunker {
    fn cut(&mut self, so_far: u64, data: &[u8]) -> Option<usize> {
        let remaining = u64::from(self.size).saturating_sub(so_far);
        (remaining <= data.len() as u64).then_some(remaining as usize)
    }
    fn fixed_size(&self) -> u32 {
        self.size
    }
}

/// The director's decisions an index carries besides the payload's hashes (input to [`IndexBuilder::finish`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexMeta {
    /// Payload layer media type.
    pub media_type: String,
    /// Install target.
    pub target: TargetSpec,
    /// Rollout identity, `namespace/name`.
    pub rollout: String,
    /// Sequence number, at least 1.
    pub sequence: u64,
    /// Explicit downgrade.
    pub downgrade: bool,
    /// Expiry, unix seconds.
    pub expires_at: Option<u64>,
    /// Authorised node names, in any order (the builder sorts them and drops duplicates).
    pub peers: Vec<String>,
}

/// Builds an index from a payload streamed through [`update`](Self::update), hashing each chunk with BLAKE3
/// and the whole payload with SHA-256 in the same pass.
pub struct IndexBuilder<C: Chunker = FixedChunker> {
    chunker: C,
    sha: sha2::Sha256,
    cur: blake3::Hasher,
    cur_len: u64,
    size: u64,
    chunks: Vec<Hash32>,
}

impl<C: Chunker> IndexBuilder<C> {
    /// A builder cutting with `chunker`.
    pub fn new(chunker: C) -> Self {
        IndexBuilder {
            chunker,
            sha: sha2::Sha256::new(),
            cur: blake3::Hasher::new(),
            cur_len: 0,
            size: 0,
            chunks: Vec::new(),
        }
    }

    /// Feeds the next bytes of the payload.
    pub fn update(&mut self, mut data: &[u8]) {
        self.sha.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            match self.chunker.cut(self.cur_len, data) {
                Some(n) => {
                    let n = n.clamp(1, data.len());
                    self.cur.update(&data[..n]);
                    self.chunks.push(*self.cur.finalize().as_bytes());
                    self.cur.reset();
                    self.cur_len = 0;
                    self.chunker.reset();
                    data = &data[n..];
                }
                None => {
                    self.cur.update(data);
                    self.cur_len += data.len() as u64;
                    data = &[];
                }
            }
        }
    }

    /// Bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.size
    }

    /// Completes the index with the director's decisions, validating the result.
    pub fn finish(mut self, meta: IndexMeta) -> Result<ChunkIndex, IndexError> {
        if self.cur_len > 0 {
            self.chunks.push(*self.cur.finalize().as_bytes());
        }
        let mut peers = meta.peers;
        peers.sort();
        peers.dedup();
        let index = ChunkIndex {
            payload: PayloadRef {
                digest: self.sha.finalize().into(),
                size: self.size,
                media_type: meta.media_type,
            },
            chunk_size: self.chunker.fixed_size(),
            chunks: self.chunks,
            target: meta.target,
            rollout: meta.rollout,
            sequence: meta.sequence,
            downgrade: meta.downgrade,
            expires_at: meta.expires_at,
            peers,
        };
        index.validate()?;
        Ok(index)
    }
}

/// Builds the index of an in-memory payload in one call (tests and small payloads).
pub fn build_index(payload: &[u8], chunk_size: u32, meta: IndexMeta) -> Result<ChunkIndex, IndexError> {
    let chunker = FixedChunker::new(chunk_size).ok_or(IndexError::ChunkSize(chunk_size))?;
    let mut b = IndexBuilder::new(chunker);
    b.update(payload);
    b.finish(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta() -> IndexMeta {
        IndexMeta {
            media_type: "application/octet-stream".into(),
            target: TargetSpec {
                path: "app/firmware.bin".into(),
                keep_versions: 2,
            },
            rollout: "default/fw".into(),
            sequence: 7,
            downgrade: false,
            expires_at: Some(1_900_000_000),
            peers: vec!["node-b".into(), "node-a".into(), "node-a".into()],
        }
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn small() -> ChunkIndex {
        build_index(&payload(10_000), 4096, meta()).unwrap()
    }

    #[test]
    fn builder_matches_direct_hashes() {
        let data = payload(10_000);
        let idx = small();
        assert_eq!(idx.chunk_count(), 3);
        assert_eq!(idx.chunks[0], *blake3::hash(&data[..4096]).as_bytes());
        assert_eq!(idx.chunks[2], *blake3::hash(&data[8192..]).as_bytes());
        let sha: Hash32 = sha2::Sha256::digest(&data).into();
        assert_eq!(idx.payload.digest, sha);
        assert_eq!(idx.payload.size, 10_000);
        assert_eq!(idx.peers, vec!["node-a".to_string(), "node-b".to_string()]);
        assert_eq!(idx.chunk_range(2), 8192..10_000);
        assert_eq!(idx.chunk_len(2), 10_000 - 8192);
        assert_eq!(idx.chunk_len(0), 4096);
    }

    #[test]
    fn streaming_in_odd_pieces_gives_same_index() {
        let data = payload(50_000);
        let whole = build_index(&data, 4096, meta()).unwrap();
        let mut b = IndexBuilder::new(FixedChunker::new(4096).unwrap());
        for piece in data.chunks(777) {
            b.update(piece);
        }
        b.update(&[]);
        assert_eq!(b.finish(meta()).unwrap(), whole);
    }

    #[test]
    fn verify_chunk_accepts_and_rejects() {
        let data = payload(10_000);
        let idx = small();
        idx.verify_chunk(0, &data[..4096]).unwrap();
        idx.verify_chunk(2, &data[8192..]).unwrap();
        let mut bad = data[4096..8192].to_vec();
        bad[100] ^= 1;
        assert_eq!(
            idx.verify_chunk(1, &bad),
            Err(ChunkError::HashMismatch { index: 1 })
        );
        assert_eq!(
            idx.verify_chunk(1, &data[4096..8000]),
            Err(ChunkError::Length {
                index: 1,
                expected: 4096,
                actual: 3904
            })
        );
        assert_eq!(
            idx.verify_chunk(3, &[]),
            Err(ChunkError::OutOfRange { index: 3, count: 3 })
        );
        // A chunk valid elsewhere in the payload is not valid here.
        assert_eq!(
            idx.verify_chunk(1, &data[..4096]),
            Err(ChunkError::HashMismatch { index: 1 })
        );
    }

    #[test]
    fn empty_payload_has_no_chunks() {
        let idx = build_index(&[], 4096, meta()).unwrap();
        assert_eq!(idx.chunk_count(), 0);
        assert_eq!(ChunkIndex::decode(&idx.encode()).unwrap(), idx);
    }

    #[test]
    fn authorisation() {
        let idx = small();
        assert!(idx.authorises("node-a"));
        assert!(!idx.authorises("node-c"));
        let open = build_index(
            &payload(10),
            4096,
            IndexMeta {
                peers: vec![],
                ..meta()
            },
        )
        .unwrap();
        assert!(open.authorises("anyone"));
    }

    #[test]
    fn auto_chunk_size_rule() {
        assert_eq!(auto_chunk_size(0), 64 * 1024);
        assert_eq!(auto_chunk_size(4 << 20), 64 * 1024);
        assert_eq!(auto_chunk_size(256 << 20), 64 * 1024);
        assert_eq!(auto_chunk_size((256 << 20) + 1), 128 * 1024);
        assert_eq!(auto_chunk_size(1 << 30), 256 * 1024);
        assert_eq!(auto_chunk_size(16 << 30), 4 << 20);
        assert_eq!(auto_chunk_size(100 << 30), 4 << 20);
    }

    /// A tiny index whose encoding is spelled out byte by byte.
    fn golden_index() -> ChunkIndex {
        ChunkIndex {
            payload: PayloadRef {
                digest: [0xAA; 32],
                size: 5000,
                media_type: "a/b".into(),
            },
            chunk_size: 4096,
            chunks: vec![[0x11; 32], [0x22; 32]],
            target: TargetSpec {
                path: "f".into(),
                keep_versions: 1,
            },
            rollout: "n/r".into(),
            sequence: 2,
            downgrade: true,
            expires_at: Some(3),
            peers: vec!["p".into()],
        }
    }

    fn golden_bytes() -> Vec<u8> {
        let mut g = Vec::new();
        g.extend_from_slice(b"PLIX\x01");
        g.extend_from_slice(&[0xAA; 32]);
        g.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x13, 0x88]); // 5000
        g.extend_from_slice(b"\x00\x03a/b");
        g.push(0); // fixed chunking
        g.extend_from_slice(&[0, 0, 0x10, 0]); // 4096
        g.extend_from_slice(&[0, 0, 0, 2]);
        g.extend_from_slice(&[0x11; 32]);
        g.extend_from_slice(&[0x22; 32]);
        g.extend_from_slice(b"\x00\x01f");
        g.extend_from_slice(&[0, 0, 0, 1]);
        g.extend_from_slice(b"\x00\x03n/r");
        g.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]);
        g.push(1);
        g.push(1);
        g.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]);
        g.extend_from_slice(&[0, 0, 0, 1]);
        g.extend_from_slice(b"\x00\x01p");
        g
    }

    #[test]
    fn golden_encoding() {
        let idx = golden_index();
        assert_eq!(idx.encode(), golden_bytes());
        assert_eq!(ChunkIndex::decode(&golden_bytes()).unwrap(), idx);
        assert_eq!(idx.id(), *blake3::hash(&golden_bytes()).as_bytes());
    }

    /// Offset of the first byte after the chunk hashes in the golden encoding.
    const G_AFTER_CHUNKS: usize = 5 + 32 + 8 + 5 + 1 + 4 + 4 + 64;

    fn golden_with(f: impl FnOnce(&mut Vec<u8>)) -> Result<ChunkIndex, IndexError> {
        let mut g = golden_bytes();
        f(&mut g);
        ChunkIndex::decode(&g)
    }

    #[test]
    fn rejects_truncation_at_every_length() {
        let g = golden_bytes();
        for n in 0..g.len() {
            let err = ChunkIndex::decode(&g[..n]).unwrap_err();
            assert!(
                matches!(err, IndexError::Truncated { .. } | IndexError::BadMagic),
                "len {n}: {err:?}"
            );
        }
    }

    #[test]
    fn rejects_every_bad_field() {
        use IndexError::*;
        assert_eq!(golden_with(|g| g[0] = b'X'), Err(BadMagic));
        assert_eq!(golden_with(|g| g[4] = 2), Err(UnsupportedVersion(2)));
        assert_eq!(golden_with(|g| g.push(0)), Err(TrailingBytes(1)));
        // Payload size that disagrees with the chunk count.
        assert!(matches!(
            golden_with(|g| g[43] = 0x20),
            Err(ChunkCount {
                expected: 3,
                actual: 2,
                ..
            })
        ));
        // Media type: not type/subtype, then not UTF-8, then too long.
        assert!(matches!(
            golden_with(|g| g[48] = b'x'),
            Err(InvalidField {
                field: "media type",
                ..
            })
        ));
        assert_eq!(
            golden_with(|g| g[47] = 0xFF),
            Err(InvalidUtf8 { field: "media type" })
        );
        assert!(matches!(
            golden_with(|g| g[45] = 0x10),
            Err(StringTooLong {
                field: "media type",
                ..
            })
        ));
        assert_eq!(golden_with(|g| g[50] = 1), Err(UnknownChunking(1)));
        // Chunk size 0, and too big.
        assert_eq!(
            golden_with(|g| g[51..55].copy_from_slice(&[0; 4])),
            Err(ChunkSize(0))
        );
        assert_eq!(golden_with(|g| g[51] = 0xFF), Err(ChunkSize(0xFF00_1000)));
        // Chunk count: too many, and inconsistent.
        assert_eq!(
            golden_with(|g| g[55..59].copy_from_slice(&[0xFF; 4])),
            Err(TooManyChunks(0xFFFF_FFFF))
        );
        assert!(matches!(
            golden_with(|g| g[58] = 3),
            Err(ChunkCount {
                expected: 2,
                actual: 3,
                ..
            })
        ));
        let a = G_AFTER_CHUNKS;
        // Reserved names, as the whole path or as a component.
        for bad in ["current", "fw/versions/x", "versions", "a/current"] {
            assert!(
                matches!(
                    check_target_path(bad),
                    Err(InvalidField {
                        field: "target path",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        for good in ["fw/gw.bin", "current.bin", "my-versions/x"] {
            assert!(check_target_path(good).is_ok(), "{good}");
        }
        // Target path: absolute, dot-dot, empty, control character.
        assert!(matches!(
            golden_with(|g| g[a + 2] = b'/'),
            Err(InvalidField {
                field: "target path",
                ..
            })
        ));
        assert!(matches!(
            golden_with(|g| {
                g.splice(a..a + 3, *b"\x00\x02..");
            }),
            Err(InvalidField {
                field: "target path",
                ..
            })
        ));
        assert!(matches!(
            golden_with(|g| {
                g.splice(a..a + 3, *b"\x00\x00");
            }),
            Err(InvalidField {
                field: "target path",
                ..
            })
        ));
        assert!(matches!(
            golden_with(|g| g[a + 2] = 0),
            Err(InvalidField {
                field: "target path",
                ..
            })
        ));
        assert!(matches!(
            golden_with(|g| g[a + 3] = 0xFF),
            Err(InvalidField {
                field: "keep_versions",
                ..
            })
        ));
        // Rollout not namespace/name.
        assert!(matches!(
            golden_with(|g| g[a + 10] = b'x'),
            Err(InvalidField { field: "rollout", .. })
        ));
        assert!(matches!(
            golden_with(|g| g[a + 9] = b'N'),
            Err(InvalidField { field: "rollout", .. })
        ));
        // Sequence zero.
        assert!(matches!(
            golden_with(|g| g[a + 19] = 0),
            Err(InvalidField {
                field: "sequence",
                ..
            })
        ));
        assert_eq!(
            golden_with(|g| g[a + 20] = 2),
            Err(InvalidFlag {
                field: "downgrade",
                value: 2
            })
        );
        assert_eq!(
            golden_with(|g| g[a + 21] = 7),
            Err(InvalidFlag {
                field: "expiry",
                value: 7
            })
        );
        // Peers: too many, not a node name, unsorted/duplicate.
        assert_eq!(golden_with(|g| g[a + 30] = 0xFF), Err(TooManyPeers(0xFF00_0001)));
        assert!(matches!(
            golden_with(|g| g[a + 36] = b'_'),
            Err(InvalidField { field: "peer", .. })
        ));
        assert_eq!(
            golden_with(|g| {
                g[a + 33] = 2;
                g.extend_from_slice(b"\x00\x01p");
            }),
            Err(PeersNotSorted)
        );
        assert!(matches!(
            golden_with(|g| g[a + 34] = 0xFF),
            Err(StringTooLong { field: "peer", .. })
        ));
    }

    #[test]
    fn rejects_oversized_input_before_parsing() {
        let big = vec![0u8; MAX_ENCODED_LEN + 1];
        assert_eq!(
            ChunkIndex::decode(&big),
            Err(IndexError::TooLarge {
                len: MAX_ENCODED_LEN + 1,
                max: MAX_ENCODED_LEN
            })
        );
    }

    #[test]
    fn validate_rejects_what_decode_rejects() {
        let mut idx = small();
        idx.peers = vec!["b".into(), "a".into()];
        assert_eq!(idx.validate(), Err(IndexError::PeersNotSorted));
        assert_eq!(ChunkIndex::decode(&idx.encode()), Err(IndexError::PeersNotSorted));
        let mut idx = small();
        idx.chunks.pop();
        assert!(matches!(idx.validate(), Err(IndexError::ChunkCount { .. })));
    }

    fn arb_index() -> impl Strategy<Value = ChunkIndex> {
        (
            any::<[u8; 32]>(),
            (0u64..200_000, prop_oneof![Just(4096u32), Just(5000), Just(65536)]),
            "[a-z]{1,8}/[a-z0-9.+-]{1,20}",
            "[a-z0-9]{1,8}(/[a-z0-9_][a-z0-9._-]{0,7}){0,3}",
            0u32..=MAX_KEEP_VERSIONS,
            "[a-z0-9]{1,10}/[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?",
            1u64..,
            any::<bool>(),
            proptest::option::of(any::<u64>()),
            proptest::collection::btree_set("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 0..6),
            any::<u64>(),
        )
            .prop_map(
                |(
                    digest,
                    (size, cs),
                    mt,
                    path,
                    keep,
                    rollout,
                    sequence,
                    downgrade,
                    expires_at,
                    peers,
                    seed,
                )| {
                    let n = size.div_ceil(u64::from(cs));
                    let chunks = (0..n)
                        .map(|i| *blake3::hash(&(seed ^ i).to_le_bytes()).as_bytes())
                        .collect();
                    ChunkIndex {
                        payload: PayloadRef {
                            digest,
                            size,
                            media_type: mt,
                        },
                        chunk_size: cs,
                        chunks,
                        target: TargetSpec {
                            path,
                            keep_versions: keep,
                        },
                        rollout,
                        sequence,
                        downgrade,
                        expires_at,
                        peers: peers.into_iter().collect(),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn roundtrip(idx in arb_index()) {
            idx.validate().unwrap();
            let enc = idx.encode();
            let dec = ChunkIndex::decode(&enc).unwrap();
            prop_assert_eq!(&dec, &idx);
            prop_assert_eq!(dec.encode(), enc);
        }

        #[test]
        fn single_byte_flip_never_decodes_to_same_value(idx in arb_index(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut enc = idx.encode();
            let p = pos.index(enc.len());
            enc[p] ^= 1 << bit;
            if let Ok(other) = ChunkIndex::decode(&enc) {
                prop_assert_ne!(other.id(), idx.id());
                prop_assert_ne!(other, idx);
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ChunkIndex::decode(&bytes);
        }

        #[test]
        fn chunk_ranges_tile_the_payload(size in 0u64..1_000_000, cs in 4096u32..100_000) {
            let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let m = meta();
            let idx = build_index(&data, cs, m).unwrap();
            let mut next = 0;
            for i in 0..idx.chunk_count() {
                let r = idx.chunk_range(i);
                prop_assert_eq!(r.start, next);
                prop_assert!(r.end > r.start && r.end - r.start <= u64::from(cs));
                idx.verify_chunk(i, &data[r.start as usize..r.end as usize]).unwrap();
                next = r.end;
            }
            prop_assert_eq!(next, size);
        }
    }
}
