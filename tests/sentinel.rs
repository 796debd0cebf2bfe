//! Redis high availability: real `redis-server` and `redis-server --sentinel`
//! processes on loopback (a primary, one replica, three Sentinels with quorum
//! 2 and `down-after-milliseconds` 1000: [`SentinelSet`]), a real API node
//! and a real worker on `redis+sentinel://`, the real model, and clients
//! sending distinct photos while the primary dies, hands over, or loses its
//! connections.
//!
//! The promise checked each time: no connection error and no 504 at the
//! client; every answer is a 200 or a fast 503 (refused at admission while
//! no primary is known, with `Retry-After`); so no request that was accepted
//! is lost or hung. Clients honour `Retry-After`, as well-behaved clients do.
//!
//! Process logs go to `target/tmp/sentinel/<test>/`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::processes::{LensProcess, SentinelSet};
use common::{fixture, form, root, variant};

/// One test at a time: each runs a model worker on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longer than any fast refusal can take (decode, then one Redis call of at
/// most `SUBMIT_TIMEOUT`, 2 s).
const FAST: Duration = Duration::from_millis(2500);

fn log_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sentinel").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An API node and a worker on the Sentinels of `set`, both ready.
async fn lens_on(set: &SentinelSet, logs: &Path) -> (LensProcess, LensProcess) {
    let (url, model) = (set.url(), root().join("models/efficientnet-lite0"));
    let model = model.to_str().unwrap();
    let data = logs.join("data");
    let api = LensProcess::spawn(
        logs,
        "api",
        &["serve", "--redis", &url, "--addr", "127.0.0.1:0", "--model", model, "--data-dir", data.to_str().unwrap()],
    );
    let worker = LensProcess::spawn(logs, "worker", &["worker", "--redis", &url, "--model", model, "--sessions", "1"]);
    common::wait_ready(&api.url(), Duration::from_secs(90), logs).await;
    (api, worker)
}

/// One request's fate.
#[derive(Debug)]
struct Answer {
    started: Instant,
    finished: Instant,
    /// The status, or the connection error.
    status: Result<u16, String>,
}

/// `clients` closed-loop clients sending `total` distinct photos (never
/// sent before in the test: no cache answers) to
/// `/predict`, each sleeping `Retry-After` after a 503.
fn load(url: String, clients: usize, total: usize) -> tokio::task::JoinHandle<Vec<Answer>> {
    load_from(url, clients, total, 50_000)
}

/// [`load`] with photos `first..first + total`.
fn load_from(url: String, clients: usize, total: usize, first: usize) -> tokio::task::JoinHandle<Vec<Answer>> {
    tokio::spawn(async move {
        let dog = Arc::new(fixture("dog.jpeg"));
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (url, dog, next) = (url.clone(), Arc::clone(&dog), Arc::clone(&next));
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
                let mut answers = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return answers;
                    }
                    let started = Instant::now();
                    let sent = http
                        .post(format!("{url}/predict"))
                        .multipart(form("dog.jpeg", variant(&dog, first + i)))
                        .send()
                        .await;
                    let status = sent.as_ref().map(|r| r.status().as_u16()).map_err(|e| e.to_string());
                    let retry =
                        sent.ok().and_then(|r| r.headers().get("retry-after")?.to_str().ok()?.parse::<u64>().ok());
                    answers.push(Answer { started, finished: Instant::now(), status: status.clone() });
                    if status == Ok(503) {
                        tokio::time::sleep(Duration::from_secs(retry.unwrap_or(1))).await;
                    }
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
}

/// Checks the promise on `answers` and prints what happened; returns the
/// first time a 200 finished after `after`.
fn check(answers: &[Answer], after: Instant) -> Option<Instant> {
    let ok = answers.iter().filter(|a| a.status == Ok(200)).count();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == Ok(503)).collect();
    let slowest = answers.iter().map(|a| a.finished - a.started).max().unwrap_or_default();
    println!("{} requests: {ok} answered 200, {} refused 503; slowest {slowest:?}", answers.len(), refused.len());
    for a in answers {
        assert!(matches!(a.status, Ok(200) | Ok(503)), "a request ended {:?}", a.status);
    }
    for a in &refused {
        assert!(a.finished - a.started < FAST, "a 503 took {:?}", a.finished - a.started);
    }
    assert!(ok * 3 >= answers.len() * 2, "only {ok} of {} answered 200", answers.len());
    answers.iter().filter(|a| a.status == Ok(200) && a.finished > after).map(|a| a.finished).min()
}

