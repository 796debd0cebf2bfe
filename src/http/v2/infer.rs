//! `POST /v2/models/{m}[/versions/{v}]/infer`: the request as JSON or with
//! binary tensors, the predictions, and the outputs as JSON, binary or
//! classification strings.
//!
//! The protocol-neutral half (an [`Input`] checked into a [`Payload`],
//! [`plan_outputs`], [`predict`], [`Rendered`] outputs) is shared with the
//! gRPC front ([`crate::grpc`]): both protocols run one inference path.
//!
//! The input is either `BYTES`, one encoded image file per element (raw in
//! binary data, base64 strings in JSON; each goes through the same path as
//! `/predict`, cache included), or `FP32` `[N, 3, H, W]` (or NHWC, per
//! `model.toml`) already normalised. The output is the class probabilities
//! `[N, classes]`, or with the output parameter `classification: k`, `[N, k]`
//! strings `"score:index:label"`.

use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument as _;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::binary::{self, Tensors};
use super::{ModelPath, input_shape, served};
use crate::http::AppState;
use crate::http::error::{ApiError, OipError};
use crate::predictor::{PredictError, Predictor};
use crate::ranking::ranked;
use tokio::task::JoinSet;

/// Largest batch accepted in one infer request.
pub const MAX_INFER_BATCH: usize = 64;
/// Longest request `id`, which the answer echoes.
pub const MAX_ID_BYTES: usize = 256;
/// The header that says how long the JSON part of a binary body is.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

#[derive(Debug, Deserialize)]
struct InferRequest {
    id: Option<String>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
    #[serde(default)]
    parameters: RequestParameters,
}

#[derive(Debug, Deserialize)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Option<Data>,
    #[serde(default)]
    parameters: InputParameters,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: OutputParameters,
}

/// One input tensor, as either protocol carries it.
#[derive(Debug)]
pub struct Input {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    /// The tensor's raw bytes (binary data over HTTP, `raw_input_contents`
    /// over gRPC), if it came that way.
    pub raw: Option<Bytes>,
    /// The typed elements, if it came that way (JSON `data`, gRPC `contents`).
    pub data: Option<Data>,
}

/// One requested output, as either protocol asks for it.
#[derive(Debug, Default)]
pub struct OutputRequest {
    pub name: String,
    pub binary: Option<bool>,
    pub classification: Option<u64>,
}

// The parameters Lens reads; any other parameter is skipped while parsing
// (serde's `IgnoredAny`), never built into a value.

#[derive(Debug, Default, Deserialize)]
struct RequestParameters {
    binary_data_output: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct InputParameters {
    binary_data_size: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct OutputParameters {
    binary_data: Option<bool>,
    classification: Option<u64>,
}

/// An input's typed elements. From JSON `data` the leaves are flattened in
/// order while it is parsed: numbers straight into `f32`s (4 bytes for at
/// least 2 of JSON), strings (base64 images) at most [`MAX_INFER_BATCH`] of
/// them; no JSON value tree is built, so `data` costs a small multiple of
/// its own bytes. From gRPC, `fp32_contents` are the numbers and
/// `bytes_contents` the blobs (raw image files).
#[derive(Debug, Default)]
pub enum Data {
    #[default]
    Empty,
    Numbers(Vec<f32>),
    Strings(Vec<String>),
    Blobs(Vec<Bytes>),
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut data = Data::Empty;
        serde::de::DeserializeSeed::deserialize(Leaves(&mut data), d)?;
        Ok(data)
    }
}

/// Adds every leaf of one JSON value to the `Data` it holds.
struct Leaves<'a>(&'a mut Data);

