//! The worker's heartbeat: its entry in `lens:workers:{model}`, which API
//! nodes read for liveness and capacity; the claim refresh of the entries
//! it is running; tidying the consumer group; leaving on shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::streams::{StreamInfoConsumersReply, StreamPendingCountReply};
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::redis::clock;
use crate::redis::codec::WorkerBeat;
use crate::redis::keys::{self, FORGET_CONSUMER_EVERY_BEATS, FORGET_CONSUMER_FACTOR};

impl Worker {
    fn beat(&self) -> String {
        let beat = WorkerBeat {
            last_seen_ms: clock::now_ms(),
            started_ms: self.started_ms,
            model: self.spec.name.clone(),
            version: self.spec.version.clone(),
            sessions: self.pool.sessions(),
            processed: self.processed(),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            host: clock::hostname(),
            pid: std::process::id(),
            engine: self.pool.runtime().map_or("", |r| r.engine.as_str()).to_owned(),
            precision: self.pool.runtime().map_or("", |r| r.precision.as_str()).to_owned(),
        };
        serde_json::to_string(&beat).unwrap_or_default()
    }

    /// Publishes the heartbeat and refreshes the claim on entries in flight.
    pub(super) async fn heartbeat(self: Arc<Self>, stop: CancellationToken) {
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
            if ok && beats.is_multiple_of(FORGET_CONSUMER_EVERY_BEATS) {
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
            if c.pending == 0 && c.idle as u128 > (keys::WORKER_FORGET * FORGET_CONSUMER_FACTOR).as_millis() {
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
    pub(super) async fn leave(&self) {
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