async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    common::metric_in(&text, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_fails_over_with_no_lost_or_hung_request() {
    let _one = SERIAL.lock().await;
    let logs = log_dir("kill");
    let mut set = tokio::task::block_in_place(|| SentinelSet::start(None));
    let (api, _worker) = lens_on(&set, &logs).await;
    let running = load(api.url(), 16, 3000);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Readiness, every 100 ms from the kill until the load ends.
    let (url, polling) = (api.url(), Arc::new(std::sync::atomic::AtomicBool::new(true)));
    let ready = tokio::spawn({
        let polling = Arc::clone(&polling);
        async move {
            let mut seen = Vec::new();
            while polling.load(Ordering::Relaxed) {
                let r = reqwest::get(format!("{url}/health/ready")).await.map(|r| r.status().as_u16());
                seen.push(r.unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        }
    });
    let old = set.primary.port;
    set.primary.kill();
    let killed = Instant::now();
    let new = tokio::task::block_in_place(|| set.wait_for_new_primary(old, Duration::from_secs(30)));
    let promoted = Instant::now();
    assert_eq!(new, set.replica.port);
    println!("promoted {:?} after the kill", promoted - killed);
    let answers = running.await.unwrap();
    polling.store(false, Ordering::Relaxed);
    let seen = ready.await.unwrap();
    // Not ready while no primary was reachable, ready again after.
    assert!(seen.contains(&503), "readiness never dropped: {seen:?}");
    assert_eq!(seen.last(), Some(&200), "{seen:?}");
    let resumed = check(&answers, killed).expect("no 200 after the kill");
    println!("answering resumed {:?} after the promotion", resumed.saturating_duration_since(promoted));
    assert!(
        resumed < promoted + Duration::from_secs(5),
        "answering resumed {:?} after the promotion",
        resumed - promoted
    );
    assert!(answers.iter().filter(|a| a.finished > promoted + Duration::from_secs(5)).all(|a| a.status == Ok(200)));
    assert!(metric(&api.url(), "lens_redis_failovers_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manual_failover_loses_nothing_and_the_old_primary_becomes_a_replica() {
    let _one = SERIAL.lock().await;
    let logs = log_dir("manual");
    let set = tokio::task::block_in_place(|| SentinelSet::start(None));
    let (api, _worker) = lens_on(&set, &logs).await;
    let running = load(api.url(), 8, 2000);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = set.primary.port;
    let before = Instant::now();
    let said = set.cli(set.sentinels[0].port, &["SENTINEL", "FAILOVER", SentinelSet::SERVICE]);
    assert!(said.contains("OK"), "{said}");
    tokio::task::block_in_place(|| set.wait_for_new_primary(old, Duration::from_secs(30)));
    let answers = running.await.unwrap();
    check(&answers, before).expect("no 200 after the failover");
    // The Sentinels turn the old primary into a replica of the new one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !set.cli(old, &["ROLE"]).starts_with("slave") {
        assert!(Instant::now() < deadline, "the old primary is still {}", set.cli(old, &["ROLE"]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&api.url(), "lens_redis_failovers_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_cut_by_the_primary_are_made_again() {
    let _one = SERIAL.lock().await;
    let logs = log_dir("cut");
    let set = tokio::task::block_in_place(|| SentinelSet::start(None));
    let (api, _worker) = lens_on(&set, &logs).await;
    let running = load(api.url(), 8, 500);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let killed = set.cli(set.primary.port, &["CLIENT", "KILL", "TYPE", "normal"]);
        assert!(killed.trim().parse::<u32>().unwrap_or(0) >= 1, "{killed}");
    }
    let answers = running.await.unwrap();
    check(&answers, Instant::now() - Duration::from_secs(60));
}

#[test]
fn sentinels_that_are_all_down_or_know_no_such_service_are_a_clear_error() {
    let logs = log_dir("errors");
    let model = root().join("models/efficientnet-lite0");
    let run = |url: &str| {
        let started = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
            .args(["worker", "--redis", url, "--model", model.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(started.elapsed() < Duration::from_secs(15), "it took {:?}", started.elapsed());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let (a, b) = (common::processes::free_port(), common::processes::free_port());
    let down = run(&format!("redis+sentinel://127.0.0.1:{a},127.0.0.1:{b}/lens"));
    assert!(down.contains("Sentinels") && down.contains("no primary"), "{down}");
    let set = SentinelSet::start(None);
    let url = set.url().replace(&format!("/{}", SentinelSet::SERVICE), "/no-such-service");
    let unknown = run(&url);
    assert!(unknown.contains("no-such-service"), "{unknown}");
    // `lens feedback export` reads through the Sentinels too.
    let out = logs.join("export");
    let export = std::process::Command::new(env!("CARGO_BIN_EXE_lens"))
        .args(["feedback", "export", "--redis", &set.url()])
        .arg(&out)
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    assert!(out.join("feedback.csv").exists());
    let malformed = run("redis+sentinel://127.0.0.1:1");
    assert!(malformed.contains("no service"), "{malformed}");
    std::fs::write(logs.join("stderr.txt"), format!("{down}\n{unknown}\n{malformed}")).unwrap();
}

/// `--redis-wait-replicas 1`: a job counts as queued only once the replica
/// has it, so a failover cannot lose it; with no replica to acknowledge,
/// requests are refused (503), not queued unsafely. Prints what waiting
/// costs: two API nodes on one worker, one waiting and one not, in
/// alternating rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_for_replicas_holds_jobs_until_a_replica_has_them() {
    let _one = SERIAL.lock().await;
    let logs = log_dir("wait");
    let mut set = tokio::task::block_in_place(|| SentinelSet::start(None));
    let (plain, _worker) = lens_on(&set, &logs).await;
    let (url, model) = (set.url(), root().join("models/efficientnet-lite0"));
    let data = logs.join("waiting-data");
    let waiting = LensProcess::spawn(
        &logs,
        "waiting",
        &[
            "serve",
            "--redis",
            &url,
            "--redis-wait-replicas",
            "1",
            "--addr",
            "127.0.0.1:0",
            "--model",
            model.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    common::wait_ready(&waiting.url(), Duration::from_secs(90), &logs).await;
    let http = reqwest::Client::new();
    let mut rates: [Vec<f64>; 2] = Default::default();
    for round in 0..3 {
        for (i, node) in [&plain, &waiting].into_iter().enumerate() {
            let started = Instant::now();
            let answers = load_from(node.url(), 16, 300, 100_000 + (round * 2 + i) * 1000).await.unwrap();
            assert!(answers.iter().all(|a| a.status == Ok(200)), "round {round}: {answers:?}");
            rates[i].push(answers.len() as f64 / started.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (no_wait, wait) = (median(&mut rates[0]), median(&mut rates[1]));
    println!("--redis-wait-replicas 0: {no_wait:.1}/s, 1: {wait:.1}/s ({:.2}x), medians of 3 rounds", wait / no_wait);
    // Without its replica the waiting node refuses, fast and clearly.
    set.replica.kill();
    let dog = variant(&fixture("dog.jpeg"), 90_000);
    let started = Instant::now();
    let r = http.post(format!("{}/predict", waiting.url())).multipart(form("dog.jpeg", dog)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
    let body = r.text().await.unwrap();
    assert!(body.contains("replicas acknowledged"), "{body}");
}
