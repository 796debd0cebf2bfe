//! Dynamic batching: when to dispatch, which jobs are still worth running,
//! and the in-process batcher loop.
//!
//! The rule is greedy: the moment a session is free, the batcher takes what
//! is queued (up to `max_batch`) and dispatches it. With `max_wait` set, a
//! batch that is not full may wait that long, counted from its first job's
//! enqueue time, for more jobs. Jobs whose client has gone or whose deadline
//! passed are dropped before inference and counted.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::ModelInput;
use crate::job::{Job, JobError, JobOutput, JobResult};
use crate::metrics::{self, Metrics};
use crate::sessions::SessionPool;

/// The batching rule's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    pub max_batch: usize,
    /// Zero: never wait for a batch to fill.
    pub max_wait: Duration,
}

/// What the batcher does next with a batch being formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Dispatch,
    /// Wait for more jobs until this instant, then dispatch what there is.
    WaitUntil(Instant),
}

/// The batching rule, pure: a batch of `len` jobs whose first job was
/// enqueued at `first_enqueued`.
pub fn next_step(len: usize, cfg: &BatchConfig, first_enqueued: Instant, now: Instant) -> Next {
    if len >= cfg.max_batch || cfg.max_wait.is_zero() {
        return Next::Dispatch;
    }
    let until = first_enqueued + cfg.max_wait;
    if now >= until { Next::Dispatch } else { Next::WaitUntil(until) }
}

/// Jobs split by whether they are still worth running.
#[derive(Debug, Default)]
pub struct Triage {
    pub live: Vec<Job>,
    pub expired: Vec<Job>,
    pub abandoned: usize,
}

/// Drops jobs whose client is gone and sets aside those past their deadline.
pub fn triage(jobs: Vec<Job>, now: Instant) -> Triage {
    let mut t = Triage::default();
    for job in jobs {
        if job.reply.is_closed() {
            t.abandoned += 1;
        } else if now >= job.deadline {
            t.expired.push(job);
        } else {
            t.live.push(job);
        }
    }
    t
}

/// What a batch needs besides its images.
pub struct BatchContext {
    pub metrics: Arc<Metrics>,
}

/// Runs `images` on a reserved session and turns the scores into one
/// [`JobResult`] per image. Shared by the in-process batcher and Redis workers.
pub async fn execute(
    pool: &SessionPool,
    slot: tokio::sync::OwnedSemaphorePermit,
    images: Vec<Arc<ModelInput>>,
    ctx: &BatchContext,
) -> Vec<JobResult> {
    let n = images.len();
    ctx.metrics.batch_size.observe(n as f64);
    let outcome = pool.run(slot, images).await;
    let (result, took) = match outcome {
        Ok(r) => r,
        Err(_) => return vec![Err(JobError::ShuttingDown); n],
    };
    ctx.metrics.stage(metrics::INFERENCE, took);
    match result {
        Ok(rows) if rows.len() == n => {
            ctx.metrics.inferred_images.inc_by(n as u64);
            rows.into_iter().map(|scores| Ok(JobOutput { scores: scores.into() })).collect()
        }
        Ok(rows) => vec![Err(JobError::Inference(format!("model answered {} rows for {n} images", rows.len()))); n],
        Err(e) => {
            tracing::error!(error = %e, batch = n, "inference failed");
            vec![Err(JobError::Inference(e.to_string())); n]
        }
    }
}

