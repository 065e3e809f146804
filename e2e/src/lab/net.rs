//! Building and tearing down the lab's namespaces, veths, bridges, shaping, loss and delay.
//!
//! A [`Lab`] owns everything it creates: dropping it (also while a panic unwinds) kills the processes
//! left in its namespaces and deletes the namespaces, which removes their veths, qdiscs and rules.
//! [`cleanup_leftovers`] removes what a killed run left behind.
//!
//! Non-goals: IPv6, routing between subnets (the lab is one flat 10.200.0.0/16 layer-2 segment).

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::LabError;
use super::cmd::{command_in, run, run_in};
use super::spec::{LabSpec, Rate};

/// Prefix shared by every namespace any lab creates: `pl<pid>-<seq>-`.
pub const NS_PREFIX: &str = "pl";

/// The queue number the delay daemon binds in the bridge namespace.
const DELAY_QUEUE: u16 = 0;

/// SCHED_FIFO priority of the delay daemon.
const DELAY_RT_PRIORITY: &str = "10";

/// tbf's queue bound: packets wait at most this long before being dropped.
const TBF_LATENCY: &str = "50ms";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The lab's helper binaries (built from this crate).
#[derive(Debug, Clone)]
pub struct LabBinaries {
    /// `pollen-lab-delay`, the NFQUEUE delay daemon.
    pub delay: PathBuf,
    /// `pollen-lab-probe`, the link probes.
    pub probe: PathBuf,
}

impl LabBinaries {
    /// Finds the helper binaries beside the running executable (or one level up, for test binaries
    /// under `target/<profile>/deps`).
    pub fn beside_current_exe() -> Result<LabBinaries, LabError> {
        let exe = std::env::current_exe().map_err(|e| LabError::io("locating this executable", e))?;
        let mut dirs = Vec::new();
        if let Some(d) = exe.parent() {
            dirs.push(d.to_path_buf());
            if let Some(up) = d.parent() {
                dirs.push(up.to_path_buf());
            }
        }
        for d in &dirs {
            let delay = d.join("pollen-lab-delay");
            let probe = d.join("pollen-lab-probe");
            if delay.is_file() && probe.is_file() {
                return Ok(LabBinaries { delay, probe });
            }
        }
        Err(LabError::Spec(format!(
            "pollen-lab-delay and pollen-lab-probe not found beside {} (build it: cargo build -p pollen-e2e --bins)",
            exe.display()
        )))
    }
}

/// One emulated edge node.
#[derive(Debug, Clone)]
pub struct LabNode {
    /// Short name, `n<i>` with `i` numbered across sites.
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address on `eth0`.
    pub addr: Ipv4Addr,
    /// Its site (0-based).
    pub site: usize,
    /// Its bridge-side port in the bridge namespace.
    pub port: String,
}

/// A running lab. See the module docs of [`crate::lab`] for the layout.
#[derive(Debug)]
pub struct Lab {
    spec: LabSpec,
    prefix: String,
    bridge_ns: String,
    origin_ns: String,
    nodes: Vec<LabNode>,
    created: Vec<String>,
    delay: Option<Child>,
    torn_down: bool,
}

fn tbf(ns: &str, dev: &str, rate: Rate) -> Result<(), LabError> {
    // A burst of ~4 ms at the rate (at least two full frames) keeps shaping smooth.
    let burst = ((rate.bytes_per_sec() / 250.0) as u64).max(3028);
    run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "tc",
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{}bit", rate.bits_per_sec()),
            "burst",
            &burst.to_string(),
            "latency",
            TBF_LATENCY,
        ],
    )
    .map(drop)
}

fn offloads_off(ns: &str, dev: &str) -> Result<(), LabError> {
    run_in(
        ns,
        "ethtool",
        &["-K", dev, "tso", "off", "gso", "off", "gro", "off"],
    )
    .map(drop)
}

fn ipn(ns: &str, args: &[&str]) -> Result<(), LabError> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full).map(drop)
}

fn iptables(ns: &str, args: &[&str]) -> Result<(), LabError> {
    run_in(ns, "iptables", args).map(drop)
}

impl Lab {
    /// Builds a lab. Needs root and `ip`, `tc`, `iptables`, `ethtool`, `sysctl`. On error everything
    /// created so far is removed again.
    pub fn build(spec: LabSpec, bins: &LabBinaries) -> Result<Lab, LabError> {
        spec.validate()?;
        let prefix = format!(
            "{NS_PREFIX}{}-{}-",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            bridge_ns: format!("{prefix}br"),
            origin_ns: format!("{prefix}origin"),
            prefix,
            spec,
            nodes: Vec::new(),
            created: Vec::new(),
            delay: None,
            torn_down: false,
        };
        lab.assemble(bins)?;
        Ok(lab)
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), LabError> {
        run("ip", &["netns", "add", ns])?;
        self.created.push(ns.to_string());
        ipn(ns, &["link", "set", "lo", "up"])
    }

