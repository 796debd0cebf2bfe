//! The prediction path shared by every endpoint: admission, cache and
//! coalescing, a place among the misses in flight (429 without one, before
//! any decode), decode on the bounded CPU pool, the job queue, the deadline.
//!
//! One [`Predictor`] serves one model. Its `predict` is what `/predict`, the
//! upload page and the v2 `infer` endpoint all call.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::cache::{Coalescer, Key, ResultCache, Role, SharedCache};
use crate::engine::Runtime;
use crate::job::{JobError, JobOutput, ModelInput};
use crate::memory_budget::MemoryBudget;
use crate::metrics::{self, Metrics, ModelStats};
use crate::model::{ModelSpec, ResizeSpec};
use crate::preprocess::{ImageError, inspect, prepare};
use crate::queue::{Capacity, JobQueue, SubmitError};
use crate::telemetry;

/// Why a prediction failed. `Clone`, so coalesced requests share it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    BadImage(#[from] ImageError),
    #[error("the server is busy; retry in {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    #[error("no answer within the {0:?} deadline")]
    Timeout(Duration),
    #[error("the service is unavailable: {0}")]
    Unavailable(String),
    #[error("the model failed on this image: {0}")]
    Failed(String),
}

impl PredictError {
    /// The label used when counting this error in metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PredictError::BadImage(_) => "bad_image",
            PredictError::Overloaded { .. } => "overloaded",
            PredictError::Timeout(_) => "timeout",
            PredictError::Unavailable(_) => "unavailable",
            PredictError::Failed(_) => "failed",
        }
    }
}

/// A successful prediction.
#[derive(Debug, Clone)]
pub struct Answer {
    pub scores: Arc<[f32]>,
    pub sha256: String,
    pub cached: bool,
    pub timings: Timings,
}

/// Where the time of one prediction went; zero for stages it skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub decode: Duration,
    pub queue_and_infer: Duration,
    /// The model call of the job's batch, as its session measured it.
    pub infer: Duration,
    /// Answered from the shared (Redis) cache: no stage ran.
    pub cached: bool,
    /// The span of the computation that answered, for a coalesced request's link.
    pub computed_by: Option<telemetry::SpanRef>,
}

/// Tunables of the prediction path.
#[derive(Debug, Clone)]
pub struct PredictorConfig {
    pub deadline: Duration,
    pub max_pixels: u64,
    pub cache_entries: usize,
    /// Requests admitted at once (decoding, queued or running); beyond it, 429.
    pub max_pending: usize,
    /// Cache misses this node works on at once (hashed, decoding, queued or
    /// running): `--queue-capacity`. A miss beyond it is refused with 429
    /// before its image is decoded, so overload costs a hash, not a decode.
    pub queue_capacity: usize,
    /// Bytes that concurrent decodes may hold together (see [`MemoryBudget`]).
    pub decode_memory: u64,
}

/// The model facts the prediction path needs.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub spec: ModelSpec,
    pub labels: Arc<Vec<String>>,
    /// The engine and precision answering (on Redis: the ones the workers
    /// are expected to run); part of the cache key.
    pub runtime: Runtime,
}

type Shared = Result<(Arc<[f32]>, Timings), PredictError>;

pub struct Predictor {
    pub model: ModelInfo,
    resize: ResizeSpec,
    config: PredictorConfig,
    queue: Arc<dyn JobQueue>,
    /// The queue's readiness, as it publishes it.
    ready: watch::Receiver<bool>,
    cache: ResultCache<Arc<[f32]>>,
    /// The cache shared by every API node, behind the local one (Redis mode).
    shared_cache: Option<Arc<dyn SharedCache>>,
    coalescer: Coalescer<Shared>,
    /// Bounded CPU pool for decoding: one permit per decode thread.
    decode_slots: Arc<Semaphore>,
    /// Bounded memory for decoding: a decode reserves what its header needs.
    decode_memory: MemoryBudget,
    /// Admission control: a request holds a permit until it is answered.
    admission: Arc<Semaphore>,
    /// Places for cache misses: a computation holds one from before its
    /// decode until its answer.
    places: Arc<Semaphore>,
    /// Exponential moving average of seconds per image of inference, as f64 bits.
    per_image_secs: AtomicU64,
    metrics: Arc<Metrics>,
    /// This model version's counters for the statistics extension.
    stats: ModelStats,
}

/// How often a computation whose leader is gone checks for followers.
const ABANDON_CHECK: Duration = Duration::from_millis(50);

