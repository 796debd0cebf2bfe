//! `lens bench`: the model's own ceiling, measured on this machine.
//!
//! - `--model-only`: pure inference throughput of a prepared image, over a
//!   grid of sessions x intra-op threads x batch size, for every engine x
//!   precision of `--engine` and `--precision`; reports the best of each and
//!   the best overall.
//! - `--pipeline`: decode, preprocess and infer of real photos with no HTTP,
//!   one session per thread, for every engine x precision.
//!
//! Each configuration prints one JSON line; the last line is the summary.
//! The service's throughput is reported against these in `scripts/bench`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::cli::predict::expand;
use crate::config::BenchArgs;
use crate::engine::{Classifier, EngineError, EngineOptions, Runtime, SessionConfig, load_sessions};
use crate::job::ModelInput;
use crate::model::ModelDir;
use crate::preprocess::{prepare, sniff_format};

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let model = ModelDir::load(&args.model).context("loading the model directory")?;
    let photos = read_photos(&args.images)?;
    anyhow::ensure!(!photos.is_empty(), "give at least one --images file");
    let seconds = Duration::from_secs_f64(args.seconds);
    let cores = crate::config::available_cores();
    let combos = combinations(args);
    if args.model_only || !args.pipeline {
        let input = ModelInput::Image(prepare(&photos[0], &model.spec.resize_spec(), args.max_pixels)?);
        let mut best = Best::default();
        for opts in &combos {
            let Some(runtime) = supported(&model, opts, "model-only")? else { continue };
            let mut own = Best::default();
            for &(sessions, threads) in &grid(cores) {
                for &batch in &args.batch_sizes {
                    let cfg = SessionConfig { sessions, intra_threads: threads };
                    let rate = model_only(&model, opts, cfg, &input, batch, seconds)?;
                    let row = json!({"mode": "model-only", "engine": runtime.engine.as_str(),
                                     "precision": runtime.precision.as_str(), "sessions": sessions,
                                     "threads": threads, "batch": batch, "images_per_sec": round1(rate)});
                    println!("{row}");
                    own.offer(rate, &row);
                    best.offer(rate, &row);
                }
            }
            println!(
                "{}",
                json!({"best_of": runtime.to_string(), "mode": "model-only", "images_per_sec": round1(own.rate), "best": own.row})
            );
        }
        println!("{}", json!({"summary": "model-only", "images_per_sec": round1(best.rate), "best": best.row}));
    }
    if args.pipeline {
        let mut best = Best::default();
        for opts in &combos {
            let Some(runtime) = supported(&model, opts, "pipeline")? else { continue };
            let split = pipeline(&model, args, opts, &photos, cores, seconds)?;
            let row = json!({"mode": "pipeline", "engine": runtime.engine.as_str(),
                             "precision": runtime.precision.as_str(), "threads": cores, "photos": photos.len(),
                             "images_per_sec": round1(split.rate), "prepare_ms": round2(split.prepare_ms),
                             "infer_ms": round2(split.infer_ms)});
            println!("{row}");
            best.offer(split.rate, &row);
        }
        println!(
            "{}",
            json!({"summary": "pipeline", "images_per_sec": round1(best.rate), "threads": cores, "best": best.row})
        );
    }
    Ok(())
}

/// The fastest row so far.
#[derive(Default)]
struct Best {
    rate: f64,
    row: Value,
}

impl Best {
    fn offer(&mut self, rate: f64, row: &Value) {
        if rate > self.rate {
            (self.rate, self.row) = (rate, row.clone());
        }
    }
}

/// One set of engine options per `--engine` x `--precision`.
fn combinations(args: &BenchArgs) -> Vec<EngineOptions> {
    let cpu_bf16 = crate::engine::this_cpu_has_native_bf16();
    let mut out = Vec::new();
    for &engine in &args.engines {
        for &precision in &args.precisions {
            out.push(EngineOptions {
                engine,
                precision,
                ort_lib: args.ort_lib.clone(),
                openvino_lib: args.openvino_lib.clone(),
                cpu_bf16,
            });
        }
    }
    out
}

