//! OpenTelemetry traces, end to end: real `lens` processes export over OTLP
//! to a real receiver (tests/otlp_receiver.py, which decodes what arrives
//! with `opentelemetry-proto`), and the tests read what it received.
//!
//! - A caller's `traceparent` is continued, over HTTP and gRPC; the answer
//!   names the trace in `x-trace-id`, and so does the request's log line.
//! - In-process and across a real redis-server with a worker process, one
//!   request is one trace holding the spans of every stage, from both
//!   processes, with the right parents; the batch span links to it.
//! - With no variables set nothing is exported and no connection is tried.
//! - A dead or slow collector fails no request; what it cannot take is
//!   dropped and counted.
//!
//! Tests run one at a time; logs go to `target/tmp/traces/<test>/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::processes::{LensProcess, RedisServer};
use serde_json::Value;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The job stream of the tests' model, and a worker's span of one job there,
/// named as the messaging conventions say.
macro_rules! stream {
    () => {
        "lens:jobs:efficientnet-lite0:1"
    };
}
const STREAM: &str = stream!();
const JOB: &str = concat!("process ", stream!());

/// The caller's context: its trace and its own span.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str) -> String {
    format!("00-{trace}-{CALLER_SPAN}-01")
}

fn log_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("traces").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn model_dir() -> String {
    common::root().join("models/efficientnet-lite0").to_str().unwrap().to_owned()
}

/// `lens serve` on the in-process queue, its data under `dir`, with `setup`
/// setting its environment.
fn serve(dir: &Path, name: &str, setup: impl FnOnce(&mut Command)) -> LensProcess {
    let data = dir.join(format!("{name}-data"));
    let args = ["serve", "--addr", "127.0.0.1:0", "--model", &model_dir(), "--data-dir", data.to_str().unwrap()];
    LensProcess::spawn_with(dir, name, &args, setup)
}

/// tests/otlp_receiver.py, writing what it receives to `out`.
struct Receiver {
    child: Child,
    port: u16,
    out: PathBuf,
}

impl Receiver {
    fn start(dir: &Path, extra: &[&str]) -> Receiver {
        let out = dir.join("received.jsonl");
        let mut child = Command::new(common::root().join(".venv/bin/python"))
            .arg(common::root().join("tests/otlp_receiver.py"))
            .arg(&out)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let port = line.trim().strip_prefix("listening on ").and_then(|p| p.parse().ok());
        Receiver { child, port: port.unwrap_or_else(|| panic!("receiver did not start: {line:?}")), out }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("span_id").is_some())
            .collect()
    }

    /// Waits until the spans of `trace` include every name of `names`.
    async fn trace(&self, trace: &str, names: &[&str]) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<Value> = self.spans().into_iter().filter(|s| s["trace_id"] == trace).collect();
            let have: Vec<&str> = spans.iter().filter_map(|s| s["name"].as_str()).collect();
            if names.iter().all(|n| have.contains(n)) {
                return spans;
            }
            assert!(Instant::now() < deadline, "trace {trace} has only {have:?}; wanted {names:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The one span named `name`, by name.
fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    let found: Vec<&Value> = spans.iter().filter(|s| s["name"] == name).collect();
    assert_eq!(found.len(), 1, "one {name:?} span expected: {spans:#?}");
    found[0]
}

/// Asserts that `child`'s parent is `parent`.
fn under(spans: &[Value], child: &str, parent: &str) {
    let (c, p) = (named(spans, child), named(spans, parent));
    assert_eq!(c["parent_span_id"], p["span_id"], "{child} should be under {parent}: {spans:#?}");
}

/// Exports every 100 ms to `endpoint`, so that tests wait little.
fn exporting_to(endpoint: &str) -> impl FnOnce(&mut Command) + '_ {
    move |cmd| {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint).env("OTEL_BSP_SCHEDULE_DELAY", "100");
    }
}

