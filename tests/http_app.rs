//! The HTTP layer in milliseconds: `http::app(state)` driven with
//! `tower::ServiceExt::oneshot`, with a fake classifier behind the real
//! queue, batcher and predictor (as axum's testing example does). This
//! covers the contract, the error map, limits, 429 and 504 without the real
//! model; tests/server.rs runs the real model behind a real socket.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use lens::batcher::BatchConfig;
use lens::engine::{Classifier, Engine, EngineError, Precision, Runtime, Scores};
use lens::feedback::{FeedbackStore, ImageStore};
use lens::http::auth::ApiKeys;
use lens::http::body::BodyBudget;
use lens::http::limits::{ClientLimits, LimitsConfig};
use lens::http::{AppState, Limits, Models};
use lens::job::ModelInput;
use lens::metrics::Metrics;
use lens::model::ModelSpec;
use lens::predictor::{ModelInfo, PredictorConfig};
use lens::serve::{LocalSettings, serve_locally};
use lens::sessions::SessionPool;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const LABELS: [&str; 3] = ["cat", "dog", "teapot"];

/// Answers "dog" with 0.8 for every image, after sleeping `delay_ms`.
struct Fake {
    delay_ms: Arc<AtomicU64>,
}

impl Classifier for Fake {
    fn classify(&mut self, inputs: &[&ModelInput]) -> Result<Vec<Scores>, EngineError> {
        std::thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)));
        Ok(inputs.iter().map(|_| vec![0.15, 0.8, 0.05]).collect())
    }
}

