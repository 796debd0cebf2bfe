//! Lens: an image-classification serving system.
//!
//! One binary serves an upload page, the original Flask service's JSON API,
//! the KServe Open Inference Protocol (v2) over HTTP and gRPC, and Prometheus
//! metrics, with a dynamic batcher in front of OpenVINO or ONNX Runtime.
//! The user guides are in the repository's `docs/` folder; this documentation
//! is for changing the code.
//!
//! # The data path
//!
//! A request travels one straight path:
//!
//! ```text
//! HTTP (axum) / gRPC (tonic)
//!   -> validate, then decode on a bounded CPU pool     (http, grpc, predictor, preprocess)
//!   -> result cache / coalesce identical requests       (cache)
//!   -> job queue: in-process, or a Redis stream         (queue, redis)
//!   -> batcher: max batch size, max wait                (batcher)
//!   -> model session on its own thread, in an engine    (sessions, engine)
//!   -> reply to the waiting request                     (job, ranking)
//! ```
//!
//! Every step is bounded: the admission permits, the decode pool and its
//! memory budget ([`memory_budget`]), the queue's capacity; [`cost`] lists
//! what one request may cost and which limit bounds it.
//!
//! Scaled out (`lens serve --redis`), the job queue is a Redis stream, and
//! the batcher and model sessions run in `lens worker` processes on any
//! machine; the code above the queue does not know which queue it talks to
//! ([`queue::JobQueue`] is the seam), nor which engine runs the model
//! ([`engine::Classifier`]). `docs/deployment.md` describes the Redis protocol.
//!
//! # Layout
//!
//! Dependencies point one way: each module below names only modules listed
//! after it (the subcommands at the top, plain data at the bottom), and
//! `python3 ../shared/tools/cycles.py src` finds no cycle.
//!
//! - [`serve`]: `lens serve`: builds the models' queues and predictors and the
//!   HTTP state, runs until a signal, drains.
//! - [`worker`]: `lens worker`, a model worker on a Redis job stream.
//! - [`cli`]: the offline subcommands: `lens predict`, `lens eval`, `lens bench`,
//!   `lens feedback export`.
//! - [`config`]: command-line and `LENS_*` environment settings.
//! - [`version`]: what `lens --version` prints: version, commit, engines.
//! - [`grpc`]: the Open Inference Protocol over gRPC (tonic), a second front
//!   on the `/v2` handlers' inference path, behind the same middleware.
//! - [`http`]: routes, handlers, the upload and review pages, errors to
//!   responses, the accept loop (HTTP/1.1, and HTTP/2 for gRPC).
//! - [`redis`]: the Redis side (one server, or Sentinels whose failovers its
//!   connections follow): [`redis::RedisQueue`], [`redis::RedisCache`],
//!   the feedback mirror, and the wire codec, keys and timings workers share.
//! - [`predictor`]: the prediction path every endpoint shares (admission,
//!   cache and coalescing, decode pool, queue, deadline). Knows no backend.
//! - [`batcher`]: the batching rule, [`batcher::run_batch`] (the one batch
//!   step) and the in-process batcher loop.
//! - [`queue`]: the [`queue::JobQueue`] seam and the in-process [`queue::LocalQueue`].
//! - [`cache`]: the result cache, in-flight coalescing, the shared-cache seam.
//! - [`sessions`]: model sessions on their own OS threads; loading them.
//! - [`engine`]: the model session behind the synchronous [`engine::Classifier`] trait.
//! - [`feedback`]: durable feedback (SQLite), content-addressed images, review
//!   decisions and the CSV / JSON Lines / ImageFolder exports.
//! - [`disk`]: byte caps, LRU eviction and full-disk detection for the image stores.
//! - [`memory_budget`]: the bytes that concurrent decodes may hold together.
//! - [`cost`]: the cost model: what one request may cost, and which limit
//!   bounds each cost.
//! - [`ranking`]: probabilities to ranked, labelled answers.
//! - [`job`]: a job, its input and its answer, whatever queue carries it.
//! - [`preprocess`]: hostile-input-safe decode, EXIF orientation, crop and resize.
//! - [`model`]: a model directory (`model.toml`, ONNX file, labels).
//! - [`metrics`]: Prometheus metrics.
//! - [`telemetry`]: OpenTelemetry traces over OTLP, set by the standard
//!   `OTEL_*` variables; the W3C context in and out (HTTP headers, gRPC
//!   metadata, Redis jobs).
//! - [`shutdown`]: SIGTERM and Ctrl-C as a cancellation token.
//! - [`cpu_policy`]: the Linux scheduling policy every thread runs under.

pub mod batcher;
pub mod cache;
pub mod cli;
pub mod config;
pub mod cost;
pub mod cpu_policy;
pub mod disk;
pub mod engine;
pub mod feedback;
pub mod grpc;
pub mod http;
pub mod job;
pub mod memory_budget;
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
pub mod telemetry;
pub mod version;
pub mod worker;
