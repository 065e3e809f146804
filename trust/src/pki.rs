//! The fleet PKI: the CA that vouches for every node's peer certificate, node certificates issued from
//! certificate signing requests, and the CA-signed revocation list (an X.509 CRL).
//!
//! One CA per fleet. A node certificate names the node in its first DNS subject alternative name and in
//! its common name, carries both `serverAuth` and `clientAuth` (peers dial and accept), is valid for a
//! short time (24 h by default), and has a random 16-byte serial. The revocation list is a standard
//! X.509 v2 CRL signed by the same CA, with a monotonically increasing CRL number, so that the newest
//! list wins wherever two copies meet.
//!
//! Serial numbers are written everywhere (EdgeNode status, revocation entries, logs) as lowercase hex of
//! the certificate's serial bytes, without separators or leading zero bytes.
//!
//! Non-goals: intermediate CAs, OCSP, and key types other than ECDSA P-256.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertificateSigningRequestParams,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

/// The default lifetime of a node certificate.
pub const DEFAULT_NODE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The longest node-certificate lifetime the signer grants.
pub const MAX_NODE_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// The shortest lifetime worth issuing (renewal runs at two thirds of it).
pub const MIN_NODE_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Backdating of `notBefore`, for clocks slightly behind the signer's.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// The longest node name accepted (a DNS subdomain).
pub const MAX_NAME_LEN: usize = 253;

/// Errors of the fleet PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// PEM or DER input could not be parsed.
    #[error("{what}: {detail}")]
    Parse {
        /// Which input.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The signing request's own signature does not verify (no proof of key possession).
    #[error("the signing request's signature does not verify")]
    BadRequestSignature,
    /// The signing request asks for something the fleet signer never grants.
    #[error("signing request refused: {0}")]
    Refused(String),
    /// A node name is not a valid DNS subdomain.
    #[error("invalid node name {0:?}")]
    BadName(String),
    /// The requested lifetime is outside the allowed range.
    #[error("lifetime {requested:?} outside {min:?}..={max:?}")]
    Lifetime {
        /// Requested.
        requested: Duration,
        /// Shortest allowed.
        min: Duration,
        /// Longest allowed.
        max: Duration,
    },
    /// The revocation list's signature does not verify against the fleet CA.
    #[error("revocation list is not signed by the fleet CA")]
    BadCrlSignature,
    /// A certificate was not issued by the fleet CA.
    #[error("the certificate was not issued by the fleet CA")]
    NotIssuedByCa,
    /// rcgen could not build or sign.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

fn parse_err(what: &'static str, e: impl std::fmt::Display) -> PkiError {
    PkiError::Parse {
        what,
        detail: e.to_string(),
    }
}

/// Checks a node name: a DNS subdomain (lowercase alphanumerics, `-` and `.`, at most 253 characters).
pub fn check_node_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(name.to_owned()))
    }
}

/// Lowercase hex of serial bytes, leading zero bytes dropped (the form used everywhere in Pollen).
pub fn serial_hex(bytes: &[u8]) -> String {
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    hex::encode(&bytes[start..])
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut b)
        .expect("the OS random source works");
    // A positive, non-zero integer with no leading zero byte: clear the top bit, set the next one.
    b[0] &= 0x7f;
    b[0] |= 0x40;
    SerialNumber::from_slice(&b)
}

fn odt(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// What a certificate says about a node, read without verifying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The node name (first DNS SAN, else the common name).
    pub name: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

fn to_system(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// Reads the facts of the first certificate in a PEM bundle.
pub fn cert_facts(pem: &str) -> Result<CertFacts, PkiError> {
    let der = first_pem(pem, "CERTIFICATE").ok_or_else(|| parse_err("certificate", "no PEM certificate"))?;
    cert_facts_der(&der)
}

/// Reads the facts of a DER certificate.
pub fn cert_facts_der(der: &[u8]) -> Result<CertFacts, PkiError> {
    let (_, c) = x509_parser::parse_x509_certificate(der).map_err(|e| parse_err("certificate", e))?;
    let mut name = None;
    if let Ok(Some(san)) = c.subject_alternative_name() {
        name = san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        });
    }
    let name = name
        .or_else(|| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned)
        })
        .ok_or_else(|| parse_err("certificate", "names no node"))?;
    Ok(CertFacts {
        name,
        serial: serial_hex(c.tbs_certificate.raw_serial()),
        not_before: to_system(c.validity().not_before),
        not_after: to_system(c.validity().not_after),
    })
}