struct App {
    state: AppState,
    delay_ms: Arc<AtomicU64>,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl App {
    async fn call(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let res = lens::http::app(self.state.clone()).oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        (parts.status, parts.headers, bytes.to_vec())
    }

    async fn json(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
        let (status, headers, body) = self.call(req).await;
        (status, headers, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn spec() -> ModelSpec {
    let text = "name='fake'\nversion='1'\nlabels='labels.txt'\n\
        [input]\nname='x'\nlayout='NCHW'\nwidth=16\nheight=16\n\
        [preprocess]\nresize='center-crop'\ninterpolation='bilinear'\nmean=[0.0,0.0,0.0]\nstd=[1.0,1.0,1.0]\n\
        [output]\nname='y'\nkind='probabilities'\n";
    ModelSpec::parse(text, std::path::Path::new("model.toml")).unwrap()
}

/// The app with one fake session; `tune` adjusts the prediction settings.
fn app(tune: impl FnOnce(&mut PredictorConfig, &mut Limits)) -> App {
    let dir = tempfile::tempdir().unwrap();
    let delay_ms = Arc::new(AtomicU64::new(0));
    let pool = SessionPool::start(vec![Box::new(Fake { delay_ms: Arc::clone(&delay_ms) })], None).unwrap();
    let mut predictor = PredictorConfig {
        deadline: Duration::from_secs(5),
        max_pixels: 40_000_000,
        cache_entries: 0,
        max_pending: 64,
        queue_capacity: 16,
        decode_memory: 64 << 20,
    };
    let mut limits = Limits {
        body_bytes: 1 << 20,
        max_parts: 4,
        request_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        bodies: BodyBudget::new(4 << 20),
        trust_proxy: false,
    };
    tune(&mut predictor, &mut limits);
    let settings = LocalSettings {
        predictor,
        batch: BatchConfig { max_batch: 1, max_wait: Duration::ZERO },
        queue_capacity: 16,
        decode_threads: 1,
    };
    let runtime = Runtime { engine: Engine::OnnxRuntime, precision: Precision::Fp32 };
    let model = ModelInfo { spec: spec(), labels: Arc::new(LABELS.iter().map(|l| l.to_string()).collect()), runtime };
    let metrics = Arc::new(Metrics::new());
    let stop = CancellationToken::new();
    let (predictor, _batcher) = serve_locally(model, Arc::new(pool), &settings, Arc::clone(&metrics), stop.clone());
    let state = AppState {
        models: Arc::new(Models::new([("fake".to_owned(), predictor)].into(), "fake".to_owned())),
        repository: None,
        metrics,
        feedback: Arc::new(FeedbackStore::open(&dir.path().join("feedback")).unwrap()),
        feedback_mirror: None,
        uploads: ImageStore::open(&dir.path().join("uploads")).unwrap(),
        limits,
        keys: Arc::new(ApiKeys::new(&[], None, false).unwrap()),
        client_limits: Arc::new(
            ClientLimits::new(LimitsConfig {
                rate_per_sec: None,
                burst: None,
                max_inflight: None,
                max_clients: 1024,
                trust_proxy: false,
                feedback_per_minute: None,
            })
            .unwrap(),
        ),
    };
    App { state, delay_ms, stop, _dir: dir }
}

const BOUNDARY: &str = "lens-test-boundary";

/// A multipart body of `(field, filename, bytes)` parts.
fn multipart(parts: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, filename, bytes) in parts {
        body.extend(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"").as_bytes());
        if !filename.is_empty() {
            body.extend(format!("; filename=\"{filename}\"").as_bytes());
        }
        body.extend(b"\r\n\r\n");
        body.extend(*bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn post(uri: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(Body::from(body))
        .unwrap()
}

fn upload(name: &str, bytes: &[u8]) -> Request<Body> {
    post("/predict", multipart(&[("file", name, bytes)]))
}

fn assert_error_shape(body: &Value) {
    let obj = body.as_object().expect("a JSON object");
    assert_eq!(obj.len(), 4, "{body}");
    assert_eq!(body["success"], false);
    assert!(body["prediction"].is_null() && body["score"].is_null());
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
}

#[tokio::test]
async fn predict_answers_exactly_the_original_contract() {
    let app = app(|_, _| {});
    let (status, _, body) = app.json(upload("dog.jpeg", &common::fixture("dog.jpeg"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["prediction"], "dog");
    assert_eq!(body["score"], 0.8);

    let (status, _, body) =
        app.json(post("/predict?top_k=2", multipart(&[("file", "a.png", &common::fixture("coffee.png"))]))).await;
    assert_eq!(status, StatusCode::OK);
    let top: Vec<&str> = body["top_k"].as_array().unwrap().iter().map(|c| c["label"].as_str().unwrap()).collect();
    assert_eq!(top, ["dog", "cat"]);
    assert_eq!(body["model"], "fake");
}

#[tokio::test]
async fn every_bad_upload_gets_its_4xx_and_the_error_shape() {
    let app = app(|p, l| {
        p.max_pixels = 1_000_000;
        l.body_bytes = 64 * 1024;
    });
    let huge_png = common::png_header(100_000, 100_000);
    let many: Vec<(&str, &str, &[u8])> = (0..6).map(|_| ("extra", "", b"x".as_slice())).collect();
    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        ("no file", post("/predict", multipart(&[("other", "", b"x")])), StatusCode::BAD_REQUEST),
        ("empty file", upload("a.jpg", b""), StatusCode::BAD_REQUEST),
        ("bad extension", upload("a.exe", b"MZ"), StatusCode::BAD_REQUEST),
        ("text as jpg", upload("a.jpg", b"hello, not an image"), StatusCode::BAD_REQUEST),
        ("truncated jpeg", upload("a.jpg", &common::fixture("dog.jpeg")[..2000]), StatusCode::BAD_REQUEST),
        ("too many parts", post("/predict", multipart(&many)), StatusCode::BAD_REQUEST),
        ("not multipart", Request::post("/predict").body(Body::from("x")).unwrap(), StatusCode::BAD_REQUEST),
        ("body over the limit", upload("a.jpg", &vec![0xff; 100 * 1024]), StatusCode::PAYLOAD_TOO_LARGE),
        ("bomb by header", upload("a.png", &huge_png), StatusCode::PAYLOAD_TOO_LARGE),
    ];
    for (what, req, want) in cases {
        let (status, _, body) = app.json(req).await;
        assert_eq!(status, want, "{what}: {body}");
        assert_error_shape(&body);
    }
    let metrics = app.state.metrics.render();
    assert!(metrics.contains("lens_rejected_requests_total{reason=\"bad_image\"}"), "rejections are counted");
}

#[tokio::test]
async fn admission_refuses_with_429_and_retry_after_while_full() {
    let app = app(|p, _| p.max_pending = 1);
    app.delay_ms.store(400, Ordering::SeqCst);
    let dog = common::fixture("dog.jpeg");
    let first = app.call(upload("dog.jpeg", &dog));
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.json(upload("dog.jpeg", &dog)).await
    };
    let ((s1, _, _), (s2, headers, body)) = tokio::join!(first, second);
    assert_eq!(s1, StatusCode::OK);
    assert_eq!(s2, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(headers.get(header::RETRY_AFTER).is_some(), "429 carries Retry-After");
    assert_error_shape(&body);
}

#[tokio::test]
async fn misses_beyond_the_queue_capacity_are_refused_before_they_are_decoded() {
    let app = app(|p, _| p.queue_capacity = 2);
    app.delay_ms.store(300, Ordering::SeqCst);
    let dog = common::fixture("dog.jpeg");
    // Eight different photos at once: two places, so six refusals.
    let mut uploads = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (state, request) = (app.state.clone(), upload("dog.jpeg", &common::variant(&dog, i)));
        uploads.spawn(async move {
            let res = lens::http::app(state).oneshot(request).await.unwrap();
            let (parts, body) = res.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            (parts.status, parts.headers, serde_json::from_slice::<Value>(&body).unwrap())
        });
    }
    let answers = uploads.join_all().await;
    let codes: Vec<u16> = answers.iter().map(|(s, _, _)| s.as_u16()).collect();
    let answered = codes.iter().filter(|&&c| c == 200).count();
    assert_eq!(answered, 2, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 429).count(), 6, "{codes:?}");
    for (status, headers, body) in answers.iter().filter(|(s, _, _)| *s == StatusCode::TOO_MANY_REQUESTS) {
        assert!(headers.get(header::RETRY_AFTER).is_some(), "{status}: 429 carries Retry-After");
        assert_error_shape(body);
    }
    let metrics = app.state.metrics.render();
    let decoded = common::metric_in(&metrics, "lens_stage_duration_seconds_count{stage=\"decode\"}");
    assert_eq!(decoded, answered as f64, "only admitted misses are decoded");
    // The places come back: the next photo is answered.
    let (status, _, body) = app.json(upload("dog.jpeg", &common::variant(&dog, 99))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_job_past_its_deadline_is_a_504() {
    let app = app(|p, _| p.deadline = Duration::from_millis(150));
    app.delay_ms.store(600, Ordering::SeqCst);
    let (status, _, body) = app.json(upload("dog.jpeg", &common::fixture("dog.jpeg"))).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_error_shape(&body);
}

#[tokio::test]
async fn status_and_health_report_the_in_process_queue() {
    let app = app(|_, _| {});
    let (status, _, body) = app.json(Request::get("/api/status").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ready"], true);
    assert_eq!(body["workers"], 1);
    assert_eq!(body["model"], "fake");
    let (status, _, _) = app.call(Request::get("/health/ready").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = app.call(Request::get("/no/such/route").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_and_every_listed_route_answers() {
    let app = app(|_, _| {});
    let doc = lens::http::openapi();
    let mut listed = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [("GET", &item.get), ("POST", &item.post), ("PUT", &item.put), ("DELETE", &item.delete)] {
            if op.is_some() {
                listed.push(format!("{method} {path}"));
            }
        }
    }
    listed.sort();
    let mut want = vec![
        "GET /",
        "GET /api/labels",
        "GET /api/status",
        "GET /feedback",
        "GET /health/live",
        "GET /health/ready",
        "GET /metrics",
        "GET /static/{name}",
        "GET /uploads/{name}",
        "POST /",
        "POST /feedback",
        "POST /predict",
        "GET /review",
        "GET /review/images/{name}",
        "POST /review/{id}",
        "GET /v2",
        "GET /v2/health/live",
        "GET /v2/health/ready",
        "GET /v2/models/stats",
        "POST /v2/repository/index",
        "POST /v2/repository/models/{name}/load",
        "POST /v2/repository/models/{name}/unload",
    ];
    for prefix in ["/v2/models/{name}", "/v2/models/{name}/versions/{version}"] {
        for (method, suffix) in
            [("GET", ""), ("GET", "/ready"), ("GET", "/config"), ("GET", "/stats"), ("POST", "/infer")]
        {
            want.push(format!("{method} {prefix}{suffix}").leak());
        }
    }
    want.sort();
    assert_eq!(listed, want);
    // Each documented operation is served: the router knows the path and method.
    for entry in &listed {
        let (method, path) = entry.split_once(' ').unwrap();
        let uri = path.replace("{name}", "app.js").replace("{id}", "1").replace("{version}", "1");
        let req = Request::builder().method(method).uri(&uri).body(Body::empty()).unwrap();
        let (status, _, _) = app.call(req).await;
        assert!(status != StatusCode::METHOD_NOT_ALLOWED, "{entry} is documented but not routed");
        // Routed paths that answer 404 for a name that does not exist.
        let names_a_thing = uri.contains("app.js") || uri.starts_with("/review/1");
        if !names_a_thing {
            assert!(status != StatusCode::NOT_FOUND, "{entry} is documented but not routed");
        }
    }
    // The served document is the same one.
    let (status, headers, body) = app.json(Request::get("/openapi.json").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(body["paths"].as_object().unwrap().len(), doc.paths.paths.len());
    assert!(body["components"]["schemas"]["Prediction"].is_object(), "the /predict answer has a schema");
}

/// A multipart upload of `bytes` that declares its Content-Length, as a real client's does.
fn sized_upload(bytes: &[u8]) -> Request<Body> {
    let body = multipart(&[("file", "dog.jpeg", bytes)]);
    let mut req = post("/predict", body.clone());
    req.headers_mut().insert(header::CONTENT_LENGTH, body.len().into());
    req
}

#[tokio::test]
async fn bodies_wait_for_the_body_memory_budget_and_give_it_back() {
    let dog = common::fixture("dog.jpeg");
    let server = app(|_, l| l.bodies = BodyBudget::new(dog.len() as u64 * 2));
    let budget = Arc::clone(&server.state.limits.bodies);

    // An older body still being read holds the whole budget: the upload
    // waits for memory as its bytes arrive.
    let mut older = budget.share();
    older.grow(budget.total_bytes()).await;
    let waited = tokio::time::timeout(Duration::from_millis(300), server.call(sized_upload(&dog))).await;
    assert!(waited.is_err(), "an upload must wait while the body budget is spent");
    drop(older);
    let (status, _, _) = server.call(sized_upload(&dog)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(budget.used_bytes(), 0, "an answered request gives its memory back");

    // The oldest body being read never waits, even past the whole budget.
    let small = app(|_, l| l.bodies = BodyBudget::new(1024));
    let (status, _, _) = small.call(sized_upload(&dog)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_socket_reads_bodies_past_the_read_buffer_and_refuses_oversized_heads() {
    let server = app(|_, _| {});
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let limits = lens::http::server::ConnectionLimits::default();
    let serving = tokio::spawn(lens::http::serve(listener, server.state.clone(), limits, async move {
        stopped.cancelled().await;
    }));
    let client = reqwest::Client::new();

    // coffee.png is many times the per-connection read buffer: it arrives in
    // several reads and must still be classified.
    let coffee = common::fixture("coffee.png");
    assert!(coffee.len() > 8 * lens::http::server::READ_BUFFER_BYTES);
    let form =
        reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(coffee).file_name("coffee.png"));
    let res = client.post(format!("{url}/predict")).multipart(form).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["prediction"], "dog");

    // A request head that does not fit the buffer is refused, and the server
    // goes on answering.
    let huge = "a".repeat(2 * lens::http::server::READ_BUFFER_BYTES);
    let res = client.get(format!("{url}/health/ready")).header("x-padding", huge).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let res = client.get(format!("{url}/health/ready")).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);

    // Shutdown closes the kept-alive connections and returns.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("serve returns after shutdown")
        .unwrap()
        .unwrap();
}
