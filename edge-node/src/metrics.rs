//! Prometheus metrics (prometheus-client, base units, `_total` counters) and the HTTP server for
//! `/metrics`, `/healthz` and `/readyz`.
//!
//! Non-goals: push gateways or per-chunk histograms.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label: where bytes came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `peer` or `origin`.
    pub source: &'static str,
}

/// Label: a peer's node name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// Node name from its certificate.
    pub peer: String,
}

/// Label: an index id (hex).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IndexLabel {
    /// Index id, hex.
    pub index: String,
}

/// Label: an error code name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// Error code name, e.g. `NOT_AUTHORISED`.
    pub code: &'static str,
}

/// Label: why a peer was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `not_authorised`, `revoked`, `expired`, `not_yet_valid`, `unknown_ca`, `bad_certificate`,
    /// `bad_revocation_list` or `banned`.
    pub reason: &'static str,
}

/// Label: why a chunk store was removed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictionLabel {
    /// `unassigned` (no assignment names its index) or `budget` (the data dir held more than
    /// `--store-budget`).
    pub reason: &'static str,
}

/// The edge node's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Bytes of verified-or-not chunk data received, by source.
    pub received_bytes: Family<SourceLabel, Counter>,
    /// Bytes of chunk data sent to peers.
    pub sent_bytes: Counter,
    /// Bytes of chunk data received from peers of other sites (what crossed a site's WAN link in).
    pub cross_site_bytes: Counter,
    /// Bytes of chunk data received and thrown away: requests cancelled, cut off or failed mid-chunk.
    pub discarded_bytes: Counter,
    /// Chunks that passed verification.
    pub chunks_verified: Counter,
    /// Chunks that failed verification, by peer (`origin` for the origin).
    pub verification_failures: Family<PeerLabel, Counter>,
    /// Peers currently connected.
    pub connected_peers: Gauge,
    /// Fraction of chunks present, by index.
    pub progress: Family<IndexLabel, Gauge<f64, AtomicU64>>,
    /// Seconds from start to all chunks present, by index.
    pub time_to_complete: Family<IndexLabel, Gauge<f64, AtomicU64>>,
    /// Peers banned, by peer.
    pub bans: Family<PeerLabel, Counter>,
    /// Requests refused, by error code.
    pub refused_requests: Family<CodeLabel, Counter>,
    /// Range requests sent to the origin.
    pub origin_requests: Counter,
    /// Times a peer's control queue overflowed and this node's whole state was sent to it again.
    pub control_resyncs: Counter,
    /// Connections refused during the handshake or by policy.
    pub refused_connections: Counter,
    /// Peers refused, by reason: handshakes refused by certificate checks, open connections closed on
    /// revocation, banned peers, and chunk requests from peers not assigned to the index.
    pub peer_refusals: Family<ReasonLabel, Counter>,
    /// Number of the fleet revocation list in force (0: none).
    pub revocation_list_number: Gauge,
    /// When this node's current certificate expires, Unix seconds.
    pub certificate_expiry: Gauge,
    /// Chunk stores the agent removed, by reason.
    pub store_evictions: Family<EvictionLabel, Counter>,
    /// Bytes on disk in the agent's data dir after its last sweep of the chunk stores.
    pub data_dir_bytes: Gauge,
    ready: AtomicBool,
}