fn all_certs(pem: &str) -> Vec<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect()
}

fn first_pem(pem: &str, tag: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    match tag {
        "CERTIFICATE" => rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .map(|c| c.to_vec()),
        "X509 CRL" => rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .map(|c| c.to_vec()),
        _ => None,
    }
}

/// A node certificate the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its facts.
    pub facts: CertFacts,
}

/// A node certificate and a freshly generated key (development and lab use; real nodes keep their key).
#[derive(Debug, Clone)]
pub struct IssuedKeyPair {
    /// The certificate.
    pub cert: IssuedCert,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Serial, lowercase hex.
    pub serial: String,
    /// When it was revoked.
    pub revoked_at: SystemTime,
}

/// A verified revocation list's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationSet {
    /// The CRL number; a higher number supersedes a lower one.
    pub number: u64,
    /// When the list was issued.
    pub this_update: SystemTime,
    /// Revoked serials, lowercase hex.
    pub serials: BTreeSet<String>,
    /// The DER bytes, as signed (what peers pass on).
    pub der: Vec<u8>,
}

impl RevocationSet {
    /// Whether a serial (lowercase hex) is revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.serials.contains(serial)
    }
}

/// The fleet certificate authority.
pub struct FleetCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
    crl_sign: bool,
}

impl std::fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCa").finish_non_exhaustive()
    }
}

