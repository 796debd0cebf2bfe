//! Lens: an image-classification serving system.
//!
//! # Layout
//!
//! - [`model`]: a model directory (`model.toml`, ONNX file, labels).
//! - [`preprocess`]: hostile-input-safe decode, EXIF orientation, crop and resize.
//! - [`engine`]: the model session (ONNX Runtime) behind a small synchronous trait.
//! - [`prediction`]: probabilities to ranked, labelled answers.
//! - [`config`]: command-line and `LENS_*` environment settings.
//! - [`predict`]: `lens predict`, offline classification on the serving code path.

pub mod config;
pub mod engine;
pub mod model;
pub mod predict;
pub mod prediction;
pub mod preprocess;
