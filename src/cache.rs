//! The result cache and in-flight coalescing.
//!
//! Answers are keyed on the model, its version, the engine and precision it
//! runs with (answers differ slightly between them) and the SHA-256 of the
//! uploaded bytes, so a new version never answers from the old one's entries. The
//! cache is a bounded LRU; [`Coalescer`] makes identical requests that arrive
//! while the first is still being computed wait for that one computation.
//! [`SharedCache`] is a second level that several API nodes share (Redis
//! implements it in [`crate::redis::RedisCache`]).

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use tokio::sync::oneshot;

use crate::engine::Runtime;

/// Cache key: model name and version, engine and precision, and image digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub model: String,
    pub version: String,
    pub runtime: Runtime,
    pub sha256: [u8; 32],
}

/// What a [`SharedCache`] lookup returns: the scores stored, if any.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = Option<Arc<[f32]>>> + Send + 'a>>;

/// Answers shared by every API node of a model version, behind the local
/// cache. A lookup that fails or is slow is a miss: it never fails a request.
pub trait SharedCache: Send + Sync {
    /// The scores stored for this image and runtime, if any.
    fn get<'a>(&'a self, key: &'a Key) -> Lookup<'a>;
    /// Stores an answer, in the background.
    fn put(&self, key: &Key, scores: &[f32]);
}

/// A bounded LRU of answers. Zero capacity disables it.
pub struct ResultCache<V> {
    inner: Option<Mutex<LruCache<Key, V>>>,
}

impl<V: Clone> ResultCache<V> {
    pub fn new(entries: usize) -> Self {
        ResultCache { inner: NonZeroUsize::new(entries).map(|n| Mutex::new(LruCache::new(n))) }
    }

    pub fn get(&self, key: &Key) -> Option<V> {
        let inner = self.inner.as_ref()?;
        inner.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    pub fn put(&self, key: Key, value: V) {
        if let Some(inner) = &self.inner {
            inner.lock().unwrap_or_else(|e| e.into_inner()).put(key, value);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.lock().unwrap_or_else(|e| e.into_inner()).len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether the caller computes the answer or waits for another's.
pub enum Role<V> {
    /// First for this key: compute, then call [`Coalescer::finish`].
    Leader,
    /// Someone is computing it; the answer arrives here.
    Follower(oneshot::Receiver<V>),
}

/// Identical requests in flight at the same moment share one computation.
pub struct Coalescer<V> {
    waiting: Mutex<HashMap<Key, Vec<oneshot::Sender<V>>>>,
}

impl<V: Clone> Default for Coalescer<V> {
    fn default() -> Self {
        Coalescer { waiting: Mutex::new(HashMap::new()) }
    }
}

impl<V: Clone> Coalescer<V> {
    pub fn join(&self, key: &Key) -> Role<V> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match waiting.get_mut(key) {
            Some(list) => {
                let (tx, rx) = oneshot::channel();
                list.push(tx);
                Role::Follower(rx)
            }
            None => {
                waiting.insert(key.clone(), Vec::new());
                Role::Leader
            }
        }
    }

    /// Hands the leader's answer to every follower and forgets the key.
    pub fn finish(&self, key: &Key, value: &V) {
        let followers = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        for tx in followers.into_iter().flatten() {
            let _ = tx.send(value.clone());
        }
    }

    /// Forgets `key` if every follower is gone, so the leader can stop: a
    /// request that arrives later starts its own computation. Returns
    /// whether it did.
    pub fn abandon_if_unwanted(&self, key: &Key) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let unwanted = waiting.get(key).is_none_or(|followers| followers.iter().all(|tx| tx.is_closed()));
        if unwanted {
            waiting.remove(key);
        }
        unwanted
    }

    pub fn in_flight(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        let runtime = Runtime { engine: crate::engine::Engine::OnnxRuntime, precision: crate::engine::Precision::Fp32 };
        Key { model: "m".into(), version: "1".into(), runtime, sha256: [b; 32] }
    }

    #[test]
    fn a_computation_is_unwanted_once_every_follower_is_gone() {
        let c: Coalescer<u8> = Coalescer::default();
        assert!(matches!(c.join(&key(1)), Role::Leader));
        let Role::Follower(rx) = c.join(&key(1)) else { panic!("second is a follower") };
        assert!(!c.abandon_if_unwanted(&key(1)), "a follower still waits");
        drop(rx);
        assert!(c.abandon_if_unwanted(&key(1)));
        assert!(matches!(c.join(&key(1)), Role::Leader), "a later request computes afresh");
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let c = ResultCache::new(2);
        c.put(key(1), 1);
        c.put(key(2), 2);
        assert_eq!(c.get(&key(1)), Some(1));
        c.put(key(3), 3);
        assert_eq!(c.get(&key(2)), None);
        assert_eq!(c.get(&key(1)), Some(1));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn versions_of_a_model_do_not_share_entries() {
        let c = ResultCache::new(4);
        c.put(key(1), 1);
        let v2 = Key { version: "2".into(), ..key(1) };
        assert_eq!(c.get(&v2), None);
        c.put(v2.clone(), 2);
        assert_eq!((c.get(&key(1)), c.get(&v2)), (Some(1), Some(2)));
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let c = ResultCache::new(0);
        c.put(key(1), 1);
        assert_eq!(c.get(&key(1)), None);
    }

    #[tokio::test]
    async fn followers_get_the_leaders_answer() {
        let c: Coalescer<u32> = Coalescer::default();
        assert!(matches!(c.join(&key(1)), Role::Leader));
        let Role::Follower(a) = c.join(&key(1)) else { panic!("expected follower") };
        let Role::Follower(b) = c.join(&key(1)) else { panic!("expected follower") };
        assert!(matches!(c.join(&key(2)), Role::Leader));
        c.finish(&key(1), &7);
        assert_eq!((a.await.unwrap(), b.await.unwrap()), (7, 7));
        assert!(matches!(c.join(&key(1)), Role::Leader), "a finished key starts afresh");
    }
}
