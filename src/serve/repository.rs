//! The model repository: which model versions are on disk, which one of
//! each model is served, and the zero-downtime swap between versions.
//!
//! A load starts the new version beside the old one and warms it up (its
//! sessions run a first batch; on Redis, a live worker of that version
//! heartbeats), then [`Models::swap`] makes it take every new request from
//! that instant on. The old version drains: once no request holds it any
//! more (its in-flight and queued jobs are answered) it is stopped in the
//! drain order. A failed load leaves the old version serving and is not
//! retried by polling until its directory changes. An explicit unload is
//! remembered, so polling does not bring the model back until it is loaded
//! again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::{Launcher, Running};
use crate::http::{ModelRepository, Models, RepositoryEntry, RepositoryError, RepositoryFuture};
use crate::model::{ModelDir, ModelSpec};

/// Longest a new version may take to become ready (on Redis: for a live
/// worker of that version to heartbeat) before its load counts as failed.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How often a draining version checks whether requests still hold it.
const DRAIN_CHECK: Duration = Duration::from_millis(50);

/// A version directory as found on disk, and when its files last changed.
#[derive(Debug, Clone, PartialEq)]
struct OnDisk {
    dir: PathBuf,
    version: String,
    changed: Option<SystemTime>,
}

/// What the index shows besides the served versions.
#[derive(Default)]
struct Book {
    /// A failed load per model: the directory state it failed on, and why.
    failed: BTreeMap<String, (OnDisk, String)>,
    /// Models unloaded on request; polling leaves them alone.
    unloaded: BTreeSet<String>,
    /// Versions replaced or unloaded and still answering their requests.
    draining: Vec<(String, String)>,
}

