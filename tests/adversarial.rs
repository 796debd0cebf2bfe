//! The adversarial suite: every attack found by reading the code as an
//! attacker would, each run against a real `lens serve` process with the
//! real model while 8 normal clients classify distinct photos beside it.
//!
//! For each attack the test asserts what the cost model (`lens::cost`)
//! promises: the attacker gets its 4xx (or its connection closed), the normal
//! requests all succeed with a p99 under 3x their p99 without the attack, and
//! the server's peak RSS stays under 400 MB.
//!
//! The attacks run one at a time (one lock), each on a fresh server, so that
//! timings and the peak RSS belong to one attack. Add the next one here.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::processes::LensProcess;
use common::{fixture, form, variant};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;

/// One attack at a time: the measurements are per attack.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NORMAL_CLIENTS: usize = 8;
const MAX_RSS_BYTES: u64 = 400 << 20;
/// Photos made distinct so far, so no two normal requests hit the cache.
static NEXT_PHOTO: AtomicUsize = AtomicUsize::new(0);

struct Target {
    lens: LensProcess,
    url: String,
    addr: String,
    _tmp: tempfile::TempDir,
}

impl Target {
    fn start(name: &str, extra: &[&str]) -> Target {
        let tmp = tempfile::tempdir().unwrap();
        let model = common::root().join("models/efficientnet-lite0");
        let data = tmp.path().join("data");
        let mut args = vec!["serve", "--addr", "127.0.0.1:0", "--model", model.to_str().unwrap()];
        args.extend(["--data-dir", data.to_str().unwrap()]);
        args.extend(extra);
        let lens = LensProcess::spawn(tmp.path(), name, &args);
        let url = lens.url();
        let addr = url.trim_start_matches("http://").to_owned();
        Target { lens, url, addr, _tmp: tmp }
    }

    /// The process's peak resident memory so far (`VmHWM`).
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.lens.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kb * 1024
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url)).await.unwrap().text().await.unwrap();
        common::metric_in(&text, name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._tmp.path().join(format!("{}.log", "lens"))).unwrap_or_default()
    }
}

/// Latencies of 8 closed-loop clients sending distinct photos to
/// `/predict` for `run`; every answer must be a 200.
async fn normal_traffic(url: &str, run: Duration) -> Vec<Duration> {
    let dog = Arc::new(fixture("dog.jpeg"));
    let until = Instant::now() + run;
    let mut clients = Vec::new();
    for _ in 0..NORMAL_CLIENTS {
        let (url, dog) = (url.to_owned(), Arc::clone(&dog));
        clients.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut took = Vec::new();
            while Instant::now() < until {
                let photo = variant(&dog, NEXT_PHOTO.fetch_add(1, Ordering::Relaxed));
                let started = Instant::now();
                let r = http.post(format!("{url}/predict")).multipart(form("dog.jpeg", photo)).send().await.unwrap();
                assert_eq!(r.status(), 200, "a normal request failed: {}", r.text().await.unwrap());
                took.push(started.elapsed());
            }
            took
        }));
    }
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    all
}

/// A few authorised predictions, so the model and its buffers are warm.
async fn normal_traffic_with_key(url: &str, key: &str) {
    let http = reqwest::Client::new();
    let dog = fixture("dog.jpeg");
    for i in 0..16 {
        let photo = variant(&dog, 2_000_000 + i);
        let r = http.post(format!("{url}/predict")).bearer_auth(key).multipart(form("dog.jpeg", photo));
        assert_eq!(r.send().await.unwrap().status(), 200);
    }
}

fn p99(mut took: Vec<Duration>) -> Duration {
    assert!(!took.is_empty());
    took.sort();
    took[(took.len() * 99 / 100).min(took.len() - 1)]
}

/// Runs `attack` beside normal traffic and checks the promises: the normal
/// p99 under 3x its value without the attack, peak RSS under the bound.
async fn beside_normal_traffic<F, Fut>(target: &Target, attack: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // Warm up, then the unloaded value.
    normal_traffic(&target.url, Duration::from_millis(500)).await;
    let unloaded = p99(normal_traffic(&target.url, Duration::from_secs(3)).await);
    let attacking = tokio::spawn(attack(target.addr.clone()));
    let loaded = p99(normal_traffic(&target.url, Duration::from_secs(4)).await);
    attacking.await.unwrap();
    // A floor keeps a very quiet machine's tiny p99 from making noise a failure.
    let bound = 3 * unloaded.max(Duration::from_millis(50));
    println!("normal p99: {unloaded:?} unloaded, {loaded:?} under attack (bound {bound:?})");
    assert!(loaded <= bound, "normal p99 {loaded:?} under attack, {unloaded:?} without");
    let rss = target.peak_rss();
    println!("peak RSS {} MB", rss >> 20);
    assert!(rss < MAX_RSS_BYTES, "peak RSS {} MB", rss >> 20);
}