impl FleetCa {
    /// A new self-signed CA (ECDSA P-256) named `common_name`, valid for `lifetime` from now.
    pub fn generate(common_name: &str, lifetime: Duration) -> Result<FleetCa, PkiError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.distinguished_name.push(DnType::OrganizationName, "pollen.dev");
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        p.not_before = odt(now - CLOCK_SKEW);
        p.not_after = odt(now + lifetime);
        p.serial_number = Some(random_serial());
        p.key_identifier_method = KeyIdMethod::Sha256;
        let cert = p.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(FleetCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem,
            issuer: Issuer::new(p, key),
            crl_sign: true,
        })
    }

    /// Loads a CA from its certificate and private key (PEM; the cert-manager `tls.crt`/`tls.key` layout).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<FleetCa, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| parse_err("CA key", e))?;
        let cert_der = first_pem(cert_pem, "CERTIFICATE")
            .ok_or_else(|| parse_err("CA certificate", "no PEM certificate"))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| parse_err("CA certificate", e))?;
        if !parsed.is_ca() {
            return Err(parse_err(
                "CA certificate",
                "not a CA (basicConstraints cA is false)",
            ));
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(parse_err("CA key", "does not match the CA certificate"));
        }
        let crl_sign = parsed
            .key_usage()
            .ok()
            .flatten()
            .is_none_or(|ku| ku.value.crl_sign());
        let issuer = issuer_of(&parsed, key)?;
        Ok(FleetCa {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key_pem: key_pem.to_owned(),
            issuer,
            crl_sign,
        })
    }

    /// Whether the CA certificate allows CRL signing (`cRLSign` key usage, or no key usage at all).
    /// CAs made by Helm's `genCA` or cert-manager's defaults lack it; Pollen still signs its
    /// revocation list with the CA key and nodes accept it (they check the signature and issuer
    /// name), but strict X.509 tools such as `openssl verify -crl_check` will not.
    pub fn crl_sign_usage(&self) -> bool {
        self.crl_sign
    }

    /// The CA certificate, PEM (what every node trusts).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    fn node_params(
        node: &str,
        not_before: SystemTime,
        lifetime: Duration,
    ) -> Result<CertificateParams, PkiError> {
        check_node_name(node)?;
        let mut p = CertificateParams::new(vec![node.to_owned()])?;
        p.distinguished_name.push(DnType::CommonName, node);
        p.distinguished_name.push(DnType::OrganizationName, "pollen.dev");
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.is_ca = IsCa::ExplicitNoCa;
        p.not_before = odt(not_before - CLOCK_SKEW);
        p.not_after = odt(not_before + lifetime);
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        Ok(p)
    }

    /// Issues a node certificate with a fresh key (for `pollen pki issue`, the lab and tests).
    /// `not_before` lets tests make certificates that are already expired.
    pub fn issue(
        &self,
        node: &str,
        not_before: SystemTime,
        lifetime: Duration,
    ) -> Result<IssuedKeyPair, PkiError> {
        let key = KeyPair::generate()?;
        let p = Self::node_params(node, not_before, lifetime)?;
        let cert = p.signed_by(&key, &self.issuer)?;
        let cert_pem = cert.pem();
        Ok(IssuedKeyPair {
            cert: IssuedCert {
                facts: cert_facts_der(cert.der())?,
                cert_pem,
            },
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a node's certificate signing request for `node`: the subject and names come from the
    /// signer, never from the request; only the public key is taken from it.
    pub fn sign_request(
        &self,
        req: &NodeRequest,
        node: &str,
        lifetime: Duration,
    ) -> Result<IssuedCert, PkiError> {
        if !(MIN_NODE_LIFETIME..=MAX_NODE_LIFETIME).contains(&lifetime) {
            return Err(PkiError::Lifetime {
                requested: lifetime,
                min: MIN_NODE_LIFETIME,
                max: MAX_NODE_LIFETIME,
            });
        }
        let params = CertificateSigningRequestParams {
            params: Self::node_params(node, SystemTime::now(), lifetime)?,
            public_key: req.public_key.clone(),
        };
        let cert = params.signed_by(&self.issuer)?;
        Ok(IssuedCert {
            facts: cert_facts_der(cert.der())?,
            cert_pem: cert.pem(),
        })
    }

    /// A revocation list numbered `number`, valid until `this_update + validity`.
    pub fn revocation_list(
        &self,
        number: u64,
        revoked: &[Revoked],
        validity: Duration,
    ) -> Result<String, PkiError> {
        let now = SystemTime::now();
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for r in revoked {
            let bytes = hex::decode(&r.serial).map_err(|e| parse_err("serial", e))?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: odt(r.revoked_at),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: odt(now),
            next_update: odt(now + validity),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The facts of the first certificate in `pem` when this CA signed it (its issuer is this CA's
    /// subject and the signature verifies), an error otherwise. What a node merely claims about a
    /// certificate (`EdgeNode.status.certificate`) is believed only through this.
    pub fn signed_facts(&self, pem: &str) -> Result<CertFacts, PkiError> {
        let der =
            first_pem(pem, "CERTIFICATE").ok_or_else(|| parse_err("certificate", "no PEM certificate"))?;
        let (_, ca) = x509_parser::parse_x509_certificate(&self.cert_der)
            .map_err(|e| parse_err("CA certificate", e))?;
        let (_, c) = x509_parser::parse_x509_certificate(&der).map_err(|e| parse_err("certificate", e))?;
        if c.issuer() != ca.subject() || c.verify_signature(Some(ca.public_key())).is_err() {
            return Err(PkiError::NotIssuedByCa);
        }
        cert_facts_der(&der)
    }
}

/// A DER certificate as PEM.
pub fn cert_pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The issuer for an existing CA certificate: its subject name (byte-for-byte attribute types and
/// string kinds), its subject key identifier for the authority key identifier of what it signs, and
/// no key-usage restriction (see [`FleetCa::crl_sign_usage`]).
fn issuer_of(
    ca: &x509_parser::certificate::X509Certificate<'_>,
    key: KeyPair,
) -> Result<Issuer<'static, KeyPair>, PkiError> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let bad = |d: &str| parse_err("CA certificate", d);
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    for rdn in ca.subject().iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(bad("multi-valued subject names are not supported"));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| bad("subject attribute type"))?
            .collect();
        let text =
            std::str::from_utf8(attr.attr_value().data).map_err(|_| bad("subject attribute is not text"))?;
        let value = match attr.attr_value().header.tag() {
            Tag::PrintableString => rcgen::DnValue::PrintableString(text.try_into()?),
            Tag::Utf8String => rcgen::DnValue::Utf8String(text.to_owned()),
            Tag::Ia5String => rcgen::DnValue::Ia5String(text.try_into()?),
            _ => return Err(bad("subject attribute string kind not supported")),
        };
        p.distinguished_name.push(DnType::from_oid(&oid), value);
    }
    let ski = ca.extensions().iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
        _ => None,
    });
    p.key_identifier_method = match ski {
        Some(k) => KeyIdMethod::PreSpecified(k),
        None => KeyIdMethod::Sha256,
    };
    p.key_usages = Vec::new();
    Ok(Issuer::new(p, key))
}

/// A parsed, signature-checked certificate signing request from a node.
#[derive(Debug, Clone)]
pub struct NodeRequest {
    /// The DNS names the request asks for.
    pub dns_names: Vec<String>,
    /// The subject common name, if any.
    pub common_name: Option<String>,
    /// Whether the request asks to be a CA.
    pub wants_ca: bool,
    /// Subject alternative names other than DNS names (IP addresses, URIs, e-mail addresses, other
    /// names), as text; node requests must have none.
    pub other_names: Vec<String>,
    public_key: rcgen::PublicKey,
}

impl NodeRequest {
    /// Parses a PEM request and checks its self-signature (proof that the requester holds the key).
    pub fn from_pem(pem: &str) -> Result<NodeRequest, PkiError> {
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice_checked(pem)?;
        Self::from_der(&der)
    }

    /// Parses a DER request and checks its self-signature.
    pub fn from_der(der: &[u8]) -> Result<NodeRequest, PkiError> {
        let (_, raw) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
            .map_err(|e| parse_err("signing request", e))?;
        raw.verify_signature()
            .map_err(|_| PkiError::BadRequestSignature)?;
        let parsed =
            CertificateSigningRequestParams::from_der(&der.to_vec().into()).map_err(|e| match e {
                rcgen::Error::InvalidCertificationRequestSignature => PkiError::BadRequestSignature,
                other => parse_err("signing request", other),
            })?;
        let mut dns_names = Vec::new();
        let mut other_names = Vec::new();
        for san in &parsed.params.subject_alt_names {
            match san {
                SanType::DnsName(n) => dns_names.push(n.to_string()),
                other => other_names.push(format!("{other:?}")),
            }
        }
        let common_name = parsed
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .map(dn_value_string);
        Ok(NodeRequest {
            dns_names,
            common_name,
            wants_ca: matches!(parsed.params.is_ca, IsCa::Ca(_)),
            other_names,
            public_key: parsed.public_key,
        })
    }

    /// Whether the request names exactly `node` and nothing else, and does not ask to be a CA.
    pub fn names_only(&self, node: &str) -> Result<(), PkiError> {
        if self.wants_ca {
            return Err(PkiError::Refused("the request asks to be a CA".into()));
        }
        if !self.other_names.is_empty() {
            return Err(PkiError::Refused(format!(
                "the request asks for names other than DNS names: {:?}",
                self.other_names
            )));
        }
        if self.dns_names.iter().any(|n| n != node) {
            return Err(PkiError::Refused(format!(
                "the request names {:?}, not only {node:?}",
                self.dns_names
            )));
        }
        if let Some(cn) = &self.common_name
            && cn != node
        {
            return Err(PkiError::Refused(format!(
                "the request's common name {cn:?} is not {node:?}"
            )));
        }
        if self.dns_names.is_empty() && self.common_name.is_none() {
            return Err(PkiError::Refused("the request names no node".into()));
        }
        Ok(())
    }
}

fn dn_value_string(v: &rcgen::DnValue) -> String {
    match v {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_owned(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_owned(),
        rcgen::DnValue::TeletexString(s) => s.as_str().to_owned(),
        rcgen::DnValue::BmpString(_) | rcgen::DnValue::UniversalString(_) => String::new(),
        _ => String::new(),
    }
}

trait CsrPem {
    fn from_pem_slice_checked(
        pem: &str,
    ) -> Result<rustls::pki_types::CertificateSigningRequestDer<'static>, PkiError>;
}

impl CsrPem for rustls::pki_types::CertificateSigningRequestDer<'static> {
    fn from_pem_slice_checked(pem: &str) -> Result<Self, PkiError> {
        use rustls::pki_types::pem::PemObject as _;
        Self::from_pem_slice(pem.as_bytes()).map_err(|e| parse_err("signing request", e))
    }
}

/// A node's key and its certificate signing request for `node` (the key stays with the caller).
#[derive(Debug, Clone)]
pub struct KeyAndRequest {
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The request, PEM (`CERTIFICATE REQUEST`).
    pub request_pem: String,
}

/// Generates a P-256 key and a signing request naming `node`.
pub fn new_request(node: &str) -> Result<KeyAndRequest, PkiError> {
    let key = KeyPair::generate()?;
    let request_pem = request_for(node, &key)?;
    Ok(KeyAndRequest {
        key_pem: key.serialize_pem(),
        request_pem,
    })
}

/// A signing request naming `node`, signed with an existing key (PEM).
pub fn request_with_key(node: &str, key_pem: &str) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| parse_err("key", e))?;
    request_for(node, &key)
}

