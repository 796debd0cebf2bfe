//! `lens serve` end to end: the original service's contract, coalescing,
//! hostile input, overload, deadlines, shutdown and feedback durability.
//! A real server on port 0 with the real model.

mod common;

use std::time::{Duration, Instant};

use common::{Server, fixture, form, predict, variant};
use serde_json::Value;

const PHOTOS: [(&str, &[&str]); 4] = [
    ("dog.jpeg", &["Eskimo_dog"]),
    ("coffee.png", &["espresso"]),
    ("chelsea.png", &["tabby", "tiger_cat", "Egyptian_cat"]),
    ("grace_hopper.jpg", &["academic_gown", "military_uniform", "mortarboard"]),
];

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_keeps_the_original_contract() {
    let s = Server::start(&[]).await;
    let c = reqwest::Client::new();

    let (status, body) = predict(&c, &s.url, "dog.jpeg", fixture("dog.jpeg")).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&body), ["prediction", "score", "success"], "exactly three keys");
    assert_eq!(body["success"], true);
    assert_eq!(body["prediction"], "Eskimo_dog");
    let score = body["score"].as_f64().unwrap();
    assert!(score > 0.5 && score < 1.0);
    assert_eq!((score * 10_000.0).round() / 10_000.0, score, "rounded to 4 decimals");

    // Extras only when asked.
    let r = c.post(format!("{}/predict?top_k=5", s.url)).multipart(form("DOG.JPG", fixture("dog.jpeg")));
    let body: Value = r.send().await.unwrap().json().await.unwrap();
    assert_eq!(body["top_k"].as_array().unwrap().len(), 5);
    assert_eq!(body["top_k"][0]["label"], "Eskimo_dog");
    assert_eq!(body["top_k"][0]["index"], 248);
    assert_eq!(body["model"], "efficientnet-lite0");
    assert_eq!(body["cached"], true, "same bytes as before: answered from the cache");

    // Every refusal: 400 with the four-key error body.
    type Case<'a> = (&'a str, Option<(&'a str, Vec<u8>)>);
    let cases: Vec<Case> = vec![
        ("no file", None),
        ("empty file", Some(("empty.jpg", vec![]))),
        ("bad extension", Some(("dog.bmp", fixture("dog.jpeg")))),
        ("no extension", Some(("dog", fixture("dog.jpeg")))),
        ("undecodable", Some(("noise.png", vec![0x42; 4096]))),
    ];
    for (what, file) in cases {
        let req = c.post(format!("{}/predict", s.url));
        let req = match file {
            Some((name, bytes)) => req.multipart(form(name, bytes)),
            None => req.multipart(reqwest::multipart::Form::new().text("other", "x")),
        };
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 400, "{what}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(keys(&body), ["error", "prediction", "score", "success"], "{what}");
        assert_eq!(body["success"], false);
        assert!(body["prediction"].is_null() && body["score"].is_null());
        assert!(!body["error"].as_str().unwrap().is_empty());
    }
    assert_eq!(c.get(format!("{}/predict", s.url)).send().await.unwrap().status(), 405);
    assert!(s.metric("lens_rejected_requests_total").await >= 5.0, "refusals are counted");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_page_and_feedback_work_without_javascript() {
    let s = Server::start(&[]).await;
    let c = reqwest::Client::new();
    let page = c.get(&s.url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    assert!(page.text().await.unwrap().contains("enctype=\"multipart/form-data\""));

    let r = c.post(&s.url).multipart(form("dog.jpeg", fixture("dog.jpeg"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("Predicted class: <strong>Eskimo_dog</strong>"), "{html}");
    assert!(html.contains("Score: 0."));
    assert!(html.contains("Report incorrect answer"));
    let img = html.split("/uploads/").nth(1).unwrap().split('"').next().unwrap();
    let shown = c.get(format!("{}/uploads/{img}", s.url)).send().await.unwrap();
    assert_eq!(shown.status(), 200);
    assert_eq!(shown.bytes().await.unwrap().as_ref(), fixture("dog.jpeg").as_slice());

    // No file: the form again, with a message, as a 200.
    let r = c.post(&s.url).multipart(reqwest::multipart::Form::new().text("x", "y")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("No file selected"));

    // The original's hidden `report` field, and the structured form.
    let report =
        format!(r#"{{"sha256":"{}","prediction":"Eskimo_dog","score":0.64,"filename":"dog.jpeg"}}"#, &img[..64]);
    let r =
        c.post(format!("{}/feedback", s.url)).form(&[("report", report.as_str()), ("correct_label", "Siberian_husky")]);
    assert_eq!(r.send().await.unwrap().status(), 200);
    let r = c.post(format!("{}/feedback", s.url)).header("accept", "application/json").form(&[
        ("predicted_label", "espresso"),
        ("score", "0.9"),
        ("correct_label", "cup"),
    ]);
    let body: Value = r.send().await.unwrap().json().await.unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(c.get(format!("{}/feedback", s.url)).send().await.unwrap().status(), 200);
    let bad = c.post(format!("{}/feedback", s.url)).form(&[("nothing", "here")]).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    // Durable: the reports survive a restart of the server.
    let dir = s.data_dir.clone();
    let keep = tempfile::tempdir().unwrap();
    copy_dir(&dir, keep.path());
    s.stop().await;
    let s = Server::start_in(keep.path().to_path_buf(), &[]).await;
    let store = lens::feedback::FeedbackStore::open(&keep.path().join("feedback")).unwrap();
    let rows = store.list().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].2.correct_label.as_deref(), Some("Siberian_husky"));
    assert_eq!(rows[0].2.predicted_label.as_deref(), Some("Eskimo_dog"));
    assert!(rows[0].2.image_file.is_some(), "the reported image is kept");
    let out = tempfile::tempdir().unwrap();
    assert_eq!(store.export(out.path(), lens::feedback::ExportFormat::Csv, &[]).unwrap().written, 2);
    assert!(std::fs::read_to_string(out.path().join("feedback.csv")).unwrap().contains("Siberian_husky"));
    s.stop().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_identical_uploads_cost_one_inference() {
    let s = Server::start(&[]).await;
    let c = reqwest::Client::new();
    let dog = fixture("dog.jpeg");
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (c, url, dog) = (c.clone(), s.url.clone(), dog.clone());
            tokio::spawn(async move { predict(&c, &url, "dog.jpeg", dog).await })
        })
        .collect();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["prediction"], "Eskimo_dog");
    }
    assert_eq!(s.metric("lens_inferred_images_total").await, 1.0);
    let hits = s.metric("lens_cache_hits_total").await;
    let coalesced = s.metric("lens_coalesced_requests_total").await;
    assert_eq!(hits + coalesced, 199.0, "hits {hits} + coalesced {coalesced}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_distinct_uploads_are_all_answered_correctly() {
    let s = Server::start(&[]).await;
    let c = reqwest::Client::new();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (name, expected) = PHOTOS[i % PHOTOS.len()];
            let bytes = variant(&fixture(name), i);
            let (c, url) = (c.clone(), s.url.clone());
            tokio::spawn(async move { (expected, predict(&c, &url, name, bytes).await) })
        })
        .collect();
    for t in tasks {
        let (expected, (status, body)) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        let label = body["prediction"].as_str().unwrap();
        assert!(expected.contains(&label), "got {label}, expected one of {expected:?}");
    }
    assert_eq!(s.metric("lens_inferred_images_total").await, 200.0, "distinct bytes are each inferred");
    s.stop().await;
}

