//! `lens worker`: a model worker on a Redis job stream.
//!
//! A worker reads its model version's stream (`lens:jobs:{model}:{version}`;
//! the version is its model directory's) through the
//! consumer group, only ever as many jobs as it has a free session for, and
//! runs them with the same batching rule ([`next_step`]) and the same batch
//! step ([`run_batch`]) as the in-process batcher. It writes each reply to
//! the API node's reply list and only then acknowledges and deletes the
//! entry, in one `MULTI`.
//!
//! Recovery: entries a worker took and did not acknowledge within the
//! visibility timeout (it died) are taken over with `XAUTOCLAIM` by any
//! worker. While a batch is running, its worker refreshes its claim on the
//! entries, so a slow batch is not mistaken for a dead worker. An entry
//! delivered more than `max_deliveries` times, or one no worker can decode,
//! goes to `lens:dead:{model}:{version}` and its client is told
//! ([`crate::job::JobError::DeadLettered`]).
//!
//! Shutdown (SIGTERM): stop reading, finish the batches in flight, write
//! their replies and acknowledge them, leave the registry, exit.
//!
//! - `stream`: the read, run, reply and acknowledge loop.
//! - `heartbeat`: the registry entry, claim refreshes, leaving.
//! - `health`: the optional `/health/*` and `/metrics` endpoint.
//!
//! [`next_step`]: crate::batcher::next_step
//! [`run_batch`]: crate::batcher::run_batch

mod health;
mod heartbeat;
mod stream;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::redis::conn::Conn;
use anyhow::Context;
use redis::streams::StreamId;
use tokio_util::sync::CancellationToken;

use crate::batcher::BatchConfig;
use crate::config::{BatchArgs, RedisArgs, WorkerArgs};
use crate::metrics::Metrics;
use crate::model::{ModelDir, ModelSpec};
use crate::redis::keys::{self, COMMAND_TIMEOUT, READ_BLOCK};
use crate::redis::{clock, conn};
use crate::sessions::{SessionPool, load_pool};

/// How a worker takes and gives back jobs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The Redis client, checked at start-up ([`RedisArgs::client`]).
    pub redis: crate::redis::conn::Redis,
    pub batch: BatchConfig,
    /// A job taken but not acknowledged this long is reclaimed by a worker.
    pub visibility: Duration,
    /// A job delivered more times than this goes to the dead-letter stream.
    pub max_deliveries: u32,
}

impl WorkerConfig {
    /// The one place a worker's settings are built, for `lens worker` and
    /// for `lens serve --redis --workers N`; clap has checked their ranges.
    pub fn new(client: &crate::redis::conn::Redis, redis: &RedisArgs, batch: &BatchArgs) -> Self {
        WorkerConfig {
            redis: client.clone(),
            batch: batch.config(),
            visibility: Duration::from_millis(redis.visibility_timeout_ms),
            max_deliveries: redis.max_deliveries,
        }
    }
}

/// `lens worker`: loads the model, serves its stream until SIGTERM or Ctrl-C.
pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    // Every Redis setting is checked before the model loads: a typo fails at once.
    let client = args.redis.client()?.context("`lens worker` needs --redis redis[s]://HOST:PORT")?;
    client.check().await.context("asking the Redis Sentinels for the primary")?;
    let cfg = WorkerConfig::new(&client, &args.redis, &args.batch);
    let model =
        ModelDir::load(&args.model.model).with_context(|| format!("loading model {}", args.model.model.display()))?;
    let slow = Duration::from_millis(args.debug_slow_ms);
    let engine = args.model.engine_options(&model.spec);
    let pool = Arc::new(load_pool(&model, &engine, args.model.session_config(), slow).await?);
    let metrics = Arc::new(Metrics::new());
    client.observe(metrics.redis_events());
    if let Some(r) = pool.runtime() {
        metrics.model_runtime(&model.spec.name, r.engine.as_str(), r.precision.as_str());
    }
    let cancel = CancellationToken::new();
    tokio::spawn(crate::shutdown::on_signal(cancel.clone()));
    let worker = Worker::new(&model.spec, Arc::clone(&pool), cfg, Arc::clone(&metrics))?;
    if let Some(addr) = &args.health_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        println!("health on http://{}", listener.local_addr()?);
        tokio::spawn(health::serve(listener, Arc::clone(&worker), metrics, cancel.clone()));
    }
    // Scripts read this line to know the model is loaded.
    println!("worker {} serving {}", worker.id, model.spec.name);
    worker.run(cancel).await;
    tokio::task::spawn_blocking(move || pool.shutdown()).await?;
    Ok(())
}

/// One consumer of a model's job stream.
pub struct Worker {
    pub id: String,
    spec: ModelSpec,
    stream: String,
    dead: String,
    registry: String,
    cfg: WorkerConfig,
    /// Every non-blocking command: claims, replies, acks, heartbeats.
    conn: Conn,
    /// Only the blocking `XREADGROUP`, which would hold up `conn`.
    reader: Conn,
    pool: Arc<SessionPool>,
    metrics: Arc<Metrics>,
    /// Entry ids taken and not yet acknowledged; the heartbeat refreshes
    /// their claim.
    in_flight: Mutex<HashSet<String>>,
    processed: AtomicU64,
    dead_lettered: AtomicU64,
    started_ms: u64,
    /// The last heartbeat reached Redis.
    registered: AtomicBool,
}

/// An entry and how many times it has been delivered.
struct Delivery {
    entry: StreamId,
    deliveries: u32,
}

/// An entry going to the dead-letter stream.
struct DeadLetter {
    entry: StreamId,
    deliveries: u32,
    reason: String,
    reply: Option<(u64, String)>,
}

impl Worker {
    pub fn new(
        spec: &ModelSpec,
        pool: Arc<SessionPool>,
        cfg: WorkerConfig,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Self>> {
        let conn = conn::connect(&cfg.redis, COMMAND_TIMEOUT)?;
        let reader = conn::connect(&cfg.redis, READ_BLOCK + COMMAND_TIMEOUT)?;
        Ok(Arc::new(Worker {
            id: clock::unique_id("worker"),
            spec: spec.clone(),
            stream: keys::jobs(&spec.name, &spec.version),
            dead: keys::dead(&spec.name, &spec.version),
            registry: keys::workers(&spec.name),
            cfg,
            conn,
            reader,
            pool,
            metrics,
            in_flight: Mutex::new(HashSet::new()),
            processed: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            started_ms: clock::now_ms(),
            registered: AtomicBool::new(false),
        }))
    }

    /// Jobs this worker has run through the model.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}
