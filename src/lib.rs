//! Lens: an image-classification serving system.
//!
//! A request travels one straight path:
//!
//! ```text
//! HTTP (axum) -> validate, decode on a bounded CPU pool -> cache / coalesce
//!   -> job queue -> batcher -> model session (ONNX Runtime) -> reply
//! ```
//!
//! # Layout
//!
//! - [`config`]: command-line and `LENS_*` environment settings.
//! - [`model`]: a model directory (`model.toml`, ONNX file, labels).
//! - [`preprocess`]: hostile-input-safe decode, EXIF orientation, crop and resize.
//! - [`engine`]: the model session (ONNX Runtime) behind a small synchronous trait.
//! - [`prediction`]: probabilities to ranked, labelled answers.
//! - [`job`]: a job and its answer, whatever queue carries it.
//! - [`queue`]: the job queue seam (in-process channel).
//! - [`batcher`]: the batching rule and the in-process batcher loop.
//! - [`sessions`]: model sessions on their own OS threads.
//! - [`cache`]: the result cache and in-flight coalescing.
//! - [`service`]: the prediction path every endpoint shares.
//! - [`http`]: routes, handlers, the upload page, errors to responses.
//! - [`feedback`]: durable feedback (SQLite) and content-addressed images.
//! - [`metrics`]: Prometheus metrics.
//! - [`serve`]: `lens serve`; [`predict`]: `lens predict`.

pub mod batcher;
pub mod cache;
pub mod config;
pub mod engine;
pub mod feedback;
pub mod http;
pub mod job;
pub mod metrics;
pub mod model;
pub mod predict;
pub mod prediction;
pub mod preprocess;
pub mod queue;
pub mod serve;
pub mod service;
pub mod sessions;