/// A 429 whose Retry-After is `wait`, rounded up, at least 1 s.
fn overloaded(wait: Duration) -> PredictError {
    PredictError::Overloaded { retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64 }
}

impl Predictor {
    pub fn new(
        model: ModelInfo,
        config: PredictorConfig,
        queue: Arc<dyn JobQueue>,
        decode_threads: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Predictor {
            resize: model.spec.resize_spec(),
            cache: ResultCache::new(config.cache_entries),
            shared_cache: None,
            coalescer: Coalescer::default(),
            decode_slots: Arc::new(Semaphore::new(decode_threads)),
            decode_memory: MemoryBudget::new(config.decode_memory),
            admission: Arc::new(Semaphore::new(config.max_pending)),
            places: Arc::new(Semaphore::new(config.queue_capacity.max(1))),
            per_image_secs: AtomicU64::new(0.02f64.to_bits()),
            ready: queue.ready(),
            model,
            config,
            queue,
            metrics,
            stats: ModelStats::default(),
        }
    }

    /// Adds a second-level cache shared with other API nodes.
    pub fn with_shared_cache(mut self, cache: Option<Arc<dyn SharedCache>>) -> Self {
        self.shared_cache = cache;
        self
    }

    pub fn name(&self) -> &str {
        &self.model.spec.name
    }

    pub fn version(&self) -> &str {
        &self.model.spec.version
    }

    /// This version's counters for the statistics extension.
    pub fn stats(&self) -> &ModelStats {
        &self.stats
    }

    /// Counts one answered (or failed) inference in the statistics.
    fn count(&self, result: &Result<Timings, &PredictError>, started: Instant) {
        let took = started.elapsed();
        self.stats.finish(result.is_ok(), took);
        match result {
            Ok(t) if t.cached => self.stats.cache_hit.add(took),
            Ok(t) => {
                self.stats.cache_miss.add(Duration::ZERO);
                self.stats.queue.add(t.queue_and_infer.saturating_sub(t.infer));
                self.stats.compute_input.add(t.decode);
                self.stats.compute_infer.add(t.infer);
            }
            Err(_) => {}
        }
    }

    /// The queue's readiness as it changes, to wait for a new version.
    pub fn ready_watch(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// Whether requests can be answered now, as the queue last published.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn queue_depth(&self) -> usize {
        self.queue.depth()
    }

    /// Who serves this model now: in-process sessions, or the live workers
    /// and their sessions.
    pub fn capacity(&self) -> Capacity {
        self.queue.capacity()
    }

    /// Classifies one uploaded image.
    pub async fn predict(self: &Arc<Self>, bytes: Bytes) -> Result<Answer, PredictError> {
        let started = Instant::now();
        let result = self.predict_counted(bytes).await;
        let timings = result.as_ref().map(|a| Timings { cached: a.cached, ..a.timings });
        self.count(&timings, started);
        result
    }

    async fn predict_counted(self: &Arc<Self>, bytes: Bytes) -> Result<Answer, PredictError> {
        let deadline = Instant::now() + self.config.deadline;
        let _admitted = self.admit()?;
        let hashed = bytes.clone();
        let lookup = tracing::debug_span!("cache lookup", lens.cache.hit = tracing::field::Empty);
        let sha: [u8; 32] =
            self.on_decode_pool((), move || Sha256::digest(&hashed).into()).instrument(lookup.clone()).await?;
        let sha256 = hex::encode(sha);
        let key = Key {
            model: self.model.spec.name.clone(),
            version: self.model.spec.version.clone(),
            runtime: self.model.runtime,
            sha256: sha,
        };
        let hit = self.cache.get(&key);
        lookup.record("lens.cache.hit", hit.is_some());
        drop(lookup);
        if let Some(scores) = hit {
            self.metrics.cache_hits.inc();
            return Ok(Answer { scores, sha256, cached: true, timings: Timings::default() });
        }
        self.metrics.cache_misses.inc();
        let mut following = None;
        let rx = match self.coalescer.join(&key) {
            Role::Follower(rx) => {
                self.metrics.coalesced.inc();
                following = Some(tracing::debug_span!("coalesced"));
                rx
            }
            Role::Leader => {
                let Ok(place) = Arc::clone(&self.places).try_acquire_owned() else {
                    let full = overloaded(self.estimated_wait());
                    self.coalescer.finish(&key, &Err(full.clone()));
                    return Err(full);
                };
                // The computation runs in its own task so that followers get
                // their answer even if the leader's client goes away; once
                // the leader's client and every follower are gone, it stops.
                let (mut tx, rx) = tokio::sync::oneshot::channel();
                let this = Arc::clone(self);
                let computing = tracing::debug_span!("compute");
                let computed_by = telemetry::SpanRef::of(&computing);
                let task = async move {
                    let _place = place;
                    let Some(mut result) = this.compute_while_wanted(&key, bytes, deadline, tx.closed()).await else {
                        this.metrics.drop_job("abandoned");
                        return;
                    };
                    if let Ok((_, timings)) = &mut result {
                        timings.computed_by = computed_by;
                    }
                    if let Ok((scores, timings)) = &result {
                        this.cache.put(key.clone(), Arc::clone(scores));
                        if let (Some(c), false) = (&this.shared_cache, timings.cached) {
                            c.put(&key, scores);
                        }
                    }
                    this.coalescer.finish(&key, &result);
                    let _ = tx.send(result);
                };
                tokio::spawn(task.instrument(computing));
                rx
            }
        };
        let waiting = following.clone().unwrap_or_else(tracing::Span::none);
        match tokio::time::timeout_at(deadline, rx).instrument(waiting).await {
            Ok(Ok(result)) => {
                let (scores, timings) = result?;
                if let Some(span) = &following {
                    telemetry::link(span, timings.computed_by);
                }
                Ok(Answer { scores, sha256, cached: timings.cached, timings })
            }
            Ok(Err(_)) => Err(PredictError::Unavailable("the prediction task ended unexpectedly".into())),
            Err(_) => Err(PredictError::Timeout(self.config.deadline)),
        }
    }

