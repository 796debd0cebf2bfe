//! Jobs Redis lost, put back: after a restart (a new `run_id`), and now and
//! then for any job of this node that vanished from the stream unanswered.
//! The inputs come from the node's own waiters, which keep them until their
//! job is answered.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::RedisQueue;
use crate::redis::keys::{MISSING_CHECK_EVERY, MISSING_GRACE};

impl RedisQueue {
    /// Puts back on the stream the jobs Redis lost: all of them after a
    /// restart, and now and then any that went missing otherwise.
    pub(super) async fn recover(&self, run_id: Option<&str>) -> redis::RedisResult<()> {
        let inner = &self.inner;
        if let Some(now) = run_id {
            let mut seen = inner.run_id.lock().unwrap_or_else(|e| e.into_inner());
            if seen.as_deref().is_some_and(|before| before != now) {
                tracing::warn!(model = %inner.model, "Redis restarted; checking this node's jobs in flight");
                inner.recheck.store(true, Ordering::SeqCst);
            }
            *seen = Some(now.to_owned());
        }
        let due = {
            let mut last = inner.last_missing_check.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.elapsed() >= MISSING_CHECK_EVERY;
            if due {
                *last = Instant::now();
            }
            due
        };
        if inner.recheck.load(Ordering::SeqCst) {
            self.requeue_missing(Duration::ZERO).await?;
            inner.recheck.store(false, Ordering::SeqCst);
        } else if due {
            self.requeue_missing(MISSING_GRACE).await?;
        }
        Ok(())
    }

    /// Re-enqueues every waiting job enqueued at least `grace` ago whose
    /// stream entry is gone, under its own job id and deadline.
    async fn requeue_missing(&self, grace: Duration) -> redis::RedisResult<()> {
        let inner = &self.inner;
        let now = Instant::now();
        let candidates: Vec<(u64, String)> = inner
            .waiting()
            .iter()
            .filter(|(_, w)| !w.reply.is_closed() && w.deadline > now && now - w.enqueued >= grace)
            .filter_map(|(id, w)| Some((*id, w.entry.clone()?)))
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let mut conn = inner.conn.clone();
        let mut pipe = redis::pipe();
        for (_, entry) in &candidates {
            pipe.cmd("XRANGE").arg(&inner.stream).arg(entry).arg(entry).arg("COUNT").arg(1);
        }
        let found: Vec<Vec<redis::Value>> = pipe.query_async(&mut conn).await?;
        let missing: Vec<u64> =
            candidates.iter().zip(&found).filter(|(_, f)| f.is_empty()).map(|((id, _), _)| *id).collect();
        let mut requeued = 0;
        for id in missing {
            let waiter = inner.waiting().get(&id).map(|w| (Arc::clone(&w.input), w.deadline, w.trace.clone()));
            let Some((input, deadline, trace)) = waiter else {
                continue; // answered meanwhile
            };
            let fields = inner.job_fields(id, deadline, &input, trace.as_deref());
            let mut add = redis::cmd("XADD");
            add.arg(&inner.stream).arg("*");
            for (field, value) in &fields {
                add.arg(*field).arg(value.as_slice());
            }
            let entry: String = add.query_async(&mut conn).await?;
            if let Some(w) = inner.waiting().get_mut(&id) {
                (w.entry, w.enqueued) = (Some(entry), Instant::now());
            }
            requeued += 1;
        }
        inner.requeued.inc_by(requeued as u64);
        if requeued > 0 {
            tracing::warn!(model = %inner.model, jobs = requeued, "Redis lost jobs of this node; enqueued them again");
        }
        Ok(())
    }
}
