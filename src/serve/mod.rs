//! `lens serve`: builds the service and runs it until SIGTERM or Ctrl-C.
//!
//! In-process (the default), each model gets a session pool and a batcher.
//! With `--redis`, each model gets a [`RedisQueue`] instead and the node loads
//! no session, unless `--workers N` also runs N [`Worker`]s in this process.
//!
//! The served models and versions are a `repository::Repository`: it loads
//! a new version beside the old one, swaps it in, and drains the old one.
//!
//! Drain order, of a replaced version and of every version on shutdown: the
//! requests in flight finish (each holds its job's reply; on shutdown the
//! server first stops accepting), the batcher (or the in-process workers)
//! stops once its batches are answered, then the Redis reply listener, then
//! the model sessions.

mod repository;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::batcher::{BatchConfig, run_local};
use crate::cache::SharedCache;
use crate::config::{ServeArgs, available_cores};
use crate::disk::{DiskBudget, Overflow};
use crate::engine::SessionConfig;
use crate::feedback::{FeedbackStore, ImageStore};
use crate::http::auth::ApiKeys;
use crate::http::body::BodyBudget;
use crate::http::limits::{ClientLimits, LimitsConfig};
use crate::http::server::{ConnectionLimits, Protocol};
use crate::http::{AppState, Limits, ModelRepository};
use crate::metrics::Metrics;
use crate::model::ModelDir;
use crate::predictor::{ModelInfo, Predictor, PredictorConfig};
use crate::queue::LocalQueue;
use crate::redis::RedisQueue;
use crate::redis::feedback::FeedbackMirror;
use crate::redis::queue::QueueSettings;
use crate::sessions::{SessionPool, load_pool};
use crate::worker::{Worker, WorkerConfig};
use repository::Repository;

/// A served model version: its predictor and what must be stopped.
pub(crate) struct Running {
    predictor: Arc<Predictor>,
    /// Session pools, stopped last.
    pools: Vec<Arc<SessionPool>>,
    /// The batcher or the in-process workers; they end after `batcher_stop`.
    batchers: Vec<tokio::task::JoinHandle<()>>,
    /// Reply listener and liveness watch; they end after `redis_stop`.
    redis_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// This version's own stops, children of the server's: cancelled when
    /// it has drained, or with the server's at shutdown.
    batcher_stop: CancellationToken,
    redis_stop: CancellationToken,
}

impl Running {
    /// Stops this version in the drain order: batchers (answering what they
    /// hold), the Redis tasks, then the sessions.
    async fn stop(mut self) {
        self.batcher_stop.cancel();
        for task in self.batchers.drain(..) {
            let _ = task.await;
        }
        self.redis_stop.cancel();
        for task in self.redis_tasks.drain(..) {
            let _ = task.await;
        }
        for pool in self.pools.drain(..) {
            let _ = tokio::task::spawn_blocking(move || pool.shutdown()).await;
        }
    }
}

/// Starts model versions: everything `start_model` and `start_remote_model`
/// need, kept for the loads that come after start-up.
pub(crate) struct Launcher {
    args: ServeArgs,
    /// The Redis client, checked at start-up; `None` in-process.
    redis: Option<crate::redis::conn::Redis>,
    metrics: Arc<Metrics>,
    batcher_stop: CancellationToken,
    redis_stop: CancellationToken,
}

impl Launcher {
    /// Loads, warms up and starts one model version; not yet served.
    async fn start(&self, model: ModelDir) -> anyhow::Result<Running> {
        let stops = (self.batcher_stop.child_token(), self.redis_stop.child_token());
        let metrics = Arc::clone(&self.metrics);
        match &self.redis {
            None => start_model(model, &self.args, metrics, stops).await,
            Some(client) => start_remote_model(model, client, &self.args, metrics, stops).await,
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.addr).await.with_context(|| format!("binding {}", args.addr))?;
    let grpc = match args.grpc_addr.trim() {
        "" => None,
        addr => Some(TcpListener::bind(addr).await.with_context(|| format!("binding --grpc-addr {addr}"))?),
    };
    // Tests and scripts read these lines to find the ports. The second is
    // written without panicking if no one reads it any more.
    println!("listening on http://{}", listener.local_addr()?);
    if let Some(grpc) = &grpc {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "grpc listening on {}", grpc.local_addr()?);
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::shutdown::on_signal(shutdown.clone()));
    run_with(Listeners { http: listener, grpc }, args, shutdown).await
}

