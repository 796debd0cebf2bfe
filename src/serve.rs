//! `lens serve`: builds the in-process service and runs it until SIGTERM or
//! Ctrl-C.
//!
//! Drain order on shutdown: stop accepting connections and let the requests
//! in flight finish (each holds its job's reply), stop the batcher once the
//! queue is empty, then stop the model sessions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::batcher::{BatchConfig, BatchContext, run_local};
use crate::config::ServeArgs;
use crate::engine::{Classifier, EngineError, ModelInput, OrtClassifier, Scores};
use crate::feedback::{FeedbackStore, ImageStore};
use crate::http::{AppState, Limits, Models};
use crate::metrics::Metrics;
use crate::model::ModelDir;
use crate::preprocess::Prepared;
use crate::queue::{JobQueue, LocalQueue};
use crate::service::{ModelInfo, Predictor, PredictorConfig};
use crate::sessions::SessionPool;

/// A running in-process model: its predictor and what must be stopped.
struct Running {
    predictor: Arc<Predictor>,
    pool: Arc<SessionPool>,
    batcher: tokio::task::JoinHandle<()>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.addr).await.with_context(|| format!("binding {}", args.addr))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port.
    println!("listening on http://{addr}");
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_shutdown(shutdown.clone()));
    run_with(listener, args, shutdown).await
}

/// Serves on `listener` until `shutdown` is cancelled.
pub async fn run_with(listener: TcpListener, args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let batcher_stop = CancellationToken::new();
    let mut dirs = vec![args.model.model.clone()];
    if let Some(root) = &args.models_dir {
        dirs.extend(model_dirs(root)?);
    }
    let mut running = BTreeMap::new();
    let mut default = None;
    for dir in dirs {
        let model = ModelDir::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
        let name = model.spec.name.clone();
        if running.contains_key(&name) {
            continue;
        }
        default.get_or_insert_with(|| name.clone());
        let r = start_model(model, &args, Arc::clone(&metrics), batcher_stop.clone()).await?;
        running.insert(name, r);
    }
    let default = default.context("no model to serve")?;
    let models = Arc::new(Models {
        by_name: running.iter().map(|(n, r)| (n.clone(), Arc::clone(&r.predictor))).collect(),
        default,
    });
    let state = AppState {
        models,
        metrics,
        feedback: Arc::new(FeedbackStore::open(&args.data_dir.join("feedback")).context("opening the feedback store")?),
        uploads: ImageStore::open(&args.data_dir.join("uploads")).context("opening the upload store")?,
        limits: Limits {
            body_bytes: args.body_limit,
            max_parts: args.max_parts,
            request_timeout: Duration::from_secs_f64(args.request_timeout_secs),
        },
    };
    tracing::info!(addr = %listener.local_addr()?, "serving");
    let stop = shutdown.clone();
    crate::http::serve(listener, state, async move { stop.cancelled().await }).await?;
    tracing::info!("stopped accepting; draining");
    batcher_stop.cancel();
    for (_, r) in running {
        let _ = r.batcher.await;
        let pool = r.pool;
        tokio::task::spawn_blocking(move || pool.shutdown()).await?;
    }
    tracing::info!("shut down");
    Ok(())
}

async fn start_model(
    model: ModelDir,
    args: &ServeArgs,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> anyhow::Result<Running> {
    let sessions = args.model.session_config();
    let (ort_lib, slow) = (args.model.ort_lib.clone(), Duration::from_millis(args.debug_slow_ms));
    let warmup = ModelInput::Image(Prepared {
        width: model.spec.input.width,
        height: model.spec.input.height,
        rgb: vec![128; (model.spec.input.width * model.spec.input.height * 3) as usize],
    });
    let model_for_pool = model.clone();
    let pool = tokio::task::spawn_blocking(move || -> Result<SessionPool, EngineError> {
        let mut classifiers: Vec<Box<dyn Classifier>> = Vec::new();
        for _ in 0..sessions.sessions {
            let c = OrtClassifier::load(&model_for_pool, sessions.intra_threads, ort_lib.as_deref())?;
            classifiers.push(if slow.is_zero() { Box::new(c) } else { Box::new(Slowed { inner: c, slow }) });
        }
        SessionPool::start(classifiers, Some(warmup))
    })
    .await??;
    let pool = Arc::new(pool);
    tracing::info!(model = %model.spec.name, sessions = sessions.sessions, threads = sessions.intra_threads, "model ready");
    let (queue, jobs) = LocalQueue::new(args.queue_capacity, Arc::clone(&metrics));
    let cfg = BatchConfig { max_batch: args.max_batch.max(1), max_wait: Duration::from_millis(args.max_wait_ms) };
    let ctx = Arc::new(BatchContext { metrics: Arc::clone(&metrics) });
    let batcher = tokio::spawn(run_local(jobs, Arc::clone(&pool), cfg, ctx, stop));
    let predictor = Arc::new(Predictor::new(
        ModelInfo { labels: Arc::new(model.labels.clone()), spec: model.spec.clone() },
        PredictorConfig {
            deadline: Duration::from_secs_f64(args.deadline_secs),
            max_pixels: args.model.max_pixels,
            cache_entries: args.cache_entries,
            max_pending: args.max_pending,
        },
        JobQueue::Local(queue),
        args.decode_threads.unwrap_or_else(|| sessions.sessions.max(1)),
        pool.sessions(),
        metrics,
    ));
    predictor.set_ready(true);
    Ok(Running { predictor, pool, batcher })
}

/// Subfolders of `root` that hold a model.toml, sorted.
fn model_dirs(root: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .with_context(|| format!("reading {}", root.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.toml").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// The test hook behind `--debug-slow-ms`: a real session that takes longer.
struct Slowed<C> {
    inner: C,
    slow: Duration,
}

impl<C: Classifier> Classifier for Slowed<C> {
    fn classify(&mut self, inputs: &[&ModelInput]) -> Result<Vec<Scores>, EngineError> {
        std::thread::sleep(self.slow);
        self.inner.classify(inputs)
    }
}

async fn signal_shutdown(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
    token.cancel();
}
