//! Interface byte counters read inside a namespace (`ip -n NS -j -s link show`), as the kernel
//! counts them on the wire: every header included, retransmissions included.
//!
//! Non-goals: per-flow accounting.

use std::collections::BTreeMap;

use super::LabError;
use super::cmd::{run, run_in};

/// Byte counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfBytes {
    /// Bytes sent.
    pub tx: u64,
    /// Bytes received.
    pub rx: u64,
}

/// Parses the JSON of `ip -j -s link show` into name → counters.
pub fn parse_links(json: &str) -> Result<BTreeMap<String, IfBytes>, LabError> {
    let bad = |d: String| LabError::Parse {
        what: "ip -j -s link output".into(),
        detail: d,
    };
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let arr = v.as_array().ok_or_else(|| bad("not an array".into()))?;
    let mut out = BTreeMap::new();
    for link in arr {
        let name = link["ifname"]
            .as_str()
            .ok_or_else(|| bad("ifname missing".into()))?;
        let stats = &link["stats64"];
        let get = |dir: &str| {
            stats[dir]["bytes"]
                .as_u64()
                .ok_or_else(|| bad(format!("{name}: stats64.{dir}.bytes missing")))
        };
        out.insert(
            name.to_string(),
            IfBytes {
                tx: get("tx")?,
                rx: get("rx")?,
            },
        );
    }
    Ok(out)
}

/// Counters of every interface in namespace `ns`.
pub fn read_ns(ns: &str) -> Result<BTreeMap<String, IfBytes>, LabError> {
    parse_links(&run("ip", &["-n", ns, "-j", "-s", "link", "show"])?)
}

/// TCP segment counters of a namespace, from the `Tcp:` lines of `/proc/net/snmp`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpSegs {
    /// Segments sent (`OutSegs`; Linux counts retransmitted segments here too).
    pub out: u64,
    /// Segments sent again (`RetransSegs`).
    pub retrans: u64,
}

/// Parses the `Tcp:` header and value lines of `/proc/net/snmp`.
pub fn parse_snmp_tcp(text: &str) -> Result<TcpSegs, LabError> {
    let bad = |d: &str| LabError::Parse {
        what: "/proc/net/snmp".into(),
        detail: d.into(),
    };
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let names: Vec<&str> = tcp
        .next()
        .ok_or_else(|| bad("no Tcp: lines"))?
        .split_whitespace()
        .collect();
    let values: Vec<&str> = tcp
        .next()
        .ok_or_else(|| bad("no Tcp: values"))?
        .split_whitespace()
        .collect();
    let get = |name: &str| -> Result<u64, LabError> {
        let i = names.iter().position(|n| *n == name).ok_or_else(|| bad(name))?;
        values
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(name))
    };
    Ok(TcpSegs {
        out: get("OutSegs")?,
        retrans: get("RetransSegs")?,
    })
}

/// TCP segment counters of namespace `ns`.
pub fn read_tcp(ns: &str) -> Result<TcpSegs, LabError> {
    parse_snmp_tcp(&run_in(ns, "cat", &["/proc/net/snmp"])?)
}

/// Counters of interface `dev` in namespace `ns`.
pub fn read(ns: &str, dev: &str) -> Result<IfBytes, LabError> {
    read_ns(ns)?.remove(dev).ok_or_else(|| LabError::Parse {
        what: format!("interfaces of {ns}"),
        detail: format!("no {dev}"),
    })
}

/// The counters the benchmark compares before and after a phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabCounters {
    /// Bytes the origin sent (its `eth0` tx).
    pub origin_tx: u64,
    /// TCP segments the origin sent, and sent again (its namespace's `/proc/net/snmp`).
    pub origin_tcp: TcpSegs,
    /// Per site: bytes leaving the site over its WAN hop (`w<k>a` tx).
    pub wan_out: Vec<u64>,
    /// Per site: bytes entering the site over its WAN hop (`w<k>b` tx).
    pub wan_in: Vec<u64>,
    /// Packets the lab's delay queue dropped on overflow (loss beyond the spec's).
    pub lab_drops: u64,
    /// Machine-wide CPU ticks spent working.
    pub cpu_busy: u64,
    /// Machine-wide CPU ticks in all.
    pub cpu_total: u64,
}

