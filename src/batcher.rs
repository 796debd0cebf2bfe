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

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::job::{Job, JobError, JobOutput, JobResult, ModelInput};
use crate::metrics::{self, Metrics};
use crate::queue::Queued;
use crate::sessions::SessionPool;
use crate::telemetry;

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

/// What happens to a job when its batch is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Run,
    /// Its deadline passed: answered without running it.
    Expired,
    /// Nobody waits for its answer any more: dropped.
    Abandoned,
}

/// A job as the batch step sees it, whatever queue it came from.
pub trait Batched {
    fn job(&self) -> &Job;
    /// The client that waits for it is gone (in-process: its receiver was dropped).
    fn abandoned(&self) -> bool {
        false
    }
}

impl Batched for Queued {
    fn job(&self) -> &Job {
        &self.job
    }
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// Whether a job is still worth running at `now`.
pub fn triage(job: &impl Batched, now: Instant) -> Fate {
    if job.abandoned() {
        Fate::Abandoned
    } else if now >= job.job().deadline {
        Fate::Expired
    } else {
        Fate::Run
    }
}

/// The one batch step, shared by the in-process batcher and Redis workers:
/// triage, then run the live jobs on the reserved session. One answer per
/// job, in order: `None` for an abandoned job, `DeadlineExceeded` for an
/// expired one. Drops and stage times are counted here.
///
/// `span` is the batch's own span (see [`batch_span`]): it links to each
/// request it ran, and each job gets an inference span under its own
/// request that links back to it.
pub async fn run_batch<B: Batched>(
    batch: &[B],
    slot: OwnedSemaphorePermit,
    pool: &SessionPool,
    metrics: &Metrics,
    span: &tracing::Span,
) -> Vec<Option<JobResult>> {
    let now = Instant::now();
    let fates: Vec<Fate> = batch.iter().map(|b| triage(b, now)).collect();
    let traced = traced_jobs(batch, &fates, pool, span, now);
    let mut inputs = Vec::with_capacity(batch.len());
    for (b, fate) in batch.iter().zip(&fates) {
        match fate {
            Fate::Run => {
                metrics.stage(metrics::QUEUE_WAIT, now.saturating_duration_since(b.job().enqueued));
                inputs.push(Arc::clone(&b.job().input));
            }
            Fate::Expired => metrics.drop_job("deadline"),
            Fate::Abandoned => metrics.drop_job("client_gone"),
        }
    }
    let running = tracing::debug_span!(parent: span, "engine run", lens.batch.size = inputs.len() as i64);
    let mut ran =
        if inputs.is_empty() { Vec::new() } else { execute(pool, slot, inputs, metrics).instrument(running).await }
            .into_iter();
    drop(traced);
    fates
        .into_iter()
        .map(|fate| match fate {
            Fate::Run => ran.next(),
            Fate::Expired => Some(Err(JobError::DeadlineExceeded)),
            Fate::Abandoned => None,
        })
        .collect()
}

/// Runs `inputs` on a reserved session and turns the scores into one
/// [`JobResult`] per input.
/// A batch's own span, a trace of its own: it links to the requests it
/// runs, and its assembly, engine run and replies are its children.
pub fn batch_span() -> tracing::Span {
    tracing::debug_span!(parent: None, "batch", lens.batch.size = tracing::field::Empty)
}

/// One inference span per job that runs, under the span the job was queued
/// under, with the engine, precision, batch size and queue wait; the batch
/// span and these link to each other. Empty when traces are off.
fn traced_jobs<B: Batched>(
    batch: &[B],
    fates: &[Fate],
    pool: &SessionPool,
    span: &tracing::Span,
    now: Instant,
) -> Vec<tracing::Span> {
    if !telemetry::enabled() {
        return Vec::new();
    }
    let size = fates.iter().filter(|f| **f == Fate::Run).count();
    span.record("lens.batch.size", size as i64);
    let batch_ref = telemetry::SpanRef::of(span);
    let runtime = pool.runtime();
    let (engine, precision) = runtime.map_or(("", ""), |r| (r.engine.as_str(), r.precision.as_str()));
    let running = batch.iter().zip(fates).filter(|(_, f)| **f == Fate::Run);
    running
        .map(|(b, _)| {
            let job = b.job();
            let inference = tracing::debug_span!(
                parent: &job.parent,
                "inference",
                lens.engine = engine,
                lens.precision = precision,
                lens.batch.size = size as i64,
                lens.queue_wait_ms = now.saturating_duration_since(job.enqueued).as_secs_f64() * 1000.0,
            );
            telemetry::link(&inference, batch_ref);
            telemetry::link(span, telemetry::SpanRef::of(&job.parent));
            inference
        })
        .collect()
}

async fn execute(
    pool: &SessionPool,
    slot: OwnedSemaphorePermit,
    inputs: Vec<Arc<ModelInput>>,
    metrics: &Metrics,
) -> Vec<JobResult> {
    let n = inputs.len();
    metrics.batch_size.observe(n as f64);
    let outcome = pool.run(slot, inputs).await;
    let (result, took) = match outcome {
        Ok(r) => r,
        Err(_) => return vec![Err(JobError::ShuttingDown); n],
    };
    metrics.stage(metrics::INFERENCE, took);
    match result {
        Ok(rows) if rows.len() == n => {
            metrics.inferred_images.inc_by(n as u64);
            rows.into_iter().map(|scores| Ok(JobOutput { scores: scores.into(), inference: took })).collect()
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
/// `depth` is the queue's gauge, decremented for every job taken.
pub async fn run_local(
    mut jobs: mpsc::Receiver<Queued>,
    pool: Arc<SessionPool>,
    cfg: BatchConfig,
    metrics: Arc<Metrics>,
    depth: Gauge,
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
        let span = batch_span();
        let assembling = tracing::debug_span!(parent: &span, "batch assembly");
        let mut batch = vec![first];
        loop {
            while batch.len() < cfg.max_batch {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            match next_step(batch.len(), &cfg, batch[0].job.enqueued, Instant::now()) {
                Next::Dispatch => break,
                Next::WaitUntil(until) => match tokio::time::timeout_at(until, jobs.recv()).await {
                    Ok(Some(job)) => batch.push(job),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        drop(assembling);
        depth.dec_by(batch.len() as i64);
        let pool = Arc::clone(&pool);
        let metrics = Arc::clone(&metrics);
        in_flight.spawn(async move {
            let results = run_batch(&batch, slot, &pool, &metrics, &span).await;
            for (queued, result) in batch.into_iter().zip(results) {
                if let Some(result) = result {
                    let _ = queued.reply.send(result);
                }
            }
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::JobQueue;

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

    fn queued(deadline_in: Duration) -> (Queued, tokio::sync::oneshot::Receiver<JobResult>) {
        let img = Arc::new(ModelInput::Tensor(vec![0.0; 3]));
        let (reply, rx) = tokio::sync::oneshot::channel();
        (Queued { job: Job::new(img, Instant::now() + deadline_in), reply }, rx)
    }

    #[test]
    fn triage_drops_gone_clients_and_expired_jobs() {
        let (live, _rx1) = queued(Duration::from_secs(10));
        let (gone, rx2) = queued(Duration::from_secs(10));
        drop(rx2);
        let (late, _rx3) = queued(Duration::ZERO);
        let now = Instant::now();
        let fates: Vec<Fate> = [live, gone, late].iter().map(|q| triage(q, now)).collect();
        assert_eq!(fates, vec![Fate::Run, Fate::Abandoned, Fate::Expired]);
    }

    #[tokio::test]
    async fn run_batch_answers_in_order_and_runs_only_live_jobs() {
        let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let pool = SessionPool::start(vec![Box::new(Recorder { sizes: sizes.clone(), gate: None })], None).unwrap();
        let metrics = Metrics::new();
        let (live, _rx1) = queued(Duration::from_secs(10));
        let (late, _rx2) = queued(Duration::ZERO);
        let (gone, rx3) = queued(Duration::from_secs(10));
        drop(rx3);
        let (live2, _rx4) = queued(Duration::from_secs(10));
        let slot = pool.reserve().await.unwrap();
        let out = run_batch(&[live, late, gone, live2], slot, &pool, &metrics, &batch_span()).await;
        assert!(matches!(out[0], Some(Ok(_))));
        assert_eq!(out[1], Some(Err(JobError::DeadlineExceeded)));
        assert_eq!(out[2], None);
        assert!(matches!(out[3], Some(Ok(_))));
        assert_eq!(*sizes.lock().unwrap(), vec![2], "only the two live jobs ran, as one batch");
        let text = metrics.render();
        assert!(text.contains("lens_dropped_jobs_total{reason=\"deadline\"} 1"), "{text}");
        assert!(text.contains("lens_dropped_jobs_total{reason=\"client_gone\"} 1"), "{text}");
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
        queue: crate::queue::LocalQueue,
        sizes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn harness(cfg: BatchConfig, gate: Option<std::sync::mpsc::Receiver<()>>) -> Harness {
        let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let fake = Recorder { sizes: sizes.clone(), gate };
        let pool = Arc::new(SessionPool::start(vec![Box::new(fake)], None).unwrap());
        let metrics = Arc::new(Metrics::new());
        let depth = metrics.queue_depth("m");
        let (queue, rx) = crate::queue::LocalQueue::new(64, 1, depth.clone());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_local(rx, pool, cfg, metrics, depth, cancel.clone()));
        Harness { queue, sizes, cancel, task }
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
