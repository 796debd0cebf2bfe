//! The job queue seam between API nodes and model sessions.
//!
//! [`JobQueue::Local`] is an in-process bounded channel feeding the batcher.
//! [`JobQueue::Redis`] puts jobs on a Redis stream read by workers on any
//! machine ([`crate::redis_queue`], [`crate::worker`]). Both give the caller
//! a receiver for the job's answer.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::engine::ModelInput;
use crate::job::{Job, JobResult};
use crate::metrics::Metrics;
use crate::redis_queue::RedisQueue;

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

/// The in-process queue: a bounded channel read by [`crate::batcher::run_local`].
pub struct LocalQueue {
    /// The batcher holds the receiver; it closes it on shutdown, after which
    /// submissions fail with [`SubmitError::Closed`].
    tx: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
}

impl LocalQueue {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<Job>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (LocalQueue { tx, metrics }, rx)
    }
}

pub enum JobQueue {
    Local(LocalQueue),
    Redis(RedisQueue),
}

impl JobQueue {
    pub async fn submit(
        &self,
        image: Arc<ModelInput>,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<JobResult>, SubmitError> {
        match self {
            JobQueue::Local(q) => {
                let (job, rx) = Job::new(image, deadline);
                q.metrics.queue_depth.inc();
                q.tx.try_send(job).map_err(|e| {
                    q.metrics.queue_depth.dec();
                    match e {
                        mpsc::error::TrySendError::Full(_) => SubmitError::Full,
                        mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
                    }
                })?;
                Ok(rx)
            }
            JobQueue::Redis(q) => q.submit(image, deadline).await,
        }
    }

    /// Jobs waiting for a session.
    pub fn depth(&self) -> usize {
        match self {
            JobQueue::Local(q) => q.tx.max_capacity() - q.tx.capacity(),
            JobQueue::Redis(q) => q.depth(),
        }
    }

    /// Live workers and their model sessions, for a queue served by remote
    /// workers; `None` for the in-process queue.
    pub fn remote_capacity(&self) -> Option<(usize, usize)> {
        match self {
            JobQueue::Local(_) => None,
            JobQueue::Redis(q) => Some((q.live_workers(), q.live_sessions())),
        }
    }
}
