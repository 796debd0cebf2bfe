//! A classification job as it travels from an API node to a model session
//! and back, whatever queue carries it.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::engine::ModelInput;

/// What a model session answers for one image: the probability of every
/// class, in label order. Ranking happens where the answer is used.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutput {
    pub scores: Arc<[f32]>,
}

/// Why a job got no answer. `Clone`, so one failure fans out to a batch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error("the request's deadline passed before the model could run it")]
    DeadlineExceeded,
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the job could not be processed and was moved to the dead-letter queue after {0} attempts")]
    DeadLettered(u32),
    #[error("the service is shutting down")]
    ShuttingDown,
}

pub type JobResult = Result<JobOutput, JobError>;

/// One image waiting for inference, with the channel its answer goes back on.
#[derive(Debug)]
pub struct Job {
    pub image: Arc<ModelInput>,
    pub enqueued: Instant,
    pub deadline: Instant,
    pub reply: oneshot::Sender<JobResult>,
}

impl Job {
    pub fn new(image: Arc<ModelInput>, deadline: Instant) -> (Self, oneshot::Receiver<JobResult>) {
        let (reply, rx) = oneshot::channel();
        (Job { image, enqueued: Instant::now(), deadline, reply }, rx)
    }
}
