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
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::{Content, ObjectBuilder, OpenApi, Required, Response as DocResponse, Schema, Type};

use super::AppState;
use super::error::{ApiError, OipError};
use crate::model::Layout;
use crate::predictor::Predictor;
use infer::HEADER_LENGTH;

/// The extensions `GET /v2` announces.
pub const EXTENSIONS: [&str; 5] =
    ["classification", "binary_tensor_data", "model_repository", "statistics", "model_configuration"];

/// One route of the protocol: method, path, what it does, and its handler.
struct Route {
    method: HttpMethod,
    path: String,
    summary: &'static str,
    handler: MethodRouter<AppState>,
}

/// Every v2 route, in one table that both [`routes`] and [`document`] read,
/// so the router and the API reference cannot drift. The model routes exist
/// with and without `/versions/{version}`.
fn table() -> Vec<Route> {
    let route = |method, path: &str, summary, handler| Route { method, path: path.to_owned(), summary, handler };
    let mut all = vec![
        route(HttpMethod::Get, "/v2", "Server metadata and extensions", get(server_metadata)),
        route(HttpMethod::Get, "/v2/health/live", "Server liveness", get(super::ops::live)),
        route(HttpMethod::Get, "/v2/health/ready", "Server readiness", get(super::ops::ready)),
        route(HttpMethod::Get, "/v2/models/stats", "Statistics of every model", get(stats::all_stats)),
        route(HttpMethod::Post, "/v2/repository/index", "The model repository's index", post(repository::index_route)),
        route(
            HttpMethod::Post,
            "/v2/repository/models/{name}/load",
            "Load (or reload) a model; admin key",
            post(repository::load_route),
        ),
        route(
            HttpMethod::Post,
            "/v2/repository/models/{name}/unload",
            "Unload a model; admin key",
            post(repository::unload_route),
        ),
    ];
    for prefix in ["/v2/models/{name}", "/v2/models/{name}/versions/{version}"] {
        all.extend([
            route(HttpMethod::Get, prefix, "Model metadata", get(model_metadata)),
            route(HttpMethod::Get, &format!("{prefix}/ready"), "Model readiness", get(model_ready)),
            route(
                HttpMethod::Get,
                &format!("{prefix}/config"),
                "Model configuration (Triton's shape)",
                get(stats::config),
            ),
            route(
                HttpMethod::Get,
                &format!("{prefix}/stats"),
                "Model statistics (Triton's shape)",
                get(stats::model_stats),
            ),
            route(
                HttpMethod::Post,
                &format!("{prefix}/infer"),
                "Inference: JSON or binary tensors; BYTES images or FP32 tensors; classification",
                post(infer::infer),
            ),
        ]);
    }
    all
}

pub fn routes() -> Router<AppState> {
    table().into_iter().fold(Router::new(), |router, r| router.route(&r.path, r.handler))
}

/// Adds every v2 route to `doc`, tagged `oip`; the request and answer bodies
/// are the protocol's (its specification is their reference). Each `{name}`
/// of a path is declared as a required path parameter, and `infer` declares
/// its body and the binary extension's header where they live.
pub fn document(doc: &mut OpenApi) {
    for r in table() {
        let mut op =
            OperationBuilder::new().summary(Some(r.summary)).tag("oip").response("200", DocResponse::new("OK"));
        for name in path_parameters(&r.path) {
            let what = if name == "version" { "A version of the model" } else { "The model's name" };
            op = op.parameter(parameter(name, ParameterIn::Path, Required::True, what));
        }
        if r.path.ends_with("/infer") {
            op = op
                .parameter(parameter(
                    HEADER_LENGTH,
                    ParameterIn::Header,
                    Required::False,
                    "The JSON header's length when binary tensor data follows it",
                ))
                .request_body(Some(
                    RequestBodyBuilder::new()
                        .description(Some("A v2 inference request: JSON, or a JSON header and binary tensor data"))
                        .content("application/json", Content::new(None::<Schema>))
                        .content("application/octet-stream", Content::new(None::<Schema>))
                        .required(Some(Required::True))
                        .build(),
                ));
        }
        doc.paths.add_path_operation(&r.path, vec![r.method], op.build());
    }
}

/// The `{name}` segments of a route path, in order.
fn path_parameters(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
}

fn parameter(name: &str, at: ParameterIn, required: Required, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(at)
        .required(required)
        .description(Some(description))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

/// A model, and the version if the route names one.
#[derive(Debug, Deserialize)]
pub struct ModelPath {
    name: String,
    version: Option<String>,
}

impl ModelPath {
    /// `version: None` is whichever version is served.
    pub fn new(name: &str, version: Option<&str>) -> Self {
        ModelPath { name: name.to_owned(), version: version.map(str::to_owned) }
    }
}

/// One tensor of the model metadata, as both protocols describe it.
#[derive(Debug, serde::Serialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// The model's inputs (the FP32 tensor, and `image`: encoded files as
/// BYTES) and its output (the class probabilities).
pub fn tensors(p: &Predictor) -> (Vec<TensorMetadata>, Vec<TensorMetadata>) {
    let spec = &p.model.spec;
    let tensor =
        |name: &str, datatype, shape: &[i64]| TensorMetadata { name: name.to_owned(), datatype, shape: shape.to_vec() };
    let inputs = vec![tensor(&spec.input.name, "FP32", &input_shape(p)), tensor("image", "BYTES", &[-1])];
    let outputs = vec![tensor(&spec.output.name, "FP32", &[-1, p.model.labels.len() as i64])];
    (inputs, outputs)
}

/// The platform name clients read in the model metadata.
pub fn platform(p: &Predictor) -> &'static str {
    match p.model.runtime.engine {
        Engine::OnnxRuntime => "onnxruntime_onnx",
        Engine::OpenVino => "openvino_onnx",
    }
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
    let (inputs, outputs) = tensors(&p);
    let runtime = p.model.runtime;
    let platform = platform(&p);
    Ok(Json(json!({
        "name": spec.name,
        "versions": [spec.version],
        "platform": platform,
        "parameters": {"engine": runtime.engine.as_str(), "precision": runtime.precision.as_str()},
        "inputs": inputs,
        "outputs": outputs,
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