async fn predict_traced(url: &str, trace: &str) -> reqwest::Response {
    let form = common::form("dog.jpeg", common::fixture("dog.jpeg"));
    reqwest::Client::new()
        .post(format!("{url}/predict"))
        .header("traceparent", traceparent(trace))
        .multipart(form)
        .send()
        .await
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_callers_trace_is_continued_through_every_stage_in_process() {
    let _serial = SERIAL.lock().await;
    let dir = log_dir("in_process");
    let receiver = Receiver::start(&dir, &[]);
    let lens = serve(&dir, "serve", exporting_to(&receiver.endpoint()));
    let url = lens.url();

    let r = predict_traced(&url, TRACE).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-trace-id").as_deref(), Some(TRACE), "the answer names the caller's trace");
    let stages = ["POST /predict", "read body", "cache lookup", "compute", "decode", "queue", "inference", "reply"];
    let spans = receiver.trace(TRACE, &stages).await;
    let server = named(&spans, "POST /predict");
    assert_eq!(server["parent_span_id"], CALLER_SPAN, "the server span continues the caller's span");
    assert_eq!(server["kind"], "SERVER");
    assert_eq!(server["attributes"]["http.request.method"], "POST");
    assert_eq!(server["attributes"]["http.route"], "/predict");
    assert_eq!(server["attributes"]["http.response.status_code"], 200);
    assert_eq!(server["resource"]["service.name"], "lens");
    for (child, parent) in [
        ("read body", "POST /predict"),
        ("cache lookup", "POST /predict"),
        ("compute", "POST /predict"),
        ("decode", "compute"),
        ("queue", "compute"),
        ("inference", "queue"),
        ("reply", "POST /predict"),
    ] {
        under(&spans, child, parent);
    }
    let inference = named(&spans, "inference");
    assert_eq!(inference["attributes"]["lens.batch.size"], 1);
    assert!(inference["attributes"]["lens.engine"].as_str().is_some_and(|e| !e.is_empty()), "{inference}");
    assert!(inference["attributes"]["lens.precision"].as_str().is_some_and(|e| !e.is_empty()), "{inference}");
    // The batch is a trace of its own that links to the request's queue span,
    // and the inference span links back to it.
    let queue = named(&spans, "queue");
    let all = receiver.spans();
    let batch = all
        .iter()
        .find(|s| {
            s["name"] == "batch" && s["links"].as_array().unwrap().iter().any(|l| l["span_id"] == queue["span_id"])
        })
        .unwrap_or_else(|| panic!("no batch span links to the request: {all:#?}"));
    assert_ne!(batch["trace_id"], TRACE);
    assert_eq!(inference["links"][0]["span_id"], batch["span_id"]);
    for part in ["batch assembly", "engine run"] {
        let s = all.iter().find(|s| s["name"] == part && s["parent_span_id"] == batch["span_id"]);
        assert!(s.is_some(), "no {part} span under the batch");
    }
    // The identical upload again is a cache hit: its trace has no compute.
    let again = "0af7651916cd43dd8448eb211c80319c";
    assert_eq!(predict_traced(&url, again).await.status(), 200);
    let spans = receiver.trace(again, &["POST /predict", "cache lookup"]).await;
    assert_eq!(named(&spans, "cache lookup")["attributes"]["lens.cache.hit"], true);
    assert!(spans.iter().all(|s| s["name"] != "compute"), "{spans:#?}");

    // A refused request's span says why, and a request with no traceparent
    // starts a trace of its own, named in the answer.
    let r = reqwest::Client::new().post(format!("{url}/predict")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let own = header(&r, "x-trace-id").expect("every answer names its trace");
    assert_eq!(own.len(), 32);
    assert_ne!(own, TRACE);
    let spans = receiver.trace(&own, &["POST /predict"]).await;
    let server = named(&spans, "POST /predict");
    assert_eq!(server["parent_span_id"], "", "no caller, no parent");
    assert_eq!(server["attributes"]["http.response.status_code"], 400);

    // The log line of the first request carries its trace id.
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    let line = log.lines().find(|l| l.contains("route=\"/predict\"") && l.contains(&format!("trace_id=\"{TRACE}\"")));
    assert!(line.is_some(), "no request log line with the trace id:\n{log}");
}

#[tokio::test]
async fn admission_coalescing_and_shedding_show_in_the_traces() {
    let _serial = SERIAL.lock().await;
    let dir = log_dir("admission");
    let receiver = Receiver::start(&dir, &[]);
    const KEY: &str = "trace-test-key-0123456789";
    // A lone job waits 400 ms for company, so that an identical upload sent
    // meanwhile finds its computation in flight; the third request in a row
    // exceeds the burst of two.
    let args =
        ["--api-key", KEY, "--rate-limit", "0.01", "--rate-burst", "2", "--max-batch", "4", "--max-wait-ms", "400"];
    let lens = serve(&dir, "serve", |cmd| {
        exporting_to(&receiver.endpoint())(cmd);
        cmd.args(args);
    });
    let url = lens.url();
    let send = |trace: &'static str| {
        let form = common::form("dog.jpeg", common::fixture("dog.jpeg"));
        reqwest::Client::new()
            .post(format!("{url}/predict"))
            .bearer_auth(KEY)
            .header("traceparent", traceparent(trace))
            .multipart(form)
            .send()
    };
    let (first, second) = ("11111111111111111111111111111111", "22222222222222222222222222222222");
    let (a, b) = tokio::join!(send(first), send(second));
    assert_eq!((a.unwrap().status().as_u16(), b.unwrap().status().as_u16()), (200, 200));
    let one = receiver.trace(first, &["POST /predict", "auth", "client limits", "reply"]).await;
    let two = receiver.trace(second, &["POST /predict", "auth", "client limits", "reply"]).await;
    for spans in [&one, &two] {
        under(spans, "auth", "POST /predict");
        under(spans, "client limits", "POST /predict");
    }
    // One computed, the other waited for it, and links to its computation.
    let (leader, follower) = if one.iter().any(|s| s["name"] == "compute") { (&one, &two) } else { (&two, &one) };
    let compute = named(leader, "compute");
    let coalesced = named(follower, "coalesced");
    assert!(follower.iter().all(|s| s["name"] != "compute"), "{follower:#?}");
    assert_eq!(coalesced["links"][0]["span_id"], compute["span_id"], "{coalesced}");
    assert_eq!(coalesced["links"][0]["trace_id"], compute["trace_id"]);

    let shed = "33333333333333333333333333333333";
    assert_eq!(send(shed).await.unwrap().status(), 429);
    let spans = receiver.trace(shed, &["POST /predict"]).await;
    let server = named(&spans, "POST /predict");
    assert_eq!(server["attributes"]["http.response.status_code"], 429);
    assert_eq!(server["attributes"]["lens.shed_reason"], "rate_limited");
    assert_eq!(server["status"], "UNSET", "a refusal is the client's, not a server error");
    let everything = std::fs::read_to_string(&receiver.out).unwrap();
    assert!(!everything.contains(KEY), "no span holds a key");
}

#[tokio::test]
async fn a_grpc_call_continues_its_metadatas_trace() {
    let _serial = SERIAL.lock().await;
    let dir = log_dir("grpc");
    let receiver = Receiver::start(&dir, &[]);
    let lens = serve(&dir, "serve", exporting_to(&receiver.endpoint()));
    let mut client = common::grpc_client(lens.grpc.as_deref().unwrap()).await;
    let mut request = tonic::Request::new(common::grpc_images(&[common::fixture("dog.jpeg")]));
    request.metadata_mut().insert("traceparent", traceparent(TRACE).parse().unwrap());
    let response = client.model_infer(request).await.unwrap();
    assert_eq!(response.metadata().get("x-trace-id").unwrap().to_str().unwrap(), TRACE);
    let name = "inference.GRPCInferenceService/ModelInfer";
    let spans = receiver.trace(TRACE, &[name, "decode", "inference", "reply"]).await;
    let server = named(&spans, name);
    assert_eq!(server["parent_span_id"], CALLER_SPAN);
    assert_eq!(server["kind"], "SERVER");
    assert_eq!(server["attributes"]["rpc.system"], "grpc");
    assert_eq!(server["attributes"]["rpc.service"], "inference.GRPCInferenceService");
    assert_eq!(server["attributes"]["rpc.method"], "ModelInfer");
    assert_eq!(server["attributes"]["rpc.grpc.status_code"], 0);
    under(&spans, "reply", name);
}

/// An API node (`api_extra` added) and one worker on `redis`, both
/// exporting to `receiver`; ready once this returns.
async fn traced_cluster(
    dir: &Path,
    receiver: &Receiver,
    redis: &RedisServer,
    api_extra: &[&str],
) -> (LensProcess, LensProcess) {
    let (url, model, data) = (redis.url(), model_dir(), dir.join("data"));
    let mut api_args = vec!["serve", "--redis", &url, "--addr", "127.0.0.1:0", "--model", &model];
    api_args.extend(["--data-dir", data.to_str().unwrap()]);
    api_args.extend(api_extra);
    let api = LensProcess::spawn_with(dir, "api", &api_args, exporting_to(&receiver.endpoint()));
    let worker_args = ["worker", "--redis", &url, "--model", &model, "--sessions", "1"];
    let worker = LensProcess::spawn_with(dir, "worker", &worker_args, exporting_to(&receiver.endpoint()));
    common::wait_ready(&api.url(), Duration::from_secs(60), dir).await;
    (api, worker)
}

#[tokio::test]
async fn a_redis_job_carries_its_trace_to_the_worker() {
    let _serial = SERIAL.lock().await;
    let dir = log_dir("redis");
    let receiver = Receiver::start(&dir, &[]);
    let redis = RedisServer::plain(false);
    let (api, _worker) = traced_cluster(&dir, &receiver, &redis, &["--log-json"]).await;

    let r = predict_traced(&api.url(), TRACE).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-trace-id").as_deref(), Some(TRACE));
    let spans = receiver.trace(TRACE, &["POST /predict", "queue", "XADD", JOB, "inference"]).await;
    let role = |name: &str| named(&spans, name)["resource"]["lens.role"].as_str().unwrap().to_owned();
    assert_eq!(role("POST /predict"), "serve");
    assert_eq!(role("XADD"), "serve");
    assert_eq!(role(JOB), "worker", "the worker's spans join the request's trace");
    assert_eq!(role("inference"), "worker");
    under(&spans, "XADD", "queue");
    under(&spans, JOB, "queue");
    under(&spans, "inference", JOB);
    let job = named(&spans, JOB);
    assert_eq!(job["kind"], "CONSUMER");
    assert_eq!(job["attributes"]["messaging.system"], "redis");
    let xadd = named(&spans, "XADD");
    assert_eq!(xadd["kind"], "CLIENT");
    let attrs = serde_json::to_string(&spans).unwrap();
    assert!(!attrs.contains("redis://"), "no span holds a Redis URL: {attrs}");
    // The worker's batch links to the job it ran.
    let all = receiver.spans();
    let linked = all.iter().any(|s| {
        s["name"] == "batch"
            && s["resource"]["lens.role"] == "worker"
            && s["links"].as_array().unwrap().iter().any(|l| l["span_id"] == job["span_id"])
    });
    assert!(linked, "no worker batch span links to the job");

    // --log-json: the request's line carries the trace id.
    let log = std::fs::read_to_string(dir.join("api.log")).unwrap();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == "request" && v["fields"]["route"] == "/predict");
    let line = line.unwrap_or_else(|| panic!("no JSON request line:\n{log}"));
    assert_eq!(line["fields"]["trace_id"], TRACE, "{line}");
}

