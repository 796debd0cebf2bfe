//! The one place where errors become HTTP responses.
//!
//! Every error body has the shape clients of the original service parse:
//! `{"success": false, "prediction": null, "score": null, "error": "..."}`;
//! the Open Inference Protocol's endpoints answer [`OipError`], the same
//! error as `{"error": "..."}`, the shape its clients parse. Internal
//! details are logged, never shown.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::predictor::PredictError;
use crate::preprocess::ImageError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no file was uploaded: send the image in the multipart field `file`")]
    NoFile,
    #[error("the uploaded file is empty")]
    EmptyFile,
    #[error("file type {0:?} is not allowed: upload a png, jpg, jpeg or gif image")]
    BadExtension(String),
    #[error("the request is not a valid multipart form: {0}")]
    BadMultipart(String),
    #[error("too many multipart parts: at most {0} are accepted")]
    TooManyParts(usize),
    #[error("the upload is larger than the {0} byte limit")]
    TooLarge(usize),
    #[error("{0}")]
    BadRequest(String),
    #[error("model {0:?} is not served here")]
    UnknownModel(String),
    #[error("version {1:?} of model {0:?} is not served here")]
    UnknownVersion(String, String),
    #[error(transparent)]
    Repository(#[from] super::RepositoryError),
    #[error(transparent)]
    Predict(#[from] PredictError),
    #[error("internal error; the details are in the server log")]
    Internal(String),
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        ApiError::Predict(PredictError::BadImage(e))
    }
}

impl ApiError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::NoFile
            | ApiError::EmptyFile
            | ApiError::BadExtension(_)
            | ApiError::BadMultipart(_)
            | ApiError::TooManyParts(_)
            | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnknownModel(_) | ApiError::UnknownVersion(..) => StatusCode::NOT_FOUND,
            ApiError::Repository(e) => match e {
                super::RepositoryError::NotFound(_) => StatusCode::NOT_FOUND,
                super::RepositoryError::LoadFailed { .. } | super::RepositoryError::NoRepository => {
                    StatusCode::BAD_REQUEST
                }
            },
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Predict(e) => match e {
                PredictError::BadImage(ImageError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
                PredictError::BadImage(_) => StatusCode::BAD_REQUEST,
                PredictError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
                PredictError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                PredictError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                PredictError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// The label this error is counted under in `lens_rejected_requests`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NoFile => "no_file",
            ApiError::EmptyFile => "empty_file",
            ApiError::BadExtension(_) => "bad_extension",
            ApiError::BadMultipart(_) => "bad_multipart",
            ApiError::TooManyParts(_) => "too_many_parts",
            ApiError::TooLarge(_) => "too_large",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UnknownModel(_) | ApiError::UnknownVersion(..) => "unknown_model",
            ApiError::Repository(_) => "repository",
            ApiError::Internal(_) => "internal",
            ApiError::Predict(e) => e.reason(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Predict(PredictError::Overloaded { retry_after_secs }) => Some(*retry_after_secs),
            ApiError::Predict(PredictError::Unavailable(_)) => Some(1),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(|message| json!({"success": false, "prediction": null, "score": null, "error": message}))
    }
}

/// An [`ApiError`] as the Open Inference Protocol answers it: `{"error": "..."}`,
/// with the same status code, `Retry-After` and rejection count.
#[derive(Debug)]
pub struct OipError(pub ApiError);

impl<E: Into<ApiError>> From<E> for OipError {
    fn from(e: E) -> Self {
        OipError(e.into())
    }
}

impl IntoResponse for OipError {
    fn into_response(self) -> Response {
        self.0.respond(|message| json!({"error": message}))
    }
}

impl ApiError {
    /// The response with the body `body` builds from the client-facing message.
    fn respond(self, body: impl FnOnce(String) -> serde_json::Value) -> Response {
        let status = self.status_code();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                self.to_string()
            }
            ApiError::Predict(PredictError::Failed(detail)) => {
                tracing::error!(%detail, "prediction failed");
                self.to_string()
            }
            _ => self.to_string(),
        };
        let mut response = (status, axum::Json(body(message))).into_response();
        response.extensions_mut().insert(Rejected(self.reason()));
        if let Some(secs) = self.retry_after() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Marks a response as a refusal, for the metrics middleware to count.
#[derive(Debug, Clone, Copy)]
pub struct Rejected(pub &'static str);
