//! Command-line and environment configuration shared by the subcommands.
//!
//! Every setting is a flag with a `LENS_*` environment variable; the doc
//! comment of each field is its `--help` text.

use std::path::PathBuf;

use clap::Args;
use clap::builder::RangedU64ValueParser;

use crate::engine::{EngineOptions, SessionConfig, this_cpu_has_native_bf16};
use crate::feedback::{ExportFormat, ReviewStatus};
use crate::model::{EngineChoice, ModelSpec, PrecisionChoice};
use crate::redis::conn::{self, ConfigError, PASSWORD_ENV, TlsFiles};

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

    /// Inference engine: onnxruntime, openvino, or auto (OpenVINO when it
    /// compiles and runs the model, else ONNX Runtime, with a warning).
    /// Default: model.toml's `engine`, else auto.
    #[arg(long, env = "LENS_ENGINE")]
    pub engine: Option<EngineChoice>,

    /// Precision inside the model: fp32, bf16 (OpenVINO only), int8 (the
    /// model directory's `model.int8.onnx` variant, either engine), or auto
    /// (int8 when that variant's report shows it verified against fp32 and
    /// the CPU has AVX2; else bf16 on OpenVINO when the CPU has avx512_bf16 or
    /// amx_bf16; else fp32).
    /// Default: model.toml's `precision`, else fp32 (bf16 measured slower
    /// than fp32 for the default model on this project's machines).
    #[arg(long, env = "LENS_PRECISION")]
    pub precision: Option<PrecisionChoice>,

    /// Path to libopenvino_c.so.*; by default the one in the project's .venv.
    #[arg(long, env = "LENS_OPENVINO_LIB")]
    pub openvino_lib: Option<PathBuf>,

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

    /// The engine settings for a model: the flags, else its model.toml, else auto.
    pub fn engine_options(&self, spec: &ModelSpec) -> EngineOptions {
        EngineOptions {
            engine: self.engine.or(spec.engine).unwrap_or_default(),
            precision: self.precision.or(spec.precision).unwrap_or(PrecisionChoice::Fp32),
            ort_lib: self.ort_lib.clone(),
            openvino_lib: self.openvino_lib.clone(),
            cpu_bf16: this_cpu_has_native_bf16(),
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

/// `lens serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Address to listen on; port 0 picks a free port (printed at start-up).
    #[arg(long, env = "LENS_ADDR", default_value = "0.0.0.0:8000")]
    pub addr: String,

    /// Address of the gRPC endpoint (the Open Inference Protocol's
    /// `inference.GRPCInferenceService`, as Triton serves it on 8001); an
    /// empty value turns it off. Port 0 picks a free port (printed at start-up).
    #[arg(long, env = "LENS_GRPC_ADDR", default_value = "0.0.0.0:8001")]
    pub grpc_addr: String,

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
    /// It also caps the cache misses one node works on at once (decoding,
    /// queued or running): a miss beyond it gets its 429 before its image is
    /// decoded, so overload does not spend the CPU on decodes it then refuses.
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

    /// Threads decoding and resizing images; default: one per model session
    /// (so one per core), or one per core on an API node with --redis.
    #[arg(long, env = "LENS_DECODE_THREADS", value_parser = at_least_one())]
    pub decode_threads: Option<usize>,

    /// Memory in MiB that concurrent decodes may hold together. Each decode
    /// reserves what its header says it needs, conversion copies included (a
    /// 12 MP JPEG, DCT-scaled: about 2 MiB; a 20 MP RGBA PNG: 160 MiB), and
    /// waits while the budget is spent; an image that needs more than the
    /// whole budget is refused (413).
    #[arg(long, env = "LENS_DECODE_MEMORY_MB", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 128)]
    pub decode_memory_mb: u64,

    /// Largest request body in bytes (413 beyond).
    #[arg(long, env = "LENS_BODY_LIMIT", default_value_t = 10 * 1024 * 1024)]
    pub body_limit: usize,

    /// Memory in MiB that request bodies being read or waiting to be decoded
    /// may hold together. A body takes memory as its bytes arrive (twice
    /// them while it is read), never for bytes it only declares; past the
    /// budget, bodies wait, except the oldest one being read.
    #[arg(long, env = "LENS_BODY_MEMORY_MB", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 64)]
    pub body_memory_mb: u64,

    /// Seconds a request body may send nothing before it is answered 408 and
    /// its connection closed.
    #[arg(long, env = "LENS_BODY_TIMEOUT_SECS", default_value_t = 10.0)]
    pub body_timeout_secs: f64,

    /// Seconds an idle connection may take to send a whole request head: a
    /// connection that sends nothing, half a head, or stays idle between
    /// keep-alive requests for longer is closed.
    #[arg(long, env = "LENS_HEADER_TIMEOUT_SECS", default_value_t = 10.0)]
    pub header_timeout_secs: f64,

    /// Most connections open at once; more wait in the accept queue.
    #[arg(long, env = "LENS_MAX_CONNECTIONS", value_parser = at_least_one(), default_value_t = 4096)]
    pub max_connections: usize,

    /// Most multipart parts accepted in one request.
    #[arg(long, env = "LENS_MAX_PARTS", value_parser = at_least_one(), default_value_t = 16)]
    pub max_parts: usize,

    /// Whole-request timeout in seconds (504 beyond).
    #[arg(long, env = "LENS_REQUEST_TIMEOUT_SECS", default_value_t = 60.0)]
    pub request_timeout_secs: f64,

    /// Log one JSON object per line instead of text. Each request's line
    /// carries its `trace_id`; traces themselves are exported over OTLP
    /// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (docs/operations.md, "Tracing").
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

    #[command(flatten)]
    pub access: AccessArgs,

    /// Most bytes the images uploaded through the page may take on disk
    /// (each file counted in whole 4 KiB blocks); past it the least recently
    /// used are evicted.
    #[arg(long, env = "LENS_UPLOADS_MAX_BYTES", default_value_t = 1 << 30)]
    pub uploads_max_bytes: u64,

    /// Most bytes the images kept with feedback may take on disk; past it
    /// the least recently used are evicted (their reports stay). An image
    /// larger than the whole cap is not kept, and the answer says so.
    #[arg(long, env = "LENS_FEEDBACK_MAX_BYTES", default_value_t = 1 << 30)]
    pub feedback_max_bytes: u64,

    /// Most reports the feedback database keeps; past it new reports get 507.
    #[arg(long, env = "LENS_FEEDBACK_MAX_REPORTS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 1_000_000)]
    pub feedback_max_reports: u64,
}

/// An API key from the command line or `LENS_API_KEY`; its `Debug` hides it.
#[derive(Clone)]
pub struct ApiKey(pub String);

impl std::str::FromStr for ApiKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let key = s.trim();
        if key.is_empty() || key.contains(|c: char| c.is_whitespace() || c == ':') {
            return Err("an API key must be non-empty, without spaces or `:`".into());
        }
        Ok(ApiKey(key.to_owned()))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

/// Who may call `lens serve`, and how much each client may ask of it.
#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    /// An API key (repeatable; `LENS_API_KEY` takes a comma-separated list).
    /// Once any key is set, every endpoint but /health/* needs it, as
    /// `Authorization: Bearer KEY` or HTTP Basic with KEY as the password.
    /// These keys are admin keys.
    #[arg(long = "api-key", env = "LENS_API_KEY", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<ApiKey>,

    /// A file of API keys, one `name:key[:admin]` per line (`#` comments);
    /// reloaded on SIGHUP. Giving it turns authentication on.
    #[arg(long, env = "LENS_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// With keys: /metrics needs a key too (by default it stays open).
    #[arg(long, env = "LENS_METRICS_AUTH")]
    pub metrics_auth: bool,

    /// Requests per second each client may make (a token bucket per API key,
    /// or per client IP when keys are off); beyond it, 429 with Retry-After.
    #[arg(long, env = "LENS_RATE_LIMIT")]
    pub rate_limit: Option<f64>,

    /// Bucket size of --rate-limit: requests a client may make at once
    /// after a quiet spell; default: one second's worth.
    #[arg(long, env = "LENS_RATE_BURST", value_parser = clap::value_parser!(u32).range(1..), requires = "rate_limit")]
    pub rate_burst: Option<u32>,

    /// Feedback reports each client may send per minute (a bucket of that
    /// many, refilled evenly); beyond it, 429 with Retry-After.
    #[arg(long, env = "LENS_FEEDBACK_PER_MINUTE", value_parser = clap::value_parser!(u32).range(1..), default_value_t = 60)]
    pub feedback_per_minute: u32,

    /// Requests one client may have in flight at once; beyond it, 429.
    #[arg(long, env = "LENS_MAX_INFLIGHT_PER_CLIENT", value_parser = at_least_one())]
    pub max_inflight_per_client: Option<usize>,

    /// Most clients the limits track at once; beyond it, new clients share one bucket.
    #[arg(long, env = "LENS_MAX_CLIENTS", value_parser = at_least_one(), default_value_t = 65_536)]
    pub max_clients: usize,

    /// Identify clients by the last address in X-Forwarded-For (the one your
    /// reverse proxy adds). Only behind a proxy that sets it.
    #[arg(long, env = "LENS_TRUST_PROXY")]
    pub trust_proxy: bool,
}

