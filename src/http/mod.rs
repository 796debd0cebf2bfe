//! The HTTP API: routes, shared state, middleware and the server loop.
//!
//! - [`predict`]: `POST /predict`, the original service's JSON contract.
//! - [`page`]: the upload page, `GET /` and `POST /`.
//! - [`feedback`]: `POST /feedback`, `GET /feedback`.
//! - [`form`]: reading multipart uploads and checking them.
//! - [`ops`]: health, metrics, status, labels, OpenAPI, static assets.
//! - [`v2`]: the KServe Open Inference Protocol v2.
//! - [`review`]: the review page, `/review` (accept, relabel or reject reports).
//! - [`render`]: the server-rendered HTML and its embedded assets;
//!   [`review_html`] the review page's.
//! - [`auth`]: API keys, and which paths need an admin key.
//! - [`limits`]: per-client rate and in-flight limits.
//! - [`body`]: reading request bodies under the body limit, the body memory
//!   budget and the body progress timeout.
//! - [`csrf`]: refusing state-changing requests that another site's page sent.
//! - [`server`]: the accept loop: the connection cap, hyper's timeouts, and
//!   each connection's read buffer capped.
//! - [`error`]: the one mapping from errors to HTTP responses.
//!
//! Middleware, outermost first: panics caught, security headers, the request
//! log and metrics, cross-site refusal, API keys, per-client limits, then the
//! body read under its limit and budget. What each request may cost is
//! written down in [`crate::cost`].

pub mod auth;
pub mod body;
pub mod csrf;
pub mod error;
pub mod feedback;
pub mod form;
pub mod limits;
pub mod ops;
pub mod page;
pub mod predict;
pub mod render;
pub mod review;
pub mod review_html;
pub mod server;
pub mod v2;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use tokio::net::TcpListener;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::feedback::{FeedbackStore, ImageStore};
use crate::metrics::Metrics;
use crate::predictor::Predictor;
use crate::telemetry;
use error::Rejected;

/// Request limits enforced before any decoding.
#[derive(Debug, Clone)]
pub struct Limits {
    pub body_bytes: usize,
    pub max_parts: usize,
    pub request_timeout: Duration,
    /// The longest a body may send nothing before it is answered 408.
    pub body_timeout: Duration,
    /// Request bodies held in memory at once (see [`body::read_body`]).
    pub bodies: Arc<body::BodyBudget>,
    /// Whether `X-Forwarded-Host` names the host a browser saw ([`csrf`]).
    pub trust_proxy: bool,
}

/// The served models by name, one serving version each, and which one
/// `/predict` uses. Swappable at run time: [`Models::swap`] puts a new
/// version in place in one step, so every request that looks a model up
/// after it gets the new version and every one before it keeps the old
/// (its `Arc` keeps the old version alive until it is answered).
pub struct Models {
    by_name: RwLock<BTreeMap<String, Arc<Predictor>>>,
    default: String,
}

impl Models {
    pub fn new(by_name: BTreeMap<String, Arc<Predictor>>, default: String) -> Self {
        Models { by_name: RwLock::new(by_name), default }
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Predictor>>> {
        // Every write is one insert or remove: a panicked writer leaves it whole.
        self.by_name.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The model `/predict` and the page use, unless it was unloaded.
    pub fn default_model(&self) -> Option<Arc<Predictor>> {
        self.get(&self.default)
    }

    /// The default model, or the error `/predict` answers once it was unloaded.
    pub fn serving_default(&self) -> Result<Arc<Predictor>, error::ApiError> {
        self.default_model().ok_or_else(|| error::ApiError::UnknownModel(self.default.clone()))
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    pub fn get(&self, name: &str) -> Option<Arc<Predictor>> {
        self.table().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.table().keys().cloned().collect()
    }

    pub fn all(&self) -> Vec<Arc<Predictor>> {
        self.table().values().cloned().collect()
    }

    pub fn all_ready(&self) -> bool {
        self.table().values().all(|p| p.is_ready())
    }

    /// Serves `p` under its name from now on; returns the version it replaced.
    pub fn swap(&self, p: Arc<Predictor>) -> Option<Arc<Predictor>> {
        let mut table = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        table.insert(p.name().to_owned(), p)
    }

    /// Stops serving `name`; returns the version that served it.
    pub fn remove(&self, name: &str) -> Option<Arc<Predictor>> {
        self.by_name.write().unwrap_or_else(|e| e.into_inner()).remove(name)
    }
}

/// One row of the repository index: a model version on disk or served.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RepositoryEntry {
    pub name: String,
    pub version: String,
    /// `READY`, `LOADING`, `UNLOADING` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why a version is unavailable (a failed load), else empty.
    pub reason: String,
}

/// Why a repository request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RepositoryError {
    #[error("model {0:?} is not in the model repository")]
    NotFound(String),
    #[error("loading model {name:?} failed; the version already served keeps serving: {reason}")]
    LoadFailed { name: String, reason: String },
    #[error(
        "model {0:?} cannot be loaded or unloaded: this server serves only its --model and has no model \
         repository; start it with --models-dir to load and unload models"
    )]
    NoRepository(String),
}

