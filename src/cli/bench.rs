//! `lens bench`: the model's own ceiling, measured on this machine.
//!
//! - `--model-only`: pure inference throughput of a prepared image, over a
//!   grid of sessions x intra-op threads x batch size; reports the best.
//! - `--pipeline`: decode, preprocess and infer of real photos with no HTTP,
//!   one session per thread.
//!
//! Each configuration prints one JSON line; the last line is the summary.
//! The service's throughput is reported against these in `scripts/bench`.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::config::BenchArgs;
use crate::engine::{Classifier, OrtClassifier};
use crate::job::ModelInput;
use crate::model::ModelDir;
use crate::preprocess::prepare;

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let model = ModelDir::load(&args.model.model).context("loading the model directory")?;
    let photos: Vec<Vec<u8>> = args
        .images
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!photos.is_empty(), "give at least one --images file");
    let seconds = Duration::from_secs_f64(args.seconds);
    let cores = crate::config::available_cores();
    if args.model_only || !args.pipeline {
        let input = ModelInput::Image(prepare(&photos[0], &model.spec.resize_spec(), args.model.max_pixels)?);
        let mut best = (0.0f64, json!(null));
        for &(sessions, threads) in &grid(cores) {
            for &batch in &args.batch_sizes {
                let rate = model_only(&model, args, &input, sessions, threads, batch, seconds)?;
                let row = json!({"mode": "model-only", "sessions": sessions, "threads": threads, "batch": batch,
                                 "images_per_sec": round1(rate)});
                println!("{row}");
                if rate > best.0 {
                    best = (rate, row);
                }
            }
        }
        println!("{}", json!({"summary": "model-only", "images_per_sec": round1(best.0), "best": best.1}));
    }
    if args.pipeline {
        let rate = pipeline(&model, args, &photos, cores, seconds)?;
        println!("{}", json!({"summary": "pipeline", "images_per_sec": round1(rate), "threads": cores}));
    }
    Ok(())
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

/// Images per second with `sessions` threads each running batches of `batch`.
fn model_only(
    model: &ModelDir,
    args: &BenchArgs,
    input: &ModelInput,
    sessions: usize,
    threads: usize,
    batch: usize,
    seconds: Duration,
) -> anyhow::Result<f64> {
    let mut classifiers = Vec::new();
    for _ in 0..sessions {
        let mut c = OrtClassifier::load(model, threads, args.model.ort_lib.as_deref())?;
        c.classify(&[input])?; // warm-up
        classifiers.push(c);
    }
    let refs: Vec<&ModelInput> = vec![input; batch];
    measure(classifiers, seconds, |c| c.classify(&refs).map(|_| batch))
}

/// Images per second decoding and classifying real photos, one session per thread.
fn pipeline(
    model: &ModelDir,
    args: &BenchArgs,
    photos: &[Vec<u8>],
    threads: usize,
    seconds: Duration,
) -> anyhow::Result<f64> {
    let resize = model.spec.resize_spec();
    let mut classifiers = Vec::new();
    for _ in 0..threads {
        classifiers.push(OrtClassifier::load(model, 1, args.model.ort_lib.as_deref())?);
    }
    let counter = std::sync::atomic::AtomicUsize::new(0);
    measure(classifiers, seconds, |c| {
        let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let img = prepare(&photos[i % photos.len()], &resize, args.model.max_pixels)
            .map_err(|e| crate::engine::EngineError::Inference(e.to_string()))?;
        c.classify(&[&ModelInput::Image(img)]).map(|_| 1)
    })
}

/// Runs `step` on every classifier in its own thread for `seconds`; returns
/// images per second over all threads.
fn measure<F>(classifiers: Vec<OrtClassifier>, seconds: Duration, step: F) -> anyhow::Result<f64>
where
    F: Fn(&mut OrtClassifier) -> Result<usize, crate::engine::EngineError> + Sync,
{
    let started = Instant::now();
    let counts = std::thread::scope(|s| {
        let handles: Vec<_> = classifiers
            .into_iter()
            .map(|mut c| {
                let step = &step;
                s.spawn(move || -> Result<usize, crate::engine::EngineError> {
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
