//! Lens scaled out on Redis, end to end: a real `redis-server` on a free
//! port, real `lens serve --redis` and `lens worker` processes (so they can
//! be killed), the real model, real photos.
//!
//! Tests run one at a time (they share two cores); each starts its own
//! Redis in a temporary directory and stops everything it started, also
//! when it fails. Process logs go to `target/tmp/distributed/<test>/`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::processes::{LensProcess as Lens, RedisServer as Redis, signal};

use lens::job::JobError;
use lens::redis::codec::{self, WorkerBeat};
use redis::streams::StreamPendingReply;

const JOBS: &str = "lens:jobs:efficientnet-lite0:1";
const DEAD: &str = "lens:dead:efficientnet-lite0:1";
const REGISTRY: &str = "lens:workers:efficientnet-lite0";
const GROUP: &str = "lens-workers";
const PHOTOS: [&str; 4] = ["dog.jpeg", "coffee.png", "chelsea.png", "grace_hopper.jpg"];

/// One test at a time: each runs model workers on a two-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn model_dir() -> PathBuf {
    common::root().join("models/efficientnet-lite0")
}

fn log_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("distributed").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What `lens predict` (the in-process path) answers for each photo.
fn expected() -> &'static HashMap<String, (String, f64)> {
    static EXPECTED: OnceLock<HashMap<String, (String, f64)>> = OnceLock::new();
    EXPECTED.get_or_init(|| {
        let paths: Vec<PathBuf> = PHOTOS.iter().map(|p| common::root().join("tests/fixtures").join(p)).collect();
        let out = Command::new(env!("CARGO_BIN_EXE_lens"))
            .arg("predict")
            .arg("--json")
            .arg("--model")
            .arg(model_dir())
            .args(&paths)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines = String::from_utf8(out.stdout).unwrap();
        PHOTOS
            .iter()
            .zip(lines.lines())
            .map(|(name, line)| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                (name.to_string(), (v["prediction"].as_str().unwrap().to_owned(), v["score"].as_f64().unwrap()))
            })
            .collect()
    })
}

/// The tests' own `redis-server`, with a connection for checking its keys.
impl Redis {
    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        // No response timeout: tests block on BLPOP for seconds.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection_with_config(&config).await.unwrap()
    }
}

