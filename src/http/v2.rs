//! The KServe Open Inference Protocol v2, with the classification extension.
//!
//! `infer` takes either a `BYTES` input whose elements are base64-encoded
//! image files (each goes through the same path as `/predict`, cache
//! included), or an `FP32` tensor `[N, 3, H, W]` (or NHWC, per `model.toml`)
//! that is already normalised. Outputs are class probabilities `[N, classes]`,
//! or with `parameters.classification: k`, `[N, k]` strings `"score:index:label"`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::engine::Engine;
use crate::model::Layout;
use crate::predictor::Predictor;
use crate::ranking::ranked;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(super::ops::live))
        .route("/v2/health/ready", get(super::ops::ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
}

async fn server_metadata() -> Json<Value> {
    Json(json!({"name": "lens", "version": env!("CARGO_PKG_VERSION"), "extensions": ["classification"]}))
}

fn model<'a>(state: &'a AppState, name: &str) -> Result<&'a std::sync::Arc<Predictor>, ApiError> {
    state.models.get(name).ok_or_else(|| ApiError::UnknownModel(name.to_owned()))
}

fn input_shape(p: &Predictor) -> [i64; 4] {
    let i = &p.model.spec.input;
    match i.layout {
        Layout::Nchw => [-1, 3, i.height as i64, i.width as i64],
        Layout::Nhwc => [-1, i.height as i64, i.width as i64, 3],
    }
}

async fn model_metadata(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let p = model(&state, &name)?;
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
            {"name": spec.input.name, "datatype": "FP32", "shape": input_shape(p)},
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": spec.output.name, "datatype": "FP32", "shape": [-1, p.model.labels.len()]}],
    })))
}

async fn model_ready(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let p = model(&state, &name)?;
    let status = if p.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((status, Json(json!({"name": name, "ready": p.is_ready()}))).into_response())
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Value,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    #[serde(default)]
    parameters: Option<Value>,
}

async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<InferRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::BadRequest(format!("invalid infer request: {}", e.body_text())))?;
    let p = model(&state, &name)?;
    let [input] = req.inputs.as_slice() else {
        return Err(ApiError::BadRequest("exactly one input is expected".into()));
    };
    let classification = req
        .outputs
        .iter()
        .filter_map(|o| o.parameters.as_ref()?.get("classification")?.as_u64())
        .next()
        .map(|k| (k as usize).clamp(1, p.model.labels.len()));
    let rows = match input.datatype.as_str() {
        "BYTES" => infer_bytes(p, input).await?,
        "FP32" => infer_fp32(p, input).await?,
        other => return Err(ApiError::BadRequest(format!("datatype {other} is not supported: use BYTES or FP32"))),
    };
    let n = rows.len();
    let output = match classification {
        Some(k) => {
            let data: Vec<String> = rows
                .iter()
                .flat_map(|s| ranked(s, &p.model.labels, k))
                .map(|c| format!("{}:{}:{}", c.score, c.index, c.label))
                .collect();
            json!({"name": p.model.spec.output.name, "datatype": "BYTES", "shape": [n, k], "data": data,
                   "parameters": {"classification": k}})
        }
        None => {
            let data: Vec<f32> = rows.iter().flat_map(|s| s.iter().copied()).collect();
            json!({"name": p.model.spec.output.name, "datatype": "FP32", "shape": [n, p.model.labels.len()], "data": data})
        }
    };
    let mut response = json!({"model_name": p.name(), "model_version": p.model.spec.version, "outputs": [output]});
    if let Some(id) = req.id {
        response["id"] = Value::String(id);
    }
    Ok(Json(response))
}

/// Largest batch accepted in one infer request.
const MAX_INFER_BATCH: usize = 64;

async fn infer_bytes(
    p: &std::sync::Arc<Predictor>,
    input: &InferInput,
) -> Result<Vec<std::sync::Arc<[f32]>>, ApiError> {
    let items = input.data.as_array().ok_or_else(|| {
        ApiError::BadRequest(format!("input {:?}: data must be an array of base64 strings", input.name))
    })?;
    if items.is_empty() || items.len() > MAX_INFER_BATCH {
        return Err(ApiError::BadRequest(format!("1 to {MAX_INFER_BATCH} images per request")));
    }
    let mut decoded = Vec::with_capacity(items.len());
    for item in items {
        let text = item.as_str().ok_or_else(|| ApiError::BadRequest("BYTES elements must be base64 strings".into()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| ApiError::BadRequest(format!("invalid base64: {e}")))?;
        decoded.push(bytes::Bytes::from(bytes));
    }
    let tasks: Vec<_> = decoded
        .into_iter()
        .map(|b| {
            let p = std::sync::Arc::clone(p);
            tokio::spawn(async move { p.predict(b).await.map(|a| a.scores) })
        })
        .collect();
    join_in_order(tasks).await
}

async fn infer_fp32(p: &std::sync::Arc<Predictor>, input: &InferInput) -> Result<Vec<std::sync::Arc<[f32]>>, ApiError> {
    let want = input_shape(p);
    let n = *input.shape.first().unwrap_or(&0);
    if input.shape.len() != 4 || input.shape[1..] != want[1..] || n < 1 || n as usize > MAX_INFER_BATCH {
        return Err(ApiError::BadRequest(format!(
            "FP32 input shape must be [N, {}, {}, {}] with 1 <= N <= {MAX_INFER_BATCH}, got {:?}",
            want[1], want[2], want[3], input.shape
        )));
    }
    let values: Vec<f32> = input
        .data
        .as_array()
        .ok_or_else(|| ApiError::BadRequest("FP32 data must be a flat array of numbers".into()))?
        .iter()
        .map(|v| v.as_f64().map(|x| x as f32).filter(|x| x.is_finite()))
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::BadRequest("FP32 data must hold only finite numbers".into()))?;
    let per = (want[1] * want[2] * want[3]) as usize;
    if values.len() != per * n as usize {
        return Err(ApiError::BadRequest(format!(
            "FP32 data has {} values, shape needs {}",
            values.len(),
            per * n as usize
        )));
    }
    let tasks: Vec<_> = values
        .chunks_exact(per)
        .map(|c| {
            let (p, c) = (std::sync::Arc::clone(p), c.to_vec());
            tokio::spawn(async move { p.predict_tensor(c).await })
        })
        .collect();
    join_in_order(tasks).await
}

type Scores = std::sync::Arc<[f32]>;

/// Awaits spawned predictions in request order; the first failure wins.
async fn join_in_order(
    tasks: Vec<tokio::task::JoinHandle<Result<Scores, crate::predictor::PredictError>>>,
) -> Result<Vec<Scores>, ApiError> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.map_err(|e| ApiError::Internal(e.to_string()))??);
    }
    Ok(out)
}
