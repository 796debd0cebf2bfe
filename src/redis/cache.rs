//! The result cache shared by every API node of a model version, in Redis
//! string keys with a TTL (`lens:cache:{model}:{version}:{sha256}`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::conn::Conn;

use super::keys::{self, CACHE_TIMEOUT, SUBMIT_TIMEOUT};
use crate::cache::{Key, Lookup, SharedCache};
use crate::job::{f32_from_le_bytes, f32_to_le_bytes};

/// Answers shared through Redis. A lookup that fails or is slow counts as a
/// miss, and nothing is sent while Redis was last seen unreachable.
pub struct RedisCache {
    conn: Conn,
    model: String,
    version: String,
    ttl: Duration,
    /// Whether Redis answered the queue's last look; kept by the queue.
    up: Arc<AtomicBool>,
}

impl RedisCache {
    pub fn new(conn: Conn, model: &str, version: &str, ttl: Duration, up: Arc<AtomicBool>) -> Self {
        RedisCache { conn, model: model.to_owned(), version: version.to_owned(), ttl, up }
    }

    fn key(&self, key: &Key) -> String {
        keys::cache(&self.model, &self.version, &key.runtime.to_string(), &hex::encode(key.sha256))
    }

    async fn lookup(&self, key: &Key) -> Option<Arc<[f32]>> {
        if !self.up.load(Ordering::SeqCst) {
            return None;
        }
        let mut conn = self.conn.clone();
        let mut get = redis::cmd("GET");
        get.arg(self.key(key));
        let bytes =
            tokio::time::timeout(CACHE_TIMEOUT, get.query_async::<Option<Vec<u8>>>(&mut conn)).await.ok()?.ok()??;
        let scores = f32_from_le_bytes(&bytes).filter(|s| !s.is_empty())?;
        Some(scores.into())
    }
}

impl SharedCache for RedisCache {
    fn get<'a>(&'a self, key: &'a Key) -> Lookup<'a> {
        Box::pin(self.lookup(key))
    }

    fn put(&self, key: &Key, scores: &[f32]) {
        if !self.up.load(Ordering::SeqCst) {
            return;
        }
        let (key, ttl_ms, mut conn) = (self.key(key), self.ttl.as_millis() as u64, self.conn.clone());
        let bytes = f32_to_le_bytes(scores);
        tokio::spawn(async move {
            let mut set = redis::cmd("SET");
            set.arg(key).arg(bytes).arg("PX").arg(ttl_ms);
            if let Ok(Err(e)) = tokio::time::timeout(SUBMIT_TIMEOUT, set.exec_async(&mut conn)).await {
                tracing::debug!(error = %e, "could not store an answer in the shared cache");
            }
        });
    }
}