impl Metrics {
    /// A registry with every metric under the `pollen_edge` prefix.
    pub fn register(self: &Arc<Self>) -> Registry {
        let mut r = Registry::with_prefix("pollen_edge");
        r.register(
            "received_bytes",
            "Chunk bytes received, by source",
            self.received_bytes.clone(),
        );
        r.register("sent_bytes", "Chunk bytes sent to peers", self.sent_bytes.clone());
        r.register(
            "cross_site_bytes",
            "Chunk bytes received from peers of other sites",
            self.cross_site_bytes.clone(),
        );
        r.register(
            "discarded_bytes",
            "Chunk bytes received and thrown away (cancelled, cut off or failed mid-chunk)",
            self.discarded_bytes.clone(),
        );
        r.register(
            "control_resyncs",
            "Times a peer's control queue overflowed and this node's whole state was sent again",
            self.control_resyncs.clone(),
        );
        r.register(
            "chunks_verified",
            "Chunks that passed verification",
            self.chunks_verified.clone(),
        );
        r.register(
            "verification_failures",
            "Chunks that failed verification, by peer",
            self.verification_failures.clone(),
        );
        r.register(
            "connected_peers",
            "Peers currently connected",
            self.connected_peers.clone(),
        );
        r.register(
            "index_progress_ratio",
            "Fraction of chunks present, by index",
            self.progress.clone(),
        );
        r.register(
            "time_to_complete_seconds",
            "Seconds from start until all chunks were present",
            self.time_to_complete.clone(),
        );
        r.register("bans", "Peers banned for sending bad chunks", self.bans.clone());
        r.register(
            "refused_requests",
            "Chunk requests refused, by code",
            self.refused_requests.clone(),
        );
        r.register(
            "origin_requests",
            "Range requests sent to the origin",
            self.origin_requests.clone(),
        );
        r.register(
            "refused_connections",
            "Connections refused (handshake, ban, duplicate or limit)",
            self.refused_connections.clone(),
        );
        r.register(
            "peer_refusals",
            "Peers refused, by reason (certificate checks, revocation, bans, not authorised)",
            self.peer_refusals.clone(),
        );
        r.register(
            "revocation_list_number",
            "Number of the fleet revocation list in force (0: none)",
            self.revocation_list_number.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When this node's current certificate expires, Unix seconds",
            self.certificate_expiry.clone(),
        );
        r.register(
            "store_evictions",
            "Chunk stores the agent removed, by reason (unassigned, budget)",
            self.store_evictions.clone(),
        );
        r.register(
            "data_dir_bytes",
            "Bytes on disk in the agent's data dir after its last sweep of the chunk stores",
            self.data_dir_bytes.clone(),
        );
        r
    }

    /// Marks the node ready (index verified, endpoint up) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the node is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Peers refused for `reason`.
    pub fn refusals(&self, reason: &'static str) -> u64 {
        self.peer_refusals.get_or_create(&ReasonLabel { reason }).get()
    }

    /// Bytes received from `source`.
    pub fn received(&self, source: &'static str) -> u64 {
        self.received_bytes.get_or_create(&SourceLabel { source }).get()
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown` fires. Returns the bound address
/// through `bound` as soon as it listens.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let registry = Arc::new(metrics.register());
    let m2 = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (
                            StatusCode::OK,
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        ),
                        Err(_) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [(header::CONTENT_TYPE, "text/plain")],
                            String::from("encode failed"),
                        ),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let m = m2.clone();
                async move {
                    if m.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_identity_and_disk_metrics_have_their_documented_names() {
        let m = Arc::new(Metrics::default());
        m.peer_refusals
            .get_or_create(&ReasonLabel { reason: "revoked" })
            .inc();
        m.revocation_list_number.set(7);
        m.certificate_expiry.set(1_800_000_000);
        m.store_evictions
            .get_or_create(&EvictionLabel { reason: "budget" })
            .inc();
        m.data_dir_bytes.set(4096);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.register()).unwrap();
        for line in [
            "pollen_edge_peer_refusals_total{reason=\"revoked\"} 1",
            "pollen_edge_revocation_list_number 7",
            "pollen_edge_certificate_expiry_timestamp_seconds 1800000000",
            "pollen_edge_store_evictions_total{reason=\"budget\"} 1",
            "pollen_edge_data_dir_bytes 4096",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing in:\n{text}");
        }
        assert_eq!(m.refusals("revoked"), 1);
        assert_eq!(m.refusals("expired"), 0);
    }
}
