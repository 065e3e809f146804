//! The benchmark payload: a file of pseudo-random bytes (incompressible, reproducible from a seed)
//! and its SHA-256 digest.
//!
//! Non-goals: real container images.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::LabError;

/// Writes `size` bytes generated from `seed` to `path`; returns the hex SHA-256.
pub fn write(path: &Path, size: u64, seed: u64) -> Result<String, LabError> {
    let io = |e| LabError::io(format!("writing payload {}", path.display()), e);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut h = Sha256::new();
    let mut state = seed | 1;
    let mut buf = vec![0u8; 1 << 16];
    let mut left = size;
    while left > 0 {
        fill(&mut state, &mut buf);
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).map_err(io)?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush().map_err(io)?;
    Ok(hex::encode(h.finalize()))
}

/// Fills `buf` with xorshift64* output (the last partial word, if any, too), advancing `state`.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for w in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let word = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        w.copy_from_slice(&word[..w.len()]);
    }
}

/// `size` pseudo-random bytes from `seed`, in memory (for tests and small payloads). Distinct seeds give
/// distinct streams: the seed goes through splitmix64, a bijection, before seeding xorshift64*.
pub fn bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let mut state = (z ^ (z >> 31)).max(1);
    let mut out = vec![0u8; size];
    fill(&mut state, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_reproducible_and_sized() {
        let d = tempfile::tempdir().unwrap();
        let a = write(&d.path().join("a"), 100_003, 7).unwrap();
        let b = write(&d.path().join("b"), 100_003, 7).unwrap();
        let c = write(&d.path().join("c"), 100_003, 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let bytes = std::fs::read(d.path().join("a")).unwrap();
        assert_eq!(bytes.len(), 100_003);
        assert_eq!(hex::encode(Sha256::digest(&bytes)), a);
    }

    #[test]
    fn in_memory_payloads_are_reproducible_and_differ_by_seed() {
        assert_eq!(bytes(100_003, 7), bytes(100_003, 7));
        assert_eq!(bytes(13, 1).len(), 13);
        let streams: std::collections::BTreeSet<Vec<u8>> = (0..32).map(|s| bytes(64, s)).collect();
        assert_eq!(streams.len(), 32, "every seed gives its own stream");
    }
}