/// Redis settings shared by `lens serve --redis` and `lens worker`. Its
/// `Debug` shows the URL redacted.
#[derive(Clone, Args)]
pub struct RedisArgs {
    /// Redis URL: `redis://[USER[:PASSWORD]@]HOST[:PORT][/DB]`, or `rediss://`
    /// for TLS; or Sentinels that name the primary and follow its failovers:
    /// `redis+sentinel://[USER[:PASSWORD]@]HOST:PORT,HOST:PORT,.../SERVICE[/DB]`
    /// (`rediss+sentinel://` for TLS to Sentinels and data nodes). `serve` then runs an API node whose jobs go to workers
    /// through Redis; `worker` needs it. Without a password in the URL, the
    /// one in LENS_REDIS_PASSWORD is used. Passwords are never logged.
    #[arg(long, env = "LENS_REDIS", hide_env_values = true)]
    pub redis: Option<String>,

    /// With rediss://: PEM file of the CAs that may sign the Redis server's
    /// certificate, instead of the system's trust store.
    #[arg(long, env = "LENS_REDIS_CA_FILE", requires = "redis")]
    pub redis_ca_file: Option<PathBuf>,

    /// With rediss://: PEM client certificate (chain) for mutual TLS; needs
    /// --redis-client-key.
    #[arg(long, env = "LENS_REDIS_CLIENT_CERT", requires_all = ["redis", "redis_client_key"])]
    pub redis_client_cert: Option<PathBuf>,

