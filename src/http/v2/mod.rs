//! The KServe Open Inference Protocol v2, as its specification and the
//! common clients (Triton's `tritonclient`) expect it, with the
//! classification, binary tensor data, model configuration, statistics and
//! model repository extensions.
//!
//! Every error here is `{"error": "..."}` ([`OipError`]). A model is served
//! in one version at a time; the version-qualified routes
//! (`/v2/models/{m}/versions/{v}/...`) answer 404 for any other version.
//!
//! - [`infer`]: the inference endpoint.
//! - [`binary`]: the binary tensor data extension's body layout.
//! - [`repository`]: the repository extension (index, load, unload).
//! - [`stats`]: model configuration and statistics in Triton's shape.

pub mod binary;
pub mod infer;
pub mod repository;
pub mod stats;

use crate::engine::Engine;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, OipError};
use crate::model::Layout;
use crate::predictor::Predictor;

/// The extensions `GET /v2` announces.
pub const EXTENSIONS: [&str; 5] =
    ["classification", "binary_tensor_data", "model_repository", "statistics", "model_configuration"];

pub fn routes() -> Router<AppState> {
    let mut router = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(super::ops::live))
        .route("/v2/health/ready", get(super::ops::ready))
        .route("/v2/models/stats", get(stats::all_stats))
        .route("/v2/repository/index", post(repository::index))
        .route("/v2/repository/models/{name}/load", post(repository::load))
        .route("/v2/repository/models/{name}/unload", post(repository::unload));
    for prefix in ["/v2/models/{name}", "/v2/models/{name}/versions/{version}"] {
        router = router
            .route(prefix, get(model_metadata))
            .route(&format!("{prefix}/ready"), get(model_ready))
            .route(&format!("{prefix}/config"), get(stats::config))
            .route(&format!("{prefix}/stats"), get(stats::model_stats))
            .route(&format!("{prefix}/infer"), post(infer::infer));
    }
    router
}

/// A model, and the version if the route names one.
#[derive(Debug, Deserialize)]
pub struct ModelPath {
    name: String,
    version: Option<String>,
}

/// The version of `path.name` served now, if it is the one the path names.
pub fn served(state: &AppState, path: &ModelPath) -> Result<Arc<Predictor>, ApiError> {
    let p = state.models.get(&path.name).ok_or_else(|| ApiError::UnknownModel(path.name.clone()))?;
    match &path.version {
        Some(v) if v != p.version() => Err(ApiError::UnknownVersion(path.name.clone(), v.clone())),
        _ => Ok(p),
    }
}

pub fn input_shape(p: &Predictor) -> [i64; 4] {
    let i = &p.model.spec.input;
    match i.layout {
        Layout::Nchw => [-1, 3, i.height as i64, i.width as i64],
        Layout::Nhwc => [-1, i.height as i64, i.width as i64, 3],
    }
}

async fn server_metadata() -> Json<Value> {
    Json(json!({"name": "lens", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS}))
}

async fn model_metadata(State(state): State<AppState>, Path(path): Path<ModelPath>) -> Result<Json<Value>, OipError> {
    let p = served(&state, &path)?;
    let spec = &p.model.spec;
    let runtime = p.model.runtime;
    let platform = match runtime.engine {
        Engine::OnnxRuntime => "onnxruntime_onnx",
        Engine::OpenVino => "openvino_onnx",
    };
    Ok(Json(json!({
        "name": spec.name,
        "versions": [spec.version],
        "platform": platform,
        "parameters": {"engine": runtime.engine.as_str(), "precision": runtime.precision.as_str()},
        "inputs": [
            {"name": spec.input.name, "datatype": "FP32", "shape": input_shape(&p)},
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": spec.output.name, "datatype": "FP32", "shape": [-1, p.model.labels.len()]}],
    })))
}

/// 200 when this model (version) is served and ready; 503 while it is not
/// ready; 404 when it is not served.
async fn model_ready(State(state): State<AppState>, Path(path): Path<ModelPath>) -> Result<Response, OipError> {
    let p = served(&state, &path)?;
    let status = if p.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({"name": p.name(), "version": p.version(), "ready": p.is_ready()});
    Ok((status, Json(body)).into_response())
}
