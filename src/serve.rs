//! `lens serve`: builds the service and runs it until SIGTERM or Ctrl-C.
//!
//! In-process (the default), each model gets a session pool and a batcher.
//! With `--redis`, each model gets a [`RedisQueue`] instead and the node loads
//! no session, unless `--workers N` also runs N [`Worker`]s in this process.
//!
//! Drain order on shutdown: stop accepting connections and let the requests
//! in flight finish (each holds its job's reply), stop the batcher (or the
//! in-process workers) once its batches are answered, stop the Redis reply
//! listener, then stop the model sessions.

use std::collections::BTreeMap;
use std::path::Path;
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
use crate::http::limits::{ClientLimits, LimitsConfig};
use crate::http::{AppState, Limits, Models};
use crate::metrics::Metrics;
use crate::model::ModelDir;
use crate::predictor::{ModelInfo, Predictor, PredictorConfig};
use crate::queue::LocalQueue;
use crate::redis::RedisQueue;
use crate::redis::feedback::FeedbackMirror;
use crate::sessions::{SessionPool, load_pool};
use crate::worker::{Worker, WorkerConfig};

/// A served model: its predictor and what must be stopped.
struct Running {
    predictor: Arc<Predictor>,
    /// Session pools, stopped last.
    pools: Vec<Arc<SessionPool>>,
    /// The batcher or the in-process workers; they end after `batcher_stop`.
    batchers: Vec<tokio::task::JoinHandle<()>>,
    /// Reply listener and liveness watcher; they end after `redis_stop`.
    redis_tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.addr).await.with_context(|| format!("binding {}", args.addr))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port.
    println!("listening on http://{addr}");
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::shutdown::on_signal(shutdown.clone()));
    run_with(listener, args, shutdown).await
}

/// Serves on `listener` until `shutdown` is cancelled.
pub async fn run_with(listener: TcpListener, args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Every Redis setting is checked before any model loads: a typo fails at once.
    let redis = args.redis.client()?;
    let metrics = Arc::new(Metrics::new());
    // Checked before any model loads, so a bad keys file costs no start-up.
    let (keys, client_limits) = access(&args, &metrics)?;
    let (uploads, feedback) = stores(&args, &metrics)?;
    if keys.enabled() {
        tokio::spawn(crate::http::auth::reload_on_hangup(Arc::clone(&keys), Arc::clone(&metrics), shutdown.clone()));
    }
    let batcher_stop = CancellationToken::new();
    let redis_stop = CancellationToken::new();
    let mut dirs = vec![args.model.model.clone()];
    if let Some(root) = &args.models_dir {
        dirs.extend(model_dirs(root)?);
    }
    let mut running = BTreeMap::new();
    let mut default = None;
    for dir in dirs {
        let model = ModelDir::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
        let name = model.spec.name.clone();
        if running.contains_key(&name) {
            continue;
        }
        default.get_or_insert_with(|| name.clone());
        let r = match &redis {
            None => start_model(model, &args, Arc::clone(&metrics), batcher_stop.clone()).await?,
            Some(client) => {
                let stops = (batcher_stop.clone(), redis_stop.clone());
                start_remote_model(model, client, &args, Arc::clone(&metrics), stops).await?
            }
        };
        running.insert(name, r);
    }
    let default = default.context("no model to serve")?;
    let models = Arc::new(Models {
        by_name: running.iter().map(|(n, r)| (n.clone(), Arc::clone(&r.predictor))).collect(),
        default,
    });
    let state = AppState {
        models,
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
        },
        keys,
        client_limits,
    };
    tracing::info!(addr = %listener.local_addr()?, "serving");
    let stop = shutdown.clone();
    crate::http::serve(listener, state, async move { stop.cancelled().await }).await?;
    tracing::info!("stopped accepting; draining");
    batcher_stop.cancel();
    for r in running.values_mut() {
        for task in r.batchers.drain(..) {
            let _ = task.await;
        }
    }
    redis_stop.cancel();
    for (_, r) in running {
        for task in r.redis_tasks {
            let _ = task.await;
        }
        for pool in r.pools {
            tokio::task::spawn_blocking(move || pool.shutdown()).await?;
        }
    }
    tracing::info!("shut down");
    Ok(())
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
    let budget = DiskBudget::new(args.feedback_max_bytes, Overflow::Refuse, metrics.store("feedback"));
    let feedback =
        FeedbackStore::open_within(&args.data_dir.join("feedback"), budget).context("opening the feedback store")?;
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
    stop: CancellationToken,
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
    let (predictor, batcher) = serve_locally(model_info(&model, runtime), Arc::clone(&pool), &local, metrics, stop);
    Ok(Running { predictor, pools: vec![pool], batchers: vec![batcher], redis_tasks: Vec::new() })
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
    client: &redis::Client,
    args: &ServeArgs,
    metrics: Arc<Metrics>,
    (batcher_stop, redis_stop): (CancellationToken, CancellationToken),
) -> anyhow::Result<Running> {
    let depth = metrics.queue_depth(&model.spec.name);
    let (queue, redis_tasks) = RedisQueue::start(client, &model.spec, args.queue_capacity, depth, redis_stop)
        .context("connecting to Redis")?;
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
        None => crate::engine::expected_runtime(&engine)?,
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
    let mut running = Running { predictor, pools: Vec::new(), batchers: Vec::new(), redis_tasks };
    let cfg = WorkerConfig::new(client, &args.redis, &args.batch);
    for pool in pools {
        let worker = Worker::new(&model.spec, Arc::clone(&pool), cfg.clone(), Arc::clone(&metrics))?;
        running.batchers.push(tokio::spawn(worker.run(batcher_stop.clone())));
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
    }
}

/// Subfolders of `root` that hold a model.toml, sorted.
fn model_dirs(root: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .with_context(|| format!("reading {}", root.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.toml").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}
