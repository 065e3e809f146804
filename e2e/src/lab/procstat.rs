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
    fn reads_this_process() {
        let me = read(std::process::id()).expect("own stat");
        assert!(!me.is_zombie());
    }
}
