//! Fuzzing the trust boundary: multipart forms, image headers and decoding,
//! KServe v2 bodies, gRPC `ModelInferRequest` messages, the Redis job and
//! reply codec, and `model.toml`.
//!
//! `scripts/fuzz TARGET SECONDS` runs [`fuzz_one_target`] (ignored here) for
//! one target; every panic it finds is written to `tests/fuzz_corpus/TARGET/`.
//! [`the_corpus_replays_through_every_target`] runs every seed and every
//! regression file through every target on each `cargo test`.
//!
//! The `form`, `v2` and `grpc` targets check cost as well as crashes: a counting
//! allocator measures the peak bytes each parse allocates, which must stay
//! within a small multiple of the input's size, and the v2 target renders
//! an answer, which must stay within `lens::cost::response_bound`.
//!
//! The engine ([`engine`]) is a mutation loop with outcome feedback, on the
//! stable toolchain and with no dependency: cargo-fuzz (libFuzzer) needs a
//! nightly compiler, which these machines cannot install; afl.rs runs on
//! stable but needs `cargo afl` (AFL++ built from C sources) and an
//! instrumented rebuild of the whole dependency tree, too heavy for shared
//! two-core machines; bolero on stable without a fuzzer engine is random
//! testing, which this harness already does, with the corpus replay built in.

mod engine;
mod targets;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts the bytes each thread holds, and their peak since
/// [`cost::start`], so a target can check what one request allocated
/// against the cost model. Per thread: tests run side by side.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are plain thread-local cells with no destructor.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let _ = LIVE.try_with(|live| {
                live.set(live.get() + layout.size());
                let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
            });
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(layout.size())));
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The peak bytes a piece of work allocated on this thread.
mod cost {
    use super::{LIVE, PEAK};

    /// Starts a measurement; returns the bytes held now.
    pub fn start() -> usize {
        let live = LIVE.with(|l| l.get());
        PEAK.with(|p| p.set(live));
        live
    }

    /// The peak bytes held since `start` returned `base`, beyond `base`.
    pub fn peak_since(base: usize) -> usize {
        PEAK.with(|p| p.get()).saturating_sub(base)
    }
}

use std::time::Duration;

use engine::{Target, quiet_panics, regression_files, run_once};
use targets::TARGETS;

#[test]
fn the_corpus_replays_through_every_target() {
    quiet_panics();
    let files = regression_files();
    let mut inputs: Vec<(String, Vec<u8>)> =
        files.iter().map(|p| (p.display().to_string(), std::fs::read(p).unwrap())).collect();
    for t in &TARGETS {
        inputs.extend((t.seeds)().into_iter().enumerate().map(|(i, s)| (format!("{} seed {i}", t.name), s)));
    }
    let mut failures = Vec::new();
    for (name, input) in &inputs {
        for t in &TARGETS {
            if let Err(message) = run_once(t, input) {
                failures.push(format!("{} on {name}: {message}", t.name));
            }
        }
    }
    let _ = std::panic::take_hook();
    assert!(failures.is_empty(), "panics:\n{}", failures.join("\n"));
    eprintln!("replayed {} inputs ({} regression files) through {} targets", inputs.len(), files.len(), TARGETS.len());
}

#[test]
fn every_seed_is_accepted_by_its_own_target() {
    // A seed its parser rejects outright would leave the fuzzer exploring
    // error paths only; this keeps the seeds honest.
    let accepted =
        |o: String| o.starts_with("ok") || o.contains(") ok ") || o.starts_with("upload .") || o.starts_with("job");
    let ok = |t: &Target, s: &[u8]| run_once(t, s).is_ok_and(accepted);
    for t in &TARGETS {
        assert!((t.seeds)().iter().any(|s| ok(t, s)), "no seed of {} parses", t.name);
    }
}

/// `LENS_FUZZ_TARGET=NAME LENS_FUZZ_SECONDS=N`: fuzzes one target, prints
/// what it ran and found, and fails if anything panicked.
#[test]
#[ignore = "run by scripts/fuzz TARGET SECONDS"]
fn fuzz_one_target() {
    let name = std::env::var("LENS_FUZZ_TARGET").expect("LENS_FUZZ_TARGET");
    let seconds: f64 = std::env::var("LENS_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60.0);
    let seed = std::env::var("LENS_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let names: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    let target = targets::target(&name).unwrap_or_else(|| panic!("unknown target {name:?}; targets: {names:?}"));
    let report = engine::fuzz(target, Duration::from_secs_f64(seconds), seed);
    let _ = std::panic::take_hook();
    println!(
        "fuzz {name}: {} cases in {seconds} s (seed {seed}), {} distinct outcomes, corpus {}, \
         {} panics contained by the code under test, slowest case {:?}, {} crashes",
        report.cases,
        report.outcomes,
        report.corpus,
        report.contained_panics,
        report.slowest,
        report.crashes.len()
    );
    for outcome in &report.sample {
        println!("  outcome: {outcome}");
    }
    for (path, message) in &report.crashes {
        println!("  crash: {message}\n    {}", path.display());
    }
    assert!(report.crashes.is_empty(), "{} crashes; regression files written", report.crashes.len());
}
