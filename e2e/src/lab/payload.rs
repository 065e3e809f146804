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
        for w in buf.chunks_exact_mut(8) {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            w.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).map_err(io)?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush().map_err(io)?;
    Ok(hex::encode(h.finalize()))
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
}
