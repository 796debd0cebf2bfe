//! The Redis Streams job queue, API-node side: admission onto a model's job
//! stream, the reply listener, and the watch on worker liveness that
//! publishes readiness.
//!
//! An API node that runs with `--redis` loads no model session. Each job it
//! admits goes onto its model version's stream `lens:jobs:{model}:{version}`
//! (see [`codec`] for the entry), and
//! the request waits on a `oneshot` registered under the job's id. One
//! listener task per queue pops the node's own reply list
//! (`lens:replies:{node}`) on a dedicated connection and routes each reply to
//! its waiter; nothing polls per request. Workers ([`crate::worker`]) read the
//! stream through a consumer group and acknowledge a job only once its reply
//! is written. docs/deployment.md ("Scaling out on Redis") has the whole protocol.
//!
//! Every Redis call made on a request's path fails fast: while Redis is down
//! the node answers 503 (with `Retry-After`) and is not ready; it reconnects
//! by itself.
//!
//! A Redis restart costs time, not requests: the node keeps every job's
//! input until the job is answered. When it sees that Redis came back as a
//! new instance (a new `run_id` in `INFO server`), or, checked every
//! [`keys::MISSING_CHECK_EVERY`], that one of its jobs is no longer on the stream
//! although unanswered, it puts those jobs back on the stream under the same
//! job id. A job may then be answered twice (a worker that had it finishes
//! after Redis came back); the first reply wins and later ones are dropped.
//! `recovery` does this.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use super::conn::Conn;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::cache::RedisCache;
use super::codec::{self, Liveness};
use super::keys::{
    self, REPLY_DRAIN_BATCH, REPLY_POP_BLOCK, RETRY_PAUSE, SUBMIT_TIMEOUT, SWEEP_GRACE, WAIT_REPLICAS_TIMEOUT,
    WATCH_EVERY,
};
use super::{clock, conn};
use crate::job::{JobResult, ModelInput};
use crate::model::ModelSpec;
use crate::queue::{Capacity, JobQueue, SubmitError, Submitted};
use crate::telemetry::Carrier;

mod recovery;

/// Admission and enqueue in one atomic step: refuse when the stream already
/// holds `ARGV[1]` jobs (queued or being processed; acknowledged jobs are
/// deleted), else `XADD` the fields in `ARGV[2..]`.
static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end \
         return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))",
    )
});

/// How an API node's queue on Redis behaves.
pub struct QueueSettings {
    /// Most jobs the stream may hold (`--queue-capacity`).
    pub capacity: usize,
    /// `--redis-wait-replicas`.
    pub wait_replicas: u32,
    /// The queue depth, for the metrics.
    pub depth: Gauge,
    /// Jobs put back after Redis lost them, for the metrics.
    pub requeued: prometheus_client::metrics::counter::Counter,
}

/// A request waiting for its reply, with what it takes to enqueue its job
/// again if Redis loses it.
struct Waiter {
    reply: oneshot::Sender<JobResult>,
    deadline: Instant,
    input: Arc<ModelInput>,
    /// The request's trace context, put on the job again if it is re-added.
    trace: Option<Arc<Carrier>>,
    /// The job's stream entry id; `None` while the `XADD` is in flight.
    entry: Option<String>,
    /// When the job was last put on the stream.
    enqueued: Instant,
}

