//! Running the outside programs the lab drives (`ip`, `tc`, `iptables`, `ethtool`, `sysctl`, …) with
//! errors that name the full command and its stderr.
//!
//! Non-goals: shell syntax; every argument is passed as is.

use std::process::{Command, Stdio};

use super::LabError;

/// Renders a command line for messages.
pub fn render(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Runs `program args…`, returning stdout on success and a [`LabError`] naming the command otherwise.
pub fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let cmd = render(program, args);
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args…` inside network namespace `ns` (`ip netns exec NS …`).
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// A [`Command`] that runs `program` inside namespace `ns`; the caller adds arguments and spawns it.
/// `ip netns exec` replaces itself with the program, so the child's PID is the program's.
pub fn command_in(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}
