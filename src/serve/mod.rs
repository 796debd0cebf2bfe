//! `lens serve`: builds the service and runs it until SIGTERM or Ctrl-C.
//!
//! In-process (the default), each model gets a session pool and a batcher.
//! With `--redis`, each model gets a [`RedisQueue`] instead and the node loads
//! no session, unless `--workers N` also runs N [`Worker`]s in this process.
//!
//! The served models and versions are a [`repository::Repository`]: it loads
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

use crate::batcher::run_local;
use crate::cache::SharedCache;
use crate::config::{ServeArgs, available_cores};
use crate::engine::SessionConfig;
use crate::feedback::{FeedbackStore, ImageStore};
use crate::http::{AppState, Limits, ModelRepository};
use crate::metrics::Metrics;
use crate::model::ModelDir;
use crate::predictor::{ModelInfo, Predictor, PredictorConfig};
use crate::queue::LocalQueue;
use crate::redis::RedisQueue;
use crate::redis::feedback::FeedbackMirror;
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
    metrics: Arc<Metrics>,
    batcher_stop: CancellationToken,
    redis_stop: CancellationToken,
}

impl Launcher {
    /// Loads, warms up and starts one model version; not yet served.
    async fn start(&self, model: ModelDir) -> anyhow::Result<Running> {
        let stops = (self.batcher_stop.child_token(), self.redis_stop.child_token());
        let metrics = Arc::clone(&self.metrics);
        match &self.args.redis.redis {
            None => start_model(model, &self.args, metrics, stops).await,
            Some(url) => start_remote_model(model, url, &self.args, metrics, stops).await,
        }
    }
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
    let metrics = Arc::new(Metrics::new());
    let launcher = Launcher {
        args: args.clone(),
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
        feedback: Arc::new(FeedbackStore::open(&args.data_dir.join("feedback")).context("opening the feedback store")?),
        feedback_mirror: match &args.redis.redis {
            Some(url) => Some(Arc::new(FeedbackMirror::new(url)?)),
            None => None,
        },
        uploads: ImageStore::open(&args.data_dir.join("uploads")).context("opening the upload store")?,
        limits: Limits {
            body_bytes: args.body_limit,
            max_parts: args.max_parts,
            request_timeout: Duration::from_secs_f64(args.request_timeout_secs),
        },
    };
    tracing::info!(addr = %listener.local_addr()?, "serving");
    let stop = shutdown.clone();
    crate::http::serve(listener, state, async move { stop.cancelled().await }).await?;
    tracing::info!("stopped accepting; draining");
    if let Some(poller) = poller {
        let _ = poller.await;
    }
    repository.shutdown().await;
    tracing::info!("shut down");
    Ok(())
}

async fn start_model(
    model: ModelDir,
    args: &ServeArgs,
    metrics: Arc<Metrics>,
    (batcher_stop, redis_stop): (CancellationToken, CancellationToken),
) -> anyhow::Result<Running> {
    let sessions = args.model.session_config();
    let slow = Duration::from_millis(args.debug_slow_ms);
    let pool = Arc::new(load_pool(&model, args.model.ort_lib.clone(), sessions, slow).await?);
    let depth = metrics.queue_depth(&model.spec.name);
    let (queue, jobs) = LocalQueue::new(args.queue_capacity, pool.sessions(), depth.clone());
    let batcher = tokio::spawn(run_local(
        jobs,
        Arc::clone(&pool),
        args.batch.config(),
        Arc::clone(&metrics),
        depth,
        batcher_stop.clone(),
    ));
    let decode_threads = args.decode_threads.unwrap_or(sessions.sessions);
    let predictor =
        Arc::new(Predictor::new(model_info(&model), predictor_config(args), Arc::new(queue), decode_threads, metrics));
    Ok(Running {
        predictor,
        pools: vec![pool],
        batchers: vec![batcher],
        redis_tasks: Vec::new(),
        batcher_stop,
        redis_stop,
    })
}

/// A model served through Redis: an API node, plus `--workers` in-process
/// workers. Ready once Redis is reachable and a live worker serves it.
async fn start_remote_model(
    model: ModelDir,
    url: &str,
    args: &ServeArgs,
    metrics: Arc<Metrics>,
    (batcher_stop, redis_stop): (CancellationToken, CancellationToken),
) -> anyhow::Result<Running> {
    let depth = metrics.queue_depth(&model.spec.name);
    let (queue, redis_tasks) = RedisQueue::start(url, &model.spec, args.queue_capacity, depth, redis_stop.clone())
        .with_context(|| format!("using Redis at {url}"))?;
    let ttl = if args.cache_entries == 0 { Duration::ZERO } else { Duration::from_secs(args.redis_cache_ttl_secs) };
    let shared_cache = queue.shared_cache(ttl).map(|c| Arc::new(c) as Arc<dyn SharedCache>);
    let cores = available_cores();
    let decode_threads = args.decode_threads.unwrap_or(cores);
    let predictor = Arc::new(
        Predictor::new(
            model_info(&model),
            predictor_config(args),
            Arc::new(queue),
            decode_threads,
            Arc::clone(&metrics),
        )
        .with_shared_cache(shared_cache),
    );
    let mut running =
        Running { predictor, pools: Vec::new(), batchers: Vec::new(), redis_tasks, batcher_stop, redis_stop };
    if let Some(per_worker) = cores.checked_div(args.workers) {
        let sessions = SessionConfig {
            sessions: args.model.sessions.unwrap_or(per_worker.max(1)),
            intra_threads: args.model.intra_threads,
        };
        let cfg = WorkerConfig::new(url, &args.redis, &args.batch);
        let slow = Duration::from_millis(args.debug_slow_ms);
        for _ in 0..args.workers {
            let pool = Arc::new(load_pool(&model, args.model.ort_lib.clone(), sessions, slow).await?);
            let worker = Worker::new(&model.spec, Arc::clone(&pool), cfg.clone(), Arc::clone(&metrics))?;
            running.batchers.push(tokio::spawn(worker.run(running.batcher_stop.clone())));
            running.pools.push(pool);
        }
    }
    Ok(running)
}

fn model_info(model: &ModelDir) -> ModelInfo {
    ModelInfo { labels: Arc::new(model.labels.clone()), spec: model.spec.clone() }
}

fn predictor_config(args: &ServeArgs) -> PredictorConfig {
    PredictorConfig {
        deadline: Duration::from_secs_f64(args.deadline_secs),
        max_pixels: args.model.max_pixels,
        cache_entries: args.cache_entries,
        max_pending: args.max_pending,
    }
}
