//! Command-line and environment configuration shared by the subcommands.
//!
//! Every setting is a flag with a `LENS_*` environment variable; the doc
//! comment of each field is its `--help` text.

use std::path::PathBuf;

use clap::Args;

use crate::engine::SessionConfig;

/// Which model to load and how to run it.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory holding model.toml, the ONNX file and the labels.
    #[arg(long, env = "LENS_MODEL", default_value = "models/efficientnet-lite0")]
    pub model: PathBuf,

    /// Path to libonnxruntime.so.1.*; by default the one in the project's .venv.
    #[arg(long, env = "LENS_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,

    /// Model sessions (instances) run in parallel; default: one per core.
    #[arg(long, env = "LENS_SESSIONS")]
    pub sessions: Option<usize>,

    /// Intra-op threads per session.
    #[arg(long, env = "LENS_INTRA_THREADS", default_value_t = 1)]
    pub intra_threads: usize,

    /// Largest image accepted, in pixels (width x height), checked from the
    /// header before decoding.
    #[arg(long, env = "LENS_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,
}

impl ModelArgs {
    pub fn session_config(&self) -> SessionConfig {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let default = SessionConfig::for_cores(cores);
        SessionConfig {
            sessions: self.sessions.unwrap_or(default.sessions).max(1),
            intra_threads: self.intra_threads.max(1),
        }
    }
}

/// `lens predict`.
#[derive(Debug, Clone, Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// How many classes to print per image.
    #[arg(long, short = 'k', default_value_t = 5)]
    pub top_k: usize,

    /// Print one JSON object per image instead of text.
    #[arg(long)]
    pub json: bool,

    /// Image files or folders (folders are searched recursively).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}
