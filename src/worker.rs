//! `lens worker`: a model worker on a Redis job stream.
//!
//! A worker reads its model's stream (`lens:jobs:{model}`) through the
//! consumer group, only ever as many jobs as it has a free session for, and
//! runs them on the same path as the in-process batcher: the batching rule
//! ([`next_step`]), [`triage`] and [`execute`] on a [`SessionPool`]. It
//! writes each reply to the API node's reply list and only then
//! acknowledges and deletes the entry, in one `MULTI`.
//!
//! Recovery: entries a worker took and did not acknowledge within the
//! visibility timeout (it died) are taken over with `XAUTOCLAIM` by any
//! worker. While a batch is running, its worker refreshes its claim on the
//! entries, so a slow batch is not mistaken for a dead worker. An entry
//! delivered more than `max_deliveries` times, or one no worker can decode,
//! goes to `lens:dead:{model}` and its client is told
//! ([`JobError::DeadLettered`]).
//!
//! Shutdown (SIGTERM): stop reading, finish the batches in flight, write
//! their replies and acknowledge them, leave the registry, exit.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use redis::aio::ConnectionManager;
use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamInfoConsumersReply, StreamPendingCountReply, StreamReadOptions,
    StreamReadReply,
};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batcher::{BatchConfig, BatchContext, Next, execute, next_step, triage};
use crate::config::WorkerArgs;
use crate::job::{Job, JobError, JobResult};
use crate::metrics::{self, Metrics};
use crate::model::{ModelDir, ModelSpec};
use crate::redis_queue::codec::{self, WorkerBeat};
use crate::redis_queue::keys;
use crate::sessions::SessionPool;

/// Longest a read blocks; also the worst-case delay before a shutdown is seen.
const READ_BLOCK: Duration = Duration::from_millis(500);

/// How a worker takes and gives back jobs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub redis_url: String,
    pub batch: BatchConfig,
    /// A job taken but not acknowledged this long is reclaimed by a worker.
    pub visibility: Duration,
    /// A job delivered more times than this goes to the dead-letter stream.
    pub max_deliveries: u32,
}