    /// With rediss://: PEM private key of --redis-client-cert.
    #[arg(long, env = "LENS_REDIS_CLIENT_KEY", requires_all = ["redis", "redis_client_cert"])]
    pub redis_client_key: Option<PathBuf>,

    /// With Redis replicas: each job counts as queued only once this many
    /// replicas acknowledged it (Redis `WAIT`, up to 1 s); otherwise the
    /// request is answered 503. 0: no waiting. Adds one replication round trip per job.
    #[arg(long, env = "LENS_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// A job a worker took but did not acknowledge within this many
    /// milliseconds (the worker died) is reclaimed by another worker.
    #[arg(long, env = "LENS_VISIBILITY_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..))]
    pub visibility_timeout_ms: u64,

    /// A job delivered more than this many times goes to the dead-letter
    /// stream and its client gets a 500.
    #[arg(long, env = "LENS_MAX_DELIVERIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: u32,
}

impl std::fmt::Debug for RedisArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisArgs")
            .field("redis", &self.redis.as_deref().map(conn::redact))
            .field("redis_ca_file", &self.redis_ca_file)
            .field("redis_client_cert", &self.redis_client_cert)
            .field("redis_client_key", &self.redis_client_key)
            .field("visibility_timeout_ms", &self.visibility_timeout_ms)
            .field("max_deliveries", &self.max_deliveries)
            .finish()
    }
}

impl RedisArgs {
    /// The Redis client, if `--redis` is set, with every setting checked
    /// (URL, TLS files, password from [`PASSWORD_ENV`]) and no connection
    /// made: callers build it before anything slow, such as loading a model.
    pub fn client(&self) -> Result<Option<crate::redis::conn::Redis>, ConfigError> {
        let Some(url) = &self.redis else { return Ok(None) };
        let tls = TlsFiles {
            ca_file: self.redis_ca_file.clone(),
            client_cert: self.redis_client_cert.clone(),
            client_key: self.redis_client_key.clone(),
        };
        conn::client(url, &tls, std::env::var(PASSWORD_ENV).ok().as_deref()).map(Some)
    }
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

    /// Log one JSON object per line instead of text. Each request's line
    /// carries its `trace_id`; traces themselves are exported over OTLP
    /// when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (docs/operations.md, "Tracing").
    #[arg(long, env = "LENS_LOG_JSON")]
    pub log_json: bool,

    /// Test hook: sleep this many milliseconds in every model call.
    #[arg(long, env = "LENS_DEBUG_SLOW_MS", default_value_t = 0, hide = true)]
    pub debug_slow_ms: u64,
}

/// `lens feedback`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum FeedbackCommand {
    /// Write the reports and their images into DIR: a CSV (the default), JSON
    /// Lines, or an ImageFolder tree (`DIR/<label>/<sha256>.<ext>`) for `lens eval`
    /// and training.
    Export(ExportArgs),
}

/// `lens feedback export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Output folder.
    pub dir: PathBuf,
    /// csv: DIR/feedback.csv and DIR/images/; jsonl: DIR/feedback.jsonl and
    /// DIR/images/; imagefolder: `DIR/<label>/<sha256>.<ext>`, the label being the
    /// reviewer's, else the reporter's (rejected reports and reports without an
    /// image or label are skipped).
    #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
    pub format: ExportFormat,
    /// Only reports with these review statuses (comma-separated), e.g.
    /// `accepted,relabelled` for everything a reviewer approved. Default: all.
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "redis")]
    pub status: Vec<ReviewStatus>,
    /// Where the server stores feedback.
    #[arg(long, env = "LENS_DATA_DIR", default_value = "var")]
    pub data_dir: PathBuf,
    /// Export the reports every API node mirrored to this Redis
    /// (`lens:feedback`) instead of the local store. Review decisions stay in
    /// each node's store, so these reports are all pending.
    #[arg(long, env = "LENS_REDIS")]
    pub redis: Option<String>,
    /// With --redis: delete the exported reports from Redis afterwards.
    #[arg(long, requires = "redis")]
    pub drain: bool,
}

