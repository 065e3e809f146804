//! Intake of revocation lists received from one peer, before their signature is checked.
//!
//! Any fleet member can send `Revocations` messages, so checking each one would let a single peer keep
//! a node busy verifying lists. The intake keeps that cost bounded per connection:
//! - a list's number is read first ([`crl_number`], a walk over DER headers without signature check or
//!   parsing the entries); a list whose
//!   number is not above the one in force is dropped unverified (the usual case: peers passing on the
//!   list this node holds);
//! - at most one list per peer is verified per interval ([`ListGate`]); lists arriving meanwhile wait,
//!   and only the highest-numbered one is kept;
//! - a list that fails verification is the sender's fault: the engine closes the connection.
//!
//! Non-goals: the signature check itself (`pollen_trust::pki::verify_revocation_list`) and installing
//! (see `tls::FleetTls::install_revocations`).

use std::time::{Duration, Instant};

/// The CRL number of a DER X.509 revocation list, read without checking its signature and without
/// parsing the revoked entries: a walk over the DER headers that skips the entry list by its length, so
/// that the cost does not grow with the list. `None` when the bytes are not shaped like a CRL or carry no
/// number that fits 64 bits; a list that passes here can still fail the full verification.
pub fn crl_number(der: &[u8]) -> Option<u64> {
    const SEQUENCE: u8 = 0x30;
    const EXTENSIONS: u8 = 0xa0; // [0] EXPLICIT, the only context tag in TBSCertList
    const CRL_NUMBER_OID: &[u8] = &[0x55, 0x1d, 0x14]; // 2.5.29.20
    let (list, rest) = tlv(der, SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (mut tbs, _) = tlv(list, SEQUENCE)?;
    while !tbs.is_empty() {
        let (tag, value, rest) = any_tlv(tbs)?;
        tbs = rest;
        if tag != EXTENSIONS {
            continue;
        }
        let (mut exts, _) = tlv(value, SEQUENCE)?;
        while !exts.is_empty() {
            let (ext, rest) = tlv(exts, SEQUENCE)?;
            exts = rest;
            let (oid, ext) = tlv(ext, 0x06)?;
            if oid != CRL_NUMBER_OID {
                continue;
            }
            let ext = match any_tlv(ext)? {
                (0x01, _, after_critical) => after_critical,
                _ => ext,
            };
            let (octets, _) = tlv(ext, 0x04)?;
            let (int, trailing) = tlv(octets, 0x02)?;
            if !trailing.is_empty() {
                return None;
            }
            return unsigned(int);
        }
    }
    None
}

/// One DER element with tag `tag`: its content and what follows it.
fn tlv(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match any_tlv(b)? {
        (t, value, rest) if t == tag => Some((value, rest)),
        _ => None,
    }
}

/// One DER element (single-byte tag, definite length up to 4 length bytes): tag, content, rest.
fn any_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let (digits, rest) = b.split_at(n);
        b = rest;
        digits.iter().fold(0usize, |acc, d| (acc << 8) | usize::from(*d))
    };
    if b.len() < len {
        return None;
    }
    let (value, rest) = b.split_at(len);
    Some((tag, value, rest))
}

/// A non-negative DER INTEGER that fits 64 bits.
fn unsigned(int: &[u8]) -> Option<u64> {
    let (&first, _) = int.split_first()?;
    if first & 0x80 != 0 {
        return None; // negative
    }
    let digits = if first == 0 { &int[1..] } else { int };
    if digits.len() > 8 {
        return None;
    }
    Some(digits.iter().fold(0u64, |acc, d| (acc << 8) | u64::from(*d)))
}

/// Per-connection rate limit on list verifications: at most one per `interval`, the highest-numbered
/// waiting list first.
#[derive(Debug)]
pub struct ListGate {
    interval: Duration,
    last: Option<Instant>,
    waiting: Option<(u64, Vec<u8>)>,
}

impl ListGate {
    /// A gate allowing one verification per `interval`.
    pub fn new(interval: Duration) -> ListGate {
        ListGate {
            interval,
            last: None,
            waiting: None,
        }
    }

    /// A list numbered `number` arrived while `current` is in force. It waits for verification if it is
    /// newer than `current` and than the list already waiting; returns whether it was kept.
    pub fn offer(&mut self, number: u64, der: Vec<u8>, current: u64) -> bool {
        if number <= current || self.waiting.as_ref().is_some_and(|(n, _)| *n >= number) {
            return false;
        }
        self.waiting = Some((number, der));
        true
    }

    /// When the waiting list may be verified; `None` when nothing waits.
    pub fn ready_at(&self) -> Option<Instant> {
        self.waiting.as_ref()?;
        Some(self.last.map_or_else(Instant::now, |l| l + self.interval))
    }