impl Leaves<'_> {
    fn number<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        match self.0 {
            Data::Empty => *self.0 = Data::Numbers(vec![v as f32]),
            Data::Numbers(values) => values.push(v as f32),
            Data::Strings(_) | Data::Blobs(_) => return Err(E::custom("data mixes numbers and strings")),
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Leaves<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Leaves<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of numbers or of base64 strings")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Leaves(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.number(v)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.number(v as f64)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.number(v as f64)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        match self.0 {
            Data::Empty => *self.0 = Data::Strings(vec![v.to_owned()]),
            Data::Strings(items) if items.len() < MAX_INFER_BATCH => items.push(v.to_owned()),
            Data::Strings(_) => return Err(E::custom(format!("data holds more than {MAX_INFER_BATCH} strings"))),
            Data::Numbers(_) | Data::Blobs(_) => return Err(E::custom("data mixes numbers and strings")),
        }
        Ok(())
    }
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
    let mut req: InferRequest =
        serde_json::from_slice(&json).map_err(|e| bad(format!("invalid infer request JSON: {e}")))?;
    drop(json);
    let [input] = req.inputs.as_mut_slice() else {
        return Err(one_input(req.inputs.len()));
    };
    check_id(req.id.as_deref())?;
    let mut tensors = Tensors::new(binary);
    let raw = raw_data(input, &mut tensors)?;
    let input = Input {
        name: std::mem::take(&mut input.name),
        shape: std::mem::take(&mut input.shape),
        datatype: std::mem::take(&mut input.datatype),
        raw,
        data: input.data.take(),
    };
    let payload = read_input(model.shape, input)?;
    tensors.finish().map_err(|e| bad(e.0))?;
    let requested: Vec<OutputRequest> = req
        .outputs
        .iter()
        .map(|o| OutputRequest {
            name: o.name.clone(),
            binary: o.parameters.binary_data,
            classification: o.parameters.classification,
        })
        .collect();
    let default_binary = req.parameters.binary_data_output.unwrap_or(false);
    let outputs = plan_outputs(model, default_binary, &requested)?;
    Ok(Checked { id: req.id, payload, outputs })
}

/// The error for a request with `n` inputs: the models served take one.
pub fn one_input(n: usize) -> ApiError {
    bad(format!("exactly one input is expected, got {n}"))
}

/// A request id is echoed back, so it is bounded.
pub fn check_id(id: Option<&str>) -> Result<(), ApiError> {
    match id {
        Some(id) if id.len() > MAX_ID_BYTES => Err(bad(format!("the request id is longer than {MAX_ID_BYTES} bytes"))),
        _ => Ok(()),
    }
}

pub fn bad(message: impl Into<String>) -> ApiError {
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
    let parsed = parse(&p, &headers, body.map_err(|e| read_error(e, state.limits.body_bytes))).await;
    let Checked { id, payload, outputs: plans } = parsed.inspect_err(|_| p.stats().finish(false, started.elapsed()))?;
    let rows = predict(&p, payload).await?;
    let began_output = Instant::now();
    let response = tracing::debug_span!("reply").in_scope(|| respond(&Answering::of(&p), id, &rows, &plans));
    record_output(&p, began_output, rows.len());
    Ok(response)
}

/// Counts the time spent answering `rows` rows in the statistics extension.
pub fn record_output(p: &Predictor, began: Instant, rows: usize) {
    let per_row = began.elapsed() / rows.max(1) as u32;
    for _ in 0..rows {
        p.stats().compute_output.add(per_row);
    }
}

/// Predicts every element of a checked payload, in order.
pub async fn predict(p: &Arc<Predictor>, payload: Payload) -> Result<Vec<Scores>, ApiError> {
    match payload {
        Payload::Images(images) => predict_images(p, images).await,
        Payload::Tensors(values, n) => predict_tensors(p, values, n).await,
    }
}

fn read_error(e: axum::extract::rejection::BytesRejection, limit: usize) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(limit)
    } else {
        bad(format!("cannot read the request body: {}", e.body_text()))
    }
}

/// Reads the body (JSON, with or without binary tensors; any content type)
/// and checks it against the model, on the bounded CPU pool: parsing 10 MB
/// of JSON takes tens of milliseconds, which must not stall the runtime
/// threads that every other connection needs.
async fn parse(p: &Predictor, headers: &HeaderMap, body: Result<Bytes, ApiError>) -> Result<Checked, ApiError> {
    let (shape, classes, output) = (input_shape(p), p.model.labels.len(), p.model.spec.output.name.clone());
    let header_length = headers.get(HEADER_LENGTH).map(|v| HeaderValue::as_bytes(v).to_vec());
    let body = body?;
    p.on_cpu_pool(move || {
        let facts = ModelFacts { shape, classes, output: &output };
        parse_request(&facts, header_length.as_deref(), body)
    })
    .await?
}

/// The input's bytes: its share of the binary part, or `None` for JSON data.
fn raw_data(input: &InferInput, tensors: &mut Tensors) -> Result<Option<Bytes>, ApiError> {
    match input.parameters.binary_data_size {
        None => Ok(None),
        Some(size) => tensors.take(&input.name, size).map(Some).map_err(|e| bad(e.0)),
    }
}

/// The number of elements `shape` describes, if every dimension is sane.
fn elements(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
}

