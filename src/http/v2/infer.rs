//! `POST /v2/models/{m}[/versions/{v}]/infer`: the request as JSON or with
//! binary tensors, the predictions, and the outputs as JSON, binary or
//! classification strings.
//!
//! The input is either `BYTES`, one encoded image file per element (raw in
//! binary data, base64 strings in JSON; each goes through the same path as
//! `/predict`, cache included), or `FP32` `[N, 3, H, W]` (or NHWC, per
//! `model.toml`) already normalised. The output is the class probabilities
//! `[N, classes]`, or with the output parameter `classification: k`, `[N, k]`
//! strings `"score:index:label"`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::binary::{self, Tensors};
use super::{ModelPath, input_shape, served};
use crate::http::AppState;
use crate::http::error::{ApiError, OipError};
use crate::predictor::{PredictError, Predictor};
use crate::ranking::ranked;

/// Largest batch accepted in one infer request.
pub const MAX_INFER_BATCH: usize = 64;
/// The header that says how long the JSON part of a binary body is.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Option<Value>,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// What the input holds, checked against the model.
#[derive(Debug)]
pub enum Payload {
    Images(Vec<Bytes>),
    /// `n` tensors, back to back.
    Tensors(Vec<f32>, usize),
}

/// How one output is sent back.
#[derive(Debug)]
pub struct OutputPlan {
    pub binary: bool,
    pub class_count: Option<usize>,
}

/// What a request is checked against: the model's input shape
/// (`[-1, C, H, W]` or NHWC), its class count and its output's name.
#[derive(Debug, Clone, Copy)]
pub struct ModelFacts<'a> {
    pub shape: [i64; 4],
    pub classes: usize,
    pub output: &'a str,
}

/// A checked infer request.
#[derive(Debug)]
pub struct Checked {
    pub id: Option<String>,
    pub payload: Payload,
    pub outputs: Vec<OutputPlan>,
}

/// Reads a body (JSON, with or without binary tensors after a JSON header of
/// `header_length` bytes) and checks it against `model`. Pure: the whole
/// trust boundary of `infer` before any prediction, and a fuzz target.
pub fn parse_request(model: &ModelFacts, header_length: Option<&[u8]>, body: Bytes) -> Result<Checked, ApiError> {
    let (json, binary) = binary::split(body, header_length).map_err(|e| bad(e.0))?;
    let req: InferRequest =
        serde_json::from_slice(&json).map_err(|e| bad(format!("invalid infer request JSON: {e}")))?;
    let [input] = req.inputs.as_slice() else {
        return Err(bad(format!("exactly one input is expected, got {}", req.inputs.len())));
    };
    let mut tensors = Tensors::new(binary);
    let payload = read_input(model.shape, input, &mut tensors)?;
    tensors.finish().map_err(|e| bad(e.0))?;
    let outputs = plan_outputs(model, &req)?;
    Ok(Checked { id: req.id, payload, outputs })
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

pub async fn infer(
    State(state): State<AppState>,
    Path(path): Path<ModelPath>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, OipError> {
    let p = served(&state, &path)?;
    let started = Instant::now();
    let parsed = parse(&p, &headers, body.map_err(|e| read_error(e, state.limits.body_bytes)));
    let Checked { id, payload, outputs: plans } = parsed.inspect_err(|_| p.stats().finish(false, started.elapsed()))?;
    let rows = match payload {
        Payload::Images(images) => predict_images(&p, images).await?,
        Payload::Tensors(values, n) => predict_tensors(&p, values, n).await?,
    };
    let began_output = Instant::now();
    let response = respond(&p, id, &rows, &plans);
    let per_row = began_output.elapsed() / rows.len().max(1) as u32;
    for _ in &rows {
        p.stats().compute_output.add(per_row);
    }
    Ok(response)
}

fn read_error(e: axum::extract::rejection::BytesRejection, limit: usize) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(limit)
    } else {
        bad(format!("cannot read the request body: {}", e.body_text()))
    }
}