struct Inner {
    model: String,
    version: String,
    stream: String,
    registry: String,
    reply_key: String,
    /// Most jobs the stream may hold; beyond it, [`SubmitError::Full`].
    capacity: usize,
    /// Replicas that must acknowledge a job before it counts as queued.
    wait_replicas: u32,
    /// Counts jobs put back after Redis lost them.
    requeued: prometheus_client::metrics::counter::Counter,
    /// Multiplexed connection for everything but the blocking pop.
    conn: Conn,
    /// Requests waiting for a reply, by job id. The listener removes an entry
    /// when its reply arrives; its sweep drops those whose request is gone
    /// (deadline passed, client left), so the map cannot grow without bound.
    waiting: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    /// Whether the last look at Redis succeeded; shared with the [`RedisCache`].
    up: Arc<AtomicBool>,
    live_workers: AtomicUsize,
    live_sessions: AtomicUsize,
    depth: AtomicUsize,
    /// The stream length as last seen, for `/metrics`.
    depth_gauge: Gauge,
    /// Readiness: Redis reachable and a live worker of this version.
    ready: watch::Sender<bool>,
    /// The `run_id` of the Redis instance last seen; a new one means Redis
    /// restarted and may have lost this node's jobs.
    run_id: Mutex<Option<String>>,
    /// Set when a restart was seen and this node's jobs are not yet known to
    /// be back on the stream; cleared once they are.
    recheck: AtomicBool,
    /// When the stream was last checked for missing jobs.
    last_missing_check: Mutex<Instant>,
}

impl Inner {
    fn waiting(&self) -> MutexGuard<'_, HashMap<u64, Waiter>> {
        // The map stays consistent if a holder panicked: every operation is
        // a single insert or remove.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes a reply to its request. A reply for a job that is not waiting
    /// (answered already, or its request gone) is dropped.
    /// The entry of job `id`, enqueued now (first, or again after Redis lost it).
    fn job_fields(
        &self,
        id: u64,
        deadline: Instant,
        input: &ModelInput,
        trace: Option<&Carrier>,
    ) -> Vec<(&'static str, Vec<u8>)> {
        codec::job_fields(id, &self.reply_key, clock::unix_ms_at(deadline), clock::now_ms(), input, trace)
    }

    fn deliver(&self, bytes: &[u8]) {
        match codec::decode_reply(bytes) {
            Ok((id, result)) => match self.waiting().remove(&id) {
                Some(w) => {
                    let _ = w.reply.send(result);
                }
                None => tracing::debug!(job = id, "dropping a reply: the job was answered already or its request left"),
            },
            Err(e) => tracing::warn!(error = %e, "ignoring a malformed reply"),
        }
    }

    fn sweep(&self) {
        let late = Instant::now() - SWEEP_GRACE;
        self.waiting().retain(|_, w| !w.reply.is_closed() && w.deadline > late);
    }
}

/// An API node's handle on one model's job stream. Cheap to clone.
#[derive(Clone)]
pub struct RedisQueue {
    inner: Arc<Inner>,
}

impl RedisQueue {
    /// Connects (lazily: Redis may still be down) and starts the reply
    /// listener and the liveness watch, which run until `stop` is cancelled.
    /// The queue is not ready until the watch has seen Redis and a live worker.
    pub fn start(
        client: &conn::Redis,
        spec: &ModelSpec,
        settings: QueueSettings,
        stop: CancellationToken,
    ) -> redis::RedisResult<(Self, Vec<tokio::task::JoinHandle<()>>)> {
        let QueueSettings { capacity, wait_replicas, depth: depth_gauge, requeued } = settings;
        let node = clock::unique_id("api");
        let inner = Arc::new(Inner {
            model: spec.name.clone(),
            version: spec.version.clone(),
            stream: keys::jobs(&spec.name, &spec.version),
            registry: keys::workers(&spec.name),
            reply_key: keys::replies(&node),
            capacity,
            wait_replicas,
            requeued,
            conn: conn::connect(client, SUBMIT_TIMEOUT)?,
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            up: Arc::new(AtomicBool::new(false)),
            live_workers: AtomicUsize::new(0),
            live_sessions: AtomicUsize::new(0),
            depth: AtomicUsize::new(0),
            depth_gauge,
            ready: watch::channel(false).0,
            run_id: Mutex::new(None),
            recheck: AtomicBool::new(false),
            last_missing_check: Mutex::new(Instant::now()),
        });
        // The blocking pop gets a connection of its own: on the shared one it
        // would hold up every other command for its whole timeout.
        let listener_conn = conn::connect(client, REPLY_POP_BLOCK + SUBMIT_TIMEOUT)?;
        tracing::info!(model = %spec.name, replies = %inner.reply_key, "API node on Redis");
        let queue = RedisQueue { inner };
        let tasks = vec![
            tokio::spawn(listen(Arc::clone(&queue.inner), listener_conn, stop.clone())),
            tokio::spawn(queue.clone().watch(stop)),
        ];
        Ok((queue, tasks))
    }