/// A raw request on a new connection; returns the status line's code, or
/// `None` if the connection closed without an answer.
fn raw(addr: &str, request: &[u8]) -> Option<u16> {
    let mut s = connect(addr, Duration::from_secs(10));
    s.write_all(request).ok()?;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let head = String::from_utf8_lossy(&answer);
    head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A blocking connection whose reads give up after `timeout`.
fn connect(addr: &str, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

/// Reads until the server closes the connection; `None` if it is still
/// open when the read timeout passes.
fn read_until_closed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    Some(answer)
}

/// A 35-byte GIF: a 6320x6320 screen around one 1x1 frame.
fn screen_gif() -> Vec<u8> {
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&6320u16.to_le_bytes());
    gif.extend_from_slice(&6320u16.to_le_bytes());
    gif.extend_from_slice(&[0, 0, 0]);
    gif.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x4C, 0x01, 0, 0x3B]);
    gif
}

fn v2_bytes_request(images: &[Vec<u8>], outputs: Value) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: Vec<String> = images.iter().map(|i| b64.encode(i)).collect();
    json!({"inputs": [{"name": "input", "shape": [images.len()], "datatype": "BYTES", "data": data}], "outputs": outputs})
}

fn infer_url(url: &str) -> String {
    format!("{url}/v2/models/efficientnet-lite0/infer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_entries_cannot_amplify_the_answer() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Target::start("lens", &[]);
    let http = reqwest::Client::new();
    let tiny = fixture("dog.jpeg");
    let images: Vec<Vec<u8>> = (0..64).map(|i| variant(&tiny, i)).collect();
    let repeated: Vec<Value> = (0..100).map(|_| json!({"name": "logits"})).collect();
    let url = t.url.clone();
    beside_normal_traffic(&t, |_| async move {
        let http = reqwest::Client::new();
        for _ in 0..5 {
            let r = http.post(infer_url(&url)).json(&v2_bytes_request(&images, json!(repeated))).send().await.unwrap();
            assert_eq!(r.status(), 400);
            let body = r.bytes().await.unwrap();
            assert!(body.len() < 1024, "{} bytes", body.len());
        }
    })
    .await;
    // The largest answer that can be asked for stays within its bound.
    let images: Vec<Vec<u8>> = (0..8).map(|i| variant(&tiny, 1000 + i)).collect();
    for outputs in [json!([{"name": "logits", "parameters": {"classification": 100000}}]), json!([])] {
        let r = http.post(infer_url(&t.url)).json(&v2_bytes_request(&images, outputs)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        assert!(body.len() <= lens::cost::response_bound(8), "{} bytes for 8 inputs", body.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_cost_a_normal_upload_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Target::start("lens", &["--body-timeout-secs", "3"]);
    let stalled = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let held = Arc::clone(&stalled);
    beside_normal_traffic(&t, |addr| async move {
        // 100 uploads that declare 10 MiB (or go chunked) and send 5 bytes.
        for i in 0..100 {
            let mut s = connect(&addr, Duration::from_secs(8));
            let head = if i % 2 == 0 {
                "POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: multipart/form-data; boundary=b\r\ncontent-length: 10485760\r\n\r\n--b\r\n"
            } else {
                "POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: multipart/form-data; boundary=b\r\ntransfer-encoding: chunked\r\n\r\n5\r\n--b\r\n"
            };
            s.write_all(head.as_bytes()).unwrap();
            held.lock().await.push(s);
        }
    })
    .await;
    // Past the body timeout each stalled upload got its 408 and was closed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stalled: Vec<TcpStream> = stalled.lock().await.drain(..).collect();
    tokio::task::spawn_blocking(move || {
        for mut s in stalled {
            let answer = read_until_closed(&mut s).expect("a stalled upload is closed");
            assert!(answer.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&answer));
        }
    })
    .await
    .unwrap();
    let text = reqwest::get(format!("{}/metrics", t.url)).await.unwrap().text().await.unwrap();
    assert!(text.contains("reason=\"body_timeout\"} 100"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_close_within_the_header_timeout() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Target::start("lens", &["--header-timeout-secs", "1"]);
    let closes_within = |request: &'static [u8], keep_alive_first: bool| {
        let mut s = connect(&t.addr, Duration::from_secs(5));
        if keep_alive_first {
            s.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        }
        s.write_all(request).unwrap();
        let started = Instant::now();
        assert!(read_until_closed(&mut s).is_some(), "still open after 5 s");
        started.elapsed()
    };
    for (what, took) in [
        ("nothing sent", closes_within(b"", false)),
        ("half a head", closes_within(b"POST /predict HTTP/1.1\r\nhost: x\r\n", false)),
        ("idle keep-alive", closes_within(b"", true)),
    ] {
        println!("{what}: closed after {took:?}");
        assert!(took < Duration::from_secs(3), "{what}: {took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_one_bad_image_decodes_none_and_work_stops_with_its_client() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Target::start("lens", &[]);
    let mut images = vec![b"not an image".to_vec()];
    images.extend((0..63).map(|_| screen_gif()));
    let url = t.url.clone();
    beside_normal_traffic(&t, |_| async move {
        let http = reqwest::Client::new();
        for _ in 0..20 {
            let r = http.post(infer_url(&url)).json(&v2_bytes_request(&images, json!([]))).send().await.unwrap();
            assert_eq!(r.status(), 400);
            assert!(r.text().await.unwrap().contains("element 0"));
        }
    })
    .await;

    // 64 distinct photos, and the client gives up after 50 ms: what was not
    // started by then is never inferred.
    let dog = fixture("dog.jpeg");
    let photos: Vec<Vec<u8>> = (0..64).map(|i| variant(&dog, 1_000_000 + i)).collect();
    let before = t.metric("lens_inferred_images_total").await;
    let quick = reqwest::Client::builder().timeout(Duration::from_millis(50)).build().unwrap();
    let r = quick.post(infer_url(&t.url)).json(&v2_bytes_request(&photos, json!([]))).send().await;
    assert!(r.is_err(), "the client gave up");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let inferred = t.metric("lens_inferred_images_total").await - before;
    println!("inferred {inferred} of 64 after the client left");
    assert!(inferred < 48.0, "{inferred} of 64 images inferred for a client that left");
    assert!(t.metric("lens_dropped_jobs_total").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_answer_at_once_and_read_no_body() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Target::start("lens", &["--api-key", "admin-key-0123456789"]);
    let big = vec![0u8; 9 << 20];
    // Loaded and warm first: the process grows while its model loads.
    let (status, _) = common::predict(&reqwest::Client::new(), &t.url, "dog.jpeg", fixture("dog.jpeg")).await;
    assert_eq!(status, 401);
    normal_traffic_with_key(&t.url, "admin-key-0123456789").await;
    let before = t.peak_rss();
    let mut refused = Vec::new();
    for _ in 0..30 {
        let addr = t.addr.clone();
        let head = format!(
            "POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: multipart/form-data; boundary=b\r\ncontent-length: {}\r\n\r\n",
            big.len()
        );
        let body = big.clone();
        refused.push(tokio::task::spawn_blocking(move || {
            let mut s = connect(&addr, Duration::from_secs(2));
            s.write_all(head.as_bytes()).unwrap();
            let started = Instant::now();
            // The answer comes before the body is sent at all.
            let mut answer = vec![0u8; 12];
            s.read_exact(&mut answer).unwrap();
            let _ = s.write_all(&body);
            (answer, started.elapsed())
        }));
    }
    for r in refused {
        let (answer, took) = r.await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 401", "{took:?}");
    }
    let grew = t.peak_rss().saturating_sub(before);
    println!("peak RSS grew {} MB for 30 refused 9 MiB uploads", grew >> 20);
    assert!(grew < 40 << 20, "{} MB", grew >> 20);
    // Declared over --body-limit: 413 unread, with or without a key.
    let over = "POST /predict HTTP/1.1\r\nhost: x\r\nauthorization: Bearer admin-key-0123456789\r\ncontent-length: 99999999\r\n\r\n";
    assert_eq!(raw(&t.addr, over.as_bytes()), Some(413));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_files_that_declare_huge_images_are_refused_from_their_headers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Target::start("lens", &[]);
    let png16 = rgba16_png(4000, 4000);
    println!("a {} KB 16-bit RGBA PNG of 4000x4000", png16.len() >> 10);
    let url = t.url.clone();
    beside_normal_traffic(&t, |_| async move {
        let http = reqwest::Client::new();
        for _ in 0..20 {
            let r =
                http.post(format!("{url}/predict")).multipart(form("screen.gif", screen_gif())).send().await.unwrap();
            assert_eq!(r.status(), 413);
        }
        for _ in 0..3 {
            let r =
                http.post(format!("{url}/predict")).multipart(form("deep.png", png16.clone())).send().await.unwrap();
            assert_eq!(r.status(), 413, "{}", r.text().await.unwrap());
        }
    })
    .await;
}

/// A `width x height` 16-bit RGBA PNG of zeros, written row by row.
fn rgba16_png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    write_rgba16_png(&mut out, width, height);
    out
}

fn write_rgba16_png(out: &mut Vec<u8>, width: u32, height: u32) {
    let mut encoder = png::Encoder::new(out, width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Sixteen);
    encoder.set_compression(png::Compression::High);
    let mut writer = encoder.write_header().unwrap();
    let mut stream = writer.stream_writer().unwrap();
    let row = vec![0u8; width as usize * 8];
    for _ in 0..height {
        std::io::Write::write_all(&mut stream, &row).unwrap();
    }
    stream.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parsers_stop_at_their_limits_while_reading() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Target::start("lens", &[]);
    let url = t.url.clone();
    beside_normal_traffic(&t, |_| async move {
        let http = reqwest::Client::new();
        // 10.5 MB of `a&`: refused at the 17th pair.
        let flood = "a&".repeat(5_000_000);
        let r = http
            .post(format!("{url}/feedback"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(flood)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        // 10 MB of JSON numbers for a one-element shape, and the same as FP32.
        let numbers = vec!["0"; 4_900_000].join(",");
        for datatype in ["BYTES", "FP32"] {
            let body =
                format!(r#"{{"inputs":[{{"name":"input","shape":[1],"datatype":"{datatype}","data":[{numbers}]}}]}}"#);
            let r = http.post(infer_url(&url)).body(body).send().await.unwrap();
            assert_eq!(r.status(), 400, "{datatype}");
        }
        // Found by reading the code for this suite: a report field was parsed
        // as JSON before its length was checked. 10 MB of numbers: 400 at once.
        let report = format!("[{}]", vec!["0"; 2_000_000].join(","));
        let r = http.post(format!("{url}/feedback")).form(&[("report", report)]).send().await.unwrap();
        assert_eq!(r.status(), 400);
        // Parameters Lens does not read are skipped, not built.
        let junk = "[".repeat(100) + &"]".repeat(100);
        let nested = format!(r#"{{"inputs":[],"parameters":{{"x":[{}]}}}}"#, vec![junk.as_str(); 20_000].join(","));
        let r = http.post(infer_url(&url)).body(nested).send().await.unwrap();
        assert_eq!(r.status(), 400);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_that_panicked_get_a_400_and_one_log_line_at_most() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Target::start("lens", &[]);
    let http = reqwest::Client::new();
    for shape in [json!([]), json!([-1]), json!([1, 2, 3]), json!([9_223_372_036_854_775_807i64, 2])] {
        let body = json!({"inputs": [{"name": "input", "shape": shape, "datatype": "BYTES", "data": ["aGk="]}]});
        let r = http.post(infer_url(&t.url)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{shape}");
    }
    let log = t.log();
    assert!(!log.contains("panic"), "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in a log file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sites_cannot_act_with_a_reviewers_credentials() {
    let _one = ONE_AT_A_TIME.lock().await;
    let key = "admin-key-0123456789";
    let t = Target::start("lens", &["--api-key", key, "--models-dir", models_dir().to_str().unwrap()]);
    let http = reqwest::Client::new();
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("reviewer:{key}")));
    let evil = [("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")];
    let paths = ["/review/1", "/v2/repository/models/efficientnet-lite0/unload", "/feedback", "/"];
    for path in paths {
        for (name, value) in evil {
            let r = http
                .post(format!("{}{path}", t.url))
                .header("authorization", &basic)
                .header(name, value)
                .form(&[("action", "reject")])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{path} with {name}");
        }
    }
    // The model is still served: the unload never happened.
    let r = http.get(format!("{}/v2/models/efficientnet-lite0/ready", t.url)).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The page's own form posts (same origin) still work.
    let same = http
        .post(format!("{}/feedback", t.url))
        .header("authorization", &basic)
        .header("origin", &t.url)
        .header("accept", "application/json")
        .form(&[("report", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 200);
}

/// A model repository holding the default model as version 1.
fn models_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lens-adversarial-models-{}", std::process::id()));
    let v1 = dir.join("efficientnet-lite0/1");
    if !v1.exists() {
        std::fs::create_dir_all(&v1).unwrap();
        let model = common::root().join("models/efficientnet-lite0");
        for f in ["model.onnx", "model.toml", "labels.txt"] {
            std::fs::copy(model.join(f), v1.join(f)).unwrap();
        }
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_keeps_only_images_and_each_client_has_a_quota() {
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Target::start("lens", &["--feedback-per-minute", "20"]);
    let http = reqwest::Client::new();
    let noise: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let r = http
        .post(format!("{}/feedback", t.url))
        .header("accept", "application/json")
        .multipart(form("noise.jpg", noise).text("report", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "random bytes are not kept as an image");
    let mut statuses = Vec::new();
    for i in 0..40 {
        let r = http
            .post(format!("{}/feedback", t.url))
            .header("accept", "application/json")
            .form(&[("report", format!("report {i}"))])
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    assert!((19..=21).contains(&accepted), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&429));
}

/// The v2 attacks above, over gRPC: amplifying outputs, one bad image among
/// many, work for a client that left, an oversized message and inputs that
/// once panicked cost the same as over HTTP, beside normal traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v2_attacks_over_grpc_cost_what_they_cost_over_http() {
    use lens::grpc::proto::model_infer_request::InferRequestedOutputTensor;
    let _one = ONE_AT_A_TIME.lock().await;
    let t = Target::start("lens", &["--body-limit", "4000000"]);
    let grpc = t.lens.grpc.clone().expect("a gRPC address");
    let dog = fixture("dog.jpeg");
    let photos: Vec<Vec<u8>> = (0..64).map(|i| variant(&dog, 3_000_000 + i)).collect();
    let mut bad = vec![b"not an image".to_vec()];
    bad.extend((0..63).map(|_| screen_gif()));
    let attack_photos = photos.clone();
    beside_normal_traffic(&t, |_| async move {
        let mut c = common::grpc_client(&grpc).await;
        for _ in 0..5 {
            // 100 output entries: refused, with a short message.
            let mut req = common::grpc_images(&attack_photos);
            req.outputs =
                (0..100).map(|_| InferRequestedOutputTensor { name: "logits".into(), ..Default::default() }).collect();
            let status = c.model_infer(req).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().len() < 1024);
            // One bad image among 64: refused from its header, nothing decoded.
            let status = c.model_infer(common::grpc_images(&bad)).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains("element 0"), "{}", status.message());
            // A message over --body-limit.
            let status = c.model_infer(common::grpc_images(&vec![vec![0u8; 1 << 20]; 5])).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        }
        // Inputs that once panicked a parser: a clean INVALID_ARGUMENT.
        for shape in [vec![i64::MIN], vec![-1, -1], vec![i64::MAX, 2], vec![]] {
            let mut req = common::grpc_images(&[screen_gif()]);
            req.inputs[0].shape = shape;
            assert_eq!(c.model_infer(req).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        }
    })
    .await;
    // The largest answer that can be asked for stays within its bound.
    let mut c = common::grpc_client(t.lens.grpc.as_deref().unwrap()).await;
    let mut req = common::grpc_images(&photos[..8]);
    req.outputs = vec![InferRequestedOutputTensor {
        name: "logits".into(),
        parameters: [(
            "classification".to_owned(),
            lens::grpc::proto::InferParameter {
                parameter_choice: Some(lens::grpc::proto::infer_parameter::ParameterChoice::Int64Param(100_000)),
            },
        )]
        .into(),
    }];
    let answer = c.model_infer(req).await.unwrap().into_inner();
    let size = prost::Message::encoded_len(&answer);
    assert!(size <= lens::cost::response_bound(8), "{size} bytes for 8 inputs");
    // 64 distinct photos, and the call's deadline is 50 ms: what was not
    // started by then is never inferred.
    let before = t.metric("lens_inferred_images_total").await;
    let mut req = tonic::Request::new(common::grpc_images(&photos));
    req.set_timeout(Duration::from_millis(50));
    // tonic's client ends the call itself at its deadline (CANCELLED); the
    // server's own deadline (DEADLINE_EXCEEDED) is tests/grpc_client.py's.
    let status = c.model_infer(req).await.unwrap_err();
    assert!(matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{status:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let inferred = t.metric("lens_inferred_images_total").await - before;
    println!("inferred {inferred} of 64 after the call's deadline");
    assert!(inferred < 48.0, "{inferred} of 64 images inferred for a call that ended");
}
