//! The upload page: `GET /` and the no-JavaScript upload `POST /`. The HTML
//! itself is rendered by [`super::render`].

use std::time::Instant;

use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::AppState;
use super::error::{ApiError, Rejected};
use super::form::{check_upload, read_form};
use super::predict::with_stages;
use super::render::{self, MessageKind, PageResult, PageView};
use crate::ranking::{ClassScore, ranked};

/// `GET /`: the upload page.
pub async fn show(State(state): State<AppState>) -> Html<String> {
    Html(render::render(&PageView { model: state.models.default_name(), result: None, message: None }))
}

/// `POST /`: the no-JavaScript upload. Errors are shown on the page (with
/// the error's status code); no file shows the form with a message.
pub async fn upload(
    State(state): State<AppState>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let started = Instant::now();
    let model = state.models.default_name();
    let render_error = |e: ApiError| {
        let status = e.status_code();
        let reason = e.reason();
        let message = match &e {
            ApiError::NoFile | ApiError::EmptyFile => "No file selected: choose an image to upload.".to_owned(),
            other => other.to_string(),
        };
        let view = PageView { model, result: None, message: Some((MessageKind::Error, &message)) };
        let status = if matches!(e, ApiError::NoFile) { StatusCode::OK } else { status };
        let mut response = (status, Html(render::render(&view))).into_response();
        response.extensions_mut().insert(Rejected(reason));
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
    let predictor = match state.models.serving_default() {
        Ok(p) => p,
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
    with_stages(Html(render::render(&view)).into_response(), &answer)
}