/// Checks one input against the model's input shape `want` (`[-1, C, H, W]`
/// or NHWC): BYTES images or FP32 tensors, 1 to [`MAX_INFER_BATCH`] of them,
/// with exactly as many elements as the shape says.
pub fn read_input(want: [i64; 4], input: Input) -> Result<Payload, ApiError> {
    let Input { raw, data, .. } = input;
    if raw.is_none() && data.is_none() {
        return Err(bad(format!("input {:?} has neither data nor binary_data_size", input.name)));
    }
    let count = elements(&input.shape).ok_or_else(|| bad(format!("invalid shape {:?}", input.shape)))?;
    match input.datatype.as_str() {
        "BYTES" => {
            let n = *input.shape.first().unwrap_or(&0);
            if !matches!(input.shape.as_slice(), [_] | [_, 1]) || n < 1 || n as usize > MAX_INFER_BATCH {
                return Err(bad(format!(
                    "BYTES input shape must be [N] or [N, 1] with 1 <= N <= {MAX_INFER_BATCH}, got {:?}",
                    input.shape
                )));
            }
            let images = match raw {
                Some(raw) => binary::bytes_elements(raw, MAX_INFER_BATCH).map_err(|e| bad(e.0))?,
                None => base64_elements(data.unwrap_or_default())?,
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
                None => json_floats(data.unwrap_or_default())?,
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

fn base64_elements(data: Data) -> Result<Vec<Bytes>, ApiError> {
    let items = match data {
        Data::Strings(items) => items,
        Data::Blobs(blobs) => return Ok(blobs),
        Data::Empty => Vec::new(),
        Data::Numbers(_) => return Err(bad("JSON BYTES elements must be base64 strings")),
    };
    items
        .iter()
        .map(|text| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| bad(format!("invalid base64: {e}")))?;
            Ok(Bytes::from(bytes))
        })
        .collect()
}

fn json_floats(data: Data) -> Result<Vec<f32>, ApiError> {
    match data {
        Data::Numbers(values) => Ok(values),
        Data::Empty => Ok(Vec::new()),
        Data::Strings(_) | Data::Blobs(_) => Err(bad("FP32 data must hold only numbers")),
    }
}

/// One plan per requested output. Each output name may be asked for once,
/// and `classification` is capped at the model's classes, so the answer is
/// at most one row of scores or labels per input ([`crate::cost`]).
pub fn plan_outputs(
    model: &ModelFacts,
    default_binary: bool,
    requested: &[OutputRequest],
) -> Result<Vec<OutputPlan>, ApiError> {
    if requested.is_empty() {
        return Ok(vec![OutputPlan { binary: default_binary, class_count: None }]);
    }
    if requested.len() > 1 {
        return Err(bad(format!(
            "each output may be requested once: the model has one output, {:?}, and {} were requested",
            model.output,
            requested.len()
        )));
    }
    requested
        .iter()
        .map(|o| {
            if o.name != model.output {
                return Err(bad(format!("unknown output {:?}: the model has {:?}", o.name, model.output)));
            }
            let binary = o.binary.unwrap_or(default_binary);
            let class_count = match o.classification {
                None => None,
                Some(0) => return Err(bad("classification must be a positive count, got 0")),
                Some(k) => Some(usize::try_from(k).unwrap_or(usize::MAX).min(model.classes)),
            };
            Ok(OutputPlan { binary, class_count })
        })
        .collect()
}

/// One input's class probabilities.
pub type Scores = Arc<[f32]>;

/// Predicts every image of one request. All are checked from their headers
/// first, so a request with one bad image among many costs no decode; the
/// predictions then run side by side in a [`JoinSet`], which aborts those
/// still running when the request ends (its first failure, its deadline, or
/// its client gone).
async fn predict_images(p: &Arc<Predictor>, images: Vec<Bytes>) -> Result<Vec<Scores>, ApiError> {
    for (i, image) in images.iter().enumerate() {
        p.check_image(image).map_err(|e| in_element(i, images.len(), e))?;
    }
    let mut tasks = JoinSet::new();
    for (i, b) in images.into_iter().enumerate() {
        let p = Arc::clone(p);
        tasks.spawn(async move { (i, p.predict(b).await.map(|a| a.scores)) }.in_current_span());
    }
    join_in_order(tasks).await
}

async fn predict_tensors(p: &Arc<Predictor>, values: Vec<f32>, n: usize) -> Result<Vec<Scores>, ApiError> {
    let per = values.len() / n.max(1);
    let mut tasks = JoinSet::new();
    for (i, c) in values.chunks_exact(per.max(1)).enumerate() {
        let (p, c) = (Arc::clone(p), c.to_vec());
        tasks.spawn(async move { (i, p.predict_tensor(c).await) }.in_current_span());
    }
    drop(values);
    join_in_order(tasks).await
}

/// An error of element `i` of `n`, saying which one when there are several.
fn in_element(i: usize, n: usize, e: PredictError) -> ApiError {
    match e {
        PredictError::BadImage(image) if n > 1 && status_of(&image) == axum::http::StatusCode::BAD_REQUEST => {
            bad(format!("element {i}: {image}"))
        }
        other => other.into(),
    }
}

fn status_of(image: &crate::preprocess::ImageError) -> axum::http::StatusCode {
    ApiError::from(image.clone()).status_code()
}

/// Collects the predictions in request order; the first failure wins, and
/// dropping the set aborts the rest.
async fn join_in_order(mut tasks: JoinSet<(usize, Result<Scores, PredictError>)>) -> Result<Vec<Scores>, ApiError> {
    let mut out: Vec<Option<Scores>> = vec![None; tasks.len()];
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.map_err(|e| ApiError::Internal(e.to_string()))?;
        out[i] = Some(result?);
    }
    out.into_iter().map(|s| s.ok_or_else(|| ApiError::Internal("a prediction went missing".into()))).collect()
}

/// What an answer names: the model, its version, its output and labels.
pub struct Answering<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub output: &'a str,
    pub labels: &'a [String],
}

