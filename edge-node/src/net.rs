//! Framed message I/O on QUIC streams and endpoint setup.
//!
//! Non-goals: connection management and scheduling (see `engine`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::{self, DecodeError, LEN_PREFIX, Message};
use crate::tls::{TlsError, TlsIdentity, TransportLimits};

/// Stream and framing errors.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Reading from a stream failed.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing to a stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The peer sent an invalid frame.
    #[error("protocol: {0}")]
    Decode(#[from] DecodeError),
    /// Setting up the endpoint failed.
    #[error("endpoint: {0}")]
    Endpoint(#[source] std::io::Error),
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Reads one frame. `Ok(None)` at a clean end of stream between frames.
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    buf: &mut Vec<u8>,
) -> Result<Option<Message>, NetError> {
    let mut len = [0u8; LEN_PREFIX];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(NetError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let n = protocol::frame_len(&len)?.unwrap_or(0) as usize;
    buf.clear();
    buf.resize(n, 0);
    match recv.read_exact(buf).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(NetError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    Ok(Some(protocol::decode_body(buf)?))
}

/// Writes one message as a frame.
pub async fn write_msg(send: &mut quinn::SendStream, msg: &Message) -> Result<(), NetError> {
    send.write_all(&msg.to_bytes()).await?;
    Ok(())
}

/// An idle timeout for a transfer that makes many small reads: reads record progress with
/// [`IdleClock::touch`] (an atomic store), and [`IdleClock::expired`] resolves once `limit` has passed
/// since the last one. Its timer is armed once per `limit`, not once per read.
#[derive(Debug)]
pub struct IdleClock {
    start: Instant,
    limit: Duration,
    /// Milliseconds from `start` to the last progress.
    last_ms: AtomicU64,
}

impl IdleClock {
    /// A clock whose last progress is now.
    pub fn new(limit: Duration) -> Self {
        IdleClock {
            start: Instant::now(),
            limit,
            last_ms: AtomicU64::new(0),
        }
    }

    /// Records progress now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves when `limit` has passed since the last progress.
    pub async fn expired(&self) {
        loop {
            let deadline =
                self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + self.limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A QUIC endpoint listening on `listen`, dialling with the same identity.
pub fn endpoint(
    listen: SocketAddr,
    tls: &TlsIdentity,
    limits: &TransportLimits,
) -> Result<quinn::Endpoint, NetError> {
    let mut ep = quinn::Endpoint::server(tls.quic_server(limits)?, listen).map_err(NetError::Endpoint)?;
    ep.set_default_client_config(tls.quic_client(limits)?);
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_idle_clock_expires_a_limit_after_the_last_progress() {
        let clock = IdleClock::new(Duration::from_secs(20));
        let t0 = Instant::now();
        let touches = async {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(15)).await;
                clock.touch();
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            () = clock.expired() => {}
            () = touches => unreachable!(),
        }
        // Touched at 15, 30 and 45 s: it expires 20 s after the last, not 20 s after the start.
        assert_eq!(t0.elapsed(), Duration::from_secs(65));
    }

    #[tokio::test(start_paused = true)]
    async fn an_untouched_idle_clock_expires_after_the_limit() {
        let clock = IdleClock::new(Duration::from_secs(20));
        let t0 = Instant::now();
        clock.expired().await;
        assert_eq!(t0.elapsed(), Duration::from_secs(20));
    }
}
