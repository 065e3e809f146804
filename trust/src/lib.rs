//! Pollen's trust chain: the chunk index the director signs, cosign-compatible signing and publishing, and
//! the dual (publisher + director) verification every edge node runs before it installs a byte.
//!
//! Layers, each with its own error type:
//! - [`index`]: the chunk index, its canonical encoding and per-chunk verification (pure, no I/O);
//! - [`verified`]: [`VerifiedIndex`], the proof that every check passed.
//!
//! Non-goals: keyless signing (Fulcio), transparency logs (Rekor) and TUF; verification is offline apart
//! from fetching a few small objects from the registry.

pub mod index;
pub mod verified;

pub use index::{
    ChunkError, ChunkIndex, FixedChunker, IndexBuilder, IndexError, IndexMeta, PayloadRef, TargetSpec,
};
pub use verified::{ResolvedPayload, VerifiedIndex};
