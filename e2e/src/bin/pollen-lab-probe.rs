//! `pollen-lab-probe`: small traffic probes for checking the fleet lab's links from inside its
//! namespaces. `echo`/`ping` measure round-trip time and loss over UDP; `sink`/`send` measure a TCP
//! transfer rate. Every mode stops by itself (`--max-secs`). Prints one JSON line of results.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Link probes for the fleet lab")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Echo UDP datagrams back to their sender.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 60)]
        max_secs: u64,
    },
    /// Send numbered UDP datagrams to an echo server; report RTTs and loss.
    Ping {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 100)]
        count: u32,
        #[arg(long, default_value_t = 2000)]
        interval_us: u64,
    },
    /// Accept one TCP connection, read it to the end; report bytes and rate.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 60)]
        max_secs: u64,
    },
    /// Send `bytes` over TCP to a sink.
    Send {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: u64,
    },
}

fn echo(listen: SocketAddr, max: Duration) -> anyhow::Result<()> {
    let s = UdpSocket::bind(listen).context("bind")?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    println!("ready");
    std::io::stdout().flush()?;
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    while start.elapsed() < max {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    }
    Ok(())
}

fn ping(to: SocketAddr, count: u32, interval: Duration) -> anyhow::Result<()> {
    let s = UdpSocket::bind("0.0.0.0:0").context("bind")?;
    s.connect(to)?;
    let recv = s.try_clone()?;
    let start = Instant::now();
    let wait_until = interval * count + Duration::from_secs(2);
    let rx = std::thread::spawn(move || {
        let mut rtts = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut buf = [0u8; 64];
        let _ = recv.set_read_timeout(Some(Duration::from_millis(100)));
        while start.elapsed() < wait_until {
            if let Ok(16) = recv.recv(&mut buf) {
                let seq = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
                let sent = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
                if seen.insert(seq) {
                    let now = start.elapsed().as_nanos() as u64;
                    rtts.push(now.saturating_sub(sent) as f64 / 1e6);
                }
            }
        }
        rtts
    });
    for seq in 0..count as u64 {
        let due = interval * seq as u32;
        if let Some(d) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(d);
        }
        let mut pkt = [0u8; 16];
        pkt[..8].copy_from_slice(&seq.to_le_bytes());
        pkt[8..].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_le_bytes());
        let _ = s.send(&pkt);
    }
    let mut rtts = rx.join().map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    rtts.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        rtts.get(((rtts.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    println!(
        "{}",
        serde_json::json!({
            "sent": count,
            "received": rtts.len(),
            "rtt_min_ms": pick(0.0),
            "rtt_median_ms": pick(0.5),
            "rtt_p99_ms": pick(0.99),
        })
    );
    Ok(())
}

fn sink(listen: SocketAddr, max: Duration) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).context("bind")?;
    println!("ready");
    std::io::stdout().flush()?;
    l.set_nonblocking(true)?;
    let t0 = Instant::now();
    let mut conn = loop {
        match l.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && t0.elapsed() < max => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e).context("accept"),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(max))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    let mut first: Option<Instant> = None;
    loop {
        let n = conn.read(&mut buf).context("read")?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    println!(
        "{}",
        serde_json::json!({"bytes": total, "secs": secs, "bits_per_sec": total as f64 * 8.0 / secs})
    );
    Ok(())
}

fn send(to: SocketAddr, bytes: u64) -> anyhow::Result<()> {
    let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(5)).context("connect")?;
    let buf = vec![0x5au8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        c.write_all(&buf[..n]).context("write")?;
        left -= n as u64;
    }
    c.shutdown(std::net::Shutdown::Write)?;
    // Wait for the sink to close, so the sender's exit marks the end of the transfer.
    let _ = c.read(&mut [0u8; 1]);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Args::parse().mode {
        Mode::Echo { listen, max_secs } => echo(listen, Duration::from_secs(max_secs)),
        Mode::Ping {
            to,
            count,
            interval_us,
        } => ping(to, count, Duration::from_micros(interval_us)),
        Mode::Sink { listen, max_secs } => sink(listen, Duration::from_secs(max_secs)),
        Mode::Send { to, bytes } => send(to, bytes),
    }
}
