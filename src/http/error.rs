//! The one place where errors become HTTP responses.
//!
//! Every error body has the shape clients of the original service parse:
//! `{"success": false, "prediction": null, "score": null, "error": "..."}`;
//! the Open Inference Protocol's endpoints answer [`OipError`], the same
//! error as `{"error": "..."}`, the shape its clients parse. Internal
//! details are logged, never shown.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

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
    #[error("the request body sent nothing for {0:?}: send the body without pauses")]
    BodyTimeout(std::time::Duration),
    #[error("a cross-site request was refused: {0}")]
    CrossSite(&'static str),
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
    #[error("an API key is required: send `Authorization: Bearer <key>` (or HTTP Basic with the key as password)")]
    Unauthorized,
    #[error("this endpoint needs an admin key")]
    Forbidden,
    #[error("too many requests from this client: retry in {0} s")]
    RateLimited(u64),
    #[error("this client already has {0} requests in flight: wait for one to finish")]
    ClientBusy(usize),
    #[error("{0}")]
    InsufficientStorage(String),
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
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::CrossSite(_) => StatusCode::FORBIDDEN,
            ApiError::UnknownModel(_) | ApiError::UnknownVersion(..) => StatusCode::NOT_FOUND,
            ApiError::Repository(e) => match e {
                super::RepositoryError::NotFound(_) => StatusCode::NOT_FOUND,
                super::RepositoryError::LoadFailed { .. } | super::RepositoryError::NoRepository(_) => {
                    StatusCode::BAD_REQUEST
                }
            },
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::RateLimited(_) | ApiError::ClientBusy(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Predict(e) => match e {
                PredictError::BadImage(
                    ImageError::TooLarge { .. } | ImageError::TooDense { .. } | ImageError::TooMuchMemory { .. },
                ) => StatusCode::PAYLOAD_TOO_LARGE,
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
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::CrossSite(_) => "cross_site",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::UnknownModel(_) | ApiError::UnknownVersion(..) => "unknown_model",
            ApiError::Repository(_) => "repository",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::ClientBusy(_) => "client_busy",
            ApiError::InsufficientStorage(_) => "insufficient_storage",
            ApiError::Internal(_) => "internal",
            ApiError::Predict(e) => e.reason(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Predict(PredictError::Overloaded { retry_after_secs }) => Some(*retry_after_secs),
            ApiError::Predict(PredictError::Unavailable(_)) | ApiError::ClientBusy(_) => Some(1),
            ApiError::RateLimited(secs) => Some(*secs),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.respond(|error| {
            let body = ErrorBody { success: false, prediction: None, score: None, error };
            serde_json::to_value(body).unwrap_or_default()
        })
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
        self.0.respond(|error| serde_json::json!({ "error": error }))
    }
}

impl ApiError {
    /// The client-facing message; an internal error's details go to the log.
    pub fn message(&self) -> String {
        match self {
            ApiError::Internal(detail) => tracing::error!(%detail, "internal error"),
            ApiError::Predict(PredictError::Failed(detail)) => tracing::error!(%detail, "prediction failed"),
            _ => {}
        }
        self.to_string()
    }

    /// The error as the gRPC front answers it: the status code its HTTP
    /// status means ([`grpc_code`]) and the same message.
    pub fn to_grpc(&self) -> tonic::Status {
        tonic::Status::new(grpc_code(self.status_code()), self.message())
    }

    /// The response with the body `body` builds from the client-facing message.
    fn respond(self, body: impl FnOnce(String) -> serde_json::Value) -> Response {
        let status = self.status_code();
        let message = self.message();
        let mut response = (status, axum::Json(body(message))).into_response();
        response.extensions_mut().insert(Rejected(self.reason()));
        if let Some(secs) = self.retry_after() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"lens\""));
        }
        response
    }
}

/// The body of every error answer, in the shape the original service's
/// clients parse.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always false.
    pub success: bool,
    /// Always null.
    pub prediction: Option<String>,
    /// Always null.
    pub score: Option<f64>,
    /// What was wrong and what to do.
    pub error: String,
}

/// The gRPC status code an HTTP status means, both ways one table: bad
/// input is INVALID_ARGUMENT, shedding, rate limits and sizes
/// RESOURCE_EXHAUSTED, keys UNAUTHENTICATED and PERMISSION_DENIED, deadlines
/// DEADLINE_EXCEEDED, draining and outages UNAVAILABLE.
const GRPC_CODES: [(StatusCode, tonic::Code); 12] = [
    (StatusCode::OK, tonic::Code::Ok),
    (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument),
    (StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated),
    (StatusCode::FORBIDDEN, tonic::Code::PermissionDenied),
    (StatusCode::NOT_FOUND, tonic::Code::NotFound),
    (StatusCode::TOO_MANY_REQUESTS, tonic::Code::ResourceExhausted),
    (StatusCode::PAYLOAD_TOO_LARGE, tonic::Code::ResourceExhausted),
    (StatusCode::INSUFFICIENT_STORAGE, tonic::Code::ResourceExhausted),
    (StatusCode::GATEWAY_TIMEOUT, tonic::Code::DeadlineExceeded),
    (StatusCode::REQUEST_TIMEOUT, tonic::Code::DeadlineExceeded),
    (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable),
    (StatusCode::NOT_IMPLEMENTED, tonic::Code::Unimplemented),
];

/// The gRPC status code for an HTTP status (any other is INTERNAL or UNKNOWN).
pub fn grpc_code(status: StatusCode) -> tonic::Code {
    GRPC_CODES.iter().find(|(s, _)| *s == status).map(|(_, c)| *c).unwrap_or(if status.is_server_error() {
        tonic::Code::Internal
    } else {
        tonic::Code::Unknown
    })
}

/// The HTTP status a gRPC status code stands for in the request metrics
/// (the first of `GRPC_CODES` with that code; CANCELLED is 499, others 500).
pub fn http_status_of_grpc(code: tonic::Code) -> StatusCode {
    if code == tonic::Code::Cancelled {
        return StatusCode::from_u16(499).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    GRPC_CODES.iter().find(|(_, c)| *c == code).map(|(s, _)| *s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Marks a response as a refusal, for the metrics middleware to count.
#[derive(Debug, Clone, Copy)]
pub struct Rejected(pub &'static str);
