//! The optional health and metrics endpoint of a worker process
//! (`--health-addr`), for Kubernetes probes and Prometheus.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::metrics::Metrics;

pub async fn serve(
    listener: tokio::net::TcpListener,
    worker: Arc<Worker>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/health/live", get(|| async { "live" }))
        .route(
            "/health/ready",
            get(|State((w, _)): State<(Arc<Worker>, Arc<Metrics>)>| async move {
                if w.registered.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not registered in Redis")
                }
            }),
        )
        .route("/metrics", get(|State((_, m)): State<(Arc<Worker>, Arc<Metrics>)>| async move { m.render() }))
        .with_state((worker, metrics));
    let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
}
