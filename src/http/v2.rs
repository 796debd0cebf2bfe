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
    let labels = p.model.labels.len();
    let plan = check_infer(req, input_shape(p), labels)?;
    let tasks: Vec<_> = match plan.inputs {
        InferInputs::Images(images) => images
            .into_iter()
            .map(|b| {
                let p = std::sync::Arc::clone(p);
                tokio::spawn(async move { p.predict(b).await.map(|a| a.scores) })
            })
            .collect(),
        InferInputs::Tensors(tensors) => tensors
            .into_iter()
            .map(|t| {
                let p = std::sync::Arc::clone(p);
                tokio::spawn(async move { p.predict_tensor(t).await })
            })
            .collect(),
    };
    let rows = join_in_order(tasks).await?;
    let n = rows.len();
    let output = match plan.classification {
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
            json!({"name": p.model.spec.output.name, "datatype": "FP32", "shape": [n, labels], "data": data})
        }
    };
    let mut response = json!({"model_name": p.name(), "model_version": p.model.spec.version, "outputs": [output]});
    if let Some(id) = plan.id {
        response["id"] = Value::String(id);
    }
    Ok(Json(response))
}

/// Largest batch accepted in one infer request.
const MAX_INFER_BATCH: usize = 64;

/// A checked infer request: what to run, and how to answer.
#[derive(Debug)]
pub struct Infer {
    pub id: Option<String>,
    /// The classification extension's top-k, clamped to `1..=labels`.
    pub classification: Option<usize>,
    pub inputs: InferInputs,
}

/// The images or tensors of an infer request, one per answer row.
#[derive(Debug)]
pub enum InferInputs {
    /// Encoded image files, decoded later as on `/predict`.
    Images(Vec<bytes::Bytes>),
    /// Normalised tensors of `C * H * W` finite values each.
    Tensors(Vec<Vec<f32>>),
}

/// Parses and checks an infer request body for a model with input `shape`
/// (`[-1, C, H, W]` or NHWC) and `labels` classes. Pure: the whole trust
/// boundary of `infer` before any prediction, and a fuzz target.
pub fn parse_infer(body: &[u8], shape: [i64; 4], labels: usize) -> Result<Infer, ApiError> {
    let req: InferRequest =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid infer request: {e}")))?;
    check_infer(req, shape, labels)
}

fn check_infer(req: InferRequest, shape: [i64; 4], labels: usize) -> Result<Infer, ApiError> {
    let [input] = req.inputs.as_slice() else {
        return Err(ApiError::BadRequest("exactly one input is expected".into()));
    };
    let classification = req
        .outputs
        .iter()
        .filter_map(|o| o.parameters.as_ref()?.get("classification")?.as_u64())
        .next()
        .map(|k| usize::try_from(k).unwrap_or(usize::MAX).clamp(1, labels.max(1)));
    let inputs = match input.datatype.as_str() {
        "BYTES" => InferInputs::Images(bytes_input(input)?),
        "FP32" => InferInputs::Tensors(fp32_input(input, shape)?),
        other => return Err(ApiError::BadRequest(format!("datatype {other} is not supported: use BYTES or FP32"))),
    };
    Ok(Infer { id: req.id, classification, inputs })
}

fn bytes_input(input: &InferInput) -> Result<Vec<bytes::Bytes>, ApiError> {
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
    Ok(decoded)
}

fn fp32_input(input: &InferInput, want: [i64; 4]) -> Result<Vec<Vec<f32>>, ApiError> {
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
    if per == 0 || values.len() != per * n as usize {
        return Err(ApiError::BadRequest(format!(
            "FP32 data has {} values, shape needs {}",
            values.len(),
            per * n as usize
        )));
    }
    Ok(values.chunks_exact(per).map(<[f32]>::to_vec).collect())
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
