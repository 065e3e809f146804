//! Mutual TLS for the peer transport: TLS 1.3 only, the aws-lc-rs provider only, ALPN `pollen/1`, and
//! both sides authenticated against the fleet CA.
//!
//! The node name is taken from a certificate's first DNS subject alternative name, else its common
//! name. It is the peer identity everywhere (logs, metrics, bans, authorisation). Peers are dialled by
//! address, so the client checks that the server's chain leads to the fleet CA but does not match a
//! host name; the name in the certificate is then what identifies the peer. Node certificates therefore
//! need both the `serverAuth` and `clientAuth` extended key usages.
//!
//! Non-goals: revocation lists and rotation (the fleet identity work adds them on top of these configs).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::protocol::ALPN;

/// TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// PEM content is malformed or missing.
    #[error("{what}: {detail}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The node's own certificate carries no usable name.
    #[error("certificate has no DNS name or common name")]
    NoName,
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the rustls configuration.
    #[error("quic crypto: {0}")]
    Quic(String),
}

/// A node's TLS identity and the fleet CA.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    roots: Arc<RootCertStore>,
    name: String,
}

/// The only crypto provider Pollen uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl TlsIdentity {
    /// Loads certificate chain, key and CA from PEM files.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        Self::from_pem(&read(cert)?, &read(key)?, &read(ca)?)
    }

    /// Builds an identity from PEM bytes.
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, TlsError> {
        let pem = |what, e: rustls_pki_types::pem::Error| TlsError::Pem {
            what,
            detail: e.to_string(),
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| pem("certificate", e))?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                what: "certificate",
                detail: "no certificate found".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| pem("key", e))?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca) {
            roots
                .add(c.map_err(|e| pem("ca", e))?)
                .map_err(|e| TlsError::Pem {
                    what: "ca",
                    detail: e.to_string(),
                })?;
        }
        if roots.is_empty() {
            return Err(TlsError::Pem {
                what: "ca",
                detail: "no CA certificate found".into(),
            });
        }
        let name = node_name(&certs[0]).ok_or(TlsError::NoName)?;
        Ok(TlsIdentity {
            certs,
            key: Arc::new(key),
            roots: Arc::new(roots),
            name,
        })
    }

    /// This node's name, from its certificate.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rustls server config: TLS 1.3, client certificates required and checked against the CA.
    pub fn rustls_server(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider()).build()?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.max_early_data_size = 0;
        Ok(cfg)
    }

    /// The rustls client config: TLS 1.3, presents this node's certificate, checks the server's chain.
    pub fn rustls_client(&self) -> Result<rustls::ClientConfig, TlsError> {
        let verifier = FleetServerVerifier {
            roots: self.roots.clone(),
            algs: provider().signature_verification_algorithms,
        };
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok(cfg)
    }

    /// quinn server config with Pollen's transport limits.
    pub fn quic_server(&self, limits: &TransportLimits) -> Result<quinn::ServerConfig, TlsError> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(self.rustls_server()?))
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        cfg.transport_config(Arc::new(limits.transport()));
        Ok(cfg)
    }

    /// quinn client config with Pollen's transport limits.
    pub fn quic_client(&self, limits: &TransportLimits) -> Result<quinn::ClientConfig, TlsError> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(self.rustls_client()?))
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(Arc::new(limits.transport()));
        Ok(cfg)
    }
}

/// QUIC transport limits and timeouts.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    /// Concurrent bidirectional streams a peer may open.
    pub max_streams: u32,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Per-connection receive window in bytes.
    pub receive_window: u32,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            max_streams: 64,
            idle_timeout: Duration::from_secs(20),
            keep_alive: Duration::from_secs(5),
            // Memory bound: each connection buffers at most this much in each direction. 2 MiB covers the
            // bandwidth-delay product of 400 Mbit/s at 40 ms.
            receive_window: 2 * 1024 * 1024,
        }
    }
}

impl TransportLimits {
    fn transport(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(self.max_streams.into());
        t.max_concurrent_uni_streams(0u32.into());
        t.max_idle_timeout(Some(self.idle_timeout.try_into().expect("idle timeout fits")));
        t.keep_alive_interval(Some(self.keep_alive));
        t.receive_window(self.receive_window.into());
        t.stream_receive_window((self.receive_window / 2).into());
        t.send_window(u64::from(self.receive_window));
        t
    }
}

/// The node name in a certificate: first DNS SAN, else the common name.
pub fn node_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                return Some((*d).to_owned());
            }
        }
    }
    c.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// The authenticated node name of the peer on a QUIC connection.
pub fn peer_name(conn: &quinn::Connection) -> Option<String> {
    let id = conn.peer_identity()?;
    let certs = id.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().and_then(node_name)
}

/// Server verifier: the chain must lead to the fleet CA; the name is read from the certificate afterwards.
#[derive(Debug)]
struct FleetServerVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for FleetServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        if node_name(end_entity).is_none() {
            return Err(rustls::Error::General("peer certificate names no node".into()));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Test helpers: a fleet CA and node certificates made with rcgen.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };

    /// A certificate authority for tests.
    pub struct TestCa {
        /// CA certificate PEM.
        pub cert_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    /// A node's PEM certificate and key.
    pub struct TestCert {
        /// Certificate PEM.
        pub cert_pem: String,
        /// Private key PEM.
        pub key_pem: String,
    }

    impl TestCa {
        /// A fresh CA.
        pub fn new(name: &str) -> TestCa {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = p.self_signed(&key).expect("self-signed");
            TestCa {
                cert_pem: cert.pem(),
                issuer: Issuer::new(p, key),
            }
        }

        /// A node certificate naming `node` (DNS SAN), for both client and server use.
        pub fn issue(&self, node: &str) -> TestCert {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(vec![node.to_owned()]).expect("params");
            p.distinguished_name.push(DnType::CommonName, node);
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &self.issuer).expect("sign");
            TestCert {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        }
    }

    impl TestCert {
        /// The identity of this certificate under `ca`.
        pub fn identity(&self, ca: &TestCa) -> super::TlsIdentity {
            super::TlsIdentity::from_pem(
                self.cert_pem.as_bytes(),
                self.key_pem.as_bytes(),
                ca.cert_pem.as_bytes(),
            )
            .expect("identity")
        }

        /// Writes `cert.pem` and `key.pem` under `dir`; returns their paths.
        pub fn write(&self, dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
            let c = dir.join("cert.pem");
            let k = dir.join("key.pem");
            std::fs::write(&c, &self.cert_pem).expect("write cert");
            std::fs::write(&k, &self.key_pem).expect("write key");
            (c, k)
        }
    }
}
