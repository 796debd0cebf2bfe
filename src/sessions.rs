//! The pool of model sessions, each on its own OS thread.
//!
//! [`load_pool`] asks the engine module for the sessions (which engine and
//! precision follow `--engine` / `--precision`); the pool runs them. Model
//! calls block for milliseconds, so they never run on the async
//! runtime. A batch is handed to whichever session thread is free; `free`
//! counts idle sessions, and its permit travels with the batch so the slot is
//! released only when the session has finished it.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::engine::{Classifier, EngineError, EngineOptions, Runtime, Scores, SessionConfig, load_sessions};
use crate::job::ModelInput;
use crate::model::ModelDir;
use crate::preprocess::Prepared;

type BatchReply = oneshot::Sender<(Result<Vec<Scores>, EngineError>, Duration)>;

struct Work {
    images: Vec<Arc<ModelInput>>,
    reply: BatchReply,
    /// Released when the session is done with this batch.
    _slot: OwnedSemaphorePermit,
}

/// A fixed set of model sessions.
pub struct SessionPool {
    /// Session threads share the receiving end; dropping this sender (when
    /// the pool is dropped) ends them after their current batch.
    tx: Mutex<Option<mpsc::Sender<Work>>>,
    /// One permit per idle session.
    free: Arc<Semaphore>,
    sessions: usize,
    /// The engine and precision of the sessions; `None` for test fakes.
    runtime: Option<Runtime>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl SessionPool {
    /// Starts one thread per classifier. Each is warmed up with `warmup`
    /// before it takes work, so the pool is ready when this returns.
    pub fn start(classifiers: Vec<Box<dyn Classifier>>, warmup: Option<ModelInput>) -> Result<Self, EngineError> {
        let sessions = classifiers.len();
        let (tx, rx) = mpsc::channel::<Work>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(sessions);
        for (i, mut classifier) in classifiers.into_iter().enumerate() {
            if let Some(img) = &warmup {
                classifier.classify(&[img])?;
            }
            let rx = Arc::clone(&rx);
            let handle = std::thread::Builder::new()
                .name(format!("lens-session-{i}"))
                .spawn(move || session_loop(classifier, rx))
                .map_err(|e| EngineError::Inference(format!("cannot start a session thread: {e}")))?;
            threads.push(handle);
        }
        Ok(SessionPool {
            tx: Mutex::new(Some(tx)),
            free: Arc::new(Semaphore::new(sessions)),
            sessions,
            runtime: None,
            threads: Mutex::new(threads),
        })
    }

    pub fn sessions(&self) -> usize {
        self.sessions
    }

    /// The engine and precision the sessions run with (`None` for fakes).
    pub fn runtime(&self) -> Option<Runtime> {
        self.runtime
    }

    /// Waits until a session is idle and reserves it.
    pub async fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.free).acquire_owned().await.ok()
    }

    /// Runs `images` on the reserved session. The answer carries the time the
    /// model took.
    pub fn run(
        &self,
        slot: OwnedSemaphorePermit,
        images: Vec<Arc<ModelInput>>,
    ) -> oneshot::Receiver<(Result<Vec<Scores>, EngineError>, Duration)> {
        let (reply, rx) = oneshot::channel();
        let work = Work { images, reply, _slot: slot };
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            // If every thread is gone the work (and its reply sender) is
            // dropped, and the caller sees a closed channel.
            let _ = tx.send(work);
        }
        rx
    }

    /// Stops taking work and waits for the sessions to finish their batches.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.free.close();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Loads `sessions` model sessions (each warmed up) on a blocking thread,
/// with the engine and precision `engine` chooses. `slow` is the
/// `--debug-slow-ms` test hook.
pub async fn load_pool(
    model: &ModelDir,
    engine: &EngineOptions,
    sessions: SessionConfig,
    slow: Duration,
) -> Result<SessionPool, EngineError> {
    let warmup = ModelInput::Image(Prepared {
        width: model.spec.input.width,
        height: model.spec.input.height,
        rgb: vec![128; (model.spec.input.width * model.spec.input.height * 3) as usize],
    });
    let model_for_pool = model.clone();
    let engine = engine.clone();
    let pool = tokio::task::spawn_blocking(move || -> Result<SessionPool, EngineError> {
        let (loaded, runtime) = load_sessions(&model_for_pool, &engine, sessions)?;
        let classifiers: Vec<Box<dyn Classifier>> = loaded
            .into_iter()
            .map(|inner| if slow.is_zero() { inner } else { Box::new(Slowed { inner, slow }) as Box<dyn Classifier> })
            .collect();
        let mut pool = SessionPool::start(classifiers, Some(warmup))?;
        pool.runtime = Some(runtime);
        Ok(pool)
    })
    .await
    .map_err(|e| EngineError::Inference(format!("the loading thread failed: {e}")))??;
    let runtime = pool.runtime;
    tracing::info!(
        model = %model.spec.name,
        engine = runtime.map_or("", |r| r.engine.as_str()),
        precision = runtime.map_or("", |r| r.precision.as_str()),
        sessions = sessions.sessions,
        threads = sessions.intra_threads,
        "model ready"
    );
    Ok(pool)
}

/// The test hook behind `--debug-slow-ms`: a real session that takes longer.
struct Slowed {
    inner: Box<dyn Classifier>,
    slow: Duration,
}

impl Classifier for Slowed {
    fn classify(&mut self, inputs: &[&ModelInput]) -> Result<Vec<Scores>, EngineError> {
        std::thread::sleep(self.slow);
        self.inner.classify(inputs)
    }
}

fn session_loop(mut classifier: Box<dyn Classifier>, rx: Arc<Mutex<mpsc::Receiver<Work>>>) {
    loop {
        let work = {
            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
            match rx.recv() {
                Ok(w) => w,
                Err(_) => return,
            }
        };
        let refs: Vec<&ModelInput> = work.images.iter().map(|a| a.as_ref()).collect();
        let started = std::time::Instant::now();
        // A panic inside the engine must not take the session thread down
        // with the batch: the batch fails, the session keeps serving.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| classifier.classify(&refs)))
            .unwrap_or_else(|_| Err(EngineError::Inference("the model session panicked".into())));
        let _ = work.reply.send((result, started.elapsed()));
    }
}
