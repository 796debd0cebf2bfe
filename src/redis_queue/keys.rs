//! Key names, timing constants, wall-clock conversions and connection set-up
//! shared by API nodes and workers. The README's "Scaling out on Redis" section documents them.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

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

/// The job stream of a model.
pub fn jobs(model: &str) -> String {
    format!("lens:jobs:{model}")
}

/// Jobs no worker could process, with the reason.
pub fn dead(model: &str) -> String {
    format!("lens:dead:{model}")
}

/// Hash of worker id -> heartbeat JSON ([`super::codec::WorkerBeat`]).
pub fn workers(model: &str) -> String {
    format!("lens:workers:{model}")
}

/// The reply list of one API node.
pub fn replies(node: &str) -> String {
    format!("lens:replies:{node}")
}

/// A cached answer: the scores as f32 little-endian bytes. The model version
/// is part of the key so that an upgraded model never answers from the old
/// one's cache.
pub fn cache(model: &str, version: &str, sha256_hex: &str) -> String {
    format!("lens:cache:{model}:{version}:{sha256_hex}")
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The wall-clock time (Unix ms) of a monotonic instant, for sending to
/// another machine.
pub fn unix_ms_at(at: Instant) -> u64 {
    let now = Instant::now();
    let now_ms = now_ms();
    if at >= now {
        now_ms + (at - now).as_millis() as u64
    } else {
        now_ms.saturating_sub((now - at).as_millis() as u64)
    }
}

/// The monotonic instant of a wall-clock time (Unix ms) received from
/// another machine. Clocks must be in sync (NTP) for deadlines to mean the
/// same thing on both sides.
pub fn instant_at(unix_ms: u64) -> Instant {
    let now = Instant::now();
    let now_ms = now_ms();
    if unix_ms >= now_ms {
        now + Duration::from_millis(unix_ms - now_ms)
    } else {
        now.checked_sub(Duration::from_millis(now_ms - unix_ms)).unwrap_or(now)
    }
}

/// A name unique across machines and restarts: `{prefix}-{host}-{pid}-{random}`.
pub fn unique_id(prefix: &str) -> String {
    // RandomState is seeded from the OS's randomness once per process.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    let host = hostname();
    format!("{prefix}-{host}-{}-{:08x}", std::process::id(), h.finish() as u32)
}

/// This machine's name (the pod name under Kubernetes), for ids and logs.
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').collect())
        .filter(|h: &String| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

/// A connection that reconnects by itself. It connects lazily, so a node
/// starts while Redis is down; commands fail fast while it is down (one
/// reconnect attempt per command, then an error), and the callers decide
/// what to retry. `response_timeout` must exceed the longest blocking
/// command sent on it.
pub fn connect(url: &str, response_timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout));
    ConnectionManager::new_lazy_with_config(client, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_round_trips_within_a_millisecond() {
        let at = Instant::now() + Duration::from_secs(7);
        let back = instant_at(unix_ms_at(at));
        let diff = if back > at { back - at } else { at - back };
        assert!(diff <= Duration::from_millis(2), "{diff:?}");
        assert!(instant_at(0) <= Instant::now(), "the distant past is now or earlier");
    }

    #[test]
    fn ids_are_unique() {
        assert_ne!(unique_id("n"), unique_id("n"));
        assert!(unique_id("worker").starts_with("worker-"));
    }
}
