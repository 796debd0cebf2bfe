//! Batch formation cost: the pure batching rule (`batcher::next_step`), the
//! pre-inference triage (`batcher::triage`, as `run_batch` applies it) and one whole batch formation as
//! the in-process batcher does it (drain the channel up to `max_batch`, ask
//! `next_step`, triage). These run once per model call, so anything in the
//! low microseconds is noise next to a ~10-20 ms inference; the bench is
//! here to keep it that way.
//!
//! `cargo bench --bench batching` (add `-- --quick` for a fast run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use lens::batcher::{BatchConfig, Fate, Next, next_step, triage};
use lens::job::{Job, JobResult, ModelInput};
use lens::queue::Queued;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

fn cfg(max_batch: usize, wait_ms: u64) -> BatchConfig {
    BatchConfig { max_batch, max_wait: Duration::from_millis(wait_ms) }
}

fn bench_next_step(c: &mut Criterion) {
    let t0 = Instant::now();
    // (label, len, config, now - first_enqueued)
    let cases: [(&str, usize, BatchConfig, Duration); 4] = [
        ("no_wait", 1, cfg(8, 0), Duration::ZERO),
        ("full", 8, cfg(8, 5), Duration::ZERO),
        ("partial_waits", 3, cfg(8, 5), Duration::from_millis(1)),
        ("partial_wait_over", 3, cfg(8, 5), Duration::from_millis(6)),
    ];
    let mut g = c.benchmark_group("next_step");
    for (label, len, config, age) in cases {
        let now = t0 + age;
        // Sanity: the case exercises the branch its label says.
        let expect_wait = label == "partial_waits";
        assert_eq!(matches!(next_step(len, &config, t0, now), Next::WaitUntil(_)), expect_wait, "{label}");
        g.bench_function(label, |b| {
            b.iter(|| next_step(black_box(len), black_box(&config), black_box(t0), black_box(now)))
        });
    }
    g.finish();
}

/// The share of each kind of job in a triaged batch.
#[derive(Clone, Copy)]
enum Mix {
    AllLive,
    /// One third each: live, client gone, deadline passed.
    Thirds,
}

impl Mix {
    fn label(self) -> &'static str {
        match self {
            Mix::AllLive => "all_live",
            Mix::Thirds => "thirds",
        }
    }
}

/// `n` jobs sharing one small input, plus the receivers kept alive for the
/// live and expired ones (dropping a receiver is what "client gone" means).
fn jobs(n: usize, mix: Mix, image: &Arc<ModelInput>) -> (Vec<Queued>, Vec<oneshot::Receiver<JobResult>>) {
    let now = Instant::now();
    let mut out = Vec::with_capacity(n);
    let mut keep = Vec::with_capacity(n);
    for i in 0..n {
        let kind = match mix {
            Mix::AllLive => 0,
            Mix::Thirds => i % 3,
        };
        let deadline = if kind == 2 { now } else { now + Duration::from_secs(30) };
        let (reply, rx) = oneshot::channel();
        if kind != 1 {
            keep.push(rx);
        }
        out.push(Queued { job: Job::new(Arc::clone(image), deadline), reply });
    }
    (out, keep)
}

/// The fates of a whole batch, as `batcher::run_batch` computes them.
fn triage_all(batch: &[Queued]) -> Vec<Fate> {
    let now = Instant::now();
    batch.iter().map(|q| triage(q, now)).collect()
}

fn bench_triage(c: &mut Criterion) {
    let image = Arc::new(ModelInput::Tensor(vec![0.0; 3]));
    let mut g = c.benchmark_group("triage");
    for mix in [Mix::AllLive, Mix::Thirds] {
        for n in [1usize, 8, 32] {
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::new(mix.label(), n), &n, |b, &n| {
                b.iter_batched(
                    || jobs(n, mix, &image),
                    // The receivers ride along so that they outlive the call.
                    |(batch, keep)| (triage_all(black_box(&batch)), keep),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

/// One batch formation as `batcher::run_local` does it once a session is
/// free and the first job is in hand: drain the channel up to `max_batch`,
/// consult `next_step`, triage. The channel holds `queued` jobs.
fn bench_form_batch(c: &mut Criterion) {
    let image = Arc::new(ModelInput::Tensor(vec![0.0; 3]));
    let config = cfg(8, 0);
    let mut g = c.benchmark_group("form_batch");
    for queued in [1usize, 8, 64] {
        g.bench_with_input(BenchmarkId::new("max_batch_8", queued), &queued, |b, &queued| {
            b.iter_batched(
                || {
                    let (tx, rx) = mpsc::channel::<Queued>(queued.max(1));
                    let (batch, keep) = jobs(queued, Mix::AllLive, &image);
                    for job in batch {
                        tx.try_send(job).expect("channel has room");
                    }
                    (tx, rx, keep)
                },
                |(tx, mut rx, keep)| {
                    let first = rx.try_recv().expect("a job is queued");
                    let mut batch = vec![first];
                    while batch.len() < config.max_batch {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let step = next_step(batch.len(), &config, batch[0].job.enqueued, Instant::now());
                    debug_assert_eq!(step, Next::Dispatch);
                    (triage_all(&batch), tx, rx, keep)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_next_step, bench_triage, bench_form_batch);
criterion_main!(benches);