/// API nodes and workers of the tests' model on `redis`.
impl Lens {
    fn api(logs: &Path, name: &str, redis: &Redis, extra: &[&str]) -> Lens {
        let (url, model, data) = (redis.url(), model_dir(), logs.join(format!("{name}-data")));
        let mut args = vec!["serve", "--redis", &url, "--addr", "127.0.0.1:0"];
        args.extend(["--model", model.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
        args.extend(extra);
        Lens::spawn(logs, name, &args)
    }

    fn worker(logs: &Path, name: &str, redis: &Redis, extra: &[&str]) -> Lens {
        let (url, model) = (redis.url(), model_dir());
        let mut args = vec!["worker", "--redis", &url, "--model", model.to_str().unwrap(), "--sessions", "1"];
        args.extend(extra);
        Lens::spawn(logs, name, &args)
    }
}

async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, limit: Duration, mut check: F) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `lens_queue_depth` as an API node's `/metrics` shows it.
async fn queue_depth(client: &reqwest::Client, api: &str) -> f64 {
    let text = client.get(format!("{api}/metrics")).send().await.unwrap().text().await.unwrap();
    common::metric_in(&text, "lens_queue_depth")
}

async fn ready_status(client: &reqwest::Client, api: &str) -> u16 {
    match client.get(format!("{api}/health/ready")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn wait_ready(client: &reqwest::Client, api: &str) {
    wait_until("the API node is ready", Duration::from_secs(60), async || ready_status(client, api).await == 200).await;
}

/// Photo `i % 4`, made byte-distinct by `i` so that no cache answers it.
fn photo(i: usize) -> (&'static str, Vec<u8>) {
    let name = PHOTOS[i % PHOTOS.len()];
    (name, common::variant(&common::fixture(name), 1000 + i))
}

/// One `/predict?top_k=1`: status, body, and how long it took.
async fn predict(
    client: &reqwest::Client,
    api: &str,
    name: &str,
    bytes: Vec<u8>,
) -> (u16, serde_json::Value, Duration) {
    let started = Instant::now();
    let r = client.post(format!("{api}/predict?top_k=1")).multipart(common::form(name, bytes)).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, body, started.elapsed())
}

fn assert_correct(name: &str, status: u16, body: &serde_json::Value) {
    let (label, score) = &expected()[name];
    assert_eq!(status, 200, "{name}: {body}");
    assert_eq!(body["prediction"].as_str(), Some(label.as_str()), "{name}: {body}");
    let got = body["score"].as_f64().unwrap();
    assert!((got - score).abs() < 2e-3, "{name}: score {got} vs in-process {score}");
}

/// Sends photos `range` to `api`, `concurrency` at a time; answers in order.
async fn load(
    client: &reqwest::Client,
    api: &str,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> Vec<(&'static str, u16, serde_json::Value, Duration)> {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::new();
    for i in range {
        let (client, api, gate) = (client.clone(), api.to_owned(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let (name, bytes) = photo(i);
            let (status, body, took) = predict(&client, &api, name, bytes).await;
            (name, status, body, took)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

async fn beats(conn: &mut redis::aio::MultiplexedConnection) -> HashMap<String, WorkerBeat> {
    let raw: HashMap<String, String> = redis::cmd("HGETALL").arg(REGISTRY).query_async(conn).await.unwrap();
    raw.into_iter().map(|(id, json)| (id, serde_json::from_str(&json).unwrap())).collect()
}

/// Entries delivered and not yet acknowledged, by consumer.
async fn pending(conn: &mut redis::aio::MultiplexedConnection) -> HashMap<String, usize> {
    let reply: StreamPendingReply = redis::cmd("XPENDING").arg(JOBS).arg(GROUP).query_async(conn).await.unwrap();
    match reply {
        StreamPendingReply::Data(d) => d.consumers.into_iter().map(|c| (c.name, c.pending)).collect(),
        _ => HashMap::new(),
    }
}

async fn xlen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> usize {
    redis::cmd("XLEN").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_mixed_load_and_answer_it_correctly() {
    let _serial = SERIAL.lock().await;
    let logs = log_dir("mixed_load");
    let redis = Redis::plain(false);
    let api = Lens::api(&logs, "api", &redis, &[]);
    let _w1 = Lens::worker(&logs, "worker-1", &redis, &[]);
    let _w2 = Lens::worker(&logs, "worker-2", &redis, &[]);
    let client = reqwest::Client::new();
    wait_until("both workers are live", Duration::from_secs(30), async || {
        let s: serde_json::Value =
            client.get(format!("{}/api/status", api.url())).send().await.unwrap().json().await.unwrap();
        s["workers"] == 2
    })
    .await;

    let answers = load(&client, &api.url(), 0..300, 16).await;
    for (name, status, body, _) in &answers {
        assert_correct(name, *status, body);
        assert_eq!(body["cached"], false, "every request is byte-distinct");
    }

    let mut conn = redis.conn().await;
    wait_until("both heartbeats count all 300 jobs", Duration::from_secs(5), async || {
        beats(&mut conn).await.values().map(|b| b.processed).sum::<u64>() >= 300
    })
    .await;
    let beats = beats(&mut conn).await;
    eprintln!("jobs per worker: {:?}", beats.values().map(|b| b.processed).collect::<Vec<_>>());
    assert_eq!(beats.len(), 2);
    for (id, b) in &beats {
        assert!(b.processed > 0, "worker {id} processed nothing: {beats:?}");
    }
    assert_eq!(xlen(&mut conn, JOBS).await, 0, "acknowledged jobs are deleted from the stream");
    assert!(pending(&mut conn).await.values().all(|&n| n == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_killed_worker_are_reclaimed_by_the_survivor() {
    let _serial = SERIAL.lock().await;
    let logs = log_dir("kill_worker");
    let redis = Redis::plain(false);
    let deadline_secs = 20.0;
    let api = Lens::api(&logs, "api", &redis, &["--deadline-secs", "20"]);
    let slow = ["--debug-slow-ms", "400", "--visibility-timeout-ms", "1000", "--max-batch", "4"];
    let mut victim = Lens::worker(&logs, "victim", &redis, &slow);
    let _survivor = Lens::worker(&logs, "survivor", &redis, &slow);
    let client = reqwest::Client::new();
    wait_ready(&client, &api.url()).await;

    let load = tokio::spawn({
        let (client, url) = (client.clone(), api.url());
        async move { load(&client, &url, 0..24, 24).await }
    });
    let mut conn = redis.conn().await;
    let tag = format!("-{}-", victim.pid());
    wait_until("the victim holds jobs", Duration::from_secs(20), async || {
        pending(&mut conn).await.iter().any(|(c, &n)| c.contains(&tag) && n > 0)
    })
    .await;
    // The API node's queue_depth follows the stream's backlog (issue 9: it
    // used to read 0 on Redis nodes).
    wait_until("the API node reports the backlog", Duration::from_secs(10), async || {
        queue_depth(&client, &api.url()).await > 0.0
    })
    .await;
    victim.child.kill().unwrap(); // SIGKILL: no chance to acknowledge anything
    victim.child.wait().unwrap();

    for (name, status, body, took) in load.await.unwrap() {
        assert_correct(name, status, &body);
        assert!(took.as_secs_f64() < deadline_secs + 1.0, "{name} waited {took:?}");
    }
    assert!(pending(&mut conn).await.values().all(|&n| n == 0), "nothing left pending");
    assert_eq!(xlen(&mut conn, JOBS).await, 0);
    wait_until("queue_depth is back to 0", Duration::from_secs(5), async || {
        queue_depth(&client, &api.url()).await == 0.0
    })
    .await;
    let survivor: u64 = beats(&mut conn).await.values().filter(|b| b.pid != victim.pid()).map(|b| b.processed).sum();
    assert!(survivor > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_503_while_redis_is_down_and_recovers_by_itself() {
    let _serial = SERIAL.lock().await;
    let logs = log_dir("redis_restart");
    let mut redis = Redis::plain(true);
    let api = Lens::api(&logs, "api", &redis, &["--deadline-secs", "10"]);
    let _worker = Lens::worker(&logs, "worker", &redis, &["--visibility-timeout-ms", "1000"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &api.url()).await;

    // A steady load through the whole outage.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut loops = Vec::new();
    for l in 0..2 {
        let (client, url, stop) = (client.clone(), api.url(), stop.clone());
        loops.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = l * 10_000;
            while !stop.is_cancelled() {
                let (name, bytes) = photo(i);
                let (status, body, took) = predict(&client, &url, name, bytes).await;
                seen.push((name, status, body, took));
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.stop();
    wait_until("the node reports not ready", Duration::from_secs(5), async || {
        ready_status(&client, &api.url()).await == 503
    })
    .await;
    let (name, bytes) = photo(99_999);
    let (status, body, took) = predict(&client, &api.url(), name, bytes).await;
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(1), "a 503 while Redis is down is immediate, took {took:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    wait_until("the node is ready again", Duration::from_secs(30), async || {
        ready_status(&client, &api.url()).await == 200
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();

    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for l in loops {
        for (name, status, body, took) in l.await.unwrap() {
            *statuses.entry(status).or_default() += 1;
            match status {
                200 => assert_correct(name, status, &body),
                503 | 504 => assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}"),
                other => panic!("unexpected {other}: {body}"),
            }
            assert!(took < Duration::from_secs(11), "a request waited {took:?}");
        }
    }
    eprintln!("statuses through the Redis restart: {statuses:?}");
    assert!(statuses.get(&200).is_some_and(|&n| n > 0), "{statuses:?}");
    assert!(statuses.get(&503).is_some_and(|&n| n > 0), "{statuses:?}");
    for (name, status, body, _) in load(&client, &api.url(), 50_000..50_008, 4).await {
        assert_correct(name, status, &body);
    }
}

/// One closed-loop client's answers: status, body, `Retry-After`, start and end.
type Answered = (&'static str, u16, serde_json::Value, Option<String>, Instant, Instant);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_without_persistence_costs_time_not_requests() {
    let _serial = SERIAL.lock().await;
    let logs = log_dir("restart_without_persistence");
    let mut redis = Redis::plain(false);
    let api = Lens::api(&logs, "api", &redis, &[]);
    let _worker = Lens::worker(&logs, "worker", &redis, &[]);
    let client = reqwest::Client::new();
    wait_ready(&client, &api.url()).await;

    // 16 closed-loop clients through the whole restart.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut loops = Vec::new();
    for l in 0..16 {
        let (client, url, stop) = (client.clone(), api.url(), stop.clone());
        loops.push(tokio::spawn(async move {
            let mut seen: Vec<Answered> = Vec::new();
            let mut i = l * 100_000;
            while !stop.is_cancelled() {
                let (name, bytes) = photo(i);
                i += 1;
                let started = Instant::now();
                let form = common::form(name, bytes);
                let r = client.post(format!("{url}/predict?top_k=1")).multipart(form).send().await.unwrap();
                let status = r.status().as_u16();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                let body = r.json().await.unwrap_or(serde_json::Value::Null);
                seen.push((name, status, body, retry, started, Instant::now()));
                if status != 200 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Persistence is off: the new Redis starts empty, with every job of the
    // stream and every consumer group gone.
    let mut conn = redis.conn().await;
    let queued = xlen(&mut conn, JOBS).await;
    let down = Instant::now();
    redis.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    let up = Instant::now();
    wait_until("the node is ready again", Duration::from_secs(30), async || {
        ready_status(&client, &api.url()).await == 200
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();

    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let (mut across, mut first_after) = (0, None::<Instant>);
    for l in loops {
        for (name, status, body, retry, started, ended) in l.await.unwrap() {
            *statuses.entry(status).or_default() += 1;
            match status {
                200 => assert_correct(name, status, &body),
                503 => {
                    assert!(retry.is_some(), "a 503 without Retry-After: {body}");
                    assert!(ended - started < Duration::from_secs(3), "a slow 503: {:?}", ended - started);
                }
                other => panic!("unexpected {other}: {body}"),
            }
            if status == 200 && started < down && ended > up {
                across += 1;
            }
            if status == 200 && ended > up {
                first_after = Some(first_after.map_or(ended, |f: Instant| f.min(ended)));
            }
        }
    }
    eprintln!(
        "statuses through a Redis restart without persistence: {statuses:?}; {queued} jobs were queued at the stop, {across} requests in flight across it answered 200"
    );
    assert!(!statuses.contains_key(&504), "{statuses:?}");
    assert!(statuses.get(&503).is_some_and(|&n| n > 0), "the outage was not seen: {statuses:?}");
    assert!(across > 0, "no request in flight across the restart was answered: {statuses:?}");
    let first_after = first_after.expect("no request completed after Redis came back");
    eprintln!("first answer {:?} after Redis came back", first_after - up);
    let log = std::fs::read_to_string(logs.join("api.log")).unwrap();
    assert!(log.contains("enqueued them again"), "the node did not re-enqueue its jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_jobs_go_to_the_dead_letter_stream_and_workers_keep_serving() {
    let _serial = SERIAL.lock().await;
    let logs = log_dir("poison");
    let redis = Redis::plain(false);
    let api = Lens::api(&logs, "api", &redis, &[]);
    let _worker = Lens::worker(&logs, "worker", &redis, &["--visibility-timeout-ms", "1000", "--max-deliveries", "3"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &api.url()).await;
    let mut conn = redis.conn().await;
    let reply_to = "lens:replies:test-node";
    let now = lens::redis::clock::now_ms();
    let deadline = (now + 60_000).to_string();

    // An entry no worker can decode: dead-lettered at once, client told.
    let _: String = redis::cmd("XADD")
        .arg(JOBS)
        .arg("*")
        .arg(&[
            ("v", "1"),
            ("id", "4242"),
            ("reply", reply_to),
            ("deadline_ms", &deadline),
            ("enqueued_ms", &now.to_string()),
        ])
        .arg(&[("input", "rgb8"), ("width", "3"), ("height", "3"), ("data", "not pixels")])
        .query_async(&mut conn)
        .await
        .unwrap();
    let (_, reply): (String, Vec<u8>) = redis::cmd("BLPOP").arg(reply_to).arg(10).query_async(&mut conn).await.unwrap();
    assert_eq!(codec::decode_reply(&reply).unwrap(), (4242, Err(JobError::DeadLettered(1))));
    assert_eq!(xlen(&mut conn, DEAD).await, 1);

    // A job that keeps killing its workers: a ghost consumer takes it (in the
    // same transaction as the XADD, so the real worker cannot), and claims it
    // again as if three more workers had died on it. The real worker then
    // reclaims it after the visibility timeout and dead-letters it.
    let zeros = vec![0u8; 3 * 224 * 224 * 4];
    let input = lens::job::ModelInput::Tensor(vec![0.0; 3 * 224 * 224]);
    let fields = codec::job_fields(4243, reply_to, now + 60_000, now, &input, None);
    assert_eq!(fields.last().unwrap().1, zeros);
    let (id,): (String,) = {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("XADD").arg(JOBS).arg("*");
        for (k, v) in &fields {
            pipe.arg(*k).arg(v.as_slice());
        }
        pipe.cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg("ghost")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(JOBS)
            .arg(">")
            .ignore();
        pipe.query_async(&mut conn).await.unwrap()
    };
    for _ in 0..3 {
        let _: redis::Value = redis::cmd("XCLAIM")
            .arg(JOBS)
            .arg(GROUP)
            .arg("ghost")
            .arg(0)
            .arg(&id)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let (_, reply): (String, Vec<u8>) = redis::cmd("BLPOP").arg(reply_to).arg(15).query_async(&mut conn).await.unwrap();
    let (job, result) = codec::decode_reply(&reply).unwrap();
    assert_eq!(job, 4243);
    assert!(matches!(result, Err(JobError::DeadLettered(n)) if n > 3), "{result:?}");
    assert_eq!(xlen(&mut conn, DEAD).await, 2);
    let dead: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(DEAD).arg("-").arg("+").query_async(&mut conn).await.unwrap();
    let reasons: Vec<String> = dead.ids.iter().map(|e| e.get::<String>("dead_reason").unwrap()).collect();
    assert!(reasons[0].contains("rgb8"), "{reasons:?}");
    assert!(reasons[1].contains("delivered"), "{reasons:?}");

    // The worker is unharmed.
    for (name, status, body, _) in load(&client, &api.url(), 0..8, 4).await {
        assert_correct(name, status, &body);
    }
    assert!(pending(&mut conn).await.values().all(|&n| n == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_nodes_each_get_their_own_replies_and_share_the_cache() {
    let _serial = SERIAL.lock().await;
    let logs = log_dir("two_api_nodes");
    let redis = Redis::plain(false);
    let a = Lens::api(&logs, "api-a", &redis, &[]);
    let b = Lens::api(&logs, "api-b", &redis, &[]);
    let _worker = Lens::worker(&logs, "worker", &redis, &[]);
    let client = reqwest::Client::new();
    wait_ready(&client, &a.url()).await;
    wait_ready(&client, &b.url()).await;

    // Node A only ever sends dogs and cats, node B coffee and Grace Hopper:
    // a reply routed to the wrong node would be a wrong answer or a timeout.
    let mut tasks = Vec::new();
    for i in 0..48 {
        let url = if i % 2 == 0 { a.url() } else { b.url() };
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (name, bytes) = photo(i);
            let (status, body, _) = predict(&client, &url, name, bytes).await;
            (name, status, body)
        }));
    }
    for t in tasks {
        let (name, status, body) = t.await.unwrap();
        assert_correct(name, status, &body);
    }
    let mut conn = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS").arg("lens:replies:*").query_async(&mut conn).await.unwrap();
    assert!(keys.is_empty(), "every reply was popped: {keys:?}");

    // The result cache is shared: B answers what A computed.
    let bytes = common::variant(&common::fixture("chelsea.png"), 777);
    let (status, first, _) = predict(&client, &a.url(), "chelsea.png", bytes.clone()).await;
    assert_correct("chelsea.png", status, &first);
    assert_eq!(first["cached"], false);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, second, _) = predict(&client, &b.url(), "chelsea.png", bytes).await;
    assert_correct("chelsea.png", status, &second);
    assert_eq!(second["cached"], true, "{second}");

    // Feedback taken by either node is collected from Redis in one place.
    for (node, label) in [(&a, "tabby"), (&b, "tiger_cat")] {
        let r = client
            .post(format!("{}/feedback", node.url()))
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("predicted_label=Egyptian_cat&correct_label={label}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let out = logs.join("feedback-export");
    let export = Command::new(env!("CARGO_BIN_EXE_lens"))
        .args(["feedback", "export", "--drain", "--redis", &redis.url()])
        .arg(&out)
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let csv = std::fs::read_to_string(out.join("feedback.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[0].starts_with("node,id,created_at,model,"), "{csv}");
    assert!(rows[1].ends_with(",tabby,,pending,,") && rows[2].ends_with(",tiger_cat,,pending,,"), "{csv}");
    assert_ne!(rows[1].split(',').next(), rows[2].split(',').next(), "two nodes: {csv}");
    assert_eq!(xlen(&mut conn, "lens:feedback").await, 0, "--drain removed them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_worker_finish_and_acknowledge_its_batch() {
    let _serial = SERIAL.lock().await;
    let logs = log_dir("sigterm");
    let redis = Redis::plain(false);
    let api = Lens::api(&logs, "api", &redis, &["--deadline-secs", "30"]);
    let mut worker = Lens::worker(&logs, "worker", &redis, &["--debug-slow-ms", "1500", "--max-batch", "4"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &api.url()).await;

    let load = tokio::spawn({
        let (client, url) = (client.clone(), api.url());
        async move { load(&client, &url, 0..4, 4).await }
    });
    let mut conn = redis.conn().await;
    wait_until("the worker holds a batch", Duration::from_secs(20), async || {
        pending(&mut conn).await.values().any(|&n| n > 0)
    })
    .await;
    let in_batch: usize = pending(&mut conn).await.values().sum();
    signal(&worker.child, "TERM");
    let status = tokio::task::spawn_blocking(move || {
        let s = worker.child.wait();
        (worker, s)
    });
    let (_worker, exit) = tokio::time::timeout(Duration::from_secs(15), status).await.unwrap().unwrap();
    assert!(exit.unwrap().success(), "the worker exits cleanly on SIGTERM");
    assert!(pending(&mut conn).await.values().all(|&n| n == 0), "its batch was acknowledged");
    assert!(beats(&mut conn).await.is_empty(), "it left the registry");
    let left = xlen(&mut conn, JOBS).await;
    assert_eq!(left, 4 - in_batch, "exactly the jobs it had not taken are still queued");

    // Whatever it had not taken is served by the next worker.
    let _next = Lens::worker(&logs, "next", &redis, &[]);
    for (name, status, body, _) in load.await.unwrap() {
        assert_correct(name, status, &body);
    }
}

/// The compose file must be valid for `docker compose up --scale worker=4`
/// and the Kubernetes manifests must pass their schemas and hold what the
/// README promises. No Docker engine or cluster here: this checks the files,
/// not a deployment.
#[test]
fn deployment_files_are_well_formed() {
    let deploy = common::root().join("deploy");
    match Command::new("docker-compose")
        .arg("-f")
        .arg(deploy.join("docker-compose.yml"))
        .args(["config", "--services"])
        .output()
    {
        Ok(out) => {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let services = String::from_utf8_lossy(&out.stdout);
            // The `sentinel` profile adds a replica and three Sentinels.
            for s in ["redis", "api", "worker", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"] {
                assert!(services.lines().any(|l| l == s), "service {s} missing: {services}");
            }
        }
        Err(_) => {
            eprintln!("docker-compose not installed (scripts/system-deps test installs it): compose file not checked")
        }
    }
    // Every manifest against its schema: kubernetes-validate for the built-in
    // kinds, the KEDA CRD subset in deploy/k8s/schemas for the ScaledObject.
    let out = Command::new(common::root().join(".venv/bin/python"))
        .arg(common::root().join("tests/validate_manifests.py"))
        .arg(deploy.join("k8s"))
        .output()
        .expect("the project venv has kubernetes-validate (requirements-dev.txt, installed by make test)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let k8s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for kind in
        ["Deployment/lens-api", "Deployment/lens-worker", "Service/lens-api", "Deployment/redis", "Service/redis"]
    {
        assert!(k8s.get(kind).is_some(), "{kind} missing: {k8s}");
    }
    let api = &k8s["Deployment/lens-api"];
    assert_eq!(api["ready"], "/health/ready");
    assert_eq!(api["live"], "/health/live");
    assert_eq!(api["requests"], serde_json::json!(["cpu", "memory"]));
    assert!(api["env"].as_array().unwrap().contains(&"LENS_REDIS".into()));
    let worker = &k8s["Deployment/lens-worker"];
    assert_eq!(worker["command"][0], "worker");
    assert_eq!(worker["ready"], "/health/ready");
    assert_eq!(worker["live"], "/health/live");
    assert_eq!(worker["requests"], serde_json::json!(["cpu", "memory"]));
    assert!(worker["grace"].as_u64().unwrap() >= 10, "SIGTERM must leave time to finish a batch");
    let keda = &k8s["ScaledObject/lens-worker"];
    assert_eq!((&keda["target"], &keda["trigger"]), (&"lens-worker".into(), &"redis-streams".into()));
    assert_eq!(keda["stream"], lens::redis::keys::jobs("efficientnet-lite0", "1"), "the stream workers read");
    assert_eq!(keda["consumerGroup"], lens::redis::keys::GROUP);
    assert!(keda["lagCount"].as_str().unwrap().parse::<u32>().unwrap() >= 1);
    // The Redis high-availability option: a primary and a replica, three Sentinels.
    assert_eq!(k8s["StatefulSet/redis-ha"]["replicas"], 2);
    assert_eq!(k8s["StatefulSet/redis-sentinel"]["replicas"], 3);
    assert_eq!(k8s["ConfigMap/redis-ha"]["keys"], serde_json::json!(["redis.sh", "sentinel.sh"]));
    let hpa = &k8s["HorizontalPodAutoscaler/lens-api"];
    assert_eq!((&hpa["target"], &hpa["metrics"]), (&"lens-api".into(), &serde_json::json!(["cpu"])));
}

/// `dir` becomes a copy of the real model, appearing at once (copied beside
/// it, then renamed), as a new version does in a repository.
fn copy_model(dir: &Path) {
    let tmp = dir.with_file_name(".incoming");
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["model.onnx", "labels.txt", "model.toml"] {
        std::fs::copy(model_dir().join(f), tmp.join(f)).unwrap();
    }
    std::fs::rename(&tmp, dir).unwrap();
}

/// One v2 infer of photo `i` (byte-distinct): status, the label, the version
/// that answered, when it was sent and when it came back.
async fn infer_v2(client: &reqwest::Client, api: &str, i: usize) -> (u16, String, String, Instant, Instant) {
    use base64::Engine as _;
    let (name, bytes) = photo(i);
    let req = serde_json::json!({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                    "data": [base64::engine::general_purpose::STANDARD.encode(bytes)]}],
        "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
    });
    let sent = Instant::now();
    let r = client.post(format!("{api}/v2/models/efficientnet-lite0/infer")).json(&req).send().await.unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    let back = Instant::now();
    let top = body["outputs"][0]["data"][0].as_str().unwrap_or_default();
    let label = top.rsplit(':').next().unwrap_or_default();
    assert!(status != 200 || label == expected()[name].0, "{name}: {body}");
    (status, label.to_owned(), body["model_version"].as_str().unwrap_or_default().to_owned(), sent, back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_of_the_workers_to_a_new_version_loses_no_job() {
    let _serial = SERIAL.lock().await;
    let logs = log_dir("rolling_update");
    let redis = Redis::plain(false);
    let repo = tempfile::tempdir().unwrap();
    let version = |v: &str| repo.path().join("efficientnet-lite0").join(v);
    std::fs::create_dir_all(repo.path().join("efficientnet-lite0")).unwrap();
    copy_model(&version("1"));
    let (url, v1, v2) = (redis.url(), version("1"), version("2"));
    let (v1, v2, repo_dir) = (v1.to_str().unwrap(), v2.to_str().unwrap(), repo.path().to_str().unwrap());
    let data = logs.join("api-data");
    let api = Lens::spawn(
        &logs,
        "api",
        &[
            "serve",
            "--redis",
            &url,
            "--addr",
            "127.0.0.1:0",
            "--model",
            v1,
            "--models-dir",
            repo_dir,
            "--poll-models",
            "0.5",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    let old = Lens::spawn(&logs, "worker-v1", &["worker", "--redis", &url, "--model", v1, "--sessions", "1"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &api.url()).await;

    // A closed-loop load of four clients for the whole update.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (client, api, stop, next) = (client.clone(), api.url(), stop.clone(), next.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    seen.push(infer_v2(&client, &api, i).await);
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 1. Version 2 appears, with its worker; the API node swaps once it is live.
    copy_model(&version("2"));
    let new = Lens::spawn(&logs, "worker-v2", &["worker", "--redis", &url, "--model", v2, "--sessions", "1"]);
    assert!(new.banner.contains("efficientnet-lite0"), "{}", new.banner);
    let versions = async || {
        let r = client.post(format!("{}/v2/repository/index", api.url())).send().await.unwrap();
        let index: Vec<serde_json::Value> = r.json().await.unwrap();
        index
            .iter()
            .map(|e| (e["version"].as_str().unwrap().to_owned(), e["state"].as_str().unwrap().to_owned()))
            .collect::<Vec<_>>()
    };
    wait_until("version 2 serves", Duration::from_secs(60), async || {
        versions().await.contains(&("2".to_owned(), "READY".to_owned()))
    })
    .await;
    // 2. Version 1 drains: its requests are answered by its worker.
    wait_until("version 1 drained", Duration::from_secs(60), async || !versions().await.iter().any(|(v, _)| v == "1"))
        .await;
    // 3. Only then the old worker stops (SIGTERM: it finishes its batches).
    let mut old = old;
    signal(&old.child, "TERM");
    assert!(old.child.wait().unwrap().success());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);

    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    let failed: Vec<_> = all.iter().filter(|a| a.0 != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        all.len(),
        &failed[..failed.len().min(3)]
    );
    let first_v2_back = all.iter().filter(|a| a.2 == "2").map(|a| a.4).min().expect("no answer from version 2");
    let from_v1 = all.iter().filter(|a| a.2 == "1").count();
    assert!(from_v1 > 0, "no answer from version 1");
    assert!(
        !all.iter().any(|a| a.2 == "1" && a.3 > first_v2_back),
        "a request sent after version 2 answered was answered by version 1"
    );
    eprintln!("rolling update: {from_v1} answers from version 1, {} from version 2, none failed", all.len() - from_v1);
    let mut conn = redis.conn().await;
    for v in ["1", "2"] {
        assert_eq!(
            xlen(&mut conn, &lens::redis::keys::jobs("efficientnet-lite0", v)).await,
            0,
            "stream of version {v}"
        );
    }
    let live: Vec<String> = beats(&mut conn).await.into_values().map(|b| b.version).collect();
    assert_eq!(live, ["2"], "the old worker left the registry");
}