    /// Looks the answer up in the shared cache or computes it, until it is
    /// done or nobody waits for it any more: `leader_gone` resolves when the
    /// leader's client is gone, and then the followers are checked every
    /// [`ABANDON_CHECK`]. `None` when it stopped: work not yet started (a
    /// decode, a queued job) is then never done.
    async fn compute_while_wanted(
        &self,
        key: &Key,
        bytes: Bytes,
        deadline: Instant,
        leader_gone: impl Future<Output = ()>,
    ) -> Option<Shared> {
        let work = async {
            let shared = match &self.shared_cache {
                Some(c) => c.get(key).instrument(tracing::debug_span!("shared cache lookup")).await,
                None => None,
            };
            match shared {
                Some(scores) => Ok((scores, Timings { cached: true, ..Timings::default() })),
                None => self.compute(bytes, deadline).await,
            }
        };
        tokio::pin!(work, leader_gone);
        let mut leader_here = true;
        loop {
            tokio::select! {
                result = &mut work => return Some(result),
                () = &mut leader_gone, if leader_here => leader_here = false,
                () = tokio::time::sleep(ABANDON_CHECK), if !leader_here => {
                    if self.coalescer.abandon_if_unwanted(key) {
                        return None;
                    }
                }
            }
        }
    }

    /// Checks an image as its decode would, from its header alone: format,
    /// pixel count and density, and the memory its decode needs against the
    /// whole decode budget. A multi-image request runs this on every image
    /// before any of them is decoded.
    pub fn check_image(&self, bytes: &[u8]) -> Result<u64, PredictError> {
        let need = inspect(bytes, &self.resize, self.config.max_pixels)?;
        let budget = self.decode_memory.total_bytes();
        if need > budget {
            let mib = |b: u64| b.div_ceil(1 << 20);
            return Err(ImageError::TooMuchMemory { needed_mib: mib(need), budget_mib: mib(budget) }.into());
        }
        Ok(need)
    }

    /// Runs a request's CPU-bound parsing on the bounded decode pool.
    pub async fn on_cpu_pool<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PredictError> {
        self.on_decode_pool((), work).await
    }

    /// Classifies one already normalised tensor (KServe v2 FP32 input). It
    /// skips decoding, the cache and coalescing, but not admission, the queue
    /// or the deadline.
    pub async fn predict_tensor(&self, values: Vec<f32>) -> Result<Arc<[f32]>, PredictError> {
        let started = Instant::now();
        let deadline = started + self.config.deadline;
        let result = match self.admit() {
            Ok(_admitted) => self.infer(ModelInput::Tensor(values), deadline).await,
            Err(e) => Err(e),
        };
        self.count(&result.as_ref().map(|(_, t)| *t), started);
        Ok(result?.0)
    }

    fn admit(&self) -> Result<OwnedSemaphorePermit, PredictError> {
        let wait = self.estimated_wait();
        if wait > self.config.deadline {
            return Err(overloaded(wait - self.config.deadline));
        }
        Arc::clone(&self.admission).try_acquire_owned().map_err(|_| overloaded(wait))
    }

