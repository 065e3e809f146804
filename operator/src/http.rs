//! The operator's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (the CRDs answered and the caches synced).
//!
//! Non-goals: no TLS, no authentication; bind it to the pod network and scrape it from inside.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::sync::RwLock;

use crate::controller::Diagnostics;

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    diagnostics: Arc<RwLock<Diagnostics>>,
}

/// The router with the three endpoints.
pub fn router(registry: Arc<Registry>, diagnostics: Arc<RwLock<Diagnostics>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(AppState {
            registry,
            diagnostics,
        })
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(&s.registry),
    )
}

async fn ready(State(s): State<AppState>) -> impl IntoResponse {
    if s.diagnostics.read().await.ready {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the CRDs and the caches",
        )
    }
}

/// Serve the router on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        (code, out)
    }

    #[tokio::test]
    async fn endpoints_answer_and_readiness_follows_the_diagnostics() {
        let mut registry = Registry::with_prefix("pollen_operator");
        let m = Metrics::default().register(&mut registry);
        m.reconciled(true);
        let diagnostics = Arc::new(RwLock::new(Diagnostics::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(Arc::new(registry), diagnostics.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { rx.await.unwrap_or(()) })
                .await
        });
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        diagnostics.write().await.ready = true;
        assert_eq!(get(addr, "/readyz").await.0, 200);
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            body.contains("pollen_operator_reconciles_total{result=\"ok\"} 1"),
            "{body}"
        );
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