/// Reads the body (JSON, with or without binary tensors; any content type)
/// and checks it against the model.
fn parse(p: &Predictor, headers: &HeaderMap, body: Result<Bytes, ApiError>) -> Result<Checked, ApiError> {
    let facts = ModelFacts { shape: input_shape(p), classes: p.model.labels.len(), output: &p.model.spec.output.name };
    parse_request(&facts, headers.get(HEADER_LENGTH).map(HeaderValue::as_bytes), body?)
}

/// The input's bytes: its share of the binary part, or `None` for JSON data.
fn raw_data(input: &InferInput, tensors: &mut Tensors) -> Result<Option<Bytes>, ApiError> {
    match input.parameters.get("binary_data_size") {
        None => Ok(None),
        Some(size) => {
            let size = size.as_u64().ok_or_else(|| bad("binary_data_size must be a byte count"))?;
            tensors.take(&input.name, size).map(Some).map_err(|e| bad(e.0))
        }
    }
}

/// The number of elements `shape` describes, if every dimension is sane.
fn elements(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
}

fn read_input(want: [i64; 4], input: &InferInput, tensors: &mut Tensors) -> Result<Payload, ApiError> {
    let raw = raw_data(input, tensors)?;
    if raw.is_none() && input.data.is_none() {
        return Err(bad(format!("input {:?} has neither data nor binary_data_size", input.name)));
    }
    let count = elements(&input.shape).ok_or_else(|| bad(format!("invalid shape {:?}", input.shape)))?;
    match input.datatype.as_str() {
        "BYTES" => {
            let n = *input.shape.first().unwrap_or(&0);
            if !(input.shape.len() == 1 || input.shape[1..] == [1]) || n < 1 || n as usize > MAX_INFER_BATCH {
                return Err(bad(format!(
                    "BYTES input shape must be [N] or [N, 1] with 1 <= N <= {MAX_INFER_BATCH}, got {:?}",
                    input.shape
                )));
            }
            let images = match raw {
                Some(raw) => binary::bytes_elements(raw, MAX_INFER_BATCH).map_err(|e| bad(e.0))?,
                None => base64_elements(input.data.as_ref().unwrap_or(&Value::Null))?,
            };
            if images.len() != count {
                return Err(bad(format!("BYTES input has {} elements, shape needs {count}", images.len())));
            }
            Ok(Payload::Images(images))
        }
        "FP32" => {
            let n = *input.shape.first().unwrap_or(&0);
            if input.shape.len() != 4 || input.shape[1..] != want[1..] || n < 1 || n as usize > MAX_INFER_BATCH {
                return Err(bad(format!(
                    "FP32 input shape must be [N, {}, {}, {}] with 1 <= N <= {MAX_INFER_BATCH}, got {:?}",
                    want[1], want[2], want[3], input.shape
                )));
            }
            let values = match raw {
                Some(raw) => binary::fp32_values(&raw).map_err(|e| bad(e.0))?,
                None => json_floats(input.data.as_ref().unwrap_or(&Value::Null), count)?,
            };
            if values.len() != count {
                return Err(bad(format!("FP32 data has {} values, shape needs {count}", values.len())));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(bad("FP32 data must hold only finite numbers"));
            }
            Ok(Payload::Tensors(values, n as usize))
        }
        other => Err(bad(format!("datatype {other} is not supported: use BYTES or FP32"))),
    }
}

/// Leaves of a (possibly nested) JSON array, at most `max`.
fn leaves(v: &Value, max: usize, out: &mut Vec<Value>) -> Result<(), ApiError> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| leaves(i, max, out)),
        leaf if out.len() < max => {
            out.push(leaf.clone());
            Ok(())
        }
        _ => Err(bad(format!("data holds more than the {max} elements its shape allows"))),
    }
}

fn base64_elements(data: &Value) -> Result<Vec<Bytes>, ApiError> {
    let mut items = Vec::new();
    leaves(data, MAX_INFER_BATCH, &mut items)?;
    items
        .iter()
        .map(|item| {
            let text = item.as_str().ok_or_else(|| bad("JSON BYTES elements must be base64 strings"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| bad(format!("invalid base64: {e}")))?;
            Ok(Bytes::from(bytes))
        })
        .collect()
}

fn json_floats(data: &Value, count: usize) -> Result<Vec<f32>, ApiError> {
    let mut items = Vec::new();
    leaves(data, count, &mut items)?;
    items
        .iter()
        .map(|v| v.as_f64().map(|x| x as f32))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("FP32 data must hold only numbers"))
}