    /// How long a job queued now would wait for a session.
    pub fn estimated_wait(&self) -> Duration {
        let per_image = f64::from_bits(self.per_image_secs.load(Ordering::Relaxed));
        let queued = self.queue.depth() as f64;
        Duration::from_secs_f64(queued * per_image / self.capacity().sessions.max(1) as f64)
    }

    async fn compute(&self, bytes: Bytes, deadline: Instant) -> Shared {
        let started = Instant::now();
        let image = self.decode(bytes).await?;
        let decode = started.elapsed();
        let (scores, timings) = self.infer(image, deadline).await?;
        Ok((scores, Timings { decode, ..timings }))
    }

    /// Queues one input and waits for its answer until `deadline`.
    async fn infer(&self, input: ModelInput, deadline: Instant) -> Shared {
        self.queued(input, deadline).instrument(tracing::debug_span!("queue")).await
    }

    /// [`Predictor::infer`] inside its span: the job, queued under it, puts
    /// its inference span there.
    async fn queued(&self, input: ModelInput, deadline: Instant) -> Shared {
        let decoded = Instant::now();
        let rx = self.queue.submit(Arc::new(input), deadline).await.map_err(|e| match e {
            SubmitError::Full => PredictError::Overloaded { retry_after_secs: 1 },
            SubmitError::Closed => PredictError::Unavailable("shutting down".into()),
            SubmitError::Unavailable(m) => PredictError::Unavailable(m),
        })?;
        let output = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(JobError::ShuttingDown),
            Err(_) => Err(JobError::DeadlineExceeded),
        };
        let done = Instant::now();
        let JobOutput { scores, inference } = output.map_err(|e| match e {
            JobError::DeadlineExceeded => PredictError::Timeout(self.config.deadline),
            JobError::ShuttingDown => PredictError::Unavailable(e.to_string()),
            JobError::Inference(_) | JobError::DeadLettered(_) => PredictError::Failed(e.to_string()),
        })?;
        self.observe_service_time(done - decoded);
        Ok((scores, Timings { queue_and_infer: done - decoded, infer: inference, ..Timings::default() }))
    }

    async fn decode(&self, bytes: Bytes) -> Result<ModelInput, PredictError> {
        let span = tracing::debug_span!("decode", lens.upload.bytes = bytes.len() as i64);
        self.decode_in_span(bytes).instrument(span).await
    }

    async fn decode_in_span(&self, bytes: Bytes) -> Result<ModelInput, PredictError> {
        let (resize, max_pixels) = (self.resize, self.config.max_pixels);
        let started = Instant::now();
        // The header alone says what the decode will hold (microseconds), and
        // refuses what `prepare` would refuse before decoding.
        let need = self.check_image(&bytes)?;
        let memory =
            self.decode_memory.reserve(need).await.map_err(|_| PredictError::Unavailable("shutting down".into()))?;
        let result = self.on_decode_pool(memory, move || prepare(&bytes, &resize, max_pixels)).await?;
        self.metrics.stage(metrics::DECODE, started.elapsed());
        Ok(ModelInput::Image(result?))
    }

    /// Runs CPU-bound work on the bounded decode pool (a blocking thread
    /// behind a slot), never on the async runtime's threads. The slot and
    /// `held` (the work's memory) go with the work: if the request is
    /// cancelled meanwhile, a decode already started keeps both until it ends.
    async fn on_decode_pool<T: Send + 'static, H: Send + 'static>(
        &self,
        held: H,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PredictError> {
        let slot = Arc::clone(&self.decode_slots)
            .acquire_owned()
            .await
            .map_err(|_| PredictError::Unavailable("shutting down".into()))?;
        tokio::task::spawn_blocking(move || {
            let _held = (slot, held);
            work()
        })
        .await
        .map_err(|_| PredictError::Failed("the decoder crashed on this image".into()))
    }

    /// Feeds the wait estimate with the latest per-image service time.
    fn observe_service_time(&self, took: Duration) {
        let old = f64::from_bits(self.per_image_secs.load(Ordering::Relaxed));
        // Queue wait is included in `took`, so divide by the queue length
        // seen now plus this job to approximate the per-image cost.
        let per_image = took.as_secs_f64() / (self.queue.depth() as f64 + 1.0);
        let new = 0.9 * old + 0.1 * per_image;
        self.per_image_secs.store(new.to_bits(), Ordering::Relaxed);
    }
}