    /// Takes the waiting list for verification at `now`, if the interval since the last verification has
    /// passed and the list is still newer than `current` (one that is not is dropped).
    pub fn take(&mut self, current: u64, now: Instant) -> Option<Vec<u8>> {
        if self.waiting.as_ref().is_some_and(|(n, _)| *n <= current) {
            self.waiting = None;
        }
        self.waiting.as_ref()?;
        if self.last.is_some_and(|l| now < l + self.interval) {
            return None;
        }
        self.last = Some(now);
        self.waiting.take().map(|(_, der)| der)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use pollen_trust::pki::FleetCa;

    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn number_is_read_without_the_signature() {
        let ca = FleetCa::generate("fleet", 3600 * S).unwrap();
        let pem = ca.revocation_list(42, &[], 3600 * S).unwrap();
        let der = pollen_trust::pki::verify_revocation_list(pem.as_bytes(), ca.cert_pem())
            .unwrap()
            .der;
        assert_eq!(crl_number(&der), Some(42));
        // A list from another CA still yields its number: the signature is checked later.
        let other = FleetCa::generate("other", 3600 * S).unwrap();
        let pem = other.revocation_list(7, &[], 3600 * S).unwrap();
        let der = pollen_trust::pki::verify_revocation_list(pem.as_bytes(), other.cert_pem())
            .unwrap()
            .der;
        assert_eq!(crl_number(&der), Some(7));
        assert_eq!(crl_number(b"not a list"), None);
        assert_eq!(crl_number(&[]), None);
        // Large numbers (a leading zero byte keeps them positive) and many entries.
        let pem = ca.revocation_list(u64::MAX, &[], 3600 * S).unwrap();
        let big = pollen_trust::pki::verify_revocation_list(pem.as_bytes(), ca.cert_pem()).unwrap();
        assert_eq!(crl_number(&big.der), Some(u64::MAX));
        let revoked: Vec<_> = (0..500u32)
            .map(|i| pollen_trust::pki::Revoked {
                serial: format!("{:x}", 0x1000 + i),
                revoked_at: SystemTime::now(),
            })
            .collect();
        let pem = ca.revocation_list(1_700_000_000, &revoked, 3600 * S).unwrap();
        let long = pollen_trust::pki::verify_revocation_list(pem.as_bytes(), ca.cert_pem()).unwrap();
        assert!(long.der.len() > 256, "long-form lengths");
        assert_eq!(crl_number(&long.der), Some(1_700_000_000));
        assert_eq!(crl_number(&der[..der.len() - 1]), None);
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(crl_number(&trailing), None);
        // A certificate is not a list.
        use rustls_pki_types::pem::PemObject;
        let cert = ca.issue("node-a", SystemTime::now(), 3600 * S).unwrap();
        let cert = rustls_pki_types::CertificateDer::from_pem_slice(cert.cert.cert_pem.as_bytes()).unwrap();
        assert_eq!(crl_number(cert.as_ref()), None);
    }

    #[test]
    fn lists_not_newer_than_the_one_in_force_are_dropped() {
        let mut g = ListGate::new(3 * S);
        assert!(!g.offer(5, vec![5], 5));
        assert!(!g.offer(4, vec![4], 5));
        assert_eq!(g.ready_at(), None);
        assert_eq!(g.take(5, Instant::now()), None);
    }

    #[test]
    fn one_verification_per_interval_and_the_newest_waiting_list_wins() {
        let t0 = Instant::now();
        let mut g = ListGate::new(3 * S);
        assert!(g.offer(6, vec![6], 5));
        assert!(g.ready_at().is_some_and(|t| t <= Instant::now()));
        assert_eq!(g.take(5, t0), Some(vec![6]), "the first list is verified at once");
        assert_eq!(g.ready_at(), None);
        // Within the interval: lists wait, the highest number replaces a lower one.
        assert!(g.offer(8, vec![8], 5));
        assert!(g.offer(9, vec![9], 5));
        assert!(!g.offer(7, vec![7], 5), "lower than the waiting list");
        assert_eq!(g.ready_at(), Some(t0 + 3 * S));
        assert_eq!(g.take(5, t0 + S), None, "too early");
        assert_eq!(g.take(5, t0 + 3 * S), Some(vec![9]));
        // The next one again waits a full interval after that verification.
        assert!(g.offer(10, vec![10], 9));
        assert_eq!(g.take(9, t0 + 5 * S), None);
        assert_eq!(g.take(9, t0 + 6 * S), Some(vec![10]));
    }

    #[test]
    fn a_waiting_list_overtaken_by_the_one_in_force_is_dropped() {
        let t0 = Instant::now();
        let mut g = ListGate::new(3 * S);
        assert!(g.offer(6, vec![6], 5));
        assert!(g.take(5, t0).is_some());
        assert!(g.offer(7, vec![7], 5));
        // Another peer (or the agent) installed 7 meanwhile.
        assert_eq!(g.take(7, t0 + 4 * S), None);
        assert_eq!(g.ready_at(), None);
    }
}
