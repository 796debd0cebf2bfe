//! Wall-clock conversions for deadlines that cross machines, and names
//! unique across machines and restarts.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

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
