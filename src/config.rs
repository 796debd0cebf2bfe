//! Command-line and environment configuration shared by the subcommands.
//!
//! Every setting is a flag with a `LENS_*` environment variable; the doc
//! comment of each field is its `--help` text.

use std::path::PathBuf;

use clap::Args;
use clap::builder::RangedU64ValueParser;

use crate::engine::SessionConfig;

/// The cores this process may use.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A clap parser for a count that must be at least 1.
fn at_least_one() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

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
    #[arg(long, env = "LENS_SESSIONS", value_parser = at_least_one())]
    pub sessions: Option<usize>,

    /// Intra-op threads per session.
    #[arg(long, env = "LENS_INTRA_THREADS", value_parser = at_least_one(), default_value_t = 1)]
    pub intra_threads: usize,

    /// Largest image accepted, in pixels (width x height), checked from the
    /// header before decoding.
    #[arg(long, env = "LENS_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,
}

impl ModelArgs {
    pub fn session_config(&self) -> SessionConfig {
        let default = SessionConfig::for_cores(available_cores());
        SessionConfig { sessions: self.sessions.unwrap_or(default.sessions), intra_threads: self.intra_threads }
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

/// `lens serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Address to listen on; port 0 picks a free port (printed at start-up).
    #[arg(long, env = "LENS_ADDR", default_value = "0.0.0.0:8000")]
    pub addr: String,

    /// A model repository: also serve every model under this folder, either a
    /// model directory (holding a model.toml) or `<name>/<version>/` version
    /// directories, of which the highest numbered is served. Enables the
    /// repository endpoints (`/v2/repository/...`). `/predict` uses the --model one.
    #[arg(long, env = "LENS_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,

    /// Look at --models-dir every SECS seconds: load new versions (warmed up,
    /// then swapped in; the old version drains), unload removed models.
    #[arg(long, env = "LENS_POLL_MODELS", value_name = "SECS", requires = "models_dir")]
    pub poll_models: Option<f64>,

    /// Where feedback and page uploads are stored.
    #[arg(long, env = "LENS_DATA_DIR", default_value = "var")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub batch: BatchArgs,

    /// Jobs that may wait for a model session; beyond it, 429. With --redis,
    /// the cap on the model's shared job stream (all API nodes together).
    #[arg(long, env = "LENS_QUEUE_CAPACITY", value_parser = at_least_one(), default_value_t = 256)]
    pub queue_capacity: usize,

    /// Requests admitted at once (decoding, queued or running); beyond it, 429.
    #[arg(long, env = "LENS_MAX_PENDING", value_parser = at_least_one(), default_value_t = 1024)]
    pub max_pending: usize,

    /// Per-request deadline in seconds: a job not answered by then gets 504 and
    /// is never inferred.
    #[arg(long, env = "LENS_DEADLINE_SECS", default_value_t = 30.0)]
    pub deadline_secs: f64,

    /// Result cache size in entries (0 disables the cache).
    #[arg(long, env = "LENS_CACHE_ENTRIES", default_value_t = 4096)]
    pub cache_entries: usize,

    /// Threads decoding and resizing images; default: one per core.
    #[arg(long, env = "LENS_DECODE_THREADS", value_parser = at_least_one())]
    pub decode_threads: Option<usize>,

    /// Largest request body in bytes (413 beyond).
    #[arg(long, env = "LENS_BODY_LIMIT", default_value_t = 10 * 1024 * 1024)]
    pub body_limit: usize,

    /// Most multipart parts accepted in one request.
    #[arg(long, env = "LENS_MAX_PARTS", value_parser = at_least_one(), default_value_t = 16)]
    pub max_parts: usize,

    /// Whole-request timeout in seconds (504 beyond).
    #[arg(long, env = "LENS_REQUEST_TIMEOUT_SECS", default_value_t = 60.0)]
    pub request_timeout_secs: f64,

    /// Log one JSON object per line instead of text.
    #[arg(long, env = "LENS_LOG_JSON")]
    pub log_json: bool,

    /// Test hook: sleep this many milliseconds in every model call, to make
    /// overload and deadline behaviour reproducible.
    #[arg(long, env = "LENS_DEBUG_SLOW_MS", default_value_t = 0, hide = true)]
    pub debug_slow_ms: u64,

    #[command(flatten)]
    pub redis: RedisArgs,

    /// With --redis: also run this many model workers in this process
    /// (each with --sessions sessions, default: cores / N). Without it an
    /// API node loads no model session.
    #[arg(long, env = "LENS_WORKERS", default_value_t = 0, requires = "redis")]
    pub workers: usize,

    /// With --redis: how long answers stay in the shared Redis cache, in
    /// seconds (0: no shared cache).
    #[arg(long, env = "LENS_REDIS_CACHE_TTL_SECS", default_value_t = 3600)]
    pub redis_cache_ttl_secs: u64,
}

/// Redis settings shared by `lens serve --redis` and `lens worker`.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL (redis://HOST:PORT[/DB]). `serve` then runs an API node whose
    /// jobs go to workers through Redis; `worker` needs it.
    #[arg(long, env = "LENS_REDIS")]
    pub redis: Option<String>,