#[tokio::test]
async fn without_the_variables_nothing_is_exported_and_no_connection_is_tried() {
    let _serial = SERIAL.lock().await;
    let dir = log_dir("off");
    // The SDK's default endpoint: if Lens tried it, it would connect here.
    let Ok(default_port) = std::net::TcpListener::bind("127.0.0.1:4318") else {
        panic!("port 4318 is taken on this machine; this test needs it free");
    };
    default_port.set_nonblocking(true).unwrap();
    let lens = serve(&dir, "serve", |cmd| {
        cmd.env("OTEL_SERVICE_NAME", "lens-off").env("OTEL_BSP_SCHEDULE_DELAY", "50");
    });
    let r = predict_traced(&lens.url(), TRACE).await;
    assert_eq!(r.status(), 200);
    // The caller's trace id is still named, for its own logs to join.
    assert_eq!(header(&r, "x-trace-id").as_deref(), Some(TRACE));
    let r = reqwest::Client::new().get(format!("{}/health/live", lens.url())).send().await.unwrap();
    assert_eq!(header(&r, "x-trace-id"), None, "no trace, no header");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(default_port.accept().is_err(), "Lens connected to the default OTLP endpoint");
    let metrics = reqwest::get(format!("{}/metrics", lens.url())).await.unwrap().text().await.unwrap();
    assert_eq!(common::metric_in(&metrics, "lens_trace_spans_exported_total"), 0.0);
}

