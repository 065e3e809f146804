//! The one duration parser of the workspace: CR fields (`pause`, `peerWait`), command-line flags
//! (certificate lifetimes, the operator's intervals) and the lab's scenarios all read durations here.
//!
//! The form is compact and Go-like: one or more `<number><unit>` with no sign and no spaces, units
//! `us`, `ms`, `s`, `m`, `h`, `d` (a day is 24 hours) from largest to smallest, a fraction allowed up
//! to hours (`1.5m`, `1h30m`, `250ms`, `7d`), and the bare `0`. The CRD's pattern accepts the same
//! shape on the API server. The arithmetic is `jiff`'s; this module only fixes the accepted shape
//! and the bound.
//!
//! Every input gets an answer, never a panic: values past [`MAX`] (100 years) are refused, so a
//! duration always fits a `std::time::Duration`, a timestamp and an X.509 validity.
//!
//! Non-goals: calendar units (months, years), negative durations, ISO 8601.

use std::time::Duration;

use jiff::{Span, SpanRelativeTo};

/// The longest duration accepted: 100 years of 365 days.
pub const MAX: Duration = Duration::from_secs(100 * 365 * 86400);

/// The longest input looked at (a longer string is refused before parsing).
pub const MAX_LEN: usize = 64;

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a duration: {reason} (write it like 90s, 1h30m, 250ms or 7d; at most 100 years)")]
pub struct DurationError {
    /// The input, cut to [`MAX_LEN`] characters.
    pub input: String,
    /// What is wrong.
    pub reason: String,
}

fn refuse(input: &str, reason: impl Into<String>) -> DurationError {
    DurationError {
        input: input.chars().take(MAX_LEN).collect(),
        reason: reason.into(),
    }
}

/// Whether `s` has the accepted shape: `<digits>[.<digits>]<unit>` repeated, units from
/// [`UNITS`].
fn well_formed(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if b.is_empty() {
        return false;
    }
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let frac = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == frac {
                return false;
            }
        }
        let Some(unit) = UNITS.iter().find(|u| b[i..].starts_with(u.as_bytes())) else {
            return false;
        };
        i += unit.len();
    }
    true
}

/// The units, longest first where one is the prefix of another (`ms` before `m`).
const UNITS: [&str; 6] = ["us", "ms", "s", "m", "h", "d"];

/// Parses a duration (see the module docs for the form).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    if s.len() > MAX_LEN {
        return Err(refuse(s, format!("longer than {MAX_LEN} characters")));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if !well_formed(s) {
        return Err(refuse(s, "expected numbers with units us, ms, s, m, h or d"));
    }
    let span: Span = s.parse().map_err(|e: jiff::Error| refuse(s, e.to_string()))?;
    let signed = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(|e| refuse(s, e.to_string()))?;
    let d = Duration::try_from(signed).map_err(|e| refuse(s, e.to_string()))?;
    if d > MAX {
        return Err(refuse(s, "longer than 100 years"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go_with_days() {
        for (s, want) in [
            ("30s", Duration::from_secs(30)),
            ("1h30m", Duration::from_secs(5400)),
            ("250ms", Duration::from_millis(250)),
            ("250us", Duration::from_micros(250)),
            ("1.5m", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("7d", Duration::from_secs(7 * 86400)),
            ("1d12h", Duration::from_secs(36 * 3600)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("3650d", Duration::from_secs(3650 * 86400)),
        ] {
            assert_eq!(parse(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn bad_and_huge_durations_are_refused_not_a_panic() {
        for bad in [
            "",
            "10",
            "s",
            "10x",
            "-5s",
            "+5s",
            "1h 30m",
            " 5s",
            "5S",
            "PT5M",
            "1e400s",
            "1.s",
            ".5s",
            "2w",
            "1y",
            "1.5.5s",
            "99999999999999999999h",
            "999999999999d",
            "36501d",
            "30m1h",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must not parse");
        }
        let long = format!("{}s", "9".repeat(400));
        let e = parse(&long).unwrap_err();
        assert!(e.input.len() <= MAX_LEN, "{e}");
        assert!(parse("36500d").is_ok());
    }
}
