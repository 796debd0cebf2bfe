//! Bounds the memory that concurrent decodes hold, as a thread pool bounds
//! its threads: each decode reserves what its header says it will need
//! (`preprocess::inspect`) before it starts, and waits while the budget is
//! spent. (The predictor refuses an image that needs more than the whole
//! budget; a reservation that large would take all of it.) Request bodies
//! have their own budget, taken as bytes arrive (`http::body`).

use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// Reservations are counted in KiB: a semaphore's permits are `u32` per call.
const UNIT: u64 = 1024;

#[derive(Debug, Clone)]
pub struct MemoryBudget {
    units: Arc<Semaphore>,
    total_units: u32,
}

/// Memory held by one decode until it is dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
}

impl Reservation {
    /// Bytes this reservation holds (at most the whole budget).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl MemoryBudget {
    /// A budget of `bytes`, at least one unit.
    pub fn new(bytes: u64) -> Self {
        let total_units = bytes.div_ceil(UNIT).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        MemoryBudget { units: Arc::new(Semaphore::new(total_units as usize)), total_units }
    }

    pub fn total_bytes(&self) -> u64 {
        u64::from(self.total_units) * UNIT
    }

    /// Bytes reserved now.
    pub fn reserved_bytes(&self) -> u64 {
        u64::from(self.total_units - self.units.available_permits() as u32) * UNIT
    }

    /// Waits until `bytes` (capped at the whole budget) are free, and holds
    /// them until the reservation is dropped. Waiters are served in order, so
    /// a large decode is not starved by a stream of small ones.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation, AcquireError> {
        let units = bytes.div_ceil(UNIT).clamp(1, u64::from(self.total_units)) as u32;
        let permit = Arc::clone(&self.units).acquire_many_owned(units).await?;
        Ok(Reservation { _permit: permit, bytes: u64::from(units) * UNIT })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn reservations_wait_while_the_budget_is_spent() {
        let budget = MemoryBudget::new(10 * UNIT);
        let first = budget.reserve(6 * UNIT).await.unwrap();
        assert_eq!(budget.reserved_bytes(), 6 * UNIT);
        let second = budget.clone();
        let waiting = tokio::spawn(async move { second.reserve(6 * UNIT).await.unwrap().bytes() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a reservation past the budget must wait");
        drop(first);
        assert_eq!(waiting.await.unwrap(), 6 * UNIT);
        assert_eq!(budget.reserved_bytes(), 0, "dropping a reservation frees it");
    }

    #[tokio::test]
    async fn a_decode_larger_than_the_budget_runs_alone() {
        let budget = MemoryBudget::new(10 * UNIT);
        let huge = tokio::time::timeout(Duration::from_secs(1), budget.reserve(1 << 40)).await;
        let huge = huge.expect("an oversized reservation must not wait forever").unwrap();
        assert_eq!(huge.bytes(), budget.total_bytes());
        assert!(budget.units.try_acquire().is_err(), "nothing else runs beside it");
    }

    #[tokio::test]
    async fn small_reservations_run_side_by_side() {
        let budget = MemoryBudget::new(10 * UNIT);
        let a = budget.reserve(1).await.unwrap();
        let b = budget.reserve(3 * UNIT).await.unwrap();
        assert_eq!((a.bytes(), b.bytes()), (UNIT, 3 * UNIT), "rounded up to whole KiB");
        assert_eq!(budget.reserved_bytes(), 4 * UNIT);
    }
}
