//! Lens on Redis Streams: the API-node side of the job queue, the shared
//! result cache, the feedback mirror, and what API nodes and workers share
//! (key names and timings, the wire codec, clocks, connections).
//!
//! An API node that runs with `--redis` loads no model session: its
//! [`RedisQueue`] puts each job on `lens:jobs:{model}:{version}` and routes the
//! workers' replies back to the waiting requests. Workers
//! ([`crate::worker`]) read the stream through a consumer group. The
//! whole protocol is in docs/deployment.md ("Scaling out on Redis").
//!
//! - [`queue`]: [`RedisQueue`], the [`crate::queue::JobQueue`] on a stream.
//! - [`cache`]: [`RedisCache`], the [`crate::cache::SharedCache`] in Redis.
//! - [`feedback`]: the feedback mirror and `lens feedback export --redis`.
//! - [`codec`]: stream entries, replies and heartbeats on the wire.
//! - [`keys`]: key names, and every timeout and interval.
//! - [`clock`]: wall-clock deadlines across machines; unique ids.
//! - [`conn`]: where Redis is (one server or Sentinels), and connections
//!   that reconnect by themselves and follow a failover.

pub mod cache;
pub mod clock;
pub mod codec;
pub mod conn;
pub mod feedback;
pub mod keys;
pub mod queue;

pub use cache::RedisCache;
pub use queue::RedisQueue;