/// `lens_trace_spans_dropped_total{reason=...}` as `url` reports it.
async fn dropped(url: &str, reason: &str) -> f64 {
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    common::metric_in(&metrics, &format!("lens_trace_spans_dropped_total{{reason=\"{reason}\"}}"))
}

/// 40 distinct photos, one after another; every answer must be 200.
async fn forty_requests(url: &str) {
    let dog = common::fixture("dog.jpeg");
    for i in 0..40 {
        let form = common::form("dog.jpeg", common::variant(&dog, i));
        let r = reqwest::Client::new().post(format!("{url}/predict")).multipart(form).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
}

#[tokio::test]
async fn a_dead_or_slow_collector_fails_no_request() {
    let _serial = SERIAL.lock().await;
    let dir = log_dir("dead_collector");

    // Nothing listens at the endpoint: every export fails, and is counted.
    let nobody = format!("http://127.0.0.1:{}", common::processes::free_port());
    let lens = serve(&dir, "dead", exporting_to(&nobody));
    forty_requests(&lens.url()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while dropped(&lens.url(), "export_failed").await == 0.0 {
        assert!(Instant::now() < deadline, "no failed export counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(lens);

    // A collector that takes 5 s per export, with room for 16 spans: the
    // queue fills, spans are dropped and counted, requests go on.
    let receiver = Receiver::start(&dir, &["--delay", "5"]);
    let lens = serve(&dir, "slow", |cmd| {
        exporting_to(&receiver.endpoint())(cmd);
        cmd.env("OTEL_BSP_MAX_QUEUE_SIZE", "16");
    });
    let started = Instant::now();
    forty_requests(&lens.url()).await;
    assert!(started.elapsed() < Duration::from_secs(60), "requests waited for the collector");
    assert!(dropped(&lens.url(), "queue_full").await > 0.0, "a full queue drops spans and counts them");
}

#[tokio::test]
async fn hostile_trace_headers_are_ignored_or_bounded() {
    let _serial = SERIAL.lock().await;
    let dir = log_dir("hostile");
    let receiver = Receiver::start(&dir, &[]);
    let lens = serve(&dir, "serve", exporting_to(&receiver.endpoint()));
    let url = lens.url();
    let valid = "5bf92f3577b34da6a3ce929d0e0e4736";
    let huge_state = (0..1500).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",");
    let text = |s: String| reqwest::header::HeaderValue::from_str(&s).unwrap();
    let cases = vec![
        (text("garbage".into()), None, false),
        (text(format!("00-{}-{CALLER_SPAN}-01", "0".repeat(32))), None, false),
        (text(format!("00-{valid}-{}-01", "0".repeat(16))), None, false),
        (text(format!("00-{valid}-{CALLER_SPAN}-01-{}", "x".repeat(8000))), None, false),
        (reqwest::header::HeaderValue::from_bytes(&[0xff; 55]).unwrap(), None, false),
        (text(traceparent(valid)), Some(huge_state), true),
    ];
    for (i, (parent, state, continued)) in cases.into_iter().enumerate() {
        let mut r = reqwest::Client::new().get(format!("{url}/api/labels")).header("traceparent", parent);
        if let Some(state) = &state {
            r = r.header("tracestate", state.as_str());
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 200, "case {i}");
        let id = header(&r, "x-trace-id").unwrap_or_else(|| panic!("case {i}: no trace id"));
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "case {i}: {id}");
        assert_eq!(id == valid, continued, "case {i}: {id}");
    }
    let spans = receiver.trace(valid, &["GET /api/labels"]).await;
    assert_eq!(named(&spans, "GET /api/labels")["parent_span_id"], CALLER_SPAN);
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    assert_eq!(common::metric_in(&metrics, "lens_trace_spans_dropped_total"), 0.0);
}

/// The `traceparent` field and id of every entry on the job stream.
async fn job_entries(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, Option<String>)> {
    let reply: redis::streams::StreamRangeReply =
        redis::cmd("XRANGE").arg(STREAM).arg("-").arg("+").query_async(conn).await.unwrap();
    reply.ids.into_iter().map(|e| (e.id.clone(), e.get::<String>("traceparent"))).collect()
}

#[tokio::test]
async fn a_job_redis_lost_is_put_back_with_its_trace() {
    let _serial = SERIAL.lock().await;
    let dir = log_dir("readded");
    let receiver = Receiver::start(&dir, &[]);
    let redis = RedisServer::plain(false);
    let (api, worker) = traced_cluster(&dir, &receiver, &redis, &[]).await;
    let mut conn = redis::Client::open(redis.url().as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();

    // The worker stands still while its job is on the stream, then Redis
    // loses the entry; the API node puts it back.
    common::processes::signal(&worker.child, "STOP");
    let asked = tokio::spawn({
        let url = api.url();
        async move { predict_traced(&url, TRACE).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let (first, context) = loop {
        if let Some(entry) = job_entries(&mut conn).await.pop() {
            break entry;
        }
        assert!(Instant::now() < deadline, "the job never reached the stream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let context = context.expect("the job carries its request's traceparent");
    assert!(context.contains(TRACE), "{context}");
    let _: i64 = redis::cmd("XDEL").arg(STREAM).arg(&first).query_async(&mut conn).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let again = loop {
        if let Some(entry) = job_entries(&mut conn).await.into_iter().find(|(id, _)| *id != first) {
            break entry;
        }
        assert!(Instant::now() < deadline, "the lost job was not put back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(again.1.as_deref(), Some(context.as_str()), "the job put back carries the same context");
    common::processes::signal(&worker.child, "CONT");

    let r = asked.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-trace-id").as_deref(), Some(TRACE));
    let spans = receiver.trace(TRACE, &["POST /predict", "queue", JOB, "inference"]).await;
    for job in spans.iter().filter(|s| s["name"] == JOB) {
        assert_eq!(job["parent_span_id"], named(&spans, "queue")["span_id"], "the worker's job joins the request");
    }
    let log = std::fs::read_to_string(dir.join("api.log")).unwrap();
    assert!(log.contains("enqueued them again"), "the node did not re-enqueue the job:\n{log}");
}