pub struct Repository {
    launcher: Launcher,
    /// The `--model` directory: served, though not under `root`.
    fixed: PathBuf,
    root: Option<PathBuf>,
    models: Arc<Models>,
    /// The running version of every served model; the same as in `models`.
    serving: Mutex<BTreeMap<String, Running>>,
    book: Mutex<Book>,
    /// One load or unload at a time, so two loads of a model cannot race.
    changing: tokio::sync::Mutex<()>,
    drains: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is a few inserts and removes: a panic in one
    // leaves the data whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Repository {
    /// Loads `fixed` (or, if it is a version of a model under `root`, that
    /// model's newest version) and every model under `root`; any failure
    /// fails start-up.
    pub async fn start(launcher: Launcher, fixed: &Path, root: Option<PathBuf>) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut dirs = match &root {
            Some(root) => scan(root).with_context(|| format!("reading {}", root.display()))?,
            None => BTreeMap::new(),
        };
        let default = name_of(fixed);
        dirs.entry(default.clone()).or_insert(OnDisk { dir: fixed.to_owned(), version: String::new(), changed: None });
        let mut serving = BTreeMap::new();
        for dir in dirs.into_values().map(|d| d.dir) {
            let model = ModelDir::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
            let name = model.spec.name.clone();
            if serving.contains_key(&name) {
                continue;
            }
            serving.insert(name, launcher.start(model).await?);
        }
        anyhow::ensure!(serving.contains_key(&default), "the --model directory {} names no model", fixed.display());
        let table = serving.iter().map(|(n, r): (&String, &Running)| (n.clone(), Arc::clone(&r.predictor))).collect();
        Ok(Repository {
            launcher,
            fixed: fixed.to_owned(),
            root,
            models: Arc::new(Models::new(table, default)),
            serving: Mutex::new(serving),
            book: Mutex::new(Book::default()),
            changing: tokio::sync::Mutex::new(()),
            drains: Mutex::new(Vec::new()),
        })
    }

    pub fn models(&self) -> Arc<Models> {
        Arc::clone(&self.models)
    }

    /// The newest version on disk of every model: under `root`, and `fixed`.
    fn on_disk(&self) -> BTreeMap<String, OnDisk> {
        let mut found = match &self.root {
            Some(root) => scan(root).unwrap_or_else(|e| {
                tracing::warn!(root = %root.display(), error = %e, "cannot read the model repository");
                BTreeMap::new()
            }),
            None => BTreeMap::new(),
        };
        if let Some(d) = describe(&self.fixed) {
            found.entry(name_of(&self.fixed)).or_insert(d);
        }
        found
    }

    fn served_version(&self, name: &str) -> Option<String> {
        self.models.get(name).map(|p| p.version().to_owned())
    }

    async fn load_model(&self, name: &str) -> Result<(), RepositoryError> {
        let _one_at_a_time = self.changing.lock().await;
        let disk = self.on_disk().remove(name).ok_or_else(|| RepositoryError::NotFound(name.to_owned()))?;
        lock(&self.book).unloaded.remove(name);
        if self.served_version(name).as_deref() == Some(disk.version.as_str()) {
            lock(&self.book).failed.remove(name);
            return Ok(());
        }
        match self.start_version(&disk).await {
            Ok(running) => {
                let version = running.predictor.version().to_owned();
                let old_predictor = self.models.swap(Arc::clone(&running.predictor));
                drop(old_predictor);
                let old = lock(&self.serving).insert(name.to_owned(), running);
                lock(&self.book).failed.remove(name);
                tracing::info!(model = name, version, "new version serving");
                if let Some(old) = old {
                    self.drain(old);
                }
                Ok(())
            }
            Err(reason) => {
                tracing::error!(model = name, version = disk.version, %reason, "load failed; the served version stays");
                lock(&self.book).failed.insert(name.to_owned(), (disk, reason.clone()));
                Err(RepositoryError::LoadFailed { name: name.to_owned(), reason })
            }
        }
    }

    /// Loads and warms up a version; ready, not yet served.
    async fn start_version(&self, disk: &OnDisk) -> Result<Running, String> {
        let model = ModelDir::load(&disk.dir).map_err(|e| e.to_string())?;
        let running = self.launcher.start(model).await.map_err(|e| format!("{e:#}"))?;
        let mut ready = running.predictor.ready_watch();
        let became_ready = tokio::time::timeout(READY_WITHIN, ready.wait_for(|r| *r)).await.is_ok_and(|r| r.is_ok());
        if became_ready {
            return Ok(running);
        }
        running.stop().await;
        Err(format!("version {} was not ready within {READY_WITHIN:?} (on Redis: no live worker of it)", disk.version))
    }

    async fn unload_model(&self, name: &str) -> Result<(), RepositoryError> {
        let _one_at_a_time = self.changing.lock().await;
        let running = lock(&self.serving).remove(name);
        let Some(running) = running else { return Err(RepositoryError::NotFound(name.to_owned())) };
        drop(self.models.remove(name));
        lock(&self.book).unloaded.insert(name.to_owned());
        tracing::info!(model = name, "unloaded; draining");
        self.drain(running);
        Ok(())
    }

    /// Stops `old` once no request holds its predictor any more.
    fn drain(&self, old: Running) {
        let id = (old.predictor.name().to_owned(), old.predictor.version().to_owned());
        lock(&self.book).draining.push(id.clone());
        let limit = self.launcher.args.request_timeout_secs.max(self.launcher.args.deadline_secs) + 5.0;
        let task = tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            while Arc::strong_count(&old.predictor) > 1 && started.elapsed().as_secs_f64() < limit {
                tokio::time::sleep(DRAIN_CHECK).await;
            }
            old.stop().await;
            tracing::info!(model = id.0, version = id.1, "old version drained and unloaded");
        });
        lock(&self.drains).push(task);
    }

    /// Forgets finished drains in the index.
    fn tidy(&self) {
        let mut drains = lock(&self.drains);
        drains.retain(|t| !t.is_finished());
        if drains.is_empty() {
            lock(&self.book).draining.clear();
        }
    }

    /// Every `every`, loads what changed on disk and unloads what vanished.
    pub async fn poll(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.tidy();
            let disk = self.on_disk();
            for (name, found) in &disk {
                let skip = {
                    let book = lock(&self.book);
                    book.unloaded.contains(name) || book.failed.get(name).is_some_and(|(d, _)| d == found)
                } || self.served_version(name).as_deref() == Some(found.version.as_str());
                if !skip {
                    let _ = self.load_model(name).await;
                }
            }
            for name in self.models.names() {
                if !disk.contains_key(&name) {
                    let _ = self.unload_model(&name).await;
                    lock(&self.book).unloaded.remove(&name);
                }
            }
        }
    }

    /// Stops every version, the served ones and those still draining.
    pub async fn shutdown(&self) {
        self.launcher.batcher_stop.cancel();
        let serving = std::mem::take(&mut *lock(&self.serving));
        for (name, running) in serving {
            drop(self.models.remove(&name));
            running.stop().await;
        }
        let drains = std::mem::take(&mut *lock(&self.drains));
        for task in drains {
            let _ = task.await;
        }
        self.launcher.redis_stop.cancel();
    }
}