    /// Puts one job on the stream; the receiver gets the worker's answer.
    async fn submit_job(
        &self,
        image: Arc<ModelInput>,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<JobResult>, SubmitError> {
        let inner = &self.inner;
        if !inner.up.load(Ordering::SeqCst) {
            return Err(SubmitError::Unavailable("Redis is unreachable".into()));
        }
        if inner.live_workers.load(Ordering::SeqCst) == 0 {
            return Err(SubmitError::Unavailable(format!("no live worker serves model {}", inner.model)));
        }
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let trace = Carrier::of(&tracing::Span::current()).map(Arc::new);
        let fields = inner.job_fields(id, deadline, &image, trace.as_deref());
        let (tx, rx) = oneshot::channel();
        // Registered before the job exists, so no reply can arrive unrouted.
        let waiter = Waiter { reply: tx, deadline, input: image, trace, entry: None, enqueued: Instant::now() };
        inner.waiting().insert(id, waiter);
        let mut call = ADMIT.prepare_invoke();
        call.key(&inner.stream).arg(inner.capacity);
        for (field, value) in &fields {
            call.arg(*field).arg(value.as_slice());
        }
        let mut conn = inner.conn.clone();
        let adding = tracing::debug_span!(
            "XADD",
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = "XADD",
            messaging.destination.name = inner.stream.as_str()
        );
        let added = tokio::time::timeout(SUBMIT_TIMEOUT, call.invoke_async::<Option<String>>(&mut conn))
            .instrument(adding)
            .await;
        let refused = match added {
            Ok(Ok(Some(entry))) => match self.replicated(&mut conn).await {
                Ok(()) => {
                    // The reply may have come already; then there is nothing to keep.
                    if let Some(w) = inner.waiting().get_mut(&id) {
                        w.entry = Some(entry);
                    }
                    return Ok(rx);
                }
                Err(e) => e,
            },
            Ok(Ok(None)) => SubmitError::Full,
            Ok(Err(e)) => SubmitError::Unavailable(format!("Redis refused the job: {e}")),
            Err(_) => SubmitError::Unavailable("Redis did not answer in time".into()),
        };
        inner.waiting().remove(&id);
        Err(refused)
    }

    /// With `--redis-wait-replicas N`: waits (up to [`WAIT_REPLICAS_TIMEOUT`])
    /// until N replicas acknowledged every write this connection made, the
    /// job just added included. A failover then cannot lose it.
    async fn replicated(&self, conn: &mut Conn) -> Result<(), SubmitError> {
        let want = self.inner.wait_replicas;
        if want == 0 {
            return Ok(());
        }
        let waited = redis::cmd("WAIT")
            .arg(want)
            .arg(WAIT_REPLICAS_TIMEOUT.as_millis() as u64)
            .query_async::<u32>(conn)
            .await
            .map_err(|e| SubmitError::Unavailable(format!("Redis refused WAIT: {e}")))?;
        match waited >= want {
            true => Ok(()),
            false => Err(SubmitError::Unavailable(format!(
                "only {waited} of {want} Redis replicas acknowledged the job within {WAIT_REPLICAS_TIMEOUT:?}"
            ))),
        }
    }

    /// The Redis result cache for this model version, or `None` if `ttl` is
    /// zero. It skips Redis while this queue last found it unreachable.
    pub fn shared_cache(&self, ttl: Duration) -> Option<RedisCache> {
        let inner = &self.inner;
        (!ttl.is_zero())
            .then(|| RedisCache::new(inner.conn.clone(), &inner.model, &inner.version, ttl, Arc::clone(&inner.up)))
    }

    /// Keeps the node's view of Redis and the workers fresh, and publishes
    /// readiness, until `stop` is cancelled.
    async fn watch(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last: Option<(bool, usize)> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let seen = tokio::time::timeout(SUBMIT_TIMEOUT, self.refresh()).await;
            let inner = &self.inner;
            let error = match seen {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("timed out".to_owned()),
            };
            inner.up.store(error.is_none(), Ordering::SeqCst);
            let workers = inner.live_workers.load(Ordering::SeqCst);
            inner.ready.send_replace(error.is_none() && workers > 0);
            let now = (error.is_none(), workers);
            if last != Some(now) {
                match &error {
                    Some(e) => tracing::warn!(model = %inner.model, error = %e, "Redis unreachable; answering 503"),
                    None => tracing::info!(model = %inner.model, workers = now.1, "Redis reachable"),
                }
                last = Some(now);
            }
        }
    }