/// What a future of the repository returns.
pub type RepositoryFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RepositoryError>> + Send + 'a>>;

/// The model repository behind the repository extension's endpoints; `serve`
/// implements it (loading, warming up, swapping, draining).
pub trait ModelRepository: Send + Sync {
    /// Every model version on disk or served, with its state.
    fn index(&self) -> Vec<RepositoryEntry>;
    /// Loads (or reloads) the newest version of `name` on disk; returns once
    /// it serves, or fails and leaves the served version in place.
    fn load<'a>(&'a self, name: &'a str) -> RepositoryFuture<'a, ()>;
    /// Stops serving `name`; its in-flight requests finish on it.
    fn unload<'a>(&'a self, name: &'a str) -> RepositoryFuture<'a, ()>;
}

/// Everything a handler may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub models: Arc<Models>,
    /// The repository extension's back end; `None` without `--models-dir`.
    pub repository: Option<Arc<dyn ModelRepository>>,
    pub metrics: Arc<Metrics>,
    pub feedback: Arc<FeedbackStore>,
    /// With Redis: every report is also pushed to `lens:feedback`.
    pub feedback_mirror: Option<Arc<crate::redis::feedback::FeedbackMirror>>,
    /// Images uploaded through the page, shown back at `/uploads/<sha256>.<ext>`.
    pub uploads: ImageStore,
    pub limits: Limits,
    /// API keys; [`auth::ApiKeys::off`] leaves everything open.
    pub keys: Arc<auth::ApiKeys>,
    /// Per-client rate and in-flight limits.
    pub client_limits: Arc<limits::ClientLimits>,
}

/// The API reference's front matter; the paths come from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Lens", description = "Image classification as a service: the original Flask service's API, \
        the upload page, feedback, operations, and the KServe Open Inference Protocol v2."),
    tags(
        (name = "classify", description = "Classifying images"),
        (name = "page", description = "The upload page"),
        (name = "feedback", description = "Reporting incorrect answers"),
        (name = "operate", description = "Health, readiness, metrics, status"),
        (name = "oip", description = "The Open Inference Protocol (KServe v2); its specification describes the bodies"),
    )
)]
struct ApiDoc;

/// Every documented route, each registered together with its OpenAPI
/// operation (`#[utoipa::path]` on the handler), so the two cannot drift.
fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(page::show, page::upload))
        .routes(routes!(predict::predict))
        .routes(routes!(feedback::page, feedback::submit))
        .routes(routes!(ops::upload))
        .routes(routes!(ops::asset))
        .routes(routes!(ops::live))
        .routes(routes!(ops::ready))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::status))
        .routes(routes!(ops::labels))
        .routes(routes!(review::page))
        .routes(routes!(review::decide))
        .routes(routes!(review::image))
}

/// The OpenAPI document of the routes [`app`] serves, as `/openapi.json` does.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = documented_routes().split_for_parts().1;
    v2::document(&mut doc);
    doc
}

/// The whole API as a router, for `serve` and for in-process tests.
pub fn app(state: AppState) -> Router {
    let (router, mut api) = documented_routes().split_for_parts();
    v2::document(&mut api);
    let doc = Bytes::from(api.to_pretty_json().unwrap_or_default());
    let serve_doc = move || async move { ([(header::CONTENT_TYPE, "application/json")], doc.clone()) };
    let router = router.route("/openapi.json", get(serve_doc)).merge(v2::routes()).with_state(state.clone());
    guarded(router, state)
}

/// `router` behind the middleware every request passes, whichever protocol
/// carries it (the gRPC front uses it too): panics caught, security
/// headers, the request log and metrics, cross-site refusal, API keys,
/// per-client limits, then the body read under its limit and budget.
pub fn guarded(router: Router, state: AppState) -> Router {
    router
        .layer(DefaultBodyLimit::max(state.limits.body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), body::read_body))
        .layer(middleware::from_fn_with_state(state.clone(), limits::limit))
        .layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(middleware::from_fn_with_state(state.clone(), csrf::refuse_cross_site))
        .layer(middleware::from_fn_with_state(state, observe))
        .layer(middleware::from_fn(security_headers))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
}

/// Serves `app` on an already bound listener until `shutdown` resolves, then
/// stops accepting and finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    connections: server::ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeout = state.limits.request_timeout;
    let router = app(state)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(axum::http::StatusCode::GATEWAY_TIMEOUT, timeout));
    // The peer address is what per-client limits count by when keys are off.
    server::serve(listener, router, server::Protocol::Http1, connections, shutdown).await;
    Ok(())
}

/// A handler that panicked: a 500 with one log line (the panic hook in
/// `main` writes where, on one line too). The connection stays up; the panic
/// is a bug to fix.
fn panicked(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic_message(payload.as_ref());
    error::ApiError::Internal(format!("a handler panicked: {what}")).into_response()
}

/// The message a panic carries (a `&str` or a `String`), for one log line.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message")
}

/// Stage timings a handler attaches to its response, for the request log.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    pub decode_ms: f64,
    pub queue_and_infer_ms: f64,
    pub cached: bool,
}

