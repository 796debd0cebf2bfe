//! `POST /predict`, with the original service's contract kept exactly.

use std::time::Instant;

use axum::Json;
use axum::extract::{Multipart, Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::form::{check_upload, read_form};
use super::{AppState, StageTimes};
use crate::predictor::Answer;
use crate::ranking::ranked;

/// At most this many classes in `top_k` answers.
pub const MAX_TOP_K: usize = 10;

#[derive(Debug, Deserialize)]
pub struct PredictQuery {
    /// Ask for the `k` best classes and the extra fields.
    pub top_k: Option<usize>,
}

/// `POST /predict`: exactly `{success, prediction, score}` unless `?top_k=` asks for more.
pub async fn predict(
    State(state): State<AppState>,
    Query(query): Query<PredictQuery>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let form = form.map_err(|e| ApiError::BadMultipart(e.body_text()))?;
    let upload = check_upload(read_form(form, &state.limits, &mut Vec::new()).await?)?;
    let predictor = state.models.serving_default()?;
    let answer = predictor.predict(upload.bytes).await?;
    let labels = &predictor.model.labels;
    let best = ranked(&answer.scores, labels, 1).remove(0);
    let mut body = json!({"success": true, "prediction": best.label, "score": best.score});
    if let Some(k) = query.top_k {
        let k = k.clamp(1, MAX_TOP_K);
        let extra = json!({
            "top_k": ranked(&answer.scores, labels, k),
            "model": predictor.name(),
            "cached": answer.cached,
            "sha256": answer.sha256,
            "elapsed_ms": started.elapsed().as_secs_f64() * 1000.0,
        });
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
    }
    Ok(with_stages(Json(body).into_response(), &answer))
}

/// Attaches `answer`'s stage timings to `response`, for the request log.
pub(super) fn with_stages(mut response: Response, answer: &Answer) -> Response {
    response.extensions_mut().insert(StageTimes {
        decode_ms: answer.timings.decode.as_secs_f64() * 1000.0,
        queue_and_infer_ms: answer.timings.queue_and_infer.as_secs_f64() * 1000.0,
        cached: answer.cached,
    });
    response
}
