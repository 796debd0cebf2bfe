//! Model configuration (`GET /v2/models/{m}/config`) and statistics
//! (`GET /v2/models/{m}/stats`, `GET /v2/models/stats`) in the shape
//! Triton answers them, which is what its clients parse.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::infer::MAX_INFER_BATCH;
use super::{ModelPath, served};
use crate::http::AppState;
use crate::http::error::OipError;
use crate::metrics::StageCounter;
use crate::model::Layout;
use crate::predictor::Predictor;

/// Triton's model configuration: the FP32 tensor input (dims without the
/// batch dimension), the `BYTES` image input (`[1]` reshaped to a scalar,
/// so a request shape is `[N]` or `[N, 1]`), the output, one CPU instance
/// group of the sessions serving it.
pub async fn config(State(state): State<AppState>, Path(path): Path<ModelPath>) -> Result<Json<Value>, OipError> {
    let p = served(&state, &path)?;
    let spec = &p.model.spec;
    let i = &spec.input;
    let (format, dims) = match i.layout {
        Layout::Nchw => ("FORMAT_NCHW", [3, i.height, i.width]),
        Layout::Nhwc => ("FORMAT_NHWC", [i.height, i.width, 3]),
    };
    Ok(Json(json!({
        "name": spec.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": MAX_INFER_BATCH,
        "input": [
            {"name": i.name, "data_type": "TYPE_FP32", "format": format, "dims": dims},
            {"name": "image", "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1],
             "reshape": {"shape": []}},
        ],
        "output": [{
            "name": spec.output.name, "data_type": "TYPE_FP32", "dims": [p.model.labels.len()],
            "label_filename": spec.labels,
        }],
        "instance_group": [{"name": spec.name, "kind": "KIND_CPU", "count": p.capacity().sessions}],
        "parameters": {"version": {"string_value": spec.version}},
    })))
}

pub async fn model_stats(State(state): State<AppState>, Path(path): Path<ModelPath>) -> Result<Json<Value>, OipError> {
    let p = served(&state, &path)?;
    Ok(Json(json!({"model_stats": [stats_of(&p)]})))
}

pub async fn all_stats(State(state): State<AppState>) -> Json<Value> {
    let all: Vec<Value> = state.models.all().iter().map(|p| stats_of(p)).collect();
    Json(json!({"model_stats": all}))
}

fn stage(c: &StageCounter) -> Value {
    let (count, ns) = c.get();
    json!({"count": count, "ns": ns})
}

/// One entry of `model_stats`. Every image or tensor is one inference;
/// `execution_count` counts the same (batching happens behind the queue).
fn stats_of(p: &Predictor) -> Value {
    let s = p.stats();
    let (success, _) = s.success.get();
    json!({
        "name": p.name(),
        "version": p.version(),
        "last_inference": s.last_inference_ms.load(std::sync::atomic::Ordering::Relaxed),
        "inference_count": success,
        "execution_count": success,
        "inference_stats": {
            "success": stage(&s.success),
            "fail": stage(&s.fail),
            "queue": stage(&s.queue),
            "compute_input": stage(&s.compute_input),
            "compute_infer": stage(&s.compute_infer),
            "compute_output": stage(&s.compute_output),
            "cache_hit": stage(&s.cache_hit),
            "cache_miss": stage(&s.cache_miss),
        },
        "batch_stats": [],
    })
}
