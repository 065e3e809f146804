//! CPU time and state of a process from `/proc/PID/stat`. The parser is pure.
//!
//! Non-goals: per-thread figures, memory.

use std::sync::OnceLock;

use super::LabError;

/// What the lab reads from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStat {
    /// State letter (`R`, `S`, `Z`, …).
    pub state: char,
    /// User plus system time, in clock ticks.
    pub cpu_ticks: u64,
}

impl ProcStat {
    /// True once the process has exited (and is not reaped yet).
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
    /// CPU time in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_ticks as f64 / clock_ticks_per_sec() as f64
    }
}

/// Parses the content of `/proc/PID/stat`.
pub fn parse_stat(text: &str) -> Result<ProcStat, LabError> {
    let bad = |d: &str| LabError::Parse {
        what: "/proc/PID/stat".into(),
        detail: d.into(),
    };
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')').ok_or_else(|| bad("no ')'"))? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    if f.len() < 13 {
        return Err(bad("too few fields"));
    }
    let state = f[0].chars().next().ok_or_else(|| bad("empty state"))?;
    let utime: u64 = f[11].parse().map_err(|_| bad("utime"))?;
    let stime: u64 = f[12].parse().map_err(|_| bad("stime"))?;
    Ok(ProcStat {
        state,
        cpu_ticks: utime + stime,
    })
}

/// Reads `/proc/PID/stat`. `None` when the process is gone.
pub fn read(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).ok()
}

/// Machine-wide CPU time from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineCpu {
    /// Ticks spent working (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    /// All ticks (busy plus idle and iowait), summed over CPUs.
    pub total: u64,
}

/// Parses `/proc/stat`'s aggregate `cpu` line.
pub fn parse_machine(text: &str) -> Option<MachineCpu> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Some(MachineCpu {
        busy,
        total: busy + v[3] + v[4],
    })
}

/// Reads the machine-wide CPU counters (zero if unreadable).
pub fn read_machine() -> MachineCpu {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_machine(&t))
        .unwrap_or_default()
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub fn clock_ticks_per_sec() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let s = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194304 100 0 0 0 250 17 0 0 20 0 1 0 100 0 0";
        let p = parse_stat(s).unwrap();
        assert_eq!(p.state, 'S');
        assert_eq!(p.cpu_ticks, 267);
        assert!(!p.is_zombie());
    }

    #[test]
    fn zombie_and_garbage() {
        let s = "9 (curl) Z 1 9 9 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 100 0 0";
        let p = parse_stat(s).unwrap();
        assert!(p.is_zombie());
        assert_eq!(p.cpu_ticks, 7);
        assert!(parse_stat("garbage").is_err());
        assert!(parse_stat("1 (x) S 1 2").is_err());
    }

    #[test]
    fn machine_cpu_from_proc_stat() {
        let t = "cpu  100 5 50 800 20 3 7 15 0 0\ncpu0 50 2 25 400 10 1 3 7 0 0\n";
        let m = parse_machine(t).unwrap();
        assert_eq!(m.busy, 100 + 5 + 50 + 3 + 7 + 15);
        assert_eq!(m.total, m.busy + 800 + 20);
        assert!(parse_machine("intr 1 2 3").is_none());
        assert!(read_machine().total > 0);
    }

    #[test]
    fn reads_this_process() {
        let me = read(std::process::id()).expect("own stat");
        assert!(!me.is_zombie());
    }
}