fn plan_outputs(model: &ModelFacts, req: &InferRequest) -> Result<Vec<OutputPlan>, ApiError> {
    let default_binary = req.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    if req.outputs.is_empty() {
        return Ok(vec![OutputPlan { binary: default_binary, class_count: None }]);
    }
    let classes = model.classes;
    req.outputs
        .iter()
        .map(|o| {
            if o.name != model.output {
                return Err(bad(format!("unknown output {:?}: the model has {:?}", o.name, model.output)));
            }
            let binary = o.parameters.get("binary_data").and_then(Value::as_bool).unwrap_or(default_binary);
            let class_count = match o.parameters.get("classification") {
                None => None,
                Some(Value::Number(k)) if k.as_u64().is_some_and(|k| k > 0) => {
                    Some((k.as_u64().unwrap_or(1) as usize).min(classes))
                }
                Some(other) => return Err(bad(format!("classification must be a positive count, got {other}"))),
            };
            Ok(OutputPlan { binary, class_count })
        })
        .collect()
}

type Scores = Arc<[f32]>;

async fn predict_images(p: &Arc<Predictor>, images: Vec<Bytes>) -> Result<Vec<Scores>, ApiError> {
    let tasks = images.into_iter().map(|b| {
        let p = Arc::clone(p);
        tokio::spawn(async move { p.predict(b).await.map(|a| a.scores) })
    });
    join_in_order(tasks.collect()).await
}

async fn predict_tensors(p: &Arc<Predictor>, values: Vec<f32>, n: usize) -> Result<Vec<Scores>, ApiError> {
    let per = values.len() / n.max(1);
    let tasks = values.chunks_exact(per.max(1)).map(|c| {
        let (p, c) = (Arc::clone(p), c.to_vec());
        tokio::spawn(async move { p.predict_tensor(c).await })
    });
    join_in_order(tasks.collect()).await
}

/// Awaits spawned predictions in request order; the first failure wins.
async fn join_in_order(
    tasks: Vec<tokio::task::JoinHandle<Result<Scores, PredictError>>>,
) -> Result<Vec<Scores>, ApiError> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.map_err(|e| ApiError::Internal(e.to_string()))??);
    }
    Ok(out)
}

/// The response: JSON, or JSON then binary tensors when any output asks.
fn respond(p: &Predictor, id: Option<String>, rows: &[Scores], plans: &[OutputPlan]) -> Response {
    let n = rows.len();
    let mut tail = Vec::new();
    let outputs: Vec<Value> = plans
        .iter()
        .map(|plan| {
            let (datatype, shape, raw, data) = match plan.class_count {
                Some(k) => {
                    let strings: Vec<String> = rows
                        .iter()
                        .flat_map(|s| ranked(s, &p.model.labels, k))
                        .map(|c| format!("{}:{}:{}", c.score, c.index, c.label))
                        .collect();
                    ("BYTES", [n, k], binary::encode_bytes(&strings), json!(strings))
                }
                None => {
                    let values: Vec<f32> = rows.iter().flat_map(|s| s.iter().copied()).collect();
                    let raw = if plan.binary { crate::job::f32_to_le_bytes(&values) } else { Vec::new() };
                    ("FP32", [n, p.model.labels.len()], raw, json!(values))
                }
            };
            let mut out = json!({"name": p.model.spec.output.name, "datatype": datatype, "shape": shape});
            if plan.binary {
                out["parameters"] = json!({"binary_data_size": raw.len()});
                tail.extend(raw);
            } else {
                out["data"] = data;
            }
            out
        })
        .collect();
    let mut body = json!({"model_name": p.name(), "model_version": p.version(), "outputs": outputs});
    if let Some(id) = id {
        body["id"] = Value::String(id);
    }
    if plans.iter().all(|plan| !plan.binary) {
        return axum::Json(body).into_response();
    }
    let mut bytes = body.to_string().into_bytes();
    let json_len = bytes.len();
    bytes.extend(tail);
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
        (header::HeaderName::from_static(HEADER_LENGTH), HeaderValue::from(json_len)),
    ];
    (headers, bytes).into_response()
}
