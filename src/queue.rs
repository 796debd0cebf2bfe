//! The job queue seam between API nodes and model sessions.
//!
//! [`JobQueue::Local`] is an in-process bounded channel feeding the batcher.
//! (The Redis Streams implementation plugs in as another variant.) Both give
//! the caller a receiver for the job's answer.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::job::{Job, JobResult};
use crate::metrics::Metrics;
use crate::engine::ModelInput;

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
        }
    }

    /// Jobs waiting for a session.
    pub fn depth(&self) -> usize {
        match self {
            JobQueue::Local(q) => q.tx.max_capacity() - q.tx.capacity(),
        }
    }
}
