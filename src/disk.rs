//! Disk budgets for the image stores: how many bytes a store may take, which
//! files it holds in least-recently-used order, what to evict to make room,
//! and telling a full disk from other I/O errors.
//!
//! A [`DiskBudget`] is only a ledger: the store asks it for room before it
//! writes ([`DiskBudget::reserve`]), deletes what the answer says to evict,
//! and gives the room back if the write fails ([`DiskBudget::release`]).
//! Every file is charged in whole [`BLOCK`]s, which is what it takes on disk
//! and which bounds the ledger to `cap / BLOCK` entries however small the files.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use lru::LruCache;

use crate::metrics::StoreMetrics;

/// The unit files are charged in, in bytes.
pub const BLOCK: u64 = 4096;

/// What a budget does when a new file does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Evict the least recently used files (page uploads: a cache).
    EvictLru,
    /// Refuse the new file (feedback images: promised to a report, never evicted).
    Refuse,
}

/// Bytes charged for a file of `len` bytes: whole blocks, at least one.
pub fn charged(len: u64) -> u64 {
    len.div_ceil(BLOCK).max(1) * BLOCK
}

/// True for "no space left on device" and "disk quota exceeded".
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// The new file does not fit under the cap, even after any eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCap {
    pub cap: u64,
}

/// What [`DiskBudget::reserve`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Reservation {
    /// The name is already held (stored, or being stored by another writer).
    Held,
    /// Room is reserved; delete these files (evicted) before writing.
    New { evict: Vec<String> },
}

/// The ledger of one store: files by name with their charge, LRU first.
pub struct DiskBudget {
    cap: u64,
    overflow: Overflow,
    ledger: Mutex<Ledger>,
    metrics: StoreMetrics,
}

struct Ledger {
    files: LruCache<String, u64>,
    used: u64,
}

impl DiskBudget {
    pub fn new(cap: u64, overflow: Overflow, metrics: StoreMetrics) -> Self {
        metrics.cap_bytes.set(i64::try_from(cap).unwrap_or(i64::MAX));
        let ledger = Ledger { files: LruCache::unbounded(), used: 0 };
        Self { cap, overflow, ledger: Mutex::new(ledger), metrics }
    }

    /// A budget with no cap and metrics nobody reads (the CLI export, tests).
    pub fn unbounded() -> Self {
        Self::new(u64::MAX, Overflow::Refuse, StoreMetrics::default())
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// The ledger is a plain map: a panic while holding it leaves it usable.
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the files already in `dir` (oldest modification first, so the
    /// least recently written is evicted first) and deletes temp files a
    /// crashed writer left behind. `is_stored` says which names are files of
    /// the store. Returns the files that must be evicted to fit a cap lowered
    /// since the last run.
    pub fn scan(&self, dir: &Path, is_stored: impl Fn(&str) -> bool) -> io::Result<Vec<String>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() && is_stored(&name) {
                found.push((meta.modified().ok(), name, meta.len()));
            }
        }
        found.sort();
        let mut ledger = self.lock();
        for (_, name, len) in found {
            ledger.used += charged(len);
            ledger.files.put(name, charged(len));
        }
        let mut evict = Vec::new();
        while ledger.used > self.cap && self.overflow == Overflow::EvictLru {
            let Some((name, size)) = ledger.files.pop_lru() else { break };
            ledger.used -= size;
            evict.push(name);
        }
        self.publish(&ledger);
        self.metrics.evictions.inc_by(evict.len() as u64);
        Ok(evict)
    }

    /// Asks for room for `name` of `len` bytes.
    pub fn reserve(&self, name: &str, len: u64) -> Result<Reservation, OverCap> {
        let size = charged(len);
        let mut ledger = self.lock();
        if ledger.files.get(name).is_some() {
            return Ok(Reservation::Held);
        }
        let over = ledger.used.saturating_add(size) > self.cap;
        if over && (self.overflow == Overflow::Refuse || size > self.cap) {
            self.metrics.refuse("cap");
            return Err(OverCap { cap: self.cap });
        }
        let mut evict = Vec::new();
        while ledger.used.saturating_add(size) > self.cap {
            let Some((old, old_size)) = ledger.files.pop_lru() else { break };
            ledger.used -= old_size;
            evict.push(old);
        }
        ledger.used += size;
        ledger.files.put(name.to_owned(), size);
        self.metrics.evictions.inc_by(evict.len() as u64);
        self.publish(&ledger);
        Ok(Reservation::New { evict })
    }

