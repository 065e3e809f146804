//! Peer grants for the assignments: the director's signature that lets a node the signed index does not
//! list (it joined the selection after the index was built) trade chunks with its peers
//! (`pollen_trust::grant`).
//!
//! ECDSA signatures are randomised, so this keeps what it signed, and keeps a grant already written
//! into an EdgeNode while it still verifies: the controller compares assignments and writes only the
//! ones that changed, and a new signature on every reconcile, or after every restart, would rewrite
//! every assignment. Checked grants are remembered too, so a reconcile does no crypto for a grant it
//! has seen.
//!
//! Non-goals: deciding who gets a grant (the controller grants every assigned node), or revoking one
//! (a grant lives as long as its index; certificates are revoked, not grants).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pollen_trust::grant::{self, GrantError};
use pollen_trust::{PublicKey, SigningKey};

/// Most grants remembered before the memory is dropped and rebuilt (about 200 bytes each).
const MAX_REMEMBERED: usize = 100_000;

/// Signs and remembers peer grants with the director key.
pub struct GrantSigner {
    director: Arc<SigningKey>,
    public: PublicKey,
    /// (index manifest digest, node) → the grant in use.
    known: Mutex<HashMap<(String, String), String>>,
}

impl GrantSigner {
    /// A signer for `director`.
    pub fn new(director: Arc<SigningKey>) -> Result<Self, GrantError> {
        let public = director.public_key()?;
        Ok(GrantSigner {
            director,
            public,
            known: Mutex::new(HashMap::new()),
        })
    }

    /// The grant for `node` on the index at the pinned `index_reference`: `existing` if it is valid,
    /// else the one this signer made before, else a new one.
    pub fn grant(
        &self,
        index_reference: &str,
        node: &str,
        existing: Option<&str>,
    ) -> Result<String, GrantError> {
        let key = (grant::index_digest(index_reference)?.to_owned(), node.to_owned());
        let mut known = self.known.lock().expect("grants");
        if let Some(g) = known.get(&key)
            && (existing.is_none() || existing == Some(g.as_str()))
        {
            return Ok(g.clone());
        }
        let g = grant::sign_or_keep(&self.director, &self.public, index_reference, node, existing)?;
        if known.len() >= MAX_REMEMBERED {
            known.clear();
        }
        known.insert(key, g.clone());
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF: &str =
        "r.example/fleet/app-index@sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn grants_are_stable_valid_and_per_node() {
        let key = Arc::new(SigningKey::generate().unwrap());
        let public = key.public_key().unwrap();
        let s = GrantSigner::new(key.clone()).unwrap();
        let a = s.grant(REF, "gw-01", None).unwrap();
        assert_eq!(s.grant(REF, "gw-01", None).unwrap(), a, "signed once");
        assert_eq!(s.grant(REF, "gw-01", Some(&a)).unwrap(), a);
        let digest = grant::index_digest(REF).unwrap();
        assert!(grant::verify(
            &public,
            digest,
            "gw-01",
            &grant::decode(&a).unwrap()
        ));
        let b = s.grant(REF, "gw-02", None).unwrap();
        assert!(grant::verify(
            &public,
            digest,
            "gw-02",
            &grant::decode(&b).unwrap()
        ));
        assert!(!grant::verify(
            &public,
            digest,
            "gw-01",
            &grant::decode(&b).unwrap()
        ));

        // After a restart (a new signer), a grant already written and still valid is kept.
        let restarted = GrantSigner::new(key).unwrap();
        assert_eq!(restarted.grant(REF, "gw-01", Some(&a)).unwrap(), a);
        // One for another node, or garbage, is replaced by a valid one.
        let fixed = restarted.grant(REF, "gw-02", Some(&a)).unwrap();
        assert!(grant::verify(
            &public,
            digest,
            "gw-02",
            &grant::decode(&fixed).unwrap()
        ));
        let fixed = restarted.grant(REF, "gw-03", Some("%%%")).unwrap();
        assert!(grant::verify(
            &public,
            digest,
            "gw-03",
            &grant::decode(&fixed).unwrap()
        ));
        // An unpinned reference is an error, not a grant.
        assert!(s.grant("r.example/fleet/app-index:v1", "gw-01", None).is_err());
    }
}
