//! A classification job as it travels from an API node to a model session
//! and back, whatever queue carries it.

use std::sync::Arc;

use tokio::time::Instant;

use crate::preprocess::Prepared;

/// One image's worth of model input.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelInput {
    /// An image at the model's input size, normalised when the batch is assembled.
    Image(Prepared),
    /// Already normalised values in the model's layout (`3 * height * width`).
    Tensor(Vec<f32>),
}

/// What a model session answers for one image: the probability of every
/// class, in label order. Ranking happens where the answer is used.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutput {
    pub scores: Arc<[f32]>,
    /// How long the model call of this job's batch took (zero if unknown),
    /// for the per-model statistics' split of queue and compute time.
    pub inference: std::time::Duration,
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

/// One input waiting for inference, whatever queue carries it. Its answer
/// goes back by the queue's own means: a `oneshot` in-process, a reply list
/// on Redis.
#[derive(Debug, Clone)]
pub struct Job {
    pub input: Arc<ModelInput>,
    pub enqueued: Instant,
    pub deadline: Instant,
    /// The span the job's inference span goes under: the request's queue
    /// span in-process, the job's span on a worker. Disabled when traces
    /// are off.
    pub parent: tracing::Span,
}

impl Job {
    /// A job queued now, under the current span.
    pub fn new(input: Arc<ModelInput>, deadline: Instant) -> Self {
        Job { input, enqueued: Instant::now(), deadline, parent: tracing::Span::current() }
    }
}

/// `values` as little-endian f32 bytes: how scores and tensors travel
/// through Redis and the v2 binary protocol.
pub fn f32_to_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The inverse of [`f32_to_le_bytes`]; `None` unless `bytes` holds whole f32s.
pub fn f32_from_le_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_bytes_round_trip_and_reject_partial_values() {
        let v = [1.5f32, -0.25, f32::MAX];
        assert_eq!(f32_from_le_bytes(&f32_to_le_bytes(&v)).unwrap(), v);
        assert_eq!(f32_from_le_bytes(&[0, 0, 128]), None);
        assert_eq!(f32_from_le_bytes(&[]), Some(vec![]));
    }
}