impl<'a> Answering<'a> {
    pub fn of(p: &'a Predictor) -> Self {
        let model = &p.model;
        Answering { model: p.name(), version: p.version(), output: &model.spec.output.name, labels: &model.labels }
    }
}

/// One output's answer for every row, before either protocol encodes it.
pub enum Rendered {
    /// `classification: k`: `[n, k]` strings `"score:index:label"`.
    Classes { strings: Vec<String>, shape: [usize; 2] },
    /// The class probabilities, `[n, classes]`.
    Scores { values: Vec<f32>, shape: [usize; 2] },
}

impl Rendered {
    pub fn new(plan: &OutputPlan, labels: &[String], rows: &[Scores]) -> Self {
        let n = rows.len();
        match plan.class_count {
            Some(k) => Rendered::Classes {
                strings: rows
                    .iter()
                    .flat_map(|s| ranked(s, labels, k))
                    .map(|c| format!("{}:{}:{}", c.score, c.index, c.label))
                    .collect(),
                shape: [n, k],
            },
            None => Rendered::Scores {
                values: rows.iter().flat_map(|s| s.iter().copied()).collect(),
                shape: [n, labels.len()],
            },
        }
    }

    pub fn datatype(&self) -> &'static str {
        match self {
            Rendered::Classes { .. } => "BYTES",
            Rendered::Scores { .. } => "FP32",
        }
    }

    pub fn shape(&self) -> [usize; 2] {
        match self {
            Rendered::Classes { shape, .. } | Rendered::Scores { shape, .. } => *shape,
        }
    }

    /// The tensor as raw bytes: length-prefixed strings, or little-endian floats.
    pub fn raw(&self) -> Vec<u8> {
        match self {
            Rendered::Classes { strings, .. } => binary::encode_bytes(strings),
            Rendered::Scores { values, .. } => crate::job::f32_to_le_bytes(values),
        }
    }

    fn json(&self) -> Value {
        match self {
            Rendered::Classes { strings, .. } => json!(strings),
            Rendered::Scores { values, .. } => json!(values),
        }
    }
}

/// The response: JSON, or JSON then binary tensors when any output asks.
/// Pure, and a fuzz target's second half: its size stays within
/// [`crate::cost::response_bound`] of the number of rows.
pub fn respond(p: &Answering, id: Option<String>, rows: &[Scores], plans: &[OutputPlan]) -> Response {
    let mut tail = Vec::new();
    let outputs: Vec<Value> = plans
        .iter()
        .map(|plan| {
            let rendered = Rendered::new(plan, p.labels, rows);
            let mut out = json!({"name": p.output, "datatype": rendered.datatype(), "shape": rendered.shape()});
            if plan.binary {
                let raw = rendered.raw();
                out["parameters"] = json!({"binary_data_size": raw.len()});
                tail.extend(raw);
            } else {
                out["data"] = rendered.json();
            }
            out
        })
        .collect();
    let mut body = json!({"model_name": p.model, "model_version": p.version, "outputs": outputs});
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