/// Where `serve` listens: HTTP, and gRPC unless it is off.
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: Option<TcpListener>,
}

/// Serves on `listeners` until `shutdown` is cancelled.
pub async fn run_with(listeners: Listeners, args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Listeners { http: listener, grpc } = listeners;
    // Every Redis setting is checked before any model loads: a typo fails at once.
    let redis = args.redis.client()?;
    let metrics = Arc::new(Metrics::new());
    if let Some(redis) = &redis {
        redis.check().await.context("asking the Redis Sentinels for the primary")?;
        redis.observe(metrics.redis_events());
    }
    // Checked before any model loads, so a bad keys file costs no start-up.
    let (keys, client_limits) = access(&args, &metrics)?;
    let (uploads, feedback) = stores(&args, &metrics)?;
    if keys.enabled() {
        tokio::spawn(crate::http::auth::reload_on_hangup(Arc::clone(&keys), Arc::clone(&metrics), shutdown.clone()));
    }
    let launcher = Launcher {
        args: args.clone(),
        redis: redis.clone(),
        metrics: Arc::clone(&metrics),
        batcher_stop: CancellationToken::new(),
        redis_stop: CancellationToken::new(),
    };
    let repository = Arc::new(Repository::start(launcher, &args.model.model, args.models_dir.clone()).await?);
    let poller = args.poll_models.map(|secs| {
        let every = Duration::from_secs_f64(secs.max(0.1));
        tokio::spawn(Arc::clone(&repository).poll(every, shutdown.clone()))
    });
    let state = AppState {
        models: repository.models(),
        repository: args.models_dir.is_some().then(|| Arc::clone(&repository) as Arc<dyn ModelRepository>),
        metrics,
        feedback,
        feedback_mirror: match &redis {
            Some(client) => Some(Arc::new(FeedbackMirror::new(client)?)),
            None => None,
        },
        uploads,
        limits: Limits {
            body_bytes: args.body_limit,
            max_parts: args.max_parts,
            request_timeout: Duration::from_secs_f64(args.request_timeout_secs),
            body_timeout: secs(args.body_timeout_secs, "--body-timeout-secs")?,
            bodies: BodyBudget::new(args.body_memory_mb * 1024 * 1024),
            trust_proxy: args.access.trust_proxy,
        },
        keys,
        client_limits,
    };
    tracing::info!(addr = %listener.local_addr()?, "serving");
    let stop = shutdown.clone();
    let connections = ConnectionLimits {
        max_connections: args.max_connections,
        header_timeout: secs(args.header_timeout_secs, "--header-timeout-secs")?,
    };
    let grpc = grpc.map(|listener| {
        let (router, stop) = (crate::grpc::app(state.clone()), shutdown.clone());
        tracing::info!(addr = ?listener.local_addr().ok(), "serving gRPC");
        tokio::spawn(crate::http::server::serve(listener, router, Protocol::Http2, connections, async move {
            stop.cancelled().await
        }))
    });
    crate::http::serve(listener, state, connections, async move { stop.cancelled().await }).await?;
    if let Some(grpc) = grpc {
        let _ = grpc.await;
    }
    tracing::info!("stopped accepting; draining");
    if let Some(poller) = poller {
        let _ = poller.await;
    }
    repository.shutdown().await;
    tracing::info!("shut down");
    Ok(())
}

/// A duration flag in seconds: positive and finite.
fn secs(value: f64, flag: &str) -> anyhow::Result<Duration> {
    match Duration::try_from_secs_f64(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => anyhow::bail!("{flag} must be a positive number of seconds, not {value}"),
    }
}