    /// Creates `eth0` in `ns` paired with `port` in the bridge namespace, attached to `bridge`.
    fn attach(
        &self,
        ns: &str,
        addr: Ipv4Addr,
        port: &str,
        bridge: &str,
        up: Option<Rate>,
        down: Option<Rate>,
    ) -> Result<(), LabError> {
        let br = self.bridge_ns.as_str();
        ipn(
            ns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", br,
            ],
        )?;
        offloads_off(ns, "eth0")?;
        offloads_off(br, port)?;
        ipn(ns, &["addr", "add", &format!("{addr}/16"), "dev", "eth0"])?;
        ipn(br, &["link", "set", port, "master", bridge])?;
        ipn(br, &["link", "set", port, "up"])?;
        ipn(ns, &["link", "set", "eth0", "up"])?;
        if let Some(r) = up {
            tbf(ns, "eth0", r)?;
        }
        if let Some(r) = down {
            tbf(br, port, r)?;
        }
        Ok(())
    }

    fn assemble(&mut self, bins: &LabBinaries) -> Result<(), LabError> {
        let br = self.bridge_ns.clone();
        self.add_ns(&br)?;
        ipn(&br, &["link", "add", "core", "type", "bridge"])?;
        ipn(&br, &["link", "set", "core", "up"])?;
        run_in(&br, "sysctl", &["-qw", "net.bridge.bridge-nf-call-iptables=1"])?;

        let origin = self.origin_ns.clone();
        self.add_ns(&origin)?;
        self.attach(
            &origin,
            LabSpec::origin_addr(),
            "eo",
            "core",
            self.spec.origin_up,
            None,
        )?;

        let mut global = 0usize;
        for (k, site) in self.spec.sites.clone().iter().enumerate() {
            let sb = format!("s{k}");
            let (wa, wb) = (format!("w{k}a"), format!("w{k}b"));
            ipn(&br, &["link", "add", &sb, "type", "bridge"])?;
            ipn(&br, &["link", "set", &sb, "up"])?;
            ipn(&br, &["link", "add", &wa, "type", "veth", "peer", "name", &wb])?;
            offloads_off(&br, &wa)?;
            offloads_off(&br, &wb)?;
            ipn(&br, &["link", "set", &wa, "master", &sb])?;
            ipn(&br, &["link", "set", &wb, "master", "core"])?;
            ipn(&br, &["link", "set", &wa, "up"])?;
            ipn(&br, &["link", "set", &wb, "up"])?;
            if let Some(r) = self.spec.wan {
                tbf(&br, &wa, r)?;
                tbf(&br, &wb, r)?;
            }
            for i in 0..site.nodes {
                let node = LabNode {
                    name: format!("n{global}"),
                    ns: format!("{}n{global}", self.prefix),
                    addr: LabSpec::node_addr(k, i),
                    site: k,
                    port: format!("e{global}"),
                };
                self.add_ns(&node.ns)?;
                self.attach(
                    &node.ns,
                    node.addr,
                    &node.port,
                    &sb,
                    self.spec.node_up,
                    self.spec.node_down,
                )?;
                self.nodes.push(node);
                global += 1;
            }
        }

        // Loss and delay: once per packet, as it enters the bridges from an endpoint port.
        iptables(&br, &["-N", "LABLOSS"])?;
        iptables(
            &br,
            &[
                "-A",
                "FORWARD",
                "-m",
                "physdev",
                "--physdev-in",
                "e+",
                "-j",
                "LABLOSS",
            ],
        )?;
        self.set_loss(self.spec.loss)?;
        if !self.spec.rtt.is_zero() {
            self.start_delay(bins)?;
            iptables(
                &br,
                &[
                    "-A",
                    "FORWARD",
                    "-m",
                    "physdev",
                    "--physdev-in",
                    "e+",
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    &DELAY_QUEUE.to_string(),
                ],
            )?;
        }
        Ok(())
    }

    fn start_delay(&mut self, bins: &LabBinaries) -> Result<(), LabError> {
        let one_way = self.spec.rtt / 2;
        // Real-time priority: the emulated network must not slow down (or drop packets from an
        // overflowing queue socket) when the nodes under test saturate the CPUs.
        let mut child = command_in(&self.bridge_ns, "chrt")
            .args([
                "-f",
                DELAY_RT_PRIORITY,
                &bins.delay.to_string_lossy(),
                "--queue",
                &DELAY_QUEUE.to_string(),
                "--delay-us",
                &one_way.as_micros().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| LabError::Spawn {
                cmd: format!("{} (in {})", bins.delay.display(), self.bridge_ns),
                source,
            })?;
        let stdout = child.stdout.take();
        self.delay = Some(child);
        let mut line = String::new();
        if let Some(out) = stdout {
            BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| LabError::io("reading the delay daemon's ready line", e))?;
        }
        if line.trim() != "ready" {
            return Err(LabError::Failed(format!(
                "the delay daemon did not start (said {:?})",
                line.trim()
            )));
        }
        Ok(())
    }

    /// Sets the random loss probability per packet and direction (replaces the current rule).
    pub fn set_loss(&self, p: f64) -> Result<(), LabError> {
        if !(0.0..1.0).contains(&p) {
            return Err(LabError::Spec(format!("loss {p} not in [0, 1)")));
        }
        iptables(&self.bridge_ns, &["-F", "LABLOSS"])?;
        if p > 0.0 {
            iptables(
                &self.bridge_ns,
                &[
                    "-A",
                    "LABLOSS",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &format!("{p:.6}"),
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// The spec the lab was built from.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }
    /// The nodes, numbered across sites.
    pub fn nodes(&self) -> &[LabNode] {
        &self.nodes
    }
    /// The origin's namespace.
    pub fn origin_ns(&self) -> &str {
        &self.origin_ns
    }
    /// The bridge namespace.
    pub fn bridge_ns(&self) -> &str {
        &self.bridge_ns
    }
    /// The name prefix of every namespace of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// Packets the delay queue dropped so far because it overflowed (0 without delay). Such drops
    /// are loss the spec did not ask for; a sound run has none.
    pub fn delay_drops(&self) -> Result<u64, LabError> {
        if self.delay.is_none() {
            return Ok(0);
        }
        let text = run_in(&self.bridge_ns, "cat", &["/proc/net/netfilter/nfnetlink_queue"])?;
        parse_queue_drops(&text, DELAY_QUEUE).ok_or_else(|| LabError::Parse {
            what: "/proc/net/netfilter/nfnetlink_queue".into(),
            detail: format!("no queue {DELAY_QUEUE} in {text:?}"),
        })
    }

    /// PID of the delay daemon, when delay is on.
    pub fn delay_pid(&self) -> Option<u32> {
        self.delay.as_ref().map(Child::id)
    }

    /// A command running `program` inside namespace `ns`.
    pub fn command(&self, ns: &str, program: &Path) -> Command {
        command_in(ns, &program.to_string_lossy())
    }

    /// Removes everything the lab created. Called by `Drop`; errors are returned, not panicked on.
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        if let Some(mut d) = self.delay.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        for ns in self.created.drain(..).rev() {
            if let Err(e) = delete_ns(&ns) {
                errors.push(e.to_string());
            }
        }
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("lab teardown: {e}");
        }
    }
}

/// Kills the processes inside `ns` (by PID) and deletes it.
fn delete_ns(ns: &str) -> Result<(), LabError> {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            if pid.parse::<u32>().is_ok() {
                let _ = run("kill", &["-KILL", pid]);
            }
        }
    }
    // Give killed processes a moment to release the namespace.
    std::thread::sleep(Duration::from_millis(20));
    match run("ip", &["netns", "del", ns]) {
        Ok(_) => Ok(()),
        // Deleted meanwhile by someone else (a racing teardown): what we wanted.
        Err(_) if !Path::new("/run/netns").join(ns).exists() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Parses `/proc/net/netfilter/nfnetlink_queue`: packets of queue `queue` that the kernel dropped
/// because the queue or the daemon's socket was full (`queue_dropped + user_dropped`).
pub fn parse_queue_drops(text: &str, queue: u16) -> Option<u64> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 7 || f[0].parse::<u16>().ok()? != queue {
            return None;
        }
        Some(f[5].parse::<u64>().ok()? + f[6].parse::<u64>().ok()?)
    })
}