/// `lens quantize`.
#[derive(Debug, Clone, Args)]
pub struct QuantizeArgs {
    /// Model directory (model.toml and its ONNX file); the int8 variant and
    /// its report are written beside the fp32 file (`model.int8.onnx`,
    /// `model.int8.json`).
    pub model_dir: PathBuf,

    /// Photos like the ones the model will see: files or folders (searched
    /// recursively; files are recognised by content, so the upload store or a
    /// `lens feedback export` folder serves as is). Every fourth is held out
    /// to verify the variant and never calibrated on.
    #[arg(long, required = true, num_args = 1..)]
    pub calibration: Vec<PathBuf>,

    /// Most photos to calibrate on.
    #[arg(long, default_value_t = 300, value_parser = at_least_one())]
    pub samples: usize,

    /// Refuse to write a variant whose top-1 agrees with fp32 on a smaller
    /// share of the held-out photos (on every engine measured).
    #[arg(long, default_value_t = 0.97)]
    pub min_agreement: f64,

    /// Engines to verify and time fp32 against int8 on: both, onnxruntime,
    /// openvino (none: verify on ONNX Runtime, no timing).
    #[arg(long, value_enum, default_value_t = QuantizeBench::Both)]
    pub bench: QuantizeBench,
}

/// Which engines `lens quantize` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantizeBench {
    Both,
    Onnxruntime,
    Openvino,
    None,
}

impl QuantizeBench {
    pub fn as_str(self) -> &'static str {
        match self {
            QuantizeBench::Both => "both",
            QuantizeBench::Onnxruntime => "onnxruntime",
            QuantizeBench::Openvino => "openvino",
            QuantizeBench::None => "none",
        }
    }
}

/// `lens eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// The second accuracy printed: top-K (top-1 is always printed).
    #[arg(long, short = 'k', default_value_t = 5, value_parser = at_least_one())]
    pub top_k: usize,

    /// Print one JSON summary object instead of text (and no progress bar).
    #[arg(long)]
    pub json: bool,

    /// A CSV file of `folder,label` lines mapping folder names to the model's
    /// labels (`#` starts a comment); unmapped folders must be labels already.
    #[arg(long)]
    pub labels_map: Option<PathBuf>,

    /// A second model directory (or a copy of this one whose model.toml
    /// differs, e.g. in preprocessing) to evaluate on the same images; prints
    /// the difference and the photos on which the two disagree.
    #[arg(long)]
    pub compare: Option<PathBuf>,

    /// Run the comparison in this precision (fp32, bf16, int8, auto); alone,
    /// it compares this model with itself in that precision, e.g.
    /// `--precision fp32 --compare-precision int8` puts fp32 and int8 side by side.
    #[arg(long)]
    pub compare_precision: Option<PrecisionChoice>,

    /// An ImageFolder tree: one subfolder per class, named as the model's labels.
    pub dir: PathBuf,
}

/// `lens bench`. Its own model flags, not [`ModelArgs`]: here `--engine`
/// and `--precision` are lists, one row per engine x precision.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Model directory holding model.toml, the ONNX file and the labels.
    #[arg(long, env = "LENS_MODEL", default_value = "models/efficientnet-lite0")]
    pub model: PathBuf,

    /// Path to libonnxruntime.so.1.*; by default the one in the project's .venv.
    #[arg(long, env = "LENS_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,

    /// Path to libopenvino_c.so.*; by default the one in the project's .venv.
    #[arg(long, env = "LENS_OPENVINO_LIB")]
    pub openvino_lib: Option<PathBuf>,

    /// Engines to measure (onnxruntime, openvino, auto), comma-separated.
    #[arg(long = "engine", value_delimiter = ',', default_value = "onnxruntime,openvino")]
    pub engines: Vec<EngineChoice>,

    /// Precisions to measure (fp32, bf16, int8, auto), comma-separated;
    /// combinations an engine cannot run (ONNX Runtime bf16, int8 without a
    /// variant) print a `skipped` row.
    #[arg(long = "precision", value_delimiter = ',', default_value = "fp32,bf16,int8")]
    pub precisions: Vec<PrecisionChoice>,

    /// Largest image accepted, in pixels.
    #[arg(long, env = "LENS_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,

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

    /// Photos to use, or directories of them (every image inside,
    /// recursively; other files are skipped); the first is the --model-only
    /// input.
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