/// The API keys and per-client limits, logged by name and setting.
fn access(args: &ServeArgs, metrics: &Metrics) -> anyhow::Result<(Arc<ApiKeys>, Arc<ClientLimits>)> {
    let a = &args.access;
    let fixed: Vec<String> = a.api_keys.iter().map(|k| k.0.clone()).collect();
    let keys = ApiKeys::new(&fixed, a.api_keys_file.as_deref(), a.metrics_auth).context("loading the API keys")?;
    metrics.api_keys.set(keys.len() as i64);
    if keys.enabled() {
        tracing::info!(keys = keys.len(), metrics_auth = a.metrics_auth, "API keys required");
    } else {
        tracing::warn!("no API key set: every endpoint is open to anyone who can reach it");
    }
    let cfg = LimitsConfig {
        rate_per_sec: a.rate_limit,
        burst: a.rate_burst,
        max_inflight: a.max_inflight_per_client,
        max_clients: a.max_clients,
        trust_proxy: a.trust_proxy,
        feedback_per_minute: Some(a.feedback_per_minute),
    };
    let limits = ClientLimits::new(cfg).map_err(anyhow::Error::msg)?;
    tracing::info!(
        rate_per_sec = ?a.rate_limit,
        burst = ?a.rate_burst,
        max_inflight_per_client = ?a.max_inflight_per_client,
        trust_proxy = a.trust_proxy,
        "per-client limits"
    );
    Ok((Arc::new(keys), Arc::new(limits)))
}

/// The page's upload store and the feedback store, each within its cap.
fn stores(args: &ServeArgs, metrics: &Metrics) -> anyhow::Result<(ImageStore, Arc<FeedbackStore>)> {
    let budget = DiskBudget::new(args.uploads_max_bytes, Overflow::EvictLru, metrics.store("uploads"));
    let uploads =
        ImageStore::open_within(&args.data_dir.join("uploads"), budget).context("opening the upload store")?;
    let budget = DiskBudget::new(args.feedback_max_bytes, Overflow::EvictLru, metrics.store("feedback"));
    let feedback = FeedbackStore::open_within(&args.data_dir.join("feedback"), budget)
        .context("opening the feedback store")?
        .with_max_reports(args.feedback_max_reports);
    tracing::info!(
        uploads_max_bytes = args.uploads_max_bytes,
        uploads_used = uploads.budget().used(),
        feedback_max_bytes = args.feedback_max_bytes,
        feedback_used = feedback.images().budget().used(),
        data_dir = %args.data_dir.display(),
        "disk caps"
    );
    Ok((uploads, Arc::new(feedback)))
}

async fn start_model(
    model: ModelDir,
    args: &ServeArgs,
    metrics: Arc<Metrics>,
    (batcher_stop, redis_stop): (CancellationToken, CancellationToken),
) -> anyhow::Result<Running> {
    let sessions = args.model.session_config();
    let slow = Duration::from_millis(args.debug_slow_ms);
    let engine = args.model.engine_options(&model.spec);
    let pool = Arc::new(load_pool(&model, &engine, sessions, slow).await?);
    let runtime = pool.runtime().context("a loaded pool knows its runtime")?;
    metrics.model_runtime(&model.spec.name, runtime.engine.as_str(), runtime.precision.as_str());
    let local = LocalSettings {
        predictor: predictor_config(args),
        batch: args.batch.config(),
        queue_capacity: args.queue_capacity,
        decode_threads: args.decode_threads.unwrap_or(sessions.sessions),
    };
    let (predictor, batcher) =
        serve_locally(model_info(&model, runtime), Arc::clone(&pool), &local, metrics, batcher_stop.clone());
    Ok(Running {
        predictor,
        pools: vec![pool],
        batchers: vec![batcher],
        redis_tasks: Vec::new(),
        batcher_stop,
        redis_stop,
    })
}

/// How an in-process model is served, besides its sessions.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub predictor: PredictorConfig,
    pub batch: BatchConfig,
    pub queue_capacity: usize,
    pub decode_threads: usize,
}