impl LabCounters {
    /// Reads the counters of `lab`.
    pub fn read(lab: &super::Lab) -> Result<LabCounters, LabError> {
        let cpu = super::procstat::read_machine();
        let origin_tx = read(lab.origin_ns(), "eth0")?.tx;
        let origin_tcp = read_tcp(lab.origin_ns())?;
        let br = read_ns(lab.bridge_ns())?;
        let get = |name: String| {
            br.get(&name).map(|c| c.tx).ok_or_else(|| LabError::Parse {
                what: format!("interfaces of {}", lab.bridge_ns()),
                detail: format!("no {name}"),
            })
        };
        let sites = lab.spec().sites.len();
        Ok(LabCounters {
            origin_tx,
            origin_tcp,
            wan_out: (0..sites)
                .map(|k| get(format!("w{k}a")))
                .collect::<Result<_, _>>()?,
            wan_in: (0..sites)
                .map(|k| get(format!("w{k}b")))
                .collect::<Result<_, _>>()?,
            lab_drops: lab.delay_drops()?,
            cpu_busy: cpu.busy,
            cpu_total: cpu.total,
        })
    }

    /// What was counted between `earlier` and `self`.
    pub fn since(&self, earlier: &LabCounters) -> LabCounters {
        let sub = |a: &[u64], b: &[u64]| a.iter().zip(b).map(|(x, y)| x.saturating_sub(*y)).collect();
        LabCounters {
            origin_tx: self.origin_tx.saturating_sub(earlier.origin_tx),
            origin_tcp: TcpSegs {
                out: self.origin_tcp.out.saturating_sub(earlier.origin_tcp.out),
                retrans: self.origin_tcp.retrans.saturating_sub(earlier.origin_tcp.retrans),
            },
            wan_out: sub(&self.wan_out, &earlier.wan_out),
            wan_in: sub(&self.wan_in, &earlier.wan_in),
            lab_drops: self.lab_drops.saturating_sub(earlier.lab_drops),
            cpu_busy: self.cpu_busy.saturating_sub(earlier.cpu_busy),
            cpu_total: self.cpu_total.saturating_sub(earlier.cpu_total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json() {
        let j = r#"[{"ifindex":1,"ifname":"lo","stats64":{"rx":{"bytes":10,"packets":1},"tx":{"bytes":20,"packets":2}}},
                   {"ifindex":2,"ifname":"eth0","stats64":{"rx":{"bytes":5},"tx":{"bytes":123456789012}}}]"#;
        let m = parse_links(j).unwrap();
        assert_eq!(m["lo"], IfBytes { tx: 20, rx: 10 });
        assert_eq!(m["eth0"].tx, 123456789012);
        assert!(parse_links("[{\"ifname\":\"x\"}]").is_err());
        assert!(parse_links("nope").is_err());
    }

    #[test]
    fn parses_snmp_tcp() {
        let t = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                 Tcp: RtoAlgorithm RtoMin OutSegs RetransSegs InErrs\n\
                 Tcp: 1 200 98765 432 0\n\
                 Udp: InDatagrams\nUdp: 7\n";
        assert_eq!(
            parse_snmp_tcp(t).unwrap(),
            TcpSegs {
                out: 98765,
                retrans: 432
            }
        );
        assert!(parse_snmp_tcp("Tcp: OutSegs\n").is_err());
        assert!(parse_snmp_tcp("Tcp: OutSegs RetransSegs\nTcp: 5 x\n").is_err());
        assert!(parse_snmp_tcp("").is_err());
    }

    #[test]
    fn differences_saturate() {
        let a = LabCounters {
            origin_tx: 10,
            origin_tcp: TcpSegs { out: 100, retrans: 1 },
            wan_out: vec![5, 7],
            wan_in: vec![1, 1],
            lab_drops: 2,
            cpu_busy: 10,
            cpu_total: 100,
        };
        let b = LabCounters {
            origin_tx: 25,
            origin_tcp: TcpSegs { out: 150, retrans: 4 },
            wan_out: vec![9, 7],
            wan_in: vec![0, 4],
            lab_drops: 7,
            cpu_busy: 70,
            cpu_total: 200,
        };
        let d = b.since(&a);
        assert_eq!(
            d,
            LabCounters {
                origin_tx: 15,
                origin_tcp: TcpSegs { out: 50, retrans: 3 },
                wan_out: vec![4, 0],
                wan_in: vec![0, 3],
                lab_drops: 5,
                cpu_busy: 60,
                cpu_total: 100,
            }
        );
    }
}