/// Namespaces of labs: (name, creating PID).
pub fn lab_namespaces() -> Result<Vec<(String, u32)>, LabError> {
    let out = run("ip", &["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let rest = name.strip_prefix(NS_PREFIX)?;
            let pid = rest.split('-').next()?.parse::<u32>().ok()?;
            // Only our own shape: pl<pid>-<seq>-<role>.
            (rest.split('-').count() >= 3).then(|| (name.to_string(), pid))
        })
        .collect())
}

/// Deletes the lab namespaces this process created (for a signal handler that exits without
/// unwinding). Returns the names removed.
pub fn cleanup_own() -> Result<Vec<String>, LabError> {
    let me = std::process::id();
    let mut removed = Vec::new();
    let mut first_error = None;
    for (name, pid) in lab_namespaces()? {
        if pid == me {
            match delete_ns(&name) {
                Ok(()) => removed.push(name),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

/// Deletes lab namespaces whose creating process is gone (or all of them with `all`). Returns the
/// names removed.
pub fn cleanup_leftovers(all: bool) -> Result<Vec<String>, LabError> {
    let mut removed = Vec::new();
    let me = std::process::id();
    for (name, pid) in lab_namespaces()? {
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if all && pid != me || !alive {
            delete_ns(&name)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_drops_are_read_from_proc() {
        let t = "    0  32566    12 1     0     3 211965  1691159  1\n    1  1 0 1 0 0 0 5 1\n";
        assert_eq!(parse_queue_drops(t, 0), Some(211_968));
        assert_eq!(parse_queue_drops(t, 1), Some(0));
        assert_eq!(parse_queue_drops(t, 2), None);
        assert_eq!(parse_queue_drops("garbage", 0), None);
    }
}
