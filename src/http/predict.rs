//! `POST /predict`, with the original service's contract kept exactly.

use std::time::Instant;

use axum::Json;
use axum::extract::{Multipart, Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::form::{check_upload, read_form};
use super::{AppState, StageTimes};
use crate::predictor::Answer;
use crate::ranking::{ClassScore, ranked};

/// At most this many classes in `top_k` answers.
pub const MAX_TOP_K: usize = 10;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PredictQuery {
    /// Ask for the `k` best classes (at most 10) and the extra fields.
    pub top_k: Option<usize>,
}

/// A successful `/predict` answer: exactly `success`, `prediction` and
/// `score` unless `?top_k=` asks for the details.
#[derive(Debug, Serialize, ToSchema)]
pub struct Prediction {
    /// Always true.
    pub success: bool,
    /// The best class's label.
    pub prediction: String,
    /// Its probability, rounded to 4 decimals.
    pub score: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
}

/// What `?top_k=` adds to a prediction.
#[derive(Debug, Serialize, ToSchema)]
pub struct Details {
    /// The best classes, best first.
    pub top_k: Vec<ClassScore>,
    pub model: String,
    /// Answered from the result cache.
    pub cached: bool,
    /// SHA-256 of the uploaded bytes, hex.
    pub sha256: String,
    pub elapsed_ms: f64,
}

/// Classify an image: the original service's contract.
#[utoipa::path(
    post,
    path = "/predict",
    tag = "classify",
    params(PredictQuery),
    request_body(content_type = "multipart/form-data", description = "The image in the field `file` (png, jpg, jpeg or gif)."),
    responses(
        (status = 200, description = "The best class and its probability.", body = Prediction),
        (status = 400, description = "No file, empty file, extension not allowed, not an image, corrupt or truncated image, too many parts.", body = ErrorBody),
        (status = 413, description = "Body over --body-limit, or an image header declaring more than --max-pixels.", body = ErrorBody),
        (status = 429, description = "Overloaded; see Retry-After.", body = ErrorBody),
        (status = 503, description = "Shutting down or no worker available; see Retry-After.", body = ErrorBody),
        (status = 504, description = "No answer within the deadline.", body = ErrorBody),
    )
)]
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
    let _reply = tracing::debug_span!("reply").entered();
    let labels = &predictor.model.labels;
    let best = ranked(&answer.scores, labels, 1).remove(0);
    let details = query.top_k.map(|k| Details {
        top_k: ranked(&answer.scores, labels, k.clamp(1, MAX_TOP_K)),
        model: predictor.name().to_owned(),
        cached: answer.cached,
        sha256: answer.sha256.clone(),
        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
    });
    let body = Prediction { success: true, prediction: best.label, score: best.score, details };
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