    /// A job a worker took but did not acknowledge within this many
    /// milliseconds (the worker died) is reclaimed by another worker.
    #[arg(long, env = "LENS_VISIBILITY_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..))]
    pub visibility_timeout_ms: u64,

    /// A job delivered more than this many times goes to the dead-letter
    /// stream and its client gets a 500.
    #[arg(long, env = "LENS_MAX_DELIVERIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: u32,
}

/// `lens worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub batch: BatchArgs,

    /// Serve /health/live, /health/ready and /metrics on this address.
    #[arg(long, env = "LENS_HEALTH_ADDR")]
    pub health_addr: Option<String>,

    /// Log one JSON object per line instead of text.
    #[arg(long, env = "LENS_LOG_JSON")]
    pub log_json: bool,

    /// Test hook: sleep this many milliseconds in every model call.
    #[arg(long, env = "LENS_DEBUG_SLOW_MS", default_value_t = 0, hide = true)]
    pub debug_slow_ms: u64,
}

/// `lens feedback`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum FeedbackCommand {
    /// Write the reported images and feedback.csv into DIR, ready for relabelling.
    Export {
        /// Output folder.
        dir: PathBuf,
        /// Where the server stores feedback.
        #[arg(long, env = "LENS_DATA_DIR", default_value = "var")]
        data_dir: PathBuf,
        /// Export the reports every API node mirrored to this Redis
        /// (`lens:feedback`) instead of the local store.
        #[arg(long, env = "LENS_REDIS")]
        redis: Option<String>,
        /// With --redis: delete the exported reports from Redis afterwards.
        #[arg(long, requires = "redis")]
        drain: bool,
    },
}

/// `lens bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Measure pure inference over sessions x threads x batch (the default).
    #[arg(long)]
    pub model_only: bool,

    /// Measure decode + preprocess + inference of real photos, no HTTP.
    #[arg(long)]
    pub pipeline: bool,

    /// Seconds per configuration.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,

    /// Batch sizes to try in --model-only.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub batch_sizes: Vec<usize>,

    /// Photos to use; the first is the --model-only input.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "tests/fixtures/dog.jpeg,tests/fixtures/grace_hopper.jpg,tests/fixtures/coffee.png,tests/fixtures/chelsea.png"
    )]
    pub images: Vec<PathBuf>,
}

/// The batching rule, shared by `lens serve` and `lens worker`.
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// Largest batch given to one model call. On this project's 2-core
    /// measurements EfficientNet-Lite0 ran fastest per image at batch 1, and
    /// every image of batch adds to ONNX Runtime's memory arena, hence 1.
    #[arg(long, env = "LENS_MAX_BATCH", value_parser = at_least_one(), default_value_t = 1)]
    pub max_batch: usize,

    /// How long a partial batch may wait for more jobs, in milliseconds (0: never).
    #[arg(long, env = "LENS_MAX_WAIT_MS", default_value_t = 0)]
    pub max_wait_ms: u64,
}

impl BatchArgs {
    pub fn config(&self) -> crate::batcher::BatchConfig {
        crate::batcher::BatchConfig {
            max_batch: self.max_batch,
            max_wait: std::time::Duration::from_millis(self.max_wait_ms),
        }
    }
}