    /// Gives back the room reserved for `name` (its write failed).
    pub fn release(&self, name: &str) {
        let mut ledger = self.lock();
        if let Some(size) = ledger.files.pop(name) {
            ledger.used -= size;
        }
        self.publish(&ledger);
    }

    /// Marks `name` as just used, so it is evicted last.
    pub fn touch(&self, name: &str) {
        self.lock().files.promote(name);
    }

    /// Counts a write refused by the disk itself.
    pub fn refused(&self, reason: &'static str) {
        self.metrics.refuse(reason);
    }

    fn publish(&self, ledger: &Ledger) {
        self.metrics.bytes.set(i64::try_from(ledger.used).unwrap_or(i64::MAX));
        self.metrics.files.set(i64::try_from(ledger.files.len()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(blocks: u64, overflow: Overflow) -> DiskBudget {
        DiskBudget::new(blocks * BLOCK, overflow, StoreMetrics::default())
    }

    fn evicted(r: Reservation) -> Vec<String> {
        match r {
            Reservation::New { evict } => evict,
            Reservation::Held => panic!("expected a new reservation"),
        }
    }

    #[test]
    fn files_are_charged_in_whole_blocks() {
        assert_eq!(charged(0), BLOCK);
        assert_eq!(charged(1), BLOCK);
        assert_eq!(charged(BLOCK), BLOCK);
        assert_eq!(charged(BLOCK + 1), 2 * BLOCK);
    }

    #[test]
    fn the_least_recently_used_file_is_evicted_first() {
        let b = budget(3, Overflow::EvictLru);
        for name in ["a", "b", "c"] {
            assert!(evicted(b.reserve(name, 10).unwrap()).is_empty());
        }
        b.touch("a");
        assert_eq!(evicted(b.reserve("d", 10).unwrap()), ["b"]);
        assert_eq!(evicted(b.reserve("e", 2 * BLOCK).unwrap()), ["c", "a"]);
        assert_eq!(b.used(), 3 * BLOCK);
        assert_eq!(b.reserve("d", 10).unwrap(), Reservation::Held);
    }

    #[test]
    fn a_refusing_budget_never_evicts() {
        let b = budget(2, Overflow::Refuse);
        evicted(b.reserve("a", 10).unwrap());
        evicted(b.reserve("b", 10).unwrap());
        assert_eq!(b.reserve("c", 10), Err(OverCap { cap: 2 * BLOCK }));
        b.release("a");
        assert!(evicted(b.reserve("c", 10).unwrap()).is_empty());
    }

    #[test]
    fn a_file_larger_than_the_cap_is_refused_without_evicting() {
        let b = budget(2, Overflow::EvictLru);
        evicted(b.reserve("a", 10).unwrap());
        assert!(b.reserve("huge", 3 * BLOCK).is_err());
        assert_eq!(b.reserve("a", 10).unwrap(), Reservation::Held, "a was kept");
    }

    #[test]
    fn scan_loads_oldest_first_and_removes_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, age) in [("old", 30), ("new", 10), ("mid", 20)] {
            let path = dir.path().join(name);
            fs::write(&path, b"x").unwrap();
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
            fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
        }
        fs::write(dir.path().join(".x.jpg.1.2.tmp"), b"half").unwrap();
        let b = budget(2, Overflow::EvictLru);
        assert_eq!(b.scan(dir.path(), |_| true).unwrap(), ["old"], "over the cap: the oldest goes");
        assert!(!dir.path().join(".x.jpg.1.2.tmp").exists());
        assert_eq!(evicted(b.reserve("z", 1).unwrap()), ["mid"]);
    }
}
