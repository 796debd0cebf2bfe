//! The Linux scheduling policy Lens's threads run under.
//!
//! Under load Lens has more CPU-bound threads than cores: the decode pool,
//! the engine's inference threads and the async runtime. With Linux's
//! default policy, `SCHED_OTHER`, a thread that wakes up (a decode is due, a
//! request arrived, an answer is ready) usually preempts the thread running
//! on its core, and that is most often an inference: 7 preemptions per image
//! were counted in a 32-client closed loop on 2 cores, and each one costs the
//! model its warm caches. `SCHED_BATCH` is the same fair scheduler without
//! that wake-up preemption: the woken thread waits for the running one to
//! block or use up its time slice. With it, the same loop saw 2.4
//! preemptions per image, and on ImageNet-size photos Lens spent 9% less CPU
//! per answer and answered 9% more per second (medians of 5 interleaved
//! rounds); on larger photos, whose decode dominates, it made no measurable
//! difference. docs/benchmarks.md ("CPU scheduling") gives the figures and
//! the command.
//!
//! The policy is set once, in `main`, before any thread exists: every thread
//! inherits it from the one that creates it, the engines' own threads
//! included. Any process may choose `SCHED_BATCH` or `SCHED_OTHER` for itself
//! without privileges.

use clap::ValueEnum;

/// The scheduling policy of every thread of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CpuPolicy {
    /// `SCHED_BATCH`: a thread that wakes up does not preempt the running one.
    Batch,
    /// `SCHED_OTHER`, Linux's default.
    Normal,
}

impl CpuPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            CpuPolicy::Batch => "batch",
            CpuPolicy::Normal => "normal",
        }
    }

    /// Sets the policy of the calling thread, and so of every thread it
    /// creates from now on. Call it before the first thread starts.
    pub fn apply(self) -> std::io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let policy = match self {
                CpuPolicy::Batch => libc::SCHED_BATCH,
                CpuPolicy::Normal => libc::SCHED_OTHER,
            };
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: `param` is a valid sched_param for the call's duration;
            // pid 0 names the calling thread.
            if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The policy of the calling thread, if it is one of the two.
    fn current() -> Option<CpuPolicy> {
        // SAFETY: no arguments beyond the pid; 0 is the calling thread.
        match unsafe { libc::sched_getscheduler(0) } {
            libc::SCHED_BATCH => Some(CpuPolicy::Batch),
            libc::SCHED_OTHER => Some(CpuPolicy::Normal),
            _ => None,
        }
    }

    #[test]
    fn threads_inherit_the_policy_of_the_thread_that_made_them() {
        // In a thread of its own: the policy is per thread, and the test
        // harness's threads must keep theirs.
        std::thread::spawn(|| {
            CpuPolicy::Normal.apply().unwrap();
            assert_eq!(current(), Some(CpuPolicy::Normal));
            CpuPolicy::Batch.apply().unwrap();
            assert_eq!(current(), Some(CpuPolicy::Batch));
            let child = std::thread::spawn(current).join().unwrap();
            assert_eq!(child, Some(CpuPolicy::Batch));
            // And back, without privileges.
            CpuPolicy::Normal.apply().unwrap();
            assert_eq!(current(), Some(CpuPolicy::Normal));
            assert_eq!(std::thread::spawn(current).join().unwrap(), Some(CpuPolicy::Normal));
        })
        .join()
        .unwrap();
    }
}
