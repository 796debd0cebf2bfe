//! The worker's stream loop: take a batch when a session is free (reclaimed
//! entries of dead workers first, then new ones), run it with the shared
//! batch step, write the replies, acknowledge and delete the entries.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::redis::conn::Conn;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadOptions, StreamReadReply};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{DeadLetter, Delivery, Worker};
use crate::batcher::{Batched, Next, batch_span, next_step, run_batch};
use crate::job::{Job, JobError, JobResult};
use crate::redis::clock;
use crate::redis::codec;
use crate::redis::keys::{self, READ_BLOCK, REPLY_RETRIES, REPLY_RETRY_FIRST_PAUSE, RETRY_PAUSE};
use crate::telemetry;

/// The span of one job on this worker: it continues the trace of the
/// request that queued it (its `traceparent` field), so the inference span
/// below it lands in that request's trace. Disabled when traces are off.
fn job_span(entry: &codec::JobEntry, stream: &str) -> tracing::Span {
    if !telemetry::enabled() {
        return tracing::Span::none();
    }
    let waited = clock::now_ms().saturating_sub(entry.enqueued_ms);
    let span = tracing::debug_span!(
        parent: None,
        "job",
        otel.name = format!("process {stream}"),
        otel.kind = "consumer",
        messaging.system = "redis",
        messaging.operation.type = "process",
        messaging.destination.name = stream,
        lens.job.id = entry.job_id as i64,
        lens.stream_wait_ms = waited as i64,
    );
    if let Some(carrier) = &entry.trace {
        telemetry::continue_trace(&span, carrier.context());
    }
    span
}

/// A decoded job and where its reply goes.
struct Decoded {
    job: Job,
    job_id: u64,
    reply_to: String,
}

impl Batched for Decoded {
    fn job(&self) -> &Job {
        &self.job
    }
}

impl Worker {
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
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
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
        reader: &mut Conn,
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
            let enqueued = first.entry.get::<u64>("enqueued_ms").map_or_else(Instant::now, clock::instant_at);
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

    async fn read(&self, reader: &mut Conn, count: usize, block: Duration) -> redis::RedisResult<Vec<Delivery>> {
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
        let span = batch_span();
        let assembling = tracing::debug_span!(parent: &span, "batch assembly");
        let ids: Vec<String> = batch.iter().map(|d| d.entry.id.clone()).collect();
        let mut dead = Vec::new();
        let mut jobs = Vec::new();
        for d in batch {
            if d.deliveries > self.cfg.max_deliveries {
                let reason = format!("delivered {} times; the limit is {}", d.deliveries, self.cfg.max_deliveries);
                let reply = reply_of(&d.entry);
                dead.push(DeadLetter { entry: d.entry, deliveries: d.deliveries, reason, reply });
                continue;
            }
            match codec::decode_job(&d.entry, &self.spec.input) {
                Ok(e) => jobs.push(Decoded {
                    job: Job {
                        parent: job_span(&e, &self.stream),
                        input: Arc::new(e.input),
                        enqueued: clock::instant_at(e.enqueued_ms),
                        deadline: clock::instant_at(e.deadline_ms),
                    },
                    job_id: e.job_id,
                    reply_to: e.reply_to,
                }),
                Err(m) => {
                    let reply = m.job_id.zip(m.reply_to);
                    dead.push(DeadLetter { entry: d.entry, deliveries: d.deliveries, reason: m.reason, reply });
                }
            }
        }
        drop(assembling);
        let results = run_batch(&jobs, slot, &self.pool, &self.metrics, &span).await;
        // Each job's span ends once its reply is written.
        let job_spans: Vec<tracing::Span> = jobs.iter().map(|d| d.job.parent.clone()).collect();
        let ran = results.iter().filter(|r| !matches!(r, Some(Err(JobError::DeadlineExceeded)))).count();
        let replies: Vec<(u64, String, JobResult)> = jobs
            .into_iter()
            .zip(results)
            .map(|(d, r)| (d.job_id, d.reply_to, r.unwrap_or(Err(JobError::ShuttingDown))))
            .collect();
        self.finish(&ids, &replies, &dead).instrument(tracing::debug_span!(parent: &span, "write replies")).await;
        drop(job_spans);
        self.processed.fetch_add(ran as u64, Ordering::Relaxed);
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
                .arg(clock::now_ms());
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
        let mut wait = REPLY_RETRY_FIRST_PAUSE;
        for attempt in 1..=REPLY_RETRIES {
            match pipe.exec_async(&mut conn).await {
                Ok(()) => return,
                Err(e) if attempt == REPLY_RETRIES => {
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

    pub(super) async fn ensure_group(&self) -> redis::RedisResult<()> {
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
