//! Key names, and every timeout and interval of the Redis protocol, shared
//! by API nodes and workers. docs/deployment.md ("Scaling out on Redis")
//! documents them.

use std::time::Duration;

/// The consumer group every worker of a model reads its job stream through.
pub const GROUP: &str = "lens-workers";
/// Every feedback report from every API node (see [`super::feedback`]).
pub const FEEDBACK: &str = "lens:feedback";

/// A reply list of an API node that stopped popping it expires this long
/// after the last reply was pushed.
pub const REPLY_TTL: Duration = Duration::from_secs(60);
/// How often a worker refreshes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A worker counts as live while its last heartbeat is younger than this.
pub const WORKER_TTL: Duration = Duration::from_secs(5);
/// Heartbeat entries older than this are removed from the registry.
pub const WORKER_FORGET: Duration = Duration::from_secs(60);
/// Dead-letter streams keep about this many entries (approximate trim).
pub const DEAD_MAXLEN: usize = 10_000;

/// Longest a request waits for Redis to accept its job.
pub const SUBMIT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest an API node waits for replicas to acknowledge a job
/// (`--redis-wait-replicas`).
pub const WAIT_REPLICAS_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a shared-cache lookup may delay a request.
pub const CACHE_TIMEOUT: Duration = Duration::from_millis(250);
/// How often an API node re-reads worker liveness and the stream length.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long an API node's reply pop blocks; also how often it sweeps.
pub const REPLY_POP_BLOCK: Duration = Duration::from_secs(1);
/// Replies popped per round trip once one has arrived.
pub const REPLY_DRAIN_BATCH: usize = 64;
/// Waiters whose deadline passed this long ago are swept.
pub const SWEEP_GRACE: Duration = Duration::from_secs(1);
/// How often an API node checks that its unanswered jobs are still on the
/// stream (beyond the check made at once when Redis restarted).
pub const MISSING_CHECK_EVERY: Duration = Duration::from_secs(2);
/// A job counts as missing only if it was put on the stream at least this
/// long ago, so that a reply on its way is not mistaken for a loss.
pub const MISSING_GRACE: Duration = Duration::from_secs(2);
/// Pause before retrying after a failed Redis read (API node and worker).
pub const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Longest a worker's job read blocks; also the worst-case delay before a
/// worker sees its shutdown.
pub const READ_BLOCK: Duration = Duration::from_millis(500);
/// A worker retries writing a batch's replies this many times, doubling the
/// pause from [`REPLY_RETRY_FIRST_PAUSE`]; then the jobs stay pending and
/// are reclaimed.
pub const REPLY_RETRIES: u32 = 6;
pub const REPLY_RETRY_FIRST_PAUSE: Duration = Duration::from_millis(100);
/// Response timeout of a connection that sends no blocking command.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// A worker removes consumers idle this many times [`WORKER_FORGET`] with
/// nothing pending, checked every this many heartbeats.
pub const FORGET_CONSUMER_FACTOR: u32 = 10;
pub const FORGET_CONSUMER_EVERY_BEATS: u64 = 60;

/// The job stream of a model version. One stream per version, so that each
/// job reaches a worker of the version its API node chose, with no worker
/// ever taking (and having to hand back) a job of another version; the old
/// version's stream empties while the new one fills, and an autoscaler reads
/// each version's backlog on its own.
pub fn jobs(model: &str, version: &str) -> String {
    format!("lens:jobs:{model}:{version}")
}

/// Jobs of a model version no worker could process, with the reason.
pub fn dead(model: &str, version: &str) -> String {
    format!("lens:dead:{model}:{version}")
}

/// Hash of worker id -> heartbeat JSON ([`super::codec::WorkerBeat`]), for
/// every version of a model: each beat names its version.
pub fn workers(model: &str) -> String {
    format!("lens:workers:{model}")
}

/// The reply list of one API node.
pub fn replies(node: &str) -> String {
    format!("lens:replies:{node}")
}

/// A cached answer: the scores as f32 little-endian bytes. The model version
/// is part of the key so that an upgraded model never answers from the old
/// one's cache, and the runtime (`openvino-bf16`, `onnxruntime-fp32`) so that
/// one precision's answers are never served as another's.
pub fn cache(model: &str, version: &str, runtime: &str, sha256_hex: &str) -> String {
    format!("lens:cache:{model}:{version}:{runtime}:{sha256_hex}")
}
