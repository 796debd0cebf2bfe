//! The job queue seam between the prediction service and the model sessions.
//!
//! [`JobQueue`] is what [`crate::predictor::Predictor`] holds: it submits a
//! job and gets a receiver for its answer, reads the backlog and who serves
//! it, and watches readiness. It never learns which queue it talks to.
//! [`LocalQueue`] is the in-process one: a bounded channel read by
//! [`crate::batcher::run_local`]. The Redis Streams queue lives in
//! [`crate::redis::RedisQueue`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::job::{Job, JobResult, ModelInput};

/// Why a job was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    #[error("the queue is full")]
    Full,
    #[error("the service is shutting down")]
    Closed,
    #[error("the queue is unavailable: {0}")]
    Unavailable(String),
}

/// Who serves a queue: worker processes (in-process: the session pool counts
/// as one worker per session) and their model sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    pub workers: usize,
    pub sessions: usize,
}

/// What [`JobQueue::submit`] returns: the receiver of the job's answer.
pub type Submitted<'a> = Pin<Box<dyn Future<Output = Result<oneshot::Receiver<JobResult>, SubmitError>> + Send + 'a>>;

/// A queue of jobs for one model.
pub trait JobQueue: Send + Sync {
    /// Queues `input`; the receiver gets its answer. A job still queued at
    /// `deadline` is answered [`crate::job::JobError::DeadlineExceeded`]
    /// without being run.
    fn submit(&self, input: Arc<ModelInput>, deadline: Instant) -> Submitted<'_>;

    /// Jobs waiting for (or, on Redis, being run by) a model session.
    fn depth(&self) -> usize;

    /// Workers and sessions serving this queue now.
    fn capacity(&self) -> Capacity;

    /// Whether the queue can take and answer jobs now: sessions loaded, or
    /// Redis reachable with a live worker. Published, never polled.
    fn ready(&self) -> watch::Receiver<bool>;
}

/// A job in the in-process channel, with the `oneshot` its answer goes back on.
#[derive(Debug)]
pub struct Queued {
    pub job: Job,
    pub reply: oneshot::Sender<JobResult>,
}

/// The in-process queue: a bounded channel read by [`crate::batcher::run_local`].
pub struct LocalQueue {
    /// The batcher holds the receiver; it closes it on shutdown, after which
    /// submissions fail with [`SubmitError::Closed`].
    tx: mpsc::Sender<Queued>,
    /// Its session pool; fixed for the queue's life.
    sessions: usize,
    /// Jobs in the channel; the batcher decrements it as it takes them.
    depth_gauge: Gauge,
    /// Always true: the sessions are loaded and warmed up before the queue exists.
    ready: watch::Sender<bool>,
}

impl LocalQueue {
    /// A queue of `capacity` jobs for a pool of `sessions`; the batcher reads
    /// the returned receiver and decrements `depth_gauge` for every job it takes.
    pub fn new(capacity: usize, sessions: usize, depth_gauge: Gauge) -> (Self, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(capacity);
        let (ready, _) = watch::channel(true);
        (LocalQueue { tx, sessions, depth_gauge, ready }, rx)
    }
}

impl JobQueue for LocalQueue {
    fn submit(&self, input: Arc<ModelInput>, deadline: Instant) -> Submitted<'_> {
        let (reply, rx) = oneshot::channel();
        let queued = Queued { job: Job::new(input, deadline), reply };
        self.depth_gauge.inc();
        let sent = self.tx.try_send(queued).map_err(|e| {
            self.depth_gauge.dec();
            match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Full,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
            }
        });
        Box::pin(std::future::ready(sent.map(|()| rx)))
    }

    fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    fn capacity(&self) -> Capacity {
        Capacity { workers: self.sessions, sessions: self.sessions }
    }

    fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }
}
