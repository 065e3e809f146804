//! Signing and verification keys in cosign's formats.
//!
//! Private keys are PKCS#8 encrypted the way cosign does it (scrypt + NaCl secretbox, PEM label
//! `ENCRYPTED SIGSTORE PRIVATE KEY`; cosign's older `ENCRYPTED COSIGN PRIVATE KEY` is read too), public keys
//! are PEM `PUBLIC KEY` (SubjectPublicKeyInfo). A key made by `cosign generate-key-pair` works here and a key
//! made here works with cosign. The cryptography is the sigstore crate's `crypto` module, built without any
//! of its network features (no Fulcio, Rekor, OAuth or TUF).
//!
//! Non-goals: keyless (certificate) signing, KMS and hardware keys.

use std::path::Path;

use sha2::Digest as _;
use sigstore::crypto::signing_key::{SigStoreKeyPair, ecdsa::ECDSAKeys};
use sigstore::crypto::{CosignVerificationKey, SigStoreSigner, Signature, SigningScheme};

/// Environment variable holding the private key password, as for cosign.
pub const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

/// Why a key could not be made, read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The private key could not be decrypted or parsed (wrong password, corrupt file or unknown format).
    #[error("cannot read private key (wrong password or not a cosign key): {0}")]
    PrivateKey(#[source] sigstore::errors::SigstoreError),
    /// The public key is not a PEM SubjectPublicKeyInfo of a supported algorithm.
    #[error("cannot read public key: {0}")]
    PublicKey(#[source] sigstore::errors::SigstoreError),
    /// The key type is not one Pollen signs with.
    #[error("unsupported key type: {0}")]
    Unsupported(String),
    /// Key generation, export or signing failed inside the crypto library.
    #[error("crypto failure: {0}")]
    Crypto(#[source] sigstore::errors::SigstoreError),
}

/// A private key that signs the way cosign does (ECDSA P-256 with SHA-256 for generated keys).
#[derive(Debug)]
pub struct SigningKey {
    signer: SigStoreSigner,
}

impl SigningKey {
    /// A fresh ECDSA P-256 key, as `cosign generate-key-pair` makes.
    pub fn generate() -> Result<Self, KeyError> {
        let signer = SigningScheme::ECDSA_P256_SHA256_ASN1
            .create_signer()
            .map_err(KeyError::Crypto)?;
        Ok(SigningKey { signer })
    }

    /// Reads a cosign-format encrypted private key.
    pub fn from_encrypted_pem(pem: &[u8], password: &[u8]) -> Result<Self, KeyError> {
        let pair = SigStoreKeyPair::from_encrypted_pem(pem, password).map_err(KeyError::PrivateKey)?;
        let scheme = match &pair {
            SigStoreKeyPair::ECDSA(ECDSAKeys::P256(_)) => SigningScheme::ECDSA_P256_SHA256_ASN1,
            SigStoreKeyPair::ECDSA(ECDSAKeys::P384(_)) => SigningScheme::ECDSA_P384_SHA384_ASN1,
            SigStoreKeyPair::ECDSA(ECDSAKeys::P521(_)) => SigningScheme::ECDSA_P521_SHA512_ASN1,
            SigStoreKeyPair::ED25519(_) => SigningScheme::ED25519,
            other => return Err(KeyError::Unsupported(other.to_string())),
        };
        let signer = pair.to_sigstore_signer(&scheme).map_err(KeyError::Crypto)?;
        Ok(SigningKey { signer })
    }

    /// Reads a cosign-format encrypted private key from a file.
    pub fn from_file(path: &Path, password: &[u8]) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_encrypted_pem(&pem, password)
    }

    /// The private key in cosign's encrypted PEM format.
    pub fn to_encrypted_pem(&self, password: &[u8]) -> Result<String, KeyError> {
        let pair = self.signer.to_sigstore_keypair().map_err(KeyError::Crypto)?;
        let pem = pair
            .private_key_to_encrypted_pem(password)
            .map_err(KeyError::Crypto)?;
        Ok(pem.to_string())
    }

    /// The matching public key.
    pub fn public_key(&self) -> Result<PublicKey, KeyError> {
        let pair = self.signer.to_sigstore_keypair().map_err(KeyError::Crypto)?;
        let pem = pair.public_key_to_pem().map_err(KeyError::Crypto)?;
        PublicKey::from_pem(pem.as_bytes())
    }

    /// Signs `msg` (the key's hash, then the signature in ASN.1 DER), as cosign does.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.signer.sign(msg).map_err(KeyError::Crypto)
    }
}

/// A public key that checks cosign signatures.
#[derive(Clone, Debug)]
pub struct PublicKey {
    key: CosignVerificationKey,
    pem: String,
    fingerprint: String,
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY`; the algorithm is detected from the key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let key = CosignVerificationKey::try_from_pem(pem).map_err(KeyError::PublicKey)?;
        let fingerprint = hex::encode(&sha2::Sha256::digest(pem_body(pem))[..8]);
        Ok(PublicKey {
            key,
            pem: String::from_utf8_lossy(pem).into_owned(),
            fingerprint,
        })
    }

    /// Reads a PEM public key file.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(&pem)
    }

    /// The key as PEM text.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A short identifier: the first 8 bytes of the SHA-256 of the key's DER, in hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether `signature` (raw DER bytes) is this key's signature over `msg`.
    pub fn verify(&self, signature: &[u8], msg: &[u8]) -> bool {
        self.key.verify_signature(Signature::Raw(signature), msg).is_ok()
    }
}

/// The bytes inside a PEM armour (the key already parsed, so this cannot fail on valid input).
fn pem_body(pem: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(pem);
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap_or_default()
}

/// The password for a private key: the given one, else `COSIGN_PASSWORD`, else empty (as cosign).
pub fn password(explicit: Option<&str>) -> Vec<u8> {
    match explicit {
        Some(p) => p.as_bytes().to_vec(),
        None => std::env::var(PASSWORD_ENV).unwrap_or_default().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_export_import_sign_verify() {
        let key = SigningKey::generate().unwrap();
        let pem = key.to_encrypted_pem(b"pw").unwrap();
        assert!(
            pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"),
            "{pem}"
        );
        let again = SigningKey::from_encrypted_pem(pem.as_bytes(), b"pw").unwrap();
        let public = key.public_key().unwrap();
        assert!(public.pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        let sig = again.sign(b"message").unwrap();
        assert!(public.verify(&sig, b"message"));
        assert!(!public.verify(&sig, b"messagf"));
        let other = SigningKey::generate().unwrap().public_key().unwrap();
        assert!(!other.verify(&sig, b"message"));
        assert_ne!(other.fingerprint(), public.fingerprint());
    }

    #[test]
    fn wrong_password_is_refused() {
        let key = SigningKey::generate().unwrap();
        let pem = key.to_encrypted_pem(b"right").unwrap();
        assert!(matches!(
            SigningKey::from_encrypted_pem(pem.as_bytes(), b"wrong"),
            Err(KeyError::PrivateKey(_))
        ));
    }

    #[test]
    fn garbage_keys_are_refused() {
        assert!(matches!(
            PublicKey::from_pem(b"not a key"),
            Err(KeyError::PublicKey(_))
        ));
        assert!(SigningKey::from_encrypted_pem(b"-----BEGIN X-----\nAAAA\n-----END X-----\n", b"").is_err());
    }
}
