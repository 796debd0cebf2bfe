//! `POST /feedback`: "report incorrect answer", stored durably.
//!
//! Accepts the original page's form (a `report` string from its hidden
//! input) and a structured form (`image_sha256`, `predicted_label`, `score`,
//! `correct_label`), urlencoded or multipart; a multipart `file` part keeps
//! the image. Without one, the image is taken from the page's upload store
//! when its hash is known.

use axum::Json;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::form::{check_upload, read_form};
use super::render::{self, MessageKind, PageView};
use crate::feedback::FeedbackRecord;

/// `GET /feedback`: the page, as the original answered.
pub async fn page(State(state): State<AppState>) -> Html<String> {
    let view = PageView { model: state.models.default_name(), result: None, message: None };
    Html(render::render(&view))
}

pub async fn submit(State(state): State<AppState>, headers: HeaderMap, req: Request) -> Result<Response, ApiError> {
    let wants_json =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("application/json"));
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let mut fields = Vec::new();
    let mut file = None;
    if is_multipart {
        let form = Multipart::from_request(req, &state).await.map_err(|e| ApiError::BadMultipart(e.body_text()))?;
        file = read_form(form, &state.limits, &mut fields).await?;
    } else {
        let axum::Form(pairs) = axum::Form::<Vec<(String, String)>>::from_request(req, &state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("expected a form: {}", e.body_text())))?;
        if pairs.len() > state.limits.max_parts {
            return Err(ApiError::TooManyParts(state.limits.max_parts));
        }
        fields = pairs;
    }
    let mut record = record_from_fields(&fields, state.models.default_name())?;
    let store = state.feedback.clone();
    let uploads = state.uploads.clone();
    let upload = file.filter(|(_, b)| !b.is_empty()).map(|f| check_upload(Some(f))).transpose()?;
    let (id, record) = tokio::task::spawn_blocking(move || {
        if let Some(u) = upload {
            record.image_file = Some(store.images().put(&u.bytes, &u.ext)?);
            record.image_sha256 = Some(crate::feedback::sha256_hex(&u.bytes));
        } else if let Some((name, path)) = record
            .image_sha256
            .as_deref()
            .and_then(|h| uploads.find(h))
            .and_then(|name| uploads.path_of(&name).map(|path| (name, path)))
        {
            let bytes = std::fs::read(&path)
                .map_err(|source| crate::feedback::FeedbackError::Io { path: path.clone(), source })?;
            let ext = name.rsplit('.').next().unwrap_or("jpg").to_owned();
            record.image_file = Some(store.images().put(&bytes, &ext)?);
        }
        store.record(&record).map(|id| (id, record))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| match e {
        crate::feedback::FeedbackError::Invalid(m) => ApiError::BadRequest(m),
        other => ApiError::Internal(other.to_string()),
    })?;
    if let Some(mirror) = &state.feedback_mirror {
        let image = match record.image_file.as_deref().and_then(|f| state.feedback.images().path_of(f)) {
            Some(path) => tokio::fs::read(&path).await.ok().zip(record.image_file.clone()).map(|(b, n)| (n, b)),
            None => None,
        };
        mirror.push(id, &record, image).await;
    }
    if wants_json {
        return Ok(Json(json!({"success": true, "id": id})).into_response());
    }
    let message = format!("Thanks — report #{id} saved");
    let view =
        PageView { model: state.models.default_name(), result: None, message: Some((MessageKind::Info, &message)) };
    Ok(Html(render::render(&view)).into_response())
}

/// Builds a record from form fields. `report` may hold a JSON object with
/// `sha256`, `prediction`, `score` and `filename`; explicit fields win.
fn record_from_fields(fields: &[(String, String)], model: &str) -> Result<FeedbackRecord, ApiError> {
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim().to_owned()).filter(|v| !v.is_empty());
    let mut r = FeedbackRecord { model: model.to_owned(), ..Default::default() };
    if let Some(report) = get("report") {
        if let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(&report) {
            let s = |k: &str| o.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            r.image_sha256 = s("sha256");
            r.predicted_label = s("prediction");
            r.filename = s("filename");
            r.score = o.get("score").and_then(|v| v.as_f64());
        }
        r.report = Some(report);
    }
    if let Some(v) = get("image_sha256") {
        r.image_sha256 = Some(v);
    }
    if let Some(v) = get("predicted_label") {
        r.predicted_label = Some(v);
    }
    if let Some(v) = get("score") {
        r.score = Some(v.parse().map_err(|_| ApiError::BadRequest(format!("score {v:?} is not a number")))?);
    }
    r.correct_label = get("correct_label");
    if r.report.is_none() && r.predicted_label.is_none() && r.image_sha256.is_none() {
        return Err(ApiError::BadRequest(
            "empty report: send `report`, or `image_sha256`/`predicted_label` with an optional `correct_label`".into(),
        ));
    }
    Ok(r)
}
