//! `POST /predict` and the upload page (`GET /`, `POST /`), with the
//! original service's contract kept exactly.

use std::time::Instant;

use axum::Json;
use axum::extract::{Multipart, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::page::{self, MessageKind, PageResult, PageView};
use super::{AppState, Limits, StageTimes};
use crate::prediction::{ClassScore, ranked};
use crate::service::Answer;

/// Extensions accepted on upload, as the original service did.
pub const ALLOWED_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "gif"];

/// At most this many classes in `top_k` answers.
pub const MAX_TOP_K: usize = 10;

/// One uploaded file.
pub struct Upload {
    pub filename: String,
    /// Lowercase extension from the filename, checked against [`ALLOWED_EXTENSIONS`].
    pub ext: String,
    pub bytes: Bytes,
}

/// Reads the multipart form: the first `file` part is the upload, other parts
/// are read into `fields` (small text fields only) and counted against the cap.
/// Past the cap, parts are read and discarded.
pub async fn read_form(
    mut form: Multipart,
    limits: &Limits,
    fields: &mut Vec<(String, String)>,
) -> Result<Option<(String, Bytes)>, ApiError> {
    let max_parts = limits.max_parts;
    let multipart_error = |e| multipart_error(e, limits.body_bytes);
    let mut file = None;
    let mut parts = 0;
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(e)),
        };
        parts += 1;
        if parts > max_parts {
            // Read the rest (the body limit bounds it) so the client gets
            // the 400 instead of a connection reset mid-upload.
            let _ = field.bytes().await;
            continue;
        }
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" && file.is_none() {
            let filename = field.file_name().unwrap_or_default().to_owned();
            let bytes = field.bytes().await.map_err(multipart_error)?;
            file = Some((filename, bytes));
        } else {
            let value = field.bytes().await.map_err(multipart_error)?;
            if value.len() <= 8192 {
                fields.push((name, String::from_utf8_lossy(&value).into_owned()));
            }
        }
    }
    if parts > max_parts {
        return Err(ApiError::TooManyParts(max_parts));
    }
    Ok(file)
}

fn multipart_error(e: axum::extract::multipart::MultipartError, body_limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(body_limit)
    } else {
        ApiError::BadMultipart(e.body_text())
    }
}

/// Checks an upload the way the original did: present, non-empty, allowed
/// extension. Decoding decides the rest.
pub fn check_upload(file: Option<(String, Bytes)>) -> Result<Upload, ApiError> {
    let (filename, bytes) = file.ok_or(ApiError::NoFile)?;
    if filename.is_empty() && bytes.is_empty() {
        return Err(ApiError::NoFile);
    }
    let ext = filename.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    if !ALLOWED_EXTENSIONS.contains(&ext.as_str()) {
        return Err(ApiError::BadExtension(ext));
    }
    if bytes.is_empty() {
        return Err(ApiError::EmptyFile);
    }
    Ok(Upload { filename, ext, bytes })
}

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
    let predictor = state.models.default_model();
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

fn with_stages(mut response: Response, answer: &Answer) -> Response {
    response.extensions_mut().insert(StageTimes {
        decode_ms: answer.timings.decode.as_secs_f64() * 1000.0,
        queue_and_infer_ms: answer.timings.queue_and_infer.as_secs_f64() * 1000.0,
        cached: answer.cached,
    });
    response
}

/// `GET /`: the upload page.
pub async fn page(State(state): State<AppState>) -> Html<String> {
    Html(page::render(&PageView { model: state.models.default_model().name(), result: None, message: None }))
}

/// `POST /`: the no-JavaScript upload. Errors are shown on the page (with
/// the error's status code); no file shows the form with a message.
pub async fn page_upload(
    State(state): State<AppState>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let started = Instant::now();
    let predictor = state.models.default_model();
    let model = predictor.name();
    let render_error = |e: ApiError| {
        let status = e.status_code();
        let reason = e.reason();
        let message = match &e {
            ApiError::NoFile | ApiError::EmptyFile => "No file selected: choose an image to upload.".to_owned(),
            other => other.to_string(),
        };
        let view = PageView { model, result: None, message: Some((MessageKind::Error, &message)) };
        let status = if matches!(e, ApiError::NoFile) { StatusCode::OK } else { status };
        let mut response = (status, Html(page::render(&view))).into_response();
        response.extensions_mut().insert(super::error::Rejected(reason));
        response
    };
    let upload = async {
        let form = form.map_err(|e| ApiError::BadMultipart(e.body_text()))?;
        check_upload(read_form(form, &state.limits, &mut Vec::new()).await?)
    };
    let upload = match upload.await {
        Ok(u) => u,
        Err(e) => return render_error(e),
    };
    let answer = match predictor.predict(upload.bytes.clone()).await {
        Ok(a) => a,
        Err(e) => return render_error(e.into()),
    };
    // Keep the image so the page can show it and feedback can refer to it.
    let uploads = state.uploads.clone();
    let (bytes, ext) = (upload.bytes, upload.ext);
    let stored = tokio::task::spawn_blocking(move || uploads.put(&bytes, &ext)).await;
    let image_name = match stored {
        Ok(Ok(name)) => name,
        Ok(Err(e)) => return render_error(ApiError::Internal(e.to_string())),
        Err(e) => return render_error(ApiError::Internal(e.to_string())),
    };
    let top: Vec<ClassScore> = ranked(&answer.scores, &predictor.model.labels, 5);
    let image_url = format!("/uploads/{image_name}");
    let view = PageView {
        model,
        result: Some(PageResult {
            image_url: &image_url,
            filename: &upload.filename,
            sha256: &answer.sha256,
            top: &top,
            cached: answer.cached,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        }),
        message: None,
    };
    with_stages(Html(page::render(&view)).into_response(), &answer)
}