/// A PNG whose header declares `w x h` (valid signature and IHDR CRC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_get_4xx_and_the_server_stays_healthy() {
    let s = Server::start(&["--body-limit", "10000000", "--max-parts", "16"]).await;
    let c = reqwest::Client::new();
    let dog = fixture("dog.jpeg");
    let mut seed = 0x2545_F491u64;
    let random: Vec<u8> = (0..5000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("truncated JPEG", "dog.jpg", dog[..dog.len() / 2].to_vec(), 400),
        ("zero bytes", "zero.jpg", vec![], 400),
        ("random bytes", "random.jpg", random, 400),
        ("decompression bomb", "bomb.png", common::png_header(100_000, 100_000), 413),
        ("text file", "notes.txt", b"hello, world\n".to_vec(), 400),
        ("text named .jpg", "notes.jpg", b"hello, world\n".to_vec(), 400),
        ("path traversal", "../../../etc/passwd", b"root:x:0:0".to_vec(), 400),
    ];
    for (what, name, bytes, want) in cases {
        let (status, body) = predict(&c, &s.url, name, bytes).await;
        assert_eq!(status, want, "{what}: {body}");
        assert_eq!(body["success"], false, "{what}");
        assert!(body["error"].as_str().is_some(), "{what}");
    }
    // A traversal filename on a real image is only a name: answered, and
    // nothing is written outside the data directory.
    let (status, _) = predict(&c, &s.url, "../../../tmp/lens-escape.jpg", dog.clone()).await;
    assert_eq!(status, 200);
    assert!(!std::path::Path::new("/tmp/lens-escape.jpg").exists());

    // A 50 MB body: 413 without reading it all.
    let big = vec![0u8; 50 * 1024 * 1024];
    let r = c.post(format!("{}/predict", s.url)).multipart(form("big.jpg", big)).send().await;
    match r {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request() || e.is_body(), "connection closed early is acceptable: {e}"),
    }
    // 1000 multipart parts: 400.
    let mut many = reqwest::multipart::Form::new();
    for i in 0..1000 {
        many = many.text(format!("f{i}"), "x");
    }
    let r = c.post(format!("{}/predict", s.url)).multipart(many).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("too many multipart parts"));

    // Still healthy, still right.
    assert_eq!(c.get(format!("{}/health/ready", s.url)).send().await.unwrap().status(), 200);
    let (status, body) = predict(&c, &s.url, "dog.jpeg", variant(&dog, 7)).await;
    assert_eq!((status, body["prediction"].as_str()), (200, Some("Eskimo_dog")));
    assert!(s.metric("lens_rejected_requests_total").await >= 9.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_429_and_never_hangs() {
    let s = Server::start(&[
        "--sessions",
        "1",
        "--max-batch",
        "1",
        "--queue-capacity",
        "2",
        "--max-pending",
        "4",
        "--debug-slow-ms",
        "200",
        "--cache-entries",
        "0",
    ])
    .await;
    let c = reqwest::Client::new();
    let dog = fixture("dog.jpeg");
    let started = Instant::now();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (c, url, bytes) = (c.clone(), s.url.clone(), variant(&dog, i));
            tokio::spawn(async move {
                let r = c.post(format!("{url}/predict")).multipart(form("dog.jpeg", bytes)).send().await.unwrap();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                (r.status().as_u16(), retry)
            })
        })
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (429, retry) => {
                shed += 1;
                assert!(retry.unwrap().parse::<u64>().unwrap() >= 1, "429 carries Retry-After");
            }
            (other, _) => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 1 && shed >= 1, "ok {ok}, shed {shed}");
    assert!(started.elapsed() < Duration::from_secs(20), "nothing hangs");
    assert_eq!(s.metric("lens_rejected_requests_total").await, shed as f64);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_job_gets_504_and_is_never_inferred() {
    let s = Server::start(&[
        "--sessions",
        "1",
        "--max-batch",
        "1",
        "--deadline-secs",
        "0.5",
        "--debug-slow-ms",
        "400",
        "--cache-entries",
        "0",
    ])
    .await;
    let c = reqwest::Client::new();
    let dog = fixture("dog.jpeg");
    let n = 6;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (c, url, bytes) = (c.clone(), s.url.clone(), variant(&dog, 100 + i));
            tokio::spawn(async move { predict(&c, &url, "dog.jpeg", bytes).await.0 })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(statuses.contains(&504), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 504), "{statuses:?}");
    // Let the session finish what it had started.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let inferred = s.metric("lens_inferred_images_total").await;
    let dropped = s.metric("lens_dropped_jobs_total").await;
    assert!(dropped >= 1.0, "expired jobs are dropped before inference");
    assert_eq!(inferred + dropped, n as f64 + 0.0, "each job is either inferred or dropped, never both");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_every_accepted_request() {
    let s =
        Server::start(&["--sessions", "1", "--max-batch", "2", "--debug-slow-ms", "150", "--cache-entries", "0"]).await;
    let c = reqwest::Client::new();
    let dog = fixture("dog.jpeg");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (c, url, bytes) = (c.clone(), s.url.clone(), variant(&dog, 200 + i));
            tokio::spawn(async move { predict(&c, &url, "dog.jpeg", bytes).await })
        })
        .collect();
    // Wait until all eight are in the pipeline, then ask the server to stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric("lens_cache_misses_total").await < 8.0 {
        assert!(Instant::now() < deadline, "requests never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let url = s.url.clone();
    s.stop().await;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["prediction"], "Eskimo_dog");
    }
    assert!(reqwest::get(format!("{url}/health/live")).await.is_err(), "no longer accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_get_health_metrics_openapi_and_kserve_v2() {
    let s = Server::start(&[]).await;
    let c = reqwest::Client::new();
    let get = |p: &str| c.get(format!("{}{p}", s.url)).send();
    assert_eq!(get("/health/live").await.unwrap().status(), 200);
    assert_eq!(get("/health/ready").await.unwrap().status(), 200);
    assert_eq!(get("/v2/health/ready").await.unwrap().status(), 200);
    let v2: Value = get("/v2").await.unwrap().json().await.unwrap();
    assert_eq!(v2["extensions"][0], "classification");
    let meta: Value = get("/v2/models/efficientnet-lite0").await.unwrap().json().await.unwrap();
    assert_eq!(meta["inputs"][0]["shape"], serde_json::json!([-1, 3, 224, 224]));
    assert_eq!(get("/v2/models/efficientnet-lite0/ready").await.unwrap().status(), 200);
    assert_eq!(get("/v2/models/nope").await.unwrap().status(), 404);
    let openapi: Value = get("/openapi.json").await.unwrap().json().await.unwrap();
    assert!(openapi["paths"]["/predict"]["post"].is_object());
    let status: Value = get("/api/status").await.unwrap().json().await.unwrap();
    assert_eq!(status["model"], "efficientnet-lite0");
    let labels: Vec<String> = get("/api/labels").await.unwrap().json().await.unwrap();
    assert_eq!(labels[248], "Eskimo_dog");

    // v2 infer, BYTES input with the classification extension.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let req = serde_json::json!({
        "id": "r1",
        "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                    "data": [b64.encode(fixture("dog.jpeg")), b64.encode(fixture("coffee.png"))]}],
        "outputs": [{"name": "logits", "parameters": {"classification": 3}}],
    });
    let r = c.post(format!("{}/v2/models/efficientnet-lite0/infer", s.url)).json(&req).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "r1");
    assert_eq!(body["outputs"][0]["shape"], serde_json::json!([2, 3]));
    let first = body["outputs"][0]["data"][0].as_str().unwrap();
    assert!(first.ends_with(":248:Eskimo_dog"), "{first}");
    assert!(body["outputs"][0]["data"][3].as_str().unwrap().ends_with(":967:espresso"));

    // v2 infer, FP32 tensor prepared by the client: the same answer.
    let img = lens::preprocess::prepare(
        &fixture("dog.jpeg"),
        &lens::model::ModelDir::load(&common::root().join("models/efficientnet-lite0")).unwrap().spec.resize_spec(),
        40_000_000,
    )
    .unwrap();
    let plane = 224 * 224;
    let mut tensor = vec![0f32; 3 * plane];
    for (i, px) in img.rgb.chunks_exact(3).enumerate() {
        for ch in 0..3 {
            tensor[ch * plane + i] = (px[ch] as f32 - 127.0) / 128.0;
        }
    }
    let req = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": tensor}],
        "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
    });
    let r = c.post(format!("{}/v2/models/efficientnet-lite0/infer", s.url)).json(&req).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(body["outputs"][0]["data"][0].as_str().unwrap().ends_with(":248:Eskimo_dog"), "{body}");
    let bad =
        serde_json::json!({"inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [0.0]}]});
    let r = c.post(format!("{}/v2/models/efficientnet-lite0/infer", s.url)).json(&bad).send().await.unwrap();
    assert_eq!(r.status(), 400);

    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for name in [
        "lens_http_requests_total",
        "lens_http_request_duration_seconds_bucket",
        "lens_stage_duration_seconds_count{stage=\"decode\"}",
        "lens_stage_duration_seconds_count{stage=\"queue_wait\"}",
        "lens_stage_duration_seconds_count{stage=\"inference\"}",
        "lens_queue_depth",
        "lens_batch_size_bucket",
        "lens_cache_hits_total",
        "lens_coalesced_requests_total",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_models_are_served_from_a_models_directory() {
    // A second model directory: the same network under another name.
    let models = tempfile::tempdir().unwrap();
    let src = common::root().join("models/efficientnet-lite0");
    let dst = models.path().join("lite0-copy");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["model.onnx", "labels.txt"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let toml = std::fs::read_to_string(src.join("model.toml")).unwrap();
    std::fs::write(dst.join("model.toml"), toml.replace("name = \"efficientnet-lite0\"", "name = \"lite0-copy\""))
        .unwrap();
    let s = Server::start(&["--models-dir", models.path().to_str().unwrap(), "--sessions", "1"]).await;
    let c = reqwest::Client::new();
    let status: Value = c.get(format!("{}/api/status", s.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["models"], serde_json::json!(["efficientnet-lite0", "lite0-copy"]));
    assert_eq!(status["model"], "efficientnet-lite0", "/predict keeps the --model one");
    let r = c.get(format!("{}/v2/models/lite0-copy/ready", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    use base64::Engine as _;
    let req = serde_json::json!({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                    "data": [base64::engine::general_purpose::STANDARD.encode(fixture("coffee.png"))]}],
        "outputs": [{"name": "logits", "parameters": {"classification": 1}}],
    });
    let body: Value =
        c.post(format!("{}/v2/models/lite0-copy/infer", s.url)).json(&req).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["model_name"], "lite0-copy");
    assert!(body["outputs"][0]["data"][0].as_str().unwrap().ends_with(":967:espresso"));
    s.stop().await;
}
