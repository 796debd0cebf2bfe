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
#[utoipa::path(get, path = "/", tag = "page", responses((status = 200, description = "The upload page.", content_type = "text/html")))]
pub async fn show(State(state): State<AppState>) -> Html<String> {
    Html(render::render(&PageView { model: state.models.default_name(), result: None, message: None }))
}

/// `POST /`: the no-JavaScript upload. Errors are shown on the page (with
/// the error's status code); no file, or no multipart body at all, shows the
/// form with a message as a 200, as the original did. An image that cannot
/// be kept (cap or disk full) is still classified; the page says so.
#[utoipa::path(post, path = "/", tag = "page", operation_id = "page_upload", request_body(content_type = "multipart/form-data", description = "The image in the field `file`."), responses((status = 200, description = "The page with the image, `Predicted class` and `Score`, and the report form; with no file, the form and a message.", content_type = "text/html"), (status = 400, description = "A bad image, shown on the page.", content_type = "text/html")))]
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
        // Not a multipart request at all (a bare POST): a form with no file.
        let form = form.map_err(|_| ApiError::NoFile)?;
        // A body that is not a readable form counts as no file, too.
        let file = read_form(form, &state.limits, &mut Vec::new()).await.map_err(|e| match e {
            ApiError::BadMultipart(_) => ApiError::NoFile,
            other => other,
        })?;
        check_upload(file)
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
    let image_url = match stored {
        Ok(Ok(name)) => Some(format!("/uploads/{name}")),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "page upload not kept");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "storing a page upload panicked");
            None
        }
    };
    let not_kept = "Classified, but the image was not kept (the server's storage is full): \
                    a report will be saved without it.";
    let top: Vec<ClassScore> = ranked(&answer.scores, &predictor.model.labels, 5);
    let view = PageView {
        model,
        result: Some(PageResult {
            image_url: image_url.as_deref(),
            filename: &upload.filename,
            sha256: &answer.sha256,
            top: &top,
            cached: answer.cached,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
        }),
        message: image_url.is_none().then_some((MessageKind::Info, not_kept)),
    };
    with_stages(Html(render::render(&view)).into_response(), &answer)
}