impl ModelRepository for Repository {
    fn index(&self) -> Vec<RepositoryEntry> {
        self.tidy();
        let entry = |name: &str, version: &str, state, reason: &str| RepositoryEntry {
            name: name.to_owned(),
            version: version.to_owned(),
            state,
            reason: reason.to_owned(),
        };
        let book = lock(&self.book);
        let mut out = Vec::new();
        for (name, disk) in self.on_disk() {
            match self.models.get(&name) {
                Some(p) if p.is_ready() => out.push(entry(&name, p.version(), "READY", "")),
                Some(p) => out.push(entry(&name, p.version(), "UNAVAILABLE", "not ready")),
                None if book.unloaded.contains(&name) => {
                    out.push(entry(&name, &disk.version, "UNAVAILABLE", "unloaded"))
                }
                None => out.push(entry(&name, &disk.version, "UNAVAILABLE", "not loaded")),
            }
            if let Some((d, reason)) = book.failed.get(&name) {
                out.push(entry(&name, &d.version, "UNAVAILABLE", reason));
            }
        }
        for (name, version) in &book.draining {
            out.push(entry(name, version, "UNLOADING", "draining its requests"));
        }
        out
    }

    fn load<'a>(&'a self, name: &'a str) -> RepositoryFuture<'a, ()> {
        Box::pin(self.load_model(name))
    }

    fn unload<'a>(&'a self, name: &'a str) -> RepositoryFuture<'a, ()> {
        Box::pin(self.unload_model(name))
    }
}

/// The model name a directory serves under, without loading it.
fn name_of(dir: &Path) -> String {
    if let Some((name, _)) = crate::model::repository_names(dir) {
        return name;
    }
    let toml = dir.join("model.toml");
    let parsed = std::fs::read_to_string(&toml).ok().and_then(|t| ModelSpec::parse(&t, &toml).ok());
    parsed.map(|s| s.name).unwrap_or_else(|| dir.file_name().unwrap_or_default().to_string_lossy().into_owned())
}

/// A model directory's version and when its files last changed.
fn describe(dir: &Path) -> Option<OnDisk> {
    if !dir.join("model.toml").is_file() {
        return None;
    }
    let version = match crate::model::repository_names(dir) {
        Some((_, v)) => v,
        None => {
            let toml = dir.join("model.toml");
            let parsed = std::fs::read_to_string(&toml).ok().and_then(|t| ModelSpec::parse(&t, &toml).ok());
            parsed.map(|s| s.version).unwrap_or_default()
        }
    };
    let changed = std::fs::read_dir(dir).ok()?.flatten().filter_map(|e| e.metadata().ok()?.modified().ok()).max();
    Some(OnDisk { dir: dir.to_owned(), version, changed })
}

/// The newest version of every model under `root`: a folder holding a
/// model.toml (flat layout), or a folder of numbered version folders.
fn scan(root: &Path) -> std::io::Result<BTreeMap<String, OnDisk>> {
    let mut found = BTreeMap::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    for dir in dirs {
        if let Some(d) = describe(&dir) {
            found.entry(name_of(&dir)).or_insert(d);
            continue;
        }
        let newest = std::fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| {
                let n: u64 = e.file_name().to_str()?.parse().ok()?;
                Some((n, e.path()))
            })
            .filter(|(_, p)| p.join("model.toml").is_file())
            .max_by_key(|(n, _)| *n);
        if let Some(d) = newest.and_then(|(_, p)| describe(&p)) {
            found.entry(name_of(&d.dir)).or_insert(d);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(dir: &Path, name: &str, version: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("model.toml"), format!("name = \"{name}\"\nversion = \"{version}\"\n")).unwrap();
    }

    #[test]
    fn scan_finds_flat_models_and_the_newest_numbered_version() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        model(&root.join("flat"), "flat-model", "7");
        model(&root.join("lite/1"), "whatever", "1");
        model(&root.join("lite/10"), "whatever", "1");
        model(&root.join("lite/9"), "whatever", "1");
        std::fs::create_dir_all(root.join("lite/11")).unwrap(); // no model.toml: not a version
        std::fs::create_dir_all(root.join("empty")).unwrap();
        let found = scan(root).unwrap();
        let got: Vec<(&str, &str)> = found.iter().map(|(n, d)| (n.as_str(), d.version.as_str())).collect();
        // This model.toml is incomplete, so the folder names the flat model.
        assert_eq!(got, vec![("flat", ""), ("lite", "10")]);
        assert!(found["lite"].dir.ends_with("lite/10"));
    }
}
