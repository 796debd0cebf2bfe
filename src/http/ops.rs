//! Operator endpoints: health, metrics, status, labels, OpenAPI, and the
//! static files (page assets, uploaded images).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::render;
use crate::feedback::ImageStore;

/// `GET /health/live`: the process is up.
#[utoipa::path(get, path = "/health/live", tag = "operate", responses((status = 200, description = "The process is up.")))]
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "live"}))
}

/// `GET /health/ready`: 200 once every model is loaded and warmed up (and,
/// on Redis, served by a live worker); 503 otherwise.
#[utoipa::path(get, path = "/health/ready", tag = "operate", responses((status = 200, description = "Every model is loaded and warmed up (on Redis: Redis reachable and a live worker)."), (status = 503, description = "Not ready.")))]
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.models.all_ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready"}))).into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operate", responses((status = 200, description = "Prometheus text exposition.", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body).into_response()
}

/// `GET /api/status`: what the page's status strip shows.
#[utoipa::path(get, path = "/api/status", tag = "operate", responses((status = 200, description = "Default model, readiness, queue depth, workers, served models.")))]
pub async fn status(State(state): State<AppState>) -> Json<serde_json::Value> {
    let p = state.models.default_model();
    let runtime = p.as_ref().map(|p| p.model.runtime);
    Json(json!({
        "model": state.models.default_name(),
        "version": p.as_ref().map(|p| p.version()),
        "engine": runtime.map(|r| r.engine.as_str()),
        "precision": runtime.map(|r| r.precision.as_str()),
        "ready": p.as_ref().is_some_and(|p| p.is_ready()),
        "queue_depth": p.as_ref().map_or(0, |p| p.queue_depth()),
        "workers": p.as_ref().map_or(0, |p| p.capacity().workers),
        "models": state.models.names(),
    }))
}

/// `GET /api/labels`: the default model's class names, for autocomplete.
#[utoipa::path(get, path = "/api/labels", tag = "classify", responses((status = 200, description = "The default model's class names, in output order.", body = Vec<String>)))]
pub async fn labels(State(state): State<AppState>) -> Result<Response, super::error::ApiError> {
    let p = state.models.serving_default()?;
    Ok(([(header::CACHE_CONTROL, "public, max-age=3600")], Json(p.model.labels.as_ref().clone())).into_response())
}

/// `GET /static/{name}`: embedded page assets.
#[utoipa::path(get, path = "/static/{name}", tag = "page", params(("name" = String, Path, description = "Asset file name")), responses((status = 200, description = "An embedded page asset."), (status = 404, description = "No such asset.")))]
pub async fn asset(Path(name): Path<String>) -> Response {
    match render::asset(&name) {
        Some((content_type, bytes)) => {
            ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=300")], bytes)
                .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /uploads/{sha256}.{ext}`: an image uploaded through the page. The
/// store accepts only content-addressed names, so no path can escape it.
#[utoipa::path(get, path = "/uploads/{name}", tag = "page", operation_id = "uploaded_image", params(("name" = String, Path, description = "`<sha256>.<ext>`")), responses((status = 200, description = "An image uploaded through the page."), (status = 404, description = "Not stored (or not a content-addressed name).")))]
pub async fn upload(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    stored_image(&state.uploads, &name, "private, max-age=3600").await
}

/// A content-addressed image from `store`, with its media type; 404 unless
/// `name` is a stored `<sha256>.<ext>`. Shared by the page's uploads and the
/// review page's reported images.
pub(super) async fn stored_image(store: &ImageStore, name: &str, cache_control: &'static str) -> Response {
    let Some(path) = store.path_of(name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let content_type = match name.rsplit('.').next() {
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("bmp") => "image/bmp",
        _ => "image/jpeg",
    };
    match tokio::fs::read(path).await {
        Ok(bytes) => {
            ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, cache_control)], bytes).into_response()
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}
