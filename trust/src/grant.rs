//! Peer grants: the director's word that a node may join the swarm of one chunk index although the
//! index's signed peer list does not name it (it joined the rollout's selection after the index was
//! built).
//!
//! A grant is the director key's signature over [`grant_message`]: a fixed context string, the digest of
//! the index's OCI manifest (`sha256:<hex>`, the part after `@` in the pinned index reference) and the
//! node name. The operator writes it into the node's assignment as base64; the node presents the raw
//! signature to its peers, who check it with the director public key they already trust for the index,
//! against the node name in the peer's fleet certificate. A grant names neither an address nor a key, so
//! it is worth nothing without that node's certificate, and a revoked certificate revokes it too.
//!
//! ECDSA signatures are randomised, so signing again gives other bytes for the same grant. The operator
//! therefore keeps a grant already written that still verifies ([`sign_or_keep`]) and writes an
//! assignment only when it really changes, across reconciles and restarts alike.
//!
//! Non-goals: expiry of its own (a grant lives as long as the index it names), grants for more than one
//! index or node.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::keys::{KeyError, PublicKey, SigningKey};

/// Context string at the start of every grant message, so that a grant signature can never be taken
/// for a signature over anything else the director key signs.
pub const GRANT_CONTEXT: &[u8] = b"pollen/peer-grant/v1\n";

/// Longest raw grant signature accepted (ECDSA P-521 DER is at most 139 bytes).
pub const MAX_GRANT_LEN: usize = 512;

/// Why a grant could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The index reference is not pinned by digest.
    #[error("index reference {0:?} is not pinned by digest (registry/repo@sha256:…)")]
    Unpinned(String),
    /// Signing failed.
    #[error("signing the grant: {0}")]
    Sign(#[from] KeyError),
    /// The base64 text is malformed, empty or too long.
    #[error("malformed peer grant: {0}")]
    Malformed(String),
}

/// The digest part of a pinned reference (`registry/repo@sha256:<hex>` → `sha256:<hex>`).
pub fn index_digest(index_reference: &str) -> Result<&str, GrantError> {
    match index_reference.rsplit_once('@') {
        Some((_, d)) if d.starts_with("sha256:") && d.len() == 7 + 64 => Ok(d),
        _ => Err(GrantError::Unpinned(index_reference.to_owned())),
    }
}

/// The bytes a grant signs: [`GRANT_CONTEXT`], the index manifest digest, a newline, the node name.
pub fn grant_message(index_digest: &str, node: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(GRANT_CONTEXT.len() + index_digest.len() + 1 + node.len());
    m.extend_from_slice(GRANT_CONTEXT);
    m.extend_from_slice(index_digest.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(node.as_bytes());
    m
}

/// Signs a grant for `node` on the index at the pinned `index_reference`; returns it as base64.
pub fn sign(director: &SigningKey, index_reference: &str, node: &str) -> Result<String, GrantError> {
    let digest = index_digest(index_reference)?;
    let sig = director.sign(&grant_message(digest, node))?;
    Ok(STANDARD.encode(sig))
}

/// `existing` when it is a valid grant for `node` on the index at `index_reference` under `director`,
/// else a new one.
pub fn sign_or_keep(
    director: &SigningKey,
    public: &PublicKey,
    index_reference: &str,
    node: &str,
    existing: Option<&str>,
) -> Result<String, GrantError> {
    let digest = index_digest(index_reference)?;
    if let Some(text) = existing
        && let Ok(sig) = decode(text)
        && verify(public, digest, node, &sig)
    {
        return Ok(text.to_owned());
    }
    sign(director, index_reference, node)
}

/// Decodes the base64 text of a grant into the raw signature sent on the wire.
pub fn decode(text: &str) -> Result<Vec<u8>, GrantError> {
    let raw = STANDARD
        .decode(text.trim())
        .map_err(|e| GrantError::Malformed(e.to_string()))?;
    if raw.is_empty() || raw.len() > MAX_GRANT_LEN {
        return Err(GrantError::Malformed(format!(
            "{} bytes, expected 1 to {MAX_GRANT_LEN}",
            raw.len()
        )));
    }
    Ok(raw)
}

/// Whether `signature` is the director's grant for `node` on the index with manifest digest `index_digest`.
pub fn verify(director: &PublicKey, index_digest: &str, node: &str, signature: &[u8]) -> bool {
    !signature.is_empty()
        && signature.len() <= MAX_GRANT_LEN
        && director.verify(signature, &grant_message(index_digest, node))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF: &str = "127.0.0.1:5000/fleet/app-index@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_grant_verifies_for_its_node_and_index_only() {
        let director = SigningKey::generate().unwrap();
        let public = director.public_key().unwrap();
        let text = sign(&director, REF, "gw-07").unwrap();
        let sig = decode(&text).unwrap();
        let digest = index_digest(REF).unwrap();
        assert!(verify(&public, digest, "gw-07", &sig));
        assert!(!verify(&public, digest, "gw-08", &sig), "another node");
        assert!(!verify(&public, digest, "gw-0", &sig), "a prefix of the node");
        let other = "sha256:1123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert!(!verify(&public, other, "gw-07", &sig), "another index");
        let stranger = SigningKey::generate().unwrap().public_key().unwrap();
        assert!(!verify(&stranger, digest, "gw-07", &sig), "another key");
        let mut bent = sig.clone();
        let last = bent.len() - 1;
        bent[last] ^= 1;
        assert!(!verify(&public, digest, "gw-07", &bent), "a changed signature");
        assert!(!verify(&public, digest, "gw-07", &[]));
    }

    #[test]
    fn a_valid_grant_is_kept_and_any_other_replaced() {
        // The operator rewrites an assignment only when it changes; signing afresh on every reconcile
        // would rewrite every assignment every time.
        let director = SigningKey::generate().unwrap();
        let public = director.public_key().unwrap();
        let first = sign_or_keep(&director, &public, REF, "gw-07", None).unwrap();
        assert_eq!(
            sign_or_keep(&director, &public, REF, "gw-07", Some(&first)).unwrap(),
            first
        );
        let digest = index_digest(REF).unwrap();
        for stale in [
            sign(&director, REF, "gw-08").unwrap(),
            sign(&SigningKey::generate().unwrap(), REF, "gw-07").unwrap(),
            "garbage".to_string(),
        ] {
            let fresh = sign_or_keep(&director, &public, REF, "gw-07", Some(&stale)).unwrap();
            assert_ne!(fresh, stale);
            assert!(verify(&public, digest, "gw-07", &decode(&fresh).unwrap()));
        }
    }

    #[test]
    fn the_message_is_framed() {
        assert_eq!(
            grant_message("sha256:ab", "n1"),
            b"pollen/peer-grant/v1\nsha256:ab\nn1".to_vec()
        );
    }

    #[test]
    fn bad_inputs_are_refused() {
        let director = SigningKey::generate().unwrap();
        assert!(matches!(
            sign(&director, "127.0.0.1:5000/fleet/app-index:v1", "n"),
            Err(GrantError::Unpinned(_))
        ));
        assert!(index_digest("repo@sha256:short").is_err());
        assert!(matches!(decode("not base64!"), Err(GrantError::Malformed(_))));
        assert!(matches!(decode(""), Err(GrantError::Malformed(_))));
        assert!(matches!(
            decode(&STANDARD.encode([7u8; MAX_GRANT_LEN + 1])),
            Err(GrantError::Malformed(_))
        ));
        assert_eq!(decode(&STANDARD.encode([7u8; 3])).unwrap(), vec![7u8; 3]);
    }
}