/// The in-process batcher: forms batches from `jobs` whenever a session is
/// free, until `jobs` closes (all senders dropped) or `cancel` fires. On
/// cancellation it still drains what is queued, so no accepted job is lost.
pub async fn run_local(
    mut jobs: mpsc::Receiver<Job>,
    pool: Arc<SessionPool>,
    cfg: BatchConfig,
    ctx: Arc<BatchContext>,
    cancel: CancellationToken,
) {
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        let Some(slot) = pool.reserve().await else { break };
        let first = tokio::select! {
            biased;
            job = jobs.recv() => job,
            _ = cancel.cancelled() => { jobs.close(); jobs.recv().await }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        loop {
            while batch.len() < cfg.max_batch {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            match next_step(batch.len(), &cfg, batch[0].enqueued, Instant::now()) {
                Next::Dispatch => break,
                Next::WaitUntil(until) => match tokio::time::timeout_at(until, jobs.recv()).await {
                    Ok(Some(job)) => batch.push(job),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        ctx.metrics.queue_depth.dec_by(batch.len() as i64);
        let now = Instant::now();
        let t = triage(batch, now);
        for _ in 0..t.abandoned {
            ctx.metrics.drop_job("client_gone");
        }
        for job in t.expired {
            ctx.metrics.drop_job("deadline");
            let _ = job.reply.send(Err(JobError::DeadlineExceeded));
        }
        if t.live.is_empty() {
            continue;
        }
        for job in &t.live {
            ctx.metrics.stage(metrics::QUEUE_WAIT, now - job.enqueued);
        }
        let images = t.live.iter().map(|j| Arc::clone(&j.image)).collect();
        let pool = Arc::clone(&pool);
        let ctx = Arc::clone(&ctx);
        in_flight.spawn(async move {
            let results = execute(&pool, slot, images, &ctx).await;
            for (job, result) in t.live.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_batch: usize, wait_ms: u64) -> BatchConfig {
        BatchConfig { max_batch, max_wait: Duration::from_millis(wait_ms) }
    }

    #[test]
    fn without_max_wait_a_batch_goes_at_once() {
        let t0 = Instant::now();
        assert_eq!(next_step(1, &cfg(8, 0), t0, t0), Next::Dispatch);
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        let t0 = Instant::now();
        assert_eq!(next_step(8, &cfg(8, 50), t0, t0), Next::Dispatch);
    }

    #[test]
    fn a_partial_batch_waits_from_its_first_enqueue() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(20);
        assert_eq!(next_step(3, &cfg(8, 50), t0, now), Next::WaitUntil(t0 + Duration::from_millis(50)));
        assert_eq!(next_step(3, &cfg(8, 50), t0, t0 + Duration::from_millis(50)), Next::Dispatch);
    }

    fn job(deadline_in: Duration) -> (Job, tokio::sync::oneshot::Receiver<JobResult>) {
        let img = Arc::new(ModelInput::Tensor(vec![0.0; 3]));
        Job::new(img, Instant::now() + deadline_in)
    }

    #[test]
    fn triage_drops_gone_clients_and_expired_jobs() {
        let (live, _rx1) = job(Duration::from_secs(10));
        let (gone, rx2) = job(Duration::from_secs(10));
        drop(rx2);
        let (late, _rx3) = job(Duration::ZERO);
        let t = triage(vec![live, gone, late], Instant::now());
        assert_eq!((t.live.len(), t.expired.len(), t.abandoned), (1, 1, 1));
    }

    /// A fake model that records batch sizes; its first call waits for `gate`.
    struct Recorder {
        sizes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
        gate: Option<std::sync::mpsc::Receiver<()>>,
    }

    impl crate::engine::Classifier for Recorder {
        fn classify(
            &mut self,
            inputs: &[&ModelInput],
        ) -> Result<Vec<crate::engine::Scores>, crate::engine::EngineError> {
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            self.sizes.lock().unwrap().push(inputs.len());
            Ok(inputs.iter().map(|_| vec![1.0]).collect())
        }
    }

    struct Harness {
        queue: crate::queue::JobQueue,
        sizes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn harness(cfg: BatchConfig, gate: Option<std::sync::mpsc::Receiver<()>>) -> Harness {
        let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let fake = Recorder { sizes: sizes.clone(), gate };
        let pool = Arc::new(SessionPool::start(vec![Box::new(fake)], None).unwrap());
        let metrics = Arc::new(Metrics::new());
        let (q, rx) = crate::queue::LocalQueue::new(64, metrics.clone());
        let cancel = CancellationToken::new();
        let ctx = Arc::new(BatchContext { metrics });
        let task = tokio::spawn(run_local(rx, pool, cfg, ctx, cancel.clone()));
        Harness { queue: crate::queue::JobQueue::Local(q), sizes, cancel, task }
    }

    async fn submit(h: &Harness) -> tokio::sync::oneshot::Receiver<JobResult> {
        let img = Arc::new(ModelInput::Tensor(vec![0.0; 3]));
        h.queue.submit(img, Instant::now() + Duration::from_secs(60)).await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn max_wait_gathers_jobs_that_arrive_within_it() {
        let h = harness(cfg(4, 50), None);
        let a = submit(&h).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let b = submit(&h).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = submit(&h).await;
        for rx in [a, b, c] {
            assert!(rx.await.unwrap().is_ok());
        }
        assert_eq!(*h.sizes.lock().unwrap(), vec![2, 1]);
        h.cancel.cancel();
        h.task.await.unwrap();
    }

    #[tokio::test]
    async fn an_idle_batcher_takes_what_is_queued_when_a_session_frees() {
        let (open, gate) = std::sync::mpsc::channel();
        let h = harness(cfg(3, 0), Some(gate));
        let first = submit(&h).await;
        // The only session is now busy with `first`; five more queue up.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut rest = Vec::new();
        for _ in 0..5 {
            rest.push(submit(&h).await);
        }
        open.send(()).unwrap();
        assert!(first.await.unwrap().is_ok());
        for rx in rest {
            assert!(rx.await.unwrap().is_ok());
        }
        assert_eq!(*h.sizes.lock().unwrap(), vec![1, 3, 2], "greedy batches capped at max_batch");
        h.cancel.cancel();
        h.task.await.unwrap();
    }

    #[tokio::test]
    async fn cancellation_drains_the_queue_before_stopping() {
        let (open, gate) = std::sync::mpsc::channel();
        let h = harness(cfg(8, 0), Some(gate));
        let mut all = vec![submit(&h).await];
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..4 {
            all.push(submit(&h).await);
        }
        h.cancel.cancel();
        open.send(()).unwrap();
        for rx in all {
            assert!(rx.await.unwrap().is_ok(), "accepted jobs are answered during shutdown");
        }
        h.task.await.unwrap();
        let late = h.queue.submit(Arc::new(ModelInput::Tensor(vec![])), Instant::now() + Duration::from_secs(1)).await;
        assert!(late.is_err(), "no new jobs after shutdown");
    }
}