/// The runtime `opts` load, or `None` (after a `skipped` row) when the
/// engine cannot run that precision. Other load failures end the bench.
fn supported(model: &ModelDir, opts: &EngineOptions, mode: &str) -> anyhow::Result<Option<Runtime>> {
    match load_sessions(model, opts, SessionConfig { sessions: 1, intra_threads: 1 }) {
        Ok((_, runtime)) => Ok(Some(runtime)),
        Err(EngineError::Unsupported(why)) => {
            let (engine, precision) = (opts.engine.as_str(), opts.precision.as_str());
            println!("{}", json!({"mode": mode, "engine": engine, "precision": precision, "skipped": why}));
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// (sessions, intra-op threads) pairs worth trying on `cores` cores.
fn grid(cores: usize) -> Vec<(usize, usize)> {
    let mut g = vec![(1, 1), (cores, 1), (1, cores)];
    g.dedup();
    g.sort();
    g.dedup();
    g
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The bytes of every `--images` file and of every image in its folders
/// (recursively, in name order); files that are not images by their content
/// (a folder's manifest, say) are skipped.
fn read_photos(paths: &[PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut photos = Vec::new();
    for path in expand(paths) {
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if sniff_format(&bytes).is_some() {
            photos.push(bytes);
        }
    }
    Ok(photos)
}

/// Images per second with `cfg.sessions` threads each running batches of `batch`.
fn model_only(
    model: &ModelDir,
    opts: &EngineOptions,
    cfg: SessionConfig,
    input: &ModelInput,
    batch: usize,
    seconds: Duration,
) -> anyhow::Result<f64> {
    let (mut classifiers, _) = load_sessions(model, opts, cfg)?;
    for c in &mut classifiers {
        c.classify(&[input])?; // warm-up
    }
    let refs: Vec<&ModelInput> = vec![input; batch];
    measure(classifiers, seconds, |c| c.classify(&refs).map(|_| batch))
}

/// What `--pipeline` measured: the throughput, and where each image's time
/// went on the thread that handled it.
struct PipelineSplit {
    rate: f64,
    /// Mean milliseconds to decode and preprocess one photo.
    prepare_ms: f64,
    /// Mean milliseconds of one batch-1 inference, right after a decode.
    infer_ms: f64,
}

/// Images per second decoding and classifying real photos, one session per
/// thread, with the time split between preparing and inferring.
fn pipeline(
    model: &ModelDir,
    args: &BenchArgs,
    opts: &EngineOptions,
    photos: &[Vec<u8>],
    threads: usize,
    seconds: Duration,
) -> anyhow::Result<PipelineSplit> {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
    let resize = model.spec.resize_spec();
    let (classifiers, _) = load_sessions(model, opts, SessionConfig { sessions: threads, intra_threads: 1 })?;
    let (counter, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (prepare_ns, infer_ns) = (AtomicU64::new(0), AtomicU64::new(0));
    let rate = measure(classifiers, seconds, |c| {
        let i = counter.fetch_add(1, Relaxed);
        let started = Instant::now();
        let img = prepare(&photos[i % photos.len()], &resize, args.max_pixels)
            .map_err(|e| EngineError::Inference(e.to_string()))?;
        let prepared = Instant::now();
        let n = c.classify(&[&ModelInput::Image(img)]).map(|_| 1)?;
        prepare_ns.fetch_add((prepared - started).as_nanos() as u64, Relaxed);
        infer_ns.fetch_add(prepared.elapsed().as_nanos() as u64, Relaxed);
        done.fetch_add(1, Relaxed);
        Ok(n)
    })?;
    let images = done.load(Relaxed).max(1) as f64;
    Ok(PipelineSplit {
        rate,
        prepare_ms: prepare_ns.load(Relaxed) as f64 / images / 1e6,
        infer_ms: infer_ns.load(Relaxed) as f64 / images / 1e6,
    })
}

/// Runs `step` on every classifier in its own thread for `seconds`; returns
/// images per second over all threads.
fn measure<F>(classifiers: Vec<Box<dyn Classifier>>, seconds: Duration, step: F) -> anyhow::Result<f64>
where
    F: Fn(&mut Box<dyn Classifier>) -> Result<usize, EngineError> + Sync,
{
    let started = Instant::now();
    let counts = std::thread::scope(|s| {
        let handles: Vec<_> = classifiers
            .into_iter()
            .map(|mut c| {
                let step = &step;
                s.spawn(move || -> Result<usize, EngineError> {
                    let mut n = 0;
                    while started.elapsed() < seconds {
                        n += step(&mut c)?;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("bench thread panicked"))).collect::<Vec<_>>()
    });
    let mut total = 0;
    for c in counts {
        total += c??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_stands_for_the_images_in_it_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let jpeg = |tag: u8| vec![0xFF, 0xD8, 0xFF, tag];
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for (name, body) in [("b", jpeg(2)), ("a", jpeg(1)), ("manifest.json", b"{}".to_vec()), ("sub/c", jpeg(3))] {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        let single = dir.path().join("a");
        let photos = read_photos(&[dir.path().to_path_buf(), single]).unwrap();
        assert_eq!(photos, [jpeg(1), jpeg(2), jpeg(3), jpeg(1)]);
    }
}
