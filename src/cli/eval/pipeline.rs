//! Running one model over many files on every core: a bounded pool of
//! decode threads feeds prepared images into the model session pool
//! ([`crate::sessions`]), one image per model call (the fastest per image on
//! this project's measurements).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use indicatif::ProgressBar;
use tokio::sync::mpsc;

use super::tally::Outcome;
use crate::config::{ModelArgs, available_cores};
use crate::job::ModelInput;
use crate::model::ModelDir;
use crate::preprocess::prepare;
use crate::ranking::top_k;
use crate::sessions::load_pool;

/// Classifies `paths` with `model`, keeping the `keep` best labels of each.
/// A file that cannot be read or decoded is an [`Outcome::Unreadable`]; a
/// failing model is an error.
pub fn classify_all(
    model: &ModelDir,
    args: &ModelArgs,
    paths: &[PathBuf],
    keep: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Vec<Outcome>> {
    let runtime = tokio::runtime::Builder::new_current_thread().build().context("starting the async runtime")?;
    let engine = args.engine_options(&model.spec);
    let pool = runtime.block_on(load_pool(model, &engine, args.session_config(), Duration::ZERO))?;
    let decoders = available_cores().min(paths.len()).max(1);
    // Decoded images wait here for a session; the bound keeps memory flat.
    let (tx, mut rx) = mpsc::channel::<(usize, Result<ModelInput, String>)>(2 * decoders);
    let next = AtomicUsize::new(0);
    let resize = model.spec.resize_spec();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; paths.len()];
    std::thread::scope(|scope| -> anyhow::Result<()> {
        for _ in 0..decoders {
            let tx = tx.clone();
            let (next, resize) = (&next, &resize);
            scope.spawn(move || {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(index) else { return };
                    let input = std::fs::read(path)
                        .map_err(|e| format!("cannot read: {e}"))
                        .and_then(|bytes| prepare(&bytes, resize, args.max_pixels).map_err(|e| e.to_string()))
                        .map(ModelInput::Image);
                    // A closed channel means the model failed: stop decoding.
                    if tx.blocking_send((index, input)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let result = runtime.block_on(async {
            let mut running = tokio::task::JoinSet::new();
            while let Some((index, input)) = rx.recv().await {
                let input = match input {
                    Ok(input) => input,
                    Err(message) => {
                        outcomes[index] = Some(Outcome::Unreadable(message));
                        bar.inc(1);
                        continue;
                    }
                };
                let slot = pool.reserve().await.context("the model sessions stopped")?;
                let reply = pool.run(slot, vec![Arc::new(input)]);
                running.spawn(async move { (index, reply.await) });
                while let Some(done) = running.try_join_next() {
                    record(done?, &model.labels, keep, &mut outcomes, bar)?;
                }
            }
            while let Some(done) = running.join_next().await {
                record(done?, &model.labels, keep, &mut outcomes, bar)?;
            }
            anyhow::Ok(())
        });
        // On an error the receiver is dropped here, so decoders stop.
        drop(rx);
        result
    })?;
    pool.shutdown();
    Ok(outcomes.into_iter().map(|o| o.unwrap_or_else(|| Outcome::Unreadable("not classified".into()))).collect())
}

type Reply = Result<
    (Result<Vec<crate::engine::Scores>, crate::engine::EngineError>, Duration),
    tokio::sync::oneshot::error::RecvError,
>;

fn record(
    (index, reply): (usize, Reply),
    labels: &[String],
    keep: usize,
    outcomes: &mut [Option<Outcome>],
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let (scores, _) = reply.context("a model session stopped")?;
    let scores = scores?;
    let first = scores.first().context("the model returned no scores")?;
    let ranked = top_k(first, keep)
        .into_iter()
        .map(|(i, _)| labels.get(i).cloned().unwrap_or_else(|| format!("class_{i}")))
        .collect();
    outcomes[index] = Some(Outcome::Ranked(ranked));
    bar.inc(1);
    Ok(())
}
