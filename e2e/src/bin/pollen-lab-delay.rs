//! `pollen-lab-delay`: the fleet lab's user-space delay daemon. Holds every packet that iptables
//! queues to NFQUEUE `--queue` for `--delay-us` microseconds, then accepts it. Prints `ready` once
//! bound. Runs until killed. See `pollen_e2e::lab::delay`.

use std::io::Write;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Delay NFQUEUE'd packets by a fixed time (fleet lab)")]
struct Args {
    /// NFQUEUE number to bind.
    #[arg(long, default_value_t = 0)]
    queue: u16,
    /// One-way delay in microseconds.
    #[arg(long)]
    delay_us: u64,
    /// Print counters (JSON, stderr) this often, in seconds; 0: never.
    #[arg(long, default_value_t = 0)]
    stats_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let every = (args.stats_secs > 0).then(|| Duration::from_secs(args.stats_secs));
    pollen_e2e::lab::delay::run(
        args.queue,
        Duration::from_micros(args.delay_us),
        || {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "ready");
            let _ = out.flush();
        },
        every,
        |stats| {
            if let Ok(line) = serde_json::to_string(stats) {
                eprintln!("{line}");
            }
        },
    )?;
    Ok(())
}
