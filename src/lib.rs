//! Lens: an image-classification serving system.
//!
//! A request travels one straight path:
//!
//! ```text
//! HTTP (axum) -> validate, decode on a bounded CPU pool -> cache / coalesce
//!   -> job queue -> batcher -> model session (OpenVINO or ONNX Runtime) -> reply
//! ```
//!
//! Scaled out (`lens serve --redis`), the job queue is a Redis stream, and
//! the batcher and model sessions run in `lens worker` processes on any
//! machine; the README's "Scaling out on Redis" section describes the protocol.
//!
//! # Layout
//!
//! - [`config`]: command-line and `LENS_*` environment settings.
//! - [`model`]: a model directory (`model.toml`, ONNX file, labels).
//! - [`preprocess`]: hostile-input-safe decode, EXIF orientation, crop and resize.
//! - [`engine`]: the model session (ONNX Runtime or OpenVINO, fp32 or bf16)
//!   behind a small synchronous trait, and the choice between them.
//! - [`prediction`]: probabilities to ranked, labelled answers.
//! - [`job`]: a job and its answer, whatever queue carries it.
//! - [`queue`]: the job queue seam (in-process channel or Redis stream).
//! - [`batcher`]: the batching rule and the in-process batcher loop.
//! - [`sessions`]: model sessions on their own OS threads.
//! - [`redis_queue`]: the Redis Streams protocol, API-node side (admission,
//!   reply routing, worker liveness, shared cache, feedback mirror).
//! - [`worker`]: `lens worker`, a model worker on a Redis job stream.
//! - [`cache`]: the result cache and in-flight coalescing.
//! - [`service`]: the prediction path every endpoint shares.
//! - [`http`]: routes, handlers, the upload page, errors to responses.
//! - [`feedback`]: durable feedback (SQLite) and content-addressed images.
//! - [`metrics`]: Prometheus metrics.
//! - [`serve`]: `lens serve`; [`predict`]: `lens predict`; [`bench`]: `lens bench`.

pub mod batcher;
pub mod cache;
pub mod cli;
pub mod config;
pub mod engine;
pub mod feedback;
pub mod http;
pub mod job;
pub mod metrics;
pub mod model;
pub mod predictor;
pub mod preprocess;
pub mod queue;
pub mod ranking;
pub mod redis;
pub mod serve;
pub mod sessions;
pub mod shutdown;
pub mod worker;
