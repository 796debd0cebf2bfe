//! Prometheus metrics: every name, bucket layout and helper lives here.
//!
//! Durations are in seconds; failure reasons are labels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub protocol: &'static str,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    pub protocol: &'static str,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stage {
    pub stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

/// A model and the engine and precision it runs with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelRuntime {
    pub model: String,
    pub engine: &'static str,
    pub precision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    pub store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreReason {
    pub store: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabel {
    /// The key's name, never the key.
    pub key: String,
}

/// The metrics of one on-disk image store, kept by the store itself.
#[derive(Clone, Default)]
pub struct StoreMetrics {
    /// Bytes charged (whole 4 KiB blocks per file).
    pub bytes: Gauge,
    pub files: Gauge,
    pub cap_bytes: Gauge,
    pub evictions: Counter,
    /// Writes refused, by reason (`cap`, `disk_full`, `io`).
    pub refused: Family<StoreReason, Counter>,
    pub store: &'static str,
}

impl StoreMetrics {
    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&StoreReason { store: self.store, reason }).inc();
    }
}

/// Pipeline stages timed by [`Metrics::stage`].
pub const DECODE: &str = "decode";
pub const QUEUE_WAIT: &str = "queue_wait";
pub const INFERENCE: &str = "inference";

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~65 s
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
}