/// `lens worker`: loads the model, serves its stream until SIGTERM or Ctrl-C.
pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let url = args.redis.redis.clone().context("`lens worker` needs --redis redis://HOST:PORT")?;
    let model =
        ModelDir::load(&args.model.model).with_context(|| format!("loading model {}", args.model.model.display()))?;
    let sessions = args.model.session_config();
    let pool =
        crate::serve::load_pool(&model, &args.model, sessions, Duration::from_millis(args.debug_slow_ms)).await?;
    let pool = Arc::new(pool);
    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    tokio::spawn(crate::serve::signal_shutdown(cancel.clone()));
    let cfg = WorkerConfig {
        redis_url: url,
        batch: args.batch.config(),
        visibility: Duration::from_millis(args.redis.visibility_timeout_ms.max(100)),
        max_deliveries: args.redis.max_deliveries.max(1),
    };
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
    conn: ConnectionManager,
    /// Only the blocking `XREADGROUP`, which would hold up `conn`.
    reader: ConnectionManager,
    pool: Arc<SessionPool>,
    ctx: Arc<BatchContext>,
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
        let conn = keys::connect(&cfg.redis_url, Duration::from_secs(2)).context("parsing the Redis URL")?;
        let reader = keys::connect(&cfg.redis_url, READ_BLOCK + Duration::from_secs(2))?;
        Ok(Arc::new(Worker {
            id: keys::unique_id("worker"),
            spec: spec.clone(),
            stream: keys::jobs(&spec.name),
            dead: keys::dead(&spec.name),
            registry: keys::workers(&spec.name),
            cfg,
            conn,
            reader,
            pool,
            ctx: Arc::new(BatchContext { metrics }),
            in_flight: Mutex::new(HashSet::new()),
            processed: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            started_ms: keys::now_ms(),
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

    /// Serves until `cancel`, then drains: batches in flight finish and are
    /// acknowledged before this returns.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let beat_stop = CancellationToken::new();
        let beats = tokio::spawn(Arc::clone(&self).heartbeat(beat_stop.clone()));
        let mut batches = tokio::task::JoinSet::new();
        let mut reader = self.reader.clone();
        let mut cursor = "0-0".to_owned();
        let mut last_reclaim: Option<Instant> = None;
        let mut failing = false;
        if let Err(e) = self.ensure_group().await {
            tracing::warn!(worker = %self.id, error = %e, "cannot create the consumer group yet; retrying");
        }
        tracing::info!(worker = %self.id, stream = %self.stream, sessions = self.pool.sessions(), "worker started");
        loop {
            let slot = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                slot = self.pool.reserve() => match slot { Some(s) => s, None => break },
            };
            if cancel.is_cancelled() {
                break;
            }
            let taken = self.take(&mut reader, &mut cursor, &mut last_reclaim).await;
            let batch = match taken {
                Ok(b) => {
                    if failing {
                        tracing::info!(worker = %self.id, "Redis reachable again");
                    }
                    failing = false;
                    b
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(worker = %self.id, error = %e, "cannot read jobs from Redis; retrying");
                    }
                    failing = true;
                    if e.code() == Some("NOGROUP") {
                        let _ = self.ensure_group().await;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                    continue;
                }
            };
            if batch.is_empty() {
                continue;
            }
            self.in_flight().extend(batch.iter().map(|d| d.entry.id.clone()));
            let this = Arc::clone(&self);
            batches.spawn(async move { this.process(batch, slot).await });
            while batches.try_join_next().is_some() {}
        }
        tracing::info!(worker = %self.id, "stopping: finishing the batches in flight");
        while batches.join_next().await.is_some() {}
        beat_stop.cancel();
        let _ = beats.await;
        self.leave().await;
        tracing::info!(worker = %self.id, processed = self.processed(), "worker stopped");
    }

    /// The next batch: reclaimed entries of dead workers first (checked every
    /// half visibility timeout), else new entries, filled per the batching rule.
    async fn take(
        &self,
        reader: &mut ConnectionManager,
        cursor: &mut String,
        last_reclaim: &mut Option<Instant>,
    ) -> redis::RedisResult<Vec<Delivery>> {
        let max = self.cfg.batch.max_batch;
        let mut batch = Vec::new();
        if last_reclaim.is_none_or(|t| t.elapsed() >= self.cfg.visibility / 2) {
            *last_reclaim = Some(Instant::now());
            batch = self.reclaim(cursor, max).await?;
        }
        if batch.is_empty() {
            batch = self.read(reader, max, READ_BLOCK).await?;
        }
        while let Some(first) = batch.first() {
            let enqueued = first.entry.get::<u64>("enqueued_ms").map_or_else(Instant::now, keys::instant_at);
            match next_step(batch.len(), &self.cfg.batch, enqueued, Instant::now()) {
                Next::Dispatch => break,
                Next::WaitUntil(until) => {
                    let wait = until.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
                    let more = self.read(reader, max - batch.len(), wait).await?;
                    if more.is_empty() {
                        break;
                    }
                    batch.extend(more);
                }
            }
        }
        Ok(batch)
    }

    async fn read(
        &self,
        reader: &mut ConnectionManager,
        count: usize,
        block: Duration,
    ) -> redis::RedisResult<Vec<Delivery>> {
        // BLOCK 0 would mean forever.
        let block_ms = (block.as_millis() as usize).max(1);
        let opts = StreamReadOptions::default().group(keys::GROUP, &self.id).count(count).block(block_ms);
        let reply: Option<StreamReadReply> =
            redis::cmd("XREADGROUP").arg(&opts).arg("STREAMS").arg(&self.stream).arg(">").query_async(reader).await?;
        let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
        Ok(entries.map(|entry| Delivery { entry, deliveries: 1 }).collect())
    }

    /// Takes over entries idle longer than the visibility timeout, with their
    /// delivery counts (which the claim itself incremented).
    async fn reclaim(&self, cursor: &mut String, count: usize) -> redis::RedisResult<Vec<Delivery>> {
        let mut conn = self.conn.clone();
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(keys::GROUP)
            .arg(&self.id)
            .arg(self.cfg.visibility.as_millis() as u64)
            .arg(cursor.as_str())
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await?;
        *cursor = reply.next_stream_id;
        if reply.claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for e in &reply.claimed {
            pipe.cmd("XPENDING").arg(&self.stream).arg(keys::GROUP).arg(&e.id).arg(&e.id).arg(1);
        }
        let pending: Vec<StreamPendingCountReply> = pipe.query_async(&mut conn).await?;
        let deliveries = pending.into_iter().map(|p| p.ids.first().map_or(1, |i| i.times_delivered as u32));
        let batch: Vec<Delivery> = reply
            .claimed
            .into_iter()
            .zip(deliveries)
            .map(|(entry, deliveries)| Delivery { entry, deliveries })
            .collect();
        tracing::warn!(worker = %self.id, jobs = batch.len(), "reclaimed jobs of a worker that stopped answering");
        Ok(batch)
    }

    /// Runs one batch and writes its outcome back to Redis.
    async fn process(&self, batch: Vec<Delivery>, slot: OwnedSemaphorePermit) {
        let ids: Vec<String> = batch.iter().map(|d| d.entry.id.clone()).collect();
        let mut dead = Vec::new();
        let mut jobs = Vec::new();
        let mut waiting = Vec::new();
        for d in batch {
            if d.deliveries > self.cfg.max_deliveries {
                let reason = format!("delivered {} times; the limit is {}", d.deliveries, self.cfg.max_deliveries);
                let reply = reply_of(&d.entry);
                dead.push(DeadLetter { entry: d.entry, deliveries: d.deliveries, reason, reply });
                continue;
            }
            match codec::decode_job(&d.entry, &self.spec.input) {
                Ok(e) => {
                    let (mut job, rx) = Job::new(Arc::new(e.input), keys::instant_at(e.deadline_ms));
                    job.enqueued = keys::instant_at(e.enqueued_ms);
                    jobs.push(job);
                    waiting.push((e.job_id, e.reply_to, rx));
                }
                Err(m) => {
                    let reply = m.job_id.zip(m.reply_to);
                    dead.push(DeadLetter { entry: d.entry, deliveries: d.deliveries, reason: m.reason, reply });
                }
            }
        }
        let now = Instant::now();
        let t = triage(jobs, now);
        for job in t.expired {
            self.ctx.metrics.drop_job("deadline");
            let _ = job.reply.send(Err(JobError::DeadlineExceeded));
        }
        let ran = t.live.len() as u64;
        if t.live.is_empty() {
            drop(slot);
        } else {
            for job in &t.live {
                self.ctx.metrics.stage(metrics::QUEUE_WAIT, now.saturating_duration_since(job.enqueued));
            }
            let images = t.live.iter().map(|j| Arc::clone(&j.image)).collect();
            let results = execute(&self.pool, slot, images, &self.ctx).await;
            for (job, result) in t.live.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
        let replies: Vec<(u64, String, JobResult)> = waiting
            .into_iter()
            .map(|(id, to, mut rx)| (id, to, rx.try_recv().unwrap_or(Err(JobError::ShuttingDown))))
            .collect();
        self.finish(&ids, &replies, &dead).await;
        self.processed.fetch_add(ran, Ordering::Relaxed);
        self.dead_lettered.fetch_add(dead.len() as u64, Ordering::Relaxed);
        let mut in_flight = self.in_flight();
        for id in &ids {
            in_flight.remove(id);
        }
    }

    /// Dead letters, replies, then acknowledgement and deletion, in one
    /// transaction. Retried briefly; if Redis stays away, the entries stay
    /// pending and are reclaimed once it is back.
    async fn finish(&self, ids: &[String], replies: &[(u64, String, JobResult)], dead: &[DeadLetter]) {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for d in dead {
            tracing::error!(worker = %self.id, entry = %d.entry.id, reason = %d.reason, "job moved to the dead-letter stream");
            pipe.cmd("XADD").arg(&self.dead).arg("MAXLEN").arg("~").arg(keys::DEAD_MAXLEN).arg("*");
            pipe.arg("dead_reason").arg(&d.reason).arg("dead_entry").arg(&d.entry.id);
            pipe.arg("dead_deliveries")
                .arg(d.deliveries)
                .arg("dead_worker")
                .arg(&self.id)
                .arg("dead_at_ms")
                .arg(keys::now_ms());
            for (field, value) in &d.entry.map {
                if let Ok(bytes) = redis::from_redis_value_ref::<Vec<u8>>(value) {
                    pipe.arg(field).arg(bytes);
                }
            }
            pipe.ignore();
            if let Some((job, to)) = &d.reply {
                push_reply(&mut pipe, to, *job, &Err(JobError::DeadLettered(d.deliveries)));
            }
        }
        for (job, to, result) in replies {
            push_reply(&mut pipe, to, *job, result);
        }
        pipe.cmd("XACK").arg(&self.stream).arg(keys::GROUP).arg(ids).ignore();
        pipe.cmd("XDEL").arg(&self.stream).arg(ids).ignore();
        let mut conn = self.conn.clone();
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=6 {
            match pipe.exec_async(&mut conn).await {
                Ok(()) => return,
                Err(e) if attempt == 6 => {
                    tracing::error!(worker = %self.id, error = %e, jobs = ids.len(),
                        "cannot write replies; the jobs stay pending and will be reclaimed");
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }

    async fn ensure_group(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(keys::GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .exec_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    fn beat(&self) -> String {
        let beat = WorkerBeat {
            last_seen_ms: keys::now_ms(),
            started_ms: self.started_ms,
            model: self.spec.name.clone(),
            version: self.spec.version.clone(),
            sessions: self.pool.sessions(),
            processed: self.processed(),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            host: keys::hostname(),
            pid: std::process::id(),
        };
        serde_json::to_string(&beat).unwrap_or_default()
    }

    /// Publishes the heartbeat and refreshes the claim on entries in flight.
    async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let every = keys::HEARTBEAT.min(self.cfg.visibility / 3);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut group_ready = false;
        let mut beats = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if !group_ready {
                group_ready = self.ensure_group().await.is_ok();
            }
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("HSET").arg(&self.registry).arg(&self.id).arg(self.beat()).ignore();
            let in_flight: Vec<String> = self.in_flight().iter().cloned().collect();
            if !in_flight.is_empty() {
                // JUSTID: resets the idle time without counting a delivery.
                pipe.cmd("XCLAIM")
                    .arg(&self.stream)
                    .arg(keys::GROUP)
                    .arg(&self.id)
                    .arg(0)
                    .arg(&in_flight)
                    .arg("JUSTID")
                    .ignore();
            }
            let ok = pipe.exec_async(&mut conn).await.is_ok();
            if !ok {
                group_ready = false;
            }
            self.registered.store(ok, Ordering::SeqCst);
            beats += 1;
            if ok && beats.is_multiple_of(60) {
                self.forget_dead_consumers().await;
            }
        }
    }

    /// Removes from the group the consumers of workers that died long ago
    /// and whose entries were all reclaimed (nothing pending).
    async fn forget_dead_consumers(&self) {
        let mut conn = self.conn.clone();
        let info: redis::RedisResult<StreamInfoConsumersReply> =
            redis::cmd("XINFO").arg("CONSUMERS").arg(&self.stream).arg(keys::GROUP).query_async(&mut conn).await;
        let Ok(info) = info else { return };
        for c in info.consumers {
            if c.pending == 0 && c.idle as u128 > keys::WORKER_FORGET.as_millis() * 10 {
                let _: redis::RedisResult<()> = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.stream)
                    .arg(keys::GROUP)
                    .arg(&c.name)
                    .exec_async(&mut conn)
                    .await;
            }
        }
    }

    /// Leaves the registry; removes this consumer from the group if it has
    /// nothing pending (deleting it would otherwise drop its pending entries).
    async fn leave(&self) {
        let mut conn = self.conn.clone();
        let _: redis::RedisResult<()> =
            redis::cmd("HDEL").arg(&self.registry).arg(&self.id).exec_async(&mut conn).await;
        let pending: redis::RedisResult<StreamPendingCountReply> = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(keys::GROUP)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&self.id)
            .query_async(&mut conn)
            .await;
        if pending.is_ok_and(|p| p.ids.is_empty()) {
            let _: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&self.stream)
                .arg(keys::GROUP)
                .arg(&self.id)
                .exec_async(&mut conn)
                .await;
        }
    }
}

fn reply_of(entry: &StreamId) -> Option<(u64, String)> {
    let id = entry.get::<String>("id")?.parse().ok()?;
    let to = entry.get::<String>("reply").filter(|r| r.starts_with("lens:replies:"))?;
    Some((id, to))
}

fn push_reply(pipe: &mut redis::Pipeline, to: &str, job: u64, result: &JobResult) {
    pipe.cmd("RPUSH").arg(to).arg(codec::encode_reply(job, result)).ignore();
    pipe.cmd("PEXPIRE").arg(to).arg(keys::REPLY_TTL.as_millis() as u64).ignore();
}

/// The optional health and metrics endpoint of a worker process.
mod health {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tokio_util::sync::CancellationToken;

    use super::Worker;
    use crate::metrics::Metrics;

    pub async fn serve(
        listener: tokio::net::TcpListener,
        worker: Arc<Worker>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
        let app = Router::new()
            .route("/health/live", get(|| async { "live" }))
            .route(
                "/health/ready",
                get(|State((w, _)): State<(Arc<Worker>, Arc<Metrics>)>| async move {
                    if w.registered.load(Ordering::SeqCst) {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not registered in Redis")
                    }
                }),
            )
            .route("/metrics", get(|State((_, m)): State<(Arc<Worker>, Arc<Metrics>)>| async move { m.render() }))
            .with_state((worker, metrics));
        let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
    }
}