/// Counts and times every request, counts refusals by reason, and writes one
/// log line per request with its stage timings.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let grpc = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let route = if grpc {
        grpc_route(req.uri().path())
    } else {
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".to_owned())
    };
    let method = req.method().clone();
    let span = server_span(&req, &route, grpc);
    let trace_id = telemetry::continue_trace(&span, telemetry::incoming(req.headers()));
    if let Some(id) = &trace_id {
        span.record("trace_id", id.as_str());
    }
    let mut response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    // A gRPC error answers 200 with a `grpc-status` header: count the HTTP
    // status that status stands for.
    let grpc_code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<i32>().ok());
    let status = match grpc_code {
        Some(code) => error::http_status_of_grpc(tonic::Code::from(code)),
        None => response.status(),
    };
    let protocol = if grpc { "grpc" } else { "http" };
    state.metrics.request(protocol, &route, status.as_u16(), elapsed);
    let rejected = response.extensions().get::<Rejected>().map(|r| r.0);
    if let Some(reason) = rejected {
        state.metrics.reject(reason);
    }
    end_server_span(&span, grpc, grpc_code, status, rejected);
    if let Some(id) = trace_id.as_deref().and_then(|id| HeaderValue::from_str(id).ok()) {
        response.headers_mut().insert(telemetry::TRACE_ID_HEADER, id);
    }
    let stages = response.extensions().get::<StageTimes>().copied().unwrap_or_default();
    // The key's name, never the key.
    let key = response.extensions().get::<auth::Caller>().map(|c| c.name.clone());
    tracing::info!(
        %method,
        route,
        key = key.as_deref().unwrap_or("-"),
        status = status.as_u16(),
        ms = elapsed.as_secs_f64() * 1000.0,
        decode_ms = stages.decode_ms,
        queue_infer_ms = stages.queue_and_infer_ms,
        cached = stages.cached,
        trace_id = trace_id.as_deref().unwrap_or("-"),
        "request"
    );
    response
}

/// The server span of one request, named and described as OpenTelemetry's
/// semantic conventions for HTTP and RPC servers say. Its fields are what
/// the log shows on the lines written inside it; the rest are attributes
/// of the exported span alone.
fn server_span(req: &Request, route: &str, grpc: bool) -> tracing::Span {
    use tracing::field::Empty;
    let name = if grpc { route.trim_start_matches('/').to_owned() } else { format!("{} {route}", req.method()) };
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        trace_id = Empty
    );
    if !telemetry::enabled() {
        return span;
    }
    let version = match req.version() {
        axum::http::Version::HTTP_2 => "2",
        axum::http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    };
    span.set_attribute("network.protocol.version", version);
    if grpc {
        let (service, method) = route.trim_start_matches('/').split_once('/').unwrap_or((GRPC_SERVICE, "unmatched"));
        span.set_attribute("rpc.system", "grpc");
        span.set_attribute("rpc.service", service.to_owned());
        span.set_attribute("rpc.method", method.to_owned());
    } else {
        span.set_attribute("http.request.method", req.method().as_str().to_owned());
        span.set_attribute("http.route", route.to_owned());
        span.set_attribute("url.path", req.uri().path().to_owned());
        span.set_attribute("url.scheme", "http");
    }
    span
}

/// Records how a request ended on its span: the status, an error status
/// for a server fault (5xx; for gRPC the codes the RPC conventions call
/// errors), and the reason a refused request was shed.
fn end_server_span(
    span: &tracing::Span,
    grpc: bool,
    grpc_code: Option<i32>,
    status: axum::http::StatusCode,
    rejected: Option<&'static str>,
) {
    if !telemetry::enabled() {
        return;
    }
    let fault = if grpc {
        let code = tonic::Code::from(grpc_code.unwrap_or(0));
        span.set_attribute("rpc.grpc.status_code", i64::from(code as i32));
        use tonic::Code::*;
        matches!(code, Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss)
    } else {
        span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
        status.is_server_error()
    };
    if fault {
        span.record("otel.status_code", "ERROR");
        span.set_attribute("error.type", status.as_u16().to_string());
    }
    if let Some(reason) = rejected {
        span.set_attribute("lens.shed_reason", reason);
    }
}

/// The gRPC front's service; its RPCs are `/{GRPC_SERVICE}/{method}`.
pub const GRPC_SERVICE: &str = "inference.GRPCInferenceService";

/// The RPCs of the gRPC front, as the request metrics name them: one
/// series each, whatever paths clients make up.
pub const GRPC_METHODS: [&str; 12] = [
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
];

/// The route label of a gRPC call's path: `/inference.GRPCInferenceService/M`
/// for a method of [`GRPC_METHODS`], otherwise "unmatched".
fn grpc_route(path: &str) -> String {
    let method = path.strip_prefix('/').and_then(|p| p.strip_prefix(GRPC_SERVICE)).and_then(|p| p.strip_prefix('/'));
    match method {
        Some(m) if GRPC_METHODS.contains(&m) => path.to_owned(),
        _ => "unmatched".to_owned(),
    }
}

async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(render::CONTENT_SECURITY_POLICY));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
