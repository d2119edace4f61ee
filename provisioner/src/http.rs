//! The HTTP endpoint: `/metrics` (Prometheus text exposition) and `/healthz` (liveness).
//! It answers on every replica, leader or not.

use std::net::SocketAddr;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The router, separate from the listener so tests can drive it.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Binds `addr` and returns the bound address and the serving future.
pub async fn bind(
    addr: SocketAddr,
    metrics: Metrics,
) -> Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = TcpListener::bind(addr).await.map_err(|e| Error::Io {
        path: addr.to_string(),
        source: e,
    })?;
    let local = listener.local_addr().map_err(|e| Error::Io {
        path: addr.to_string(),
        source: e,
    })?;
    Ok((local, axum::serve(listener, router(metrics)).into_future()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(metrics: &Metrics, path: &str) -> (u16, String) {
        let resp = router(metrics.clone())
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn healthz_and_metrics_answer() {
        let m = Metrics::default();
        m.reconciled("deleter", "ok");
        assert_eq!(get(&m, "/healthz").await, (200, "ok".to_string()));
        let (status, text) = get(&m, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            text.contains(
                "cairn_provisioner_reconciles_total{controller=\"deleter\",result=\"ok\"} 1"
            ),
            "{text}"
        );
        assert_eq!(get(&m, "/nope").await.0, 404);
    }
}