fn request_for(node: &str, key: &KeyPair) -> Result<String, PkiError> {
    check_node_name(node)?;
    let mut p = CertificateParams::new(vec![node.to_owned()])?;
    p.distinguished_name.push(DnType::CommonName, node);
    Ok(p.serialize_request(key)?.pem()?)
}

/// Parses a revocation list (PEM or DER), checks that `ca_pem` signed it, and returns its contents.
pub fn verify_revocation_list(crl: &[u8], ca_pem: &str) -> Result<RevocationSet, PkiError> {
    let der = if crl.starts_with(b"-----") {
        first_pem(
            std::str::from_utf8(crl).map_err(|e| parse_err("revocation list", e))?,
            "X509 CRL",
        )
        .ok_or_else(|| parse_err("revocation list", "no PEM X509 CRL"))?
    } else {
        crl.to_vec()
    };
    let (_, list) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
        .map_err(|e| parse_err("revocation list", e))?;
    // Any CA of the bundle may have signed it (a bundle holds two CAs while the fleet CA rotates).
    let cas = all_certs(ca_pem);
    if cas.is_empty() {
        return Err(parse_err("CA certificate", "no PEM certificate"));
    }
    let mut signed = false;
    for ca_der in &cas {
        let (_, ca) =
            x509_parser::parse_x509_certificate(ca_der).map_err(|e| parse_err("CA certificate", e))?;
        if list.issuer() == ca.subject() && list.verify_signature(ca.public_key()).is_ok() {
            signed = true;
            break;
        }
    }
    if !signed {
        return Err(PkiError::BadCrlSignature);
    }
    let number = list
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| parse_err("revocation list", "no CRL number, or one over 64 bits"))?;
    let serials = list
        .iter_revoked_certificates()
        .map(|r| serial_hex(r.raw_serial()))
        .collect();
    Ok(RevocationSet {
        number,
        this_update: to_system(list.last_update()),
        serials,
        der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> FleetCa {
        FleetCa::generate("test fleet", Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn issued_certificate_names_the_node_and_round_trips_through_pem() {
        let ca = ca();
        let kp = ca
            .issue("node-a", SystemTime::now(), DEFAULT_NODE_LIFETIME)
            .unwrap();
        let facts = cert_facts(&kp.cert.cert_pem).unwrap();
        assert_eq!(facts.name, "node-a");
        assert_eq!(facts, kp.cert.facts);
        assert!(facts.not_after > SystemTime::now() + Duration::from_secs(23 * 3600));
        let again = FleetCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let other = again
            .issue("node-b", SystemTime::now(), DEFAULT_NODE_LIFETIME)
            .unwrap();
        assert_ne!(other.cert.facts.serial, facts.serial);
    }

    #[test]
    fn only_certificates_this_ca_signed_have_signed_facts() {
        let ca = ca();
        let kp = ca
            .issue("node-a", SystemTime::now(), DEFAULT_NODE_LIFETIME)
            .unwrap();
        assert_eq!(ca.signed_facts(&kp.cert.cert_pem).unwrap(), kp.cert.facts);
        // The DER round-trips through the encoder the agent reports with.
        let der = first_pem(&kp.cert.cert_pem, "CERTIFICATE").unwrap();
        assert_eq!(ca.signed_facts(&cert_pem_of(&der)).unwrap(), kp.cert.facts);
        // Another CA, even one with the same name, and a self-made certificate are refused.
        let other = FleetCa::generate("test fleet", Duration::from_secs(3600)).unwrap();
        let forged = other
            .issue("node-a", SystemTime::now(), DEFAULT_NODE_LIFETIME)
            .unwrap();
        assert!(matches!(
            ca.signed_facts(&forged.cert.cert_pem),
            Err(PkiError::NotIssuedByCa)
        ));
        assert!(matches!(
            ca.signed_facts(other.cert_pem()),
            Err(PkiError::NotIssuedByCa)
        ));
        assert!(matches!(ca.signed_facts("junk"), Err(PkiError::Parse { .. })));
    }

    #[test]
    fn request_is_signed_with_the_signers_names_only() {
        let ca = ca();
        let kr = new_request("node-a").unwrap();
        let req = NodeRequest::from_pem(&kr.request_pem).unwrap();
        req.names_only("node-a").unwrap();
        assert!(matches!(req.names_only("node-b"), Err(PkiError::Refused(_))));
        let cert = ca.sign_request(&req, "node-a", DEFAULT_NODE_LIFETIME).unwrap();
        assert_eq!(cert.facts.name, "node-a");
        // The certificate carries the requester's key.
        let der = first_pem(&cert.cert_pem, "CERTIFICATE").unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        let key = KeyPair::from_pem(&kr.key_pem).unwrap();
        assert_eq!(
            c.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }

    #[test]
    fn lifetimes_outside_the_range_are_refused() {
        let ca = ca();
        let req = NodeRequest::from_pem(&new_request("n").unwrap().request_pem).unwrap();
        for bad in [
            Duration::from_secs(60),
            MAX_NODE_LIFETIME + Duration::from_secs(1),
        ] {
            assert!(matches!(
                ca.sign_request(&req, "n", bad),
                Err(PkiError::Lifetime { .. })
            ));
        }
    }

    #[test]
    fn malformed_and_tampered_requests_are_refused() {
        assert!(matches!(
            NodeRequest::from_pem("not a pem"),
            Err(PkiError::Parse { .. })
        ));
        let kr = new_request("node-a").unwrap();
        use rustls::pki_types::pem::PemObject as _;
        let mut der =
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(kr.request_pem.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec();
        // Flip a byte inside the subject name ("node-a" -> "node-b"): the self-signature breaks.
        let pos = der.windows(6).position(|w| w == b"node-a").unwrap();
        der[pos + 5] = b'b';
        assert!(matches!(
            NodeRequest::from_der(&der),
            Err(PkiError::BadRequestSignature)
        ));
    }

    #[test]
    fn requests_for_ip_uri_or_email_names_are_refused() {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["node-a".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "node-a");
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([10, 0, 0, 1])));
        let pem = p.serialize_request(&key).unwrap().pem().unwrap();
        let req = NodeRequest::from_pem(&pem).unwrap();
        assert_eq!(req.dns_names, vec!["node-a".to_owned()]);
        assert!(matches!(req.names_only("node-a"), Err(PkiError::Refused(m)) if m.contains("10.0.0.1")));
    }

    #[test]
    fn a_list_signed_by_the_second_ca_of_a_bundle_verifies() {
        let old = ca();
        let new = ca();
        let bundle = format!("{}{}", old.cert_pem(), new.cert_pem());
        let crl = new.revocation_list(3, &[], Duration::from_secs(60)).unwrap();
        assert_eq!(verify_revocation_list(crl.as_bytes(), &bundle).unwrap().number, 3);
        let stranger = ca();
        let foreign = stranger.revocation_list(4, &[], Duration::from_secs(60)).unwrap();
        assert!(matches!(
            verify_revocation_list(foreign.as_bytes(), &bundle),
            Err(PkiError::BadCrlSignature)
        ));
    }

    #[test]
    fn node_names_are_dns_subdomains() {
        for ok in ["a", "node-1", "edge.site-a.example"] {
            check_node_name(ok).unwrap();
        }
        for bad in ["", "Node", "-a", "a-", "a..b", "a_b", &"x".repeat(254)] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn revocation_list_round_trips_and_is_bound_to_its_ca() {
        let ca = ca();
        let a = ca.issue("a", SystemTime::now(), DEFAULT_NODE_LIFETIME).unwrap();
        let pem = ca
            .revocation_list(
                7,
                &[Revoked {
                    serial: a.cert.facts.serial.clone(),
                    revoked_at: SystemTime::now(),
                }],
                Duration::from_secs(3600),
            )
            .unwrap();
        let set = verify_revocation_list(pem.as_bytes(), ca.cert_pem()).unwrap();
        assert_eq!(set.number, 7);
        assert!(set.is_revoked(&a.cert.facts.serial));
        // The DER form verifies the same way (what peers pass on).
        assert_eq!(verify_revocation_list(&set.der, ca.cert_pem()).unwrap(), set);
        // Another CA's list, or a tampered one, is refused.
        let other = FleetCa::generate("test fleet", Duration::from_secs(3600)).unwrap();
        let foreign = other.revocation_list(8, &[], Duration::from_secs(3600)).unwrap();
        assert!(matches!(
            verify_revocation_list(foreign.as_bytes(), ca.cert_pem()),
            Err(PkiError::BadCrlSignature)
        ));
        let mut der = set.der.clone();
        let n = der.len();
        der[n - 3] ^= 0x01;
        assert!(verify_revocation_list(&der, ca.cert_pem()).is_err());
    }

    #[test]
    fn a_ca_without_crl_sign_usage_still_signs_verifiable_lists() {
        // The key usages Helm's genCA and cert-manager's defaults give a CA.
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "helm-ca");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
        ];
        let cert = p.self_signed(&key).unwrap();
        let ca = FleetCa::from_pem(&cert.pem(), &key.serialize_pem()).unwrap();
        assert!(!ca.crl_sign_usage());
        let node = ca.issue("n", SystemTime::now(), DEFAULT_NODE_LIFETIME).unwrap();
        let crl = ca
            .revocation_list(
                1,
                &[Revoked {
                    serial: node.cert.facts.serial.clone(),
                    revoked_at: SystemTime::now(),
                }],
                Duration::from_secs(60),
            )
            .unwrap();
        let set = verify_revocation_list(crl.as_bytes(), ca.cert_pem()).unwrap();
        assert!(set.is_revoked(&node.cert.facts.serial));
        // A key that does not match the certificate is refused.
        let other = KeyPair::generate().unwrap();
        assert!(FleetCa::from_pem(&cert.pem(), &other.serialize_pem()).is_err());
    }

    #[test]
    fn serial_hex_drops_leading_zero_bytes() {
        assert_eq!(serial_hex(&[0, 0x0a, 0xbc]), "0abc");
        assert_eq!(serial_hex(&[0]), "00");
    }
}
