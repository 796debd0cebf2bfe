//! `POST /feedback`: "report incorrect answer", stored durably.
//!
//! Accepts the original page's form (a `report` string from its hidden
//! input) and a structured form (`image_sha256`, `predicted_label`, `score`,
//! `correct_label`), urlencoded or multipart; a multipart `file` part keeps
//! the image. Without one, the image is taken from the page's upload store
//! when its hash is known.
//!
//! When the image cannot be kept (the feedback store's cap, a full disk, or
//! an upload already evicted), the report is stored without it and the
//! answer says so (`image_kept: false` and a `note`). When even the text
//! cannot be stored, the answer is 507, never a 500.

use axum::Json;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::form::{Upload, check_upload, read_form, read_urlencoded};
use super::render::{self, MessageKind, PageView};
use crate::feedback::{FeedbackError, FeedbackRecord, FeedbackStore, ImageStore, MAX_REPORT_CHARS, sha256_hex};

/// `GET /feedback`: the page, as the original answered.
#[utoipa::path(get, path = "/feedback", tag = "feedback", operation_id = "feedback_page", responses((status = 200, description = "The upload page, as the original answered.", content_type = "text/html")))]
pub async fn page(State(state): State<AppState>) -> Html<String> {
    let view = PageView { model: state.models.default_name(), result: None, message: None };
    Html(render::render(&view))
}

/// `POST /feedback`: report an incorrect answer.
#[utoipa::path(
    post,
    path = "/feedback",
    tag = "feedback",
    request_body(content_type = "application/x-www-form-urlencoded", description = "`report` (the page's hidden field) or `image_sha256`, `predicted_label`, `score`, `correct_label`; multipart with an optional `file` works too."),
    responses(
        (status = 200, description = "Stored: the page with a thank-you, or with `Accept: application/json` `{\"success\": true, \"id\": N}`."),
        (status = 400, description = "A bad form.", body = ErrorBody),
    )
)]
pub async fn submit(State(state): State<AppState>, headers: HeaderMap, req: Request) -> Result<Response, ApiError> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let client = state.client_limits.client_id(req.extensions().get::<Caller>(), peer, &headers);
    state.client_limits.check_feedback(&client).map_err(ApiError::RateLimited)?;
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
        let body = axum::body::Bytes::from_request(req, &state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read the form: {}", e.body_text())))?;
        fields = read_urlencoded(&body, state.limits.max_parts)?;
    }
    let mut record = record_from_fields(&fields, state.models.default_name())?;
    let store = state.feedback.clone();
    let uploads = state.uploads.clone();
    let upload = file.filter(|(_, b)| !b.is_empty()).map(|f| check_upload(Some(f))).transpose()?;
    if let Some(u) = &upload {
        // Only real images are kept, under the checks a prediction makes.
        match state.models.default_model() {
            Some(p) => p.check_image(&u.bytes).map(drop)?,
            None => crate::preprocess::inspect(&u.bytes, &crate::model::ResizeSpec::center_crop(224), u64::MAX)
                .map(drop)
                .map_err(ApiError::from)?,
        }
    }
    let (id, record, note) = tokio::task::spawn_blocking(move || {
        let note = keep_image(&store, &uploads, &mut record, upload);
        store.record(&record).map(|id| (id, record, note))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| match e {
        FeedbackError::Invalid(m) => ApiError::BadRequest(m),
        full @ FeedbackError::Full(_) => ApiError::InsufficientStorage(format!("{full}; try again later")),
        other => {
            tracing::error!(error = %other, "feedback not stored");
            ApiError::InsufficientStorage(
                "the report could not be stored: the server's storage is full or failing; try again later".into(),
            )
        }
    })?;
    if let Some(mirror) = &state.feedback_mirror {
        let image = match record.image_file.as_deref().and_then(|f| state.feedback.images().path_of(f)) {
            Some(path) => tokio::fs::read(&path).await.ok().zip(record.image_file.clone()).map(|(b, n)| (n, b)),
            None => None,
        };
        mirror.push(id, &record, image).await;
    }
    let image_kept = record.image_file.is_some();
    if wants_json {
        let mut body = json!({"success": true, "id": id, "image_kept": image_kept});
        if let Some(note) = &note {
            body["note"] = json!(note);
        }
        return Ok(Json(body).into_response());
    }
    let message = match &note {
        Some(note) => format!("Thanks — report #{id} saved, but {note}"),
        None => format!("Thanks — report #{id} saved"),
    };
    let view =
        PageView { model: state.models.default_name(), result: None, message: Some((MessageKind::Info, &message)) };
    Ok(Html(render::render(&view)).into_response())
}

/// Stores the report's image in the feedback store: the uploaded `file`, or
/// else the page upload with the report's hash. Returns why it was not kept,
/// if an image was offered and could not be.
fn keep_image(
    store: &FeedbackStore,
    uploads: &ImageStore,
    record: &mut FeedbackRecord,
    upload: Option<Upload>,
) -> Option<String> {
    let put = if let Some(u) = upload {
        record.image_sha256 = Some(sha256_hex(&u.bytes));
        store.images().put(&u.bytes, &u.ext)
    } else {
        let sha = record.image_sha256.as_deref()?;
        if let Some(name) = store.images().find(sha) {
            // Already kept for an earlier report.
            Ok(name)
        } else {
            let Some((name, path)) = uploads.find(sha).and_then(|n| uploads.path_of(&n).map(|p| (n, p))) else {
                return Some(
                    "the image is not on the server (it may have been evicted), so the report was kept without it"
                        .into(),
                );
            };
            let ext = name.rsplit('.').next().unwrap_or("jpg").to_owned();
            std::fs::read(&path)
                .map_err(|source| FeedbackError::Io { path, source })
                .and_then(|bytes| store.images().put(&bytes, &ext))
        }
    };
    match put {
        Ok(name) => {
            record.image_file = Some(name);
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "feedback image not kept");
            Some(match e {
                FeedbackError::CapReached { .. } => {
                    "the feedback image store is full, so the report was kept without its image".into()
                }
                e if e.is_disk_full() => "the server's disk is full, so the report was kept without its image".into(),
                _ => "the image could not be stored, so the report was kept without it".into(),
            })
        }
    }
}

/// Builds a record from form fields. `report` may hold a JSON object with
/// `sha256`, `prediction`, `score` and `filename`; explicit fields win.
fn record_from_fields(fields: &[(String, String)], model: &str) -> Result<FeedbackRecord, ApiError> {
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim().to_owned()).filter(|v| !v.is_empty());
    let mut r = FeedbackRecord { model: model.to_owned(), ..Default::default() };
    if let Some(report) = get("report") {
        // Checked before it is parsed as JSON: 10 MB of `[0,0,...]` would
        // otherwise become millions of JSON values only to be refused after.
        if report.chars().count() > MAX_REPORT_CHARS {
            return Err(ApiError::BadRequest(format!("report is longer than {MAX_REPORT_CHARS} characters")));
        }
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
