//! `lens predict`: classify files and folders offline on the serving code path
//! (the same [`crate::preprocess::prepare`] and [`crate::engine::Classifier`] the server uses). On a terminal
//! a progress bar runs on stderr; with `--json` or when piped, none.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use crate::config::PredictArgs;
use crate::engine::{SessionConfig, load_sessions};
use crate::job::ModelInput;
use crate::model::ModelDir;
use crate::preprocess::{Prepared, prepare};
use crate::ranking::ranked;

/// Files classified per model call.
const BATCH: usize = 8;

pub fn run(args: &PredictArgs) -> anyhow::Result<ExitCode> {
    let model = ModelDir::load(&args.model.model).context("loading the model directory")?;
    let threads = args.model.session_config().intra_threads.max(crate::config::available_cores());
    let engine = args.model.engine_options(&model.spec);
    let (mut sessions, runtime) =
        load_sessions(&model, &engine, SessionConfig { sessions: 1, intra_threads: threads })?;
    let classifier = sessions.first_mut().context("the engine loaded no session")?;
    tracing::info!(engine = runtime.engine.as_str(), precision = runtime.precision.as_str(), "model ready");
    let files = expand(&args.paths);
    let resize = model.spec.resize_spec();
    let mut failures = 0usize;
    let mut out = std::io::stdout().lock();
    let bar = super::progress::bar(files.len(), args.json);
    for chunk in files.chunks(BATCH) {
        let prepared = prepare_all(chunk, |bytes| prepare(bytes, &resize, args.model.max_pixels));
        let ok: Vec<&ModelInput> = prepared.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut scores = classifier.classify(&ok)?.into_iter();
        for (path, result) in chunk.iter().zip(&prepared) {
            match result {
                Ok(_) => {
                    let s = scores.next().context("classifier returned too few rows")?;
                    let top = ranked(&s, &model.labels, args.top_k);
                    bar.suspend(|| report(&mut out, args, path, &top))?;
                }
                Err(message) => {
                    failures += 1;
                    bar.suspend(|| {
                        eprintln!("{}: {message}", path.display());
                        if args.json {
                            return writeln!(out, "{}", json!({"file": path, "error": message}));
                        }
                        Ok(())
                    })?;
                }
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if failures > 0 {
        eprintln!("{failures} of {} files could not be classified", files.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn report(
    out: &mut impl Write,
    args: &PredictArgs,
    path: &Path,
    top: &[crate::ranking::ClassScore],
) -> std::io::Result<()> {
    if args.json {
        let best = &top[0];
        let line = json!({"file": path, "prediction": best.label, "score": best.score, "top_k": top});
        return writeln!(out, "{line}");
    }
    writeln!(out, "{}", path.display())?;
    for c in top {
        writeln!(out, "  {:.4}  {} ({})", c.score, c.label, c.index)?;
    }
    Ok(())
}

/// Reads and prepares files on all cores; errors become per-file messages.
fn prepare_all(
    paths: &[PathBuf],
    f: impl Fn(&[u8]) -> Result<Prepared, crate::preprocess::ImageError> + Sync,
) -> Vec<Result<ModelInput, String>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .iter()
            .map(|p| {
                let f = &f;
                s.spawn(move || {
                    let bytes = std::fs::read(p).map_err(|e| format!("cannot read: {e}"))?;
                    f(&bytes).map(ModelInput::Image).map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("internal error while decoding".into()))).collect()
    })
}

/// Files as given, folders expanded recursively in sorted order.
pub(crate) fn expand(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inner: Vec<PathBuf> =
                std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
            inner.sort();
            files.extend(expand(&inner));
        } else {
            files.push(p.clone());
        }
    }
    files
}