/// Serves `model` in-process on `pool`: its queue, its batcher (running
/// until `stop`) and its predictor. `lens serve` and the HTTP tests (with a
/// fake classifier in the pool) build a model the same way.
pub fn serve_locally(
    model: ModelInfo,
    pool: Arc<SessionPool>,
    settings: &LocalSettings,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> (Arc<Predictor>, tokio::task::JoinHandle<()>) {
    let depth = metrics.queue_depth(&model.spec.name);
    let (queue, jobs) = LocalQueue::new(settings.queue_capacity, pool.sessions(), depth.clone());
    let batcher = tokio::spawn(run_local(jobs, pool, settings.batch, Arc::clone(&metrics), depth, stop));
    let predictor =
        Predictor::new(model, settings.predictor.clone(), Arc::new(queue), settings.decode_threads, metrics);
    (Arc::new(predictor), batcher)
}

/// A model served through Redis: an API node, plus `--workers` in-process
/// workers. Ready once Redis is reachable and a live worker serves it.
async fn start_remote_model(
    model: ModelDir,
    client: &crate::redis::conn::Redis,
    args: &ServeArgs,
    metrics: Arc<Metrics>,
    (batcher_stop, redis_stop): (CancellationToken, CancellationToken),
) -> anyhow::Result<Running> {
    let depth = metrics.queue_depth(&model.spec.name);
    let settings = QueueSettings {
        capacity: args.queue_capacity,
        wait_replicas: args.redis.redis_wait_replicas,
        depth,
        requeued: metrics.requeued_jobs.clone(),
    };
    let (queue, redis_tasks) =
        RedisQueue::start(client, &model.spec, settings, redis_stop.clone()).context("connecting to Redis")?;
    let ttl = if args.cache_entries == 0 { Duration::ZERO } else { Duration::from_secs(args.redis_cache_ttl_secs) };
    let shared_cache = queue.shared_cache(ttl).map(|c| Arc::new(c) as Arc<dyn SharedCache>);
    let cores = available_cores();
    let decode_threads = args.decode_threads.unwrap_or(cores);
    let engine = args.model.engine_options(&model.spec);
    // In-process workers are loaded first: the runtime they really run is
    // the cache key's. Without them, the one this node's settings expect.
    let mut pools = Vec::new();
    if let Some(per_worker) = cores.checked_div(args.workers) {
        let sessions = SessionConfig {
            sessions: args.model.sessions.unwrap_or(per_worker.max(1)),
            intra_threads: args.model.intra_threads,
        };
        let slow = Duration::from_millis(args.debug_slow_ms);
        for _ in 0..args.workers {
            pools.push(Arc::new(load_pool(&model, &engine, sessions, slow).await?));
        }
    }
    let runtime = match pools.first().and_then(|p| p.runtime()) {
        Some(r) => r,
        None => crate::engine::expected_runtime(&model, &engine)?,
    };
    metrics.model_runtime(&model.spec.name, runtime.engine.as_str(), runtime.precision.as_str());
    let predictor = Arc::new(
        Predictor::new(
            model_info(&model, runtime),
            predictor_config(args),
            Arc::new(queue),
            decode_threads,
            Arc::clone(&metrics),
        )
        .with_shared_cache(shared_cache),
    );
    let mut running =
        Running { predictor, pools: Vec::new(), batchers: Vec::new(), redis_tasks, batcher_stop, redis_stop };
    let cfg = WorkerConfig::new(client, &args.redis, &args.batch);
    for pool in pools {
        let worker = Worker::new(&model.spec, Arc::clone(&pool), cfg.clone(), Arc::clone(&metrics))?;
        running.batchers.push(tokio::spawn(worker.run(running.batcher_stop.clone())));
        running.pools.push(pool);
    }
    Ok(running)
}

fn model_info(model: &ModelDir, runtime: crate::engine::Runtime) -> ModelInfo {
    ModelInfo { labels: Arc::new(model.labels.clone()), spec: model.spec.clone(), runtime }
}

fn predictor_config(args: &ServeArgs) -> PredictorConfig {
    PredictorConfig {
        deadline: Duration::from_secs_f64(args.deadline_secs),
        max_pixels: args.model.max_pixels,
        cache_entries: args.cache_entries,
        max_pending: args.max_pending,
        queue_capacity: args.queue_capacity,
        decode_memory: args.decode_memory_mb * 1024 * 1024,
    }
}
