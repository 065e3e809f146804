//! Interface byte counters read inside a namespace (`ip -n NS -j -s link show`), as the kernel
//! counts them on the wire: every header included, retransmissions included.
//!
//! Non-goals: per-flow accounting.

use std::collections::BTreeMap;

use super::LabError;
use super::cmd::run;

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
    fn differences_saturate() {
        let a = LabCounters {
            origin_tx: 10,
            wan_out: vec![5, 7],
            wan_in: vec![1, 1],
            lab_drops: 2,
            cpu_busy: 10,
            cpu_total: 100,
        };
        let b = LabCounters {
            origin_tx: 25,
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
                wan_out: vec![4, 0],
                wan_in: vec![0, 3],
                lab_drops: 5,
                cpu_busy: 60,
                cpu_total: 100,
            }
        );
    }
}
