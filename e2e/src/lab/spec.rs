//! What a lab looks like: sites, nodes, link rates, delay and loss; and the small unit parsers
//! (`20mbit`, `64MiB`, `20ms`) the benchmark's command line uses. Pure.
//!
//! Non-goals: per-node heterogeneity (every node has the same links).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use super::LabError;

/// A link rate in bits per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Rate(pub u64);

impl Rate {
    /// `n` megabits (10^6 bit) per second.
    pub const fn mbit(n: u64) -> Rate {
        Rate(n * 1_000_000)
    }
    /// Bits per second.
    pub fn bits_per_sec(self) -> u64 {
        self.0
    }
    /// Bytes per second.
    pub fn bytes_per_sec(self) -> f64 {
        self.0 as f64 / 8.0
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1_000_000) {
            write!(f, "{}mbit", self.0 / 1_000_000)
        } else if self.0.is_multiple_of(1000) {
            write!(f, "{}kbit", self.0 / 1000)
        } else {
            write!(f, "{}bit", self.0)
        }
    }
}

fn split_number(s: &str) -> (&str, &str) {
    let idx = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..idx], s[idx..].trim())
}

fn parse_err(what: &str, s: &str) -> LabError {
    LabError::Parse {
        what: what.to_string(),
        detail: format!("`{s}`"),
    }
}

impl FromStr for Rate {
    type Err = LabError;
    /// Accepts `20mbit`, `500kbit`, `1gbit`, `1000bit` (case-insensitive, decimal prefixes).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (num, unit) = split_number(s.trim());
        let n: f64 = num.parse().map_err(|_| parse_err("rate", s))?;
        let mult = match unit.to_ascii_lowercase().as_str() {
            "bit" | "bps" | "" => 1.0,
            "kbit" | "k" => 1e3,
            "mbit" | "m" => 1e6,
            "gbit" | "g" => 1e9,
            _ => return Err(parse_err("rate (use bit, kbit, mbit, gbit)", s)),
        };
        let bits = (n * mult).round();
        if bits < 8000.0 {
            return Err(parse_err("rate (at least 8kbit)", s));
        }
        Ok(Rate(bits as u64))
    }
}

/// Parses a byte size: `64MiB`, `512KiB`, `1GiB`, `1000` (bytes), `10MB` (decimal).
pub fn parse_size(s: &str) -> Result<u64, LabError> {
    let (num, unit) = split_number(s.trim());
    let n: f64 = num.parse().map_err(|_| parse_err("size", s))?;
    let mult: f64 = match unit {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return Err(parse_err("size (use B, KiB, MiB, GiB, kB, MB, GB)", s)),
    };
    let v = (n * mult).round();
    if v < 1.0 {
        return Err(parse_err("size (at least 1 byte)", s));
    }
    Ok(v as u64)
}

/// Parses a duration: `20ms`, `1.5s`, `250us`, `0` (the workspace's one parser,
/// [`pollen_crds::duration`]).
pub fn parse_duration(s: &str) -> Result<Duration, LabError> {
    pollen_crds::duration::parse(s.trim()).map_err(|e| parse_err("duration", &e.to_string()))
}

/// One site: a number of nodes behind a shared WAN hop.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SiteSpec {
    /// Nodes at this site.
    pub nodes: usize,
}

/// A whole lab.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LabSpec {
    /// The sites; nodes are numbered across sites in order.
    pub sites: Vec<SiteSpec>,
    /// Origin uplink (its `eth0` egress). `None`: unshaped.
    pub origin_up: Option<Rate>,
    /// Each node's uplink. `None`: unshaped.
    pub node_up: Option<Rate>,
    /// Each node's downlink (the bridge port's egress). `None`: unshaped.
    pub node_down: Option<Rate>,
    /// Each site's WAN hop, both directions. `None`: unshaped (then sites only group nodes).
    pub wan: Option<Rate>,
    /// Round-trip time added between any two endpoints (half on each direction).
    pub rtt: Duration,
    /// Random loss probability per packet, per direction, in `[0, 1)`.
    pub loss: f64,
}

impl LabSpec {
    /// A single site of `n` nodes with the benchmark's standard links: origin up 20 Mbit/s, node up
    /// 10 / down 50 Mbit/s, RTT 20 ms, loss 0.5 %.
    pub fn standard(n: usize) -> LabSpec {
        LabSpec {
            sites: vec![SiteSpec { nodes: n }],
            origin_up: Some(Rate::mbit(20)),
            node_up: Some(Rate::mbit(10)),
            node_down: Some(Rate::mbit(50)),
            wan: None,
            rtt: Duration::from_millis(20),
            loss: 0.005,
        }
    }

    /// Total number of nodes.
    pub fn node_count(&self) -> usize {
        self.sites.iter().map(|s| s.nodes).sum()
    }

    /// Checks the limits the address plan and the tools impose.
    pub fn validate(&self) -> Result<(), LabError> {
        if self.sites.is_empty() || self.sites.len() > 200 {
            return Err(LabError::Spec("between 1 and 200 sites".into()));
        }
        if self.sites.iter().any(|s| s.nodes == 0 || s.nodes > 200) {
            return Err(LabError::Spec("every site needs between 1 and 200 nodes".into()));
        }
        if !(0.0..1.0).contains(&self.loss) {
            return Err(LabError::Spec(format!("loss {} not in [0, 1)", self.loss)));
        }
        if self.rtt > Duration::from_secs(2) {
            return Err(LabError::Spec("rtt above 2 s".into()));
        }
        Ok(())
    }

    /// Address of the origin.
    pub fn origin_addr() -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 0, 1)
    }

    /// Address of node `index` (0-based within its site) at site `site`.
    pub fn node_addr(site: usize, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, (site + 1) as u8, (index + 1) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        assert_eq!("20mbit".parse::<Rate>().unwrap(), Rate(20_000_000));
        assert_eq!("1.5Mbit".parse::<Rate>().unwrap(), Rate(1_500_000));
        assert_eq!("500kbit".parse::<Rate>().unwrap(), Rate(500_000));
        assert_eq!(Rate(20_000_000).to_string(), "20mbit");
        assert_eq!(Rate(1_500_000).to_string(), "1500kbit");
        assert!("20 furlongs".parse::<Rate>().is_err());
        assert!("1bit".parse::<Rate>().is_err());
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("3 parsecs").is_err());
        assert_eq!(parse_duration("20ms").unwrap(), Duration::from_millis(20));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("20").is_err());
    }

    #[test]
    fn durations_too_long_for_a_duration_are_refused_not_a_panic() {
        // Found by the `duration` fuzz target.
        let long = format!("{}1us", "7".repeat(70));
        assert!(parse_duration(&long).is_err());
        assert!(parse_duration(&format!("{}s", "9".repeat(400))).is_err());
    }

    #[test]
    fn validation_rejects_bad_specs() {
        let mut s = LabSpec::standard(8);
        assert!(s.validate().is_ok());
        s.loss = 1.0;
        assert!(s.validate().is_err());
        let mut s = LabSpec::standard(8);
        s.sites[0].nodes = 0;
        assert!(s.validate().is_err());
        assert_eq!(LabSpec::node_addr(2, 7), Ipv4Addr::new(10, 200, 3, 8));
    }
}