    async fn refresh(&self) -> redis::RedisResult<()> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let (beats, depth, info): (HashMap<String, String>, usize, String) = redis::pipe()
            .cmd("HGETALL")
            .arg(&inner.registry)
            .cmd("XLEN")
            .arg(&inner.stream)
            .cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        let ms = |d: Duration| d.as_millis() as u64;
        let (live, stale): (Liveness, _) =
            codec::liveness(&beats, &inner.version, clock::now_ms(), ms(keys::WORKER_TTL), ms(keys::WORKER_FORGET));
        if !stale.is_empty() {
            redis::cmd("HDEL").arg(&inner.registry).arg(&stale).exec_async(&mut conn).await?;
        }
        inner.live_workers.store(live.workers, Ordering::SeqCst);
        inner.live_sessions.store(live.sessions, Ordering::Relaxed);
        inner.depth.store(depth, Ordering::Relaxed);
        inner.depth_gauge.set(depth as i64);
        self.recover(codec::run_id(&info)).await
    }
}

/// Pops this node's replies and hands each to its waiting request.
async fn listen(inner: Arc<Inner>, mut conn: Conn, stop: CancellationToken) {
    let mut last_sweep = Instant::now();
    let mut failing = false;
    loop {
        // Cancelling a pop in flight may lose one reply; at that point every
        // request has been answered, so nobody waits for it.
        let mut pop = redis::cmd("BLPOP");
        pop.arg(&inner.reply_key).arg(REPLY_POP_BLOCK.as_secs_f64());
        let popped = tokio::select! {
            _ = stop.cancelled() => break,
            r = pop.query_async::<Option<(String, Vec<u8>)>>(&mut conn) => r,
        };
        match popped {
            Ok(Some((_, first))) => {
                failing = false;
                inner.deliver(&first);
                let more: redis::RedisResult<Option<Vec<Vec<u8>>>> =
                    redis::cmd("LPOP").arg(&inner.reply_key).arg(REPLY_DRAIN_BATCH).query_async(&mut conn).await;
                for reply in more.ok().flatten().unwrap_or_default() {
                    inner.deliver(&reply);
                }
            }
            Ok(None) => failing = false,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot read replies from Redis; retrying");
                }
                failing = true;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                }
            }
        }
        if last_sweep.elapsed() >= REPLY_POP_BLOCK {
            inner.sweep();
            last_sweep = Instant::now();
        }
    }
}

impl JobQueue for RedisQueue {
    fn submit(&self, input: Arc<ModelInput>, deadline: Instant) -> Submitted<'_> {
        Box::pin(self.submit_job(input, deadline))
    }

    /// Jobs on the stream (queued or being processed), as last seen.
    fn depth(&self) -> usize {
        self.inner.depth.load(Ordering::Relaxed)
    }

    /// Live workers of this model version, and their sessions.
    fn capacity(&self) -> Capacity {
        Capacity {
            workers: self.inner.live_workers.load(Ordering::Relaxed),
            sessions: self.inner.live_sessions.load(Ordering::Relaxed),
        }
    }

    fn ready(&self) -> watch::Receiver<bool> {
        self.inner.ready.subscribe()
    }
}