/// All of Lens's metrics. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub request_seconds: Family<Route, Histogram, fn() -> Histogram>,
    pub stage_seconds: Family<Stage, Histogram, fn() -> Histogram>,
    /// Jobs queued per model, kept by each queue (in-process: the channel;
    /// Redis: the job stream's length as last seen).
    pub queue_depth: Family<ModelLabel, Gauge>,
    /// 1 per served model, labelled with its engine and precision.
    pub model_info: Family<ModelRuntime, Gauge>,
    pub batch_size: Histogram,
    /// Images that went through the model.
    pub inferred_images: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// Requests answered by another request's in-flight inference.
    pub coalesced: Counter,
    /// Requests refused: bad input, overload, timeouts, unavailability.
    pub rejected: Family<Reason, Counter>,
    /// Jobs dropped before inference: deadline passed or client gone.
    pub dropped_jobs: Family<Reason, Counter>,
    /// Requests let in, by the API key's name.
    pub key_requests: Family<KeyLabel, Counter>,
    /// API keys currently loaded.
    pub api_keys: Gauge,
    /// Clients the per-client limits track.
    pub tracked_clients: Gauge,
    /// Jobs an API node put on a Redis stream again because Redis lost them
    /// (a restart, or a failover to a replica that lacked them).
    pub requeued_jobs: Counter,
    /// Redis failovers followed, and connections made to a primary, by
    /// connections that follow Sentinels.
    redis: crate::redis::conn::sentinel::Events,
    store_bytes: Family<StoreLabel, Gauge>,
    store_files: Family<StoreLabel, Gauge>,
    store_cap: Family<StoreLabel, Gauge>,
    store_evictions: Family<StoreLabel, Counter>,
    store_refused: Family<StoreReason, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lens");
        let m = Metrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            stage_seconds: Family::new_with_constructor(latency_histogram),
            queue_depth: Family::default(),
            model_info: Family::default(),
            batch_size: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            inferred_images: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            coalesced: Counter::default(),
            rejected: Family::default(),
            dropped_jobs: Family::default(),
            key_requests: Family::default(),
            api_keys: Gauge::default(),
            tracked_clients: Gauge::default(),
            requeued_jobs: Counter::default(),
            redis: Default::default(),
            store_bytes: Family::default(),
            store_files: Family::default(),
            store_cap: Family::default(),
            store_evictions: Family::default(),
            store_refused: Family::default(),
            registry: Registry::default(),
        };
        registry.register("http_requests", "HTTP requests by route and status", m.requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency", m.request_seconds.clone());
        registry.register("stage_duration_seconds", "Time per pipeline stage", m.stage_seconds.clone());
        registry.register("queue_depth", "Jobs waiting for a model session", m.queue_depth.clone());
        registry.register("model_info", "Served models, by engine and precision (always 1)", m.model_info.clone());
        registry.register("batch_size", "Images per model call", m.batch_size.clone());
        registry.register("inferred_images", "Images run through the model", m.inferred_images.clone());
        registry.register("cache_hits", "Result cache hits", m.cache_hits.clone());
        registry.register("cache_misses", "Result cache misses", m.cache_misses.clone());
        registry.register(
            "coalesced_requests",
            "Requests served by an identical in-flight request",
            m.coalesced.clone(),
        );
        registry.register("rejected_requests", "Requests refused, by reason", m.rejected.clone());
        registry.register(
            "requeued_jobs",
            "Jobs put on a Redis stream again after Redis lost them",
            m.requeued_jobs.clone(),
        );
        registry.register(
            "redis_failovers",
            "Moves to a new Redis primary named by Sentinels",
            m.redis.failovers.clone(),
        );
        registry.register(
            "redis_reconnects",
            "Connections made to a Redis primary named by Sentinels",
            m.redis.reconnects.clone(),
        );
        registry.register("dropped_jobs", "Jobs dropped before inference, by reason", m.dropped_jobs.clone());
        registry.register("key_requests", "Requests let in, by API key name", m.key_requests.clone());
        registry.register("api_keys", "API keys loaded", m.api_keys.clone());
        registry.register("tracked_clients", "Clients tracked by the per-client limits", m.tracked_clients.clone());
        registry.register("store_bytes", "Bytes an image store takes (whole 4 KiB blocks)", m.store_bytes.clone());
        registry.register("store_files", "Files in an image store", m.store_files.clone());
        registry.register("store_cap_bytes", "An image store's cap in bytes", m.store_cap.clone());
        registry.register("store_evictions", "Images evicted to stay under the cap", m.store_evictions.clone());
        registry.register("store_refused_writes", "Images not stored, by reason", m.store_refused.clone());
        registry.register(
            "trace_spans_dropped",
            "Trace spans not exported, by reason (queue_full, export_failed)",
            crate::telemetry::spans_dropped().clone(),
        );
        registry.register(
            "trace_spans_exported",
            "Trace spans the collector accepted",
            crate::telemetry::spans_exported().clone(),
        );
        Metrics { registry, ..m }
    }

    /// The queue depth gauge of `model`, for its queue to keep.
    pub fn queue_depth(&self, model: &str) -> Gauge {
        self.queue_depth.get_or_create(&ModelLabel { model: model.to_owned() }).clone()
    }

    /// The metrics of the image store `store`, for the store to keep.
    pub fn store(&self, store: &'static str) -> StoreMetrics {
        let label = StoreLabel { store };
        StoreMetrics {
            bytes: self.store_bytes.get_or_create(&label).clone(),
            files: self.store_files.get_or_create(&label).clone(),
            cap_bytes: self.store_cap.get_or_create(&label).clone(),
            evictions: self.store_evictions.get_or_create(&label).clone(),
            refused: self.store_refused.clone(),
            store,
        }
    }

    /// The counters a connection following Sentinels keeps.
    pub fn redis_events(&self) -> crate::redis::conn::sentinel::Events {
        self.redis.clone()
    }

    pub fn key_request(&self, key: &str) {
        self.key_requests.get_or_create(&KeyLabel { key: key.to_owned() }).inc();
    }

    /// Records which engine and precision `model` runs with.
    pub fn model_runtime(&self, model: &str, engine: &'static str, precision: &'static str) {
        self.model_info.get_or_create(&ModelRuntime { model: model.to_owned(), engine, precision }).set(1);
    }

    pub fn stage(&self, stage: &'static str, d: Duration) {
        self.stage_seconds.get_or_create(&Stage { stage }).observe(d.as_secs_f64());
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&Reason { reason }).inc();
    }

    pub fn drop_job(&self, reason: &'static str) {
        self.dropped_jobs.get_or_create(&Reason { reason }).inc();
    }

    /// One request over `protocol` ("http" or "grpc"); a gRPC call's status
    /// is the HTTP status its gRPC status stands for.
    pub fn request(&self, protocol: &'static str, route: &str, status: u16, d: Duration) {
        self.requests.get_or_create(&RouteStatus { protocol, route: route.to_string(), status }).inc();
        self.request_seconds.get_or_create(&Route { protocol, route: route.to_string() }).observe(d.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A count and the nanoseconds it took, as the statistics extension reports
/// each stage.
#[derive(Debug, Default)]
pub struct StageCounter {
    count: AtomicU64,
    ns: AtomicU64,
}

impl StageCounter {
    pub fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// `(count, ns)`.
    pub fn get(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.ns.load(Ordering::Relaxed))
    }
}

/// Per model version: what the Open Inference Protocol's statistics
/// extension reports (`GET /v2/models/{m}/stats`). One inference is one
/// image or tensor; `success` and `fail` time it end to end, the stages
/// split a success: `queue` waiting for a session, `compute_input` decoding,
/// `compute_infer` the model call, `compute_output` ranking the scores.
#[derive(Debug, Default)]
pub struct ModelStats {
    pub success: StageCounter,
    pub fail: StageCounter,
    pub queue: StageCounter,
    pub compute_input: StageCounter,
    pub compute_infer: StageCounter,
    pub compute_output: StageCounter,
    pub cache_hit: StageCounter,
    pub cache_miss: StageCounter,
    /// Unix milliseconds of the last inference; 0 before the first.
    pub last_inference_ms: AtomicU64,
}

impl ModelStats {
    /// Counts one finished inference, successful or not.
    pub fn finish(&self, ok: bool, took: Duration) {
        if ok { &self.success } else { &self.fail }.add(took);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.last_inference_ms.store(now.as_millis() as u64, Ordering::Relaxed);
    }
}
