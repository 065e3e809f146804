//! Framed message I/O on QUIC streams and endpoint setup.
//!
//! Non-goals: connection management and scheduling (see `engine`).

use std::net::SocketAddr;

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
