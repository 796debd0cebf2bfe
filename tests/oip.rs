//! The Open Inference Protocol as its clients use it: the standard Python
//! client library (`tritonclient[http]`, from requirements-dev.txt) against a
//! real `lens serve` process (tests/oip_client.py holds the scenarios), and
//! raw HTTP for what no well-behaved client sends: malformed binary bodies,
//! lying lengths, no content type.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{Server, fixture, root};
use serde_json::{Value, json};

/// One test at a time: each runs the model on a two-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MODEL: &str = "efficientnet-lite0";

/// A `lens serve` process, killed on drop.
struct Lens {
    child: Child,
    url: String,
}

impl Lens {
    fn start(args: &[&str], log: &Path) -> Lens {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lens"))
            .arg("serve")
            .args(["--addr", "127.0.0.1:0", "--sessions", "1"])
            .env("LENS_GRPC_ADDR", "127.0.0.1:0")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url =
            line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("no address: {line:?}")).to_owned();
        for _ in 0..600 {
            if ready(&url) {
                return Lens { child, url };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("lens serve did not become ready; see {}", log.display());
    }
}

/// Whether `GET /v2/health/ready` answers 200 (plain std: these tests are
/// not async).
fn ready(url: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(url.trim_start_matches("http://")) else { return false };
    let _ = s.write_all(b"GET /v2/health/ready HTTP/1.0\r\nHost: lens\r\n\r\n");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

impl Drop for Lens {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("oip").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs one scenario of tests/oip_client.py; panics with its output if it fails.
fn client_scenario(scenario: &str, url: &str, last: &Path) {
    let out = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/oip_client.py"))
        .args([scenario, url, MODEL])
        .arg(root().join("tests/fixtures"))
        .arg(last)
        .output()
        .expect("the project venv has tritonclient (requirements-dev.txt, installed by make test)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains(&format!("ok {scenario}")), "{scenario} failed:\n{text}");
    eprintln!("{text}");
}

/// `repo/efficientnet-lite0/1/`: the real model as version 1 of a repository.
fn repository_with_version_1() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let v1 = repo.path().join(MODEL).join("1");
    std::fs::create_dir_all(&v1).unwrap();
    for f in ["model.onnx", "labels.txt", "model.toml"] {
        std::fs::copy(root().join("models").join(MODEL).join(f), v1.join(f)).unwrap();
    }
    repo
}

#[test]
fn the_client_library_speaks_to_lens() {
    let _one = SERIAL.blocking_lock();
    let logs = log_dir("protocol");
    let lens = Lens::start(&[], &logs.join("serve.log"));
    client_scenario("protocol", &lens.url, &root().join("models").join(MODEL));
}

#[test]
fn the_client_library_loads_unloads_and_hot_reloads_versions() {
    let _one = SERIAL.blocking_lock();
    let logs = log_dir("repository");
    let repo = repository_with_version_1();
    let v1 = repo.path().join(MODEL).join("1");
    let lens = Lens::start(
        &[
            "--model",
            v1.to_str().unwrap(),
            "--models-dir",
            repo.path().to_str().unwrap(),
            "--poll-models",
            "0.5",
            "--data-dir",
            logs.to_str().unwrap(),
        ],
        &logs.join("serve.log"),
    );
    client_scenario("repository", &lens.url, repo.path());
}

/// A binary infer request: the JSON header, then `tail`, with the header
/// length `declared` (the true one if `None`).
fn binary_request(header: &Value, tail: &[u8], declared: Option<&str>) -> (String, Vec<u8>) {
    let json = header.to_string();
    let length = declared.map(str::to_owned).unwrap_or_else(|| json.len().to_string());
    let mut body = json.into_bytes();
    body.extend(tail);
    (length, body)
}

fn bytes_element(b: &[u8]) -> Vec<u8> {
    let mut out = (b.len() as u32).to_le_bytes().to_vec();
    out.extend(b);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_binary_bodies_get_400_and_never_a_panic() {
    let _one = SERIAL.lock().await;
    let s = Server::start(&["--sessions", "1"]).await;
    let c = reqwest::Client::new();
    let url = format!("{}/v2/models/{MODEL}/infer", s.url);
    let dog = fixture("dog.jpeg");
    let image = |size: usize| {
        json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": size}}]})
    };
    let good = bytes_element(&dog);
    let cases: Vec<(&str, Value, Vec<u8>, Option<&str>)> = vec![
        ("header longer than the body", image(good.len()), good.clone(), Some("999999999")),
        ("header length not a number", image(good.len()), good.clone(), Some("12abc")),
        ("negative header length", image(good.len()), good.clone(), Some("-5")),
        ("header length cuts the JSON", image(good.len()), good.clone(), Some("10")),
        ("binary_data_size beyond the body", image(good.len() + 1), good.clone(), None),
        ("huge binary_data_size", image(usize::MAX), good.clone(), None),
        ("bytes left over", image(good.len()), [good.clone(), vec![0]].concat(), None),
        ("element length overruns", image(8), vec![8, 0, 0, 0, 1, 2, 3, 4], None),
        ("element length of 4 GiB", image(6), vec![255, 255, 255, 255, 1, 2], None),
        ("short element length", image(2), vec![1, 0], None),
        ("two elements for shape [1]", image(good.len() * 2), good.repeat(2), None),
        ("no elements", image(0), vec![], None),
        (
            "FP32 not whole floats",
            json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                "parameters": {"binary_data_size": 3}}]}),
            vec![0, 0, 0],
            None,
        ),
        (
            "FP32 too few values",
            json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                "parameters": {"binary_data_size": 8}}]}),
            vec![0; 8],
            None,
        ),
        (
            "FP32 NaN",
            json!({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                "parameters": {"binary_data_size": 3 * 224 * 224 * 4}}]}),
            f32::NAN.to_le_bytes().repeat(3 * 224 * 224),
            None,
        ),
        (
            "shape overflows",
            json!({"inputs": [{"name": "image", "shape": [i64::MAX, i64::MAX], "datatype": "BYTES",
                                "parameters": {"binary_data_size": good.len()}}]}),
            good.clone(),
            None,
        ),
        (
            "binary_data_size not a number",
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                "parameters": {"binary_data_size": "x"}}]}),
            vec![],
            None,
        ),
        (
            "unknown output",
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                "parameters": {"binary_data_size": good.len()}}],
                   "outputs": [{"name": "nope"}]}),
            good.clone(),
            None,
        ),
        (
            "class_count zero",
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                "parameters": {"binary_data_size": good.len()}}],
                   "outputs": [{"name": "logits", "parameters": {"classification": 0}}]}),
            good.clone(),
            None,
        ),
    ];
    for (what, header, tail, declared) in cases {
        let (length, body) = binary_request(&header, &tail, declared);
        let r = c.post(&url).header("Inference-Header-Content-Length", length).body(body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{what}");
        let err: Value = r.json().await.unwrap();
        let keys: Vec<&String> = err.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["error"], "{what}: {err}");
        assert!(!err["error"].as_str().unwrap().is_empty(), "{what}");
    }
    // Not JSON at all, with and without a content type.
    for ct in [None, Some("application/json"), Some("text/plain")] {
        let mut r = c.post(&url).body("{not json");
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        assert_eq!(r.send().await.unwrap().status(), 400);
    }
    // After all that the server still answers, and a body with no content
    // type at all is read as JSON.
    use base64::Engine as _;
    let req = json!({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                 "data": [[base64::engine::general_purpose::STANDARD.encode(&dog)]]}],
                     "outputs": [{"name": "logits", "parameters": {"classification": 1}}]});
    let r = c.post(&url).body(req.to_string()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(body["outputs"][0]["data"][0].as_str().unwrap().ends_with(":248:Eskimo_dog"), "{body}");
    let stats: Value = c.get(format!("{}/v2/models/{MODEL}/stats", s.url)).send().await.unwrap().json().await.unwrap();
    let fails = stats["model_stats"][0]["inference_stats"]["fail"]["count"].as_u64().unwrap();
    assert!(fails >= 19, "every refused infer counts as a failure, got {fails}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_outputs_carry_their_lengths_and_errors_are_oip_shaped() {
    let _one = SERIAL.lock().await;
    let s = Server::start(&["--sessions", "1"]).await;
    let c = reqwest::Client::new();
    let good = [bytes_element(&fixture("dog.jpeg")), bytes_element(&fixture("coffee.png"))].concat();
    let header = json!({
        "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": good.len()}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": true, "classification": 2}}],
    });
    let (length, body) = binary_request(&header, &good, None);
    let r = c
        .post(format!("{}/v2/models/{MODEL}/versions/1/infer", s.url))
        .header("Inference-Header-Content-Length", length)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let json_len: usize = r.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let bytes = r.bytes().await.unwrap();
    let head: Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    let out = &head["outputs"][0];
    assert_eq!((out["datatype"].as_str(), &out["shape"]), (Some("BYTES"), &json!([2, 2])));
    assert!(out.get("data").is_none());
    let mut tail = &bytes[json_len..];
    assert_eq!(out["parameters"]["binary_data_size"].as_u64(), Some(tail.len() as u64));
    let mut strings = Vec::new();
    while !tail.is_empty() {
        let n = u32::from_le_bytes(tail[..4].try_into().unwrap()) as usize;
        strings.push(String::from_utf8(tail[4..4 + n].to_vec()).unwrap());
        tail = &tail[4 + n..];
    }
    assert_eq!(strings.len(), 4);
    assert!(strings[0].ends_with(":248:Eskimo_dog") && strings[2].ends_with(":967:espresso"), "{strings:?}");

    // Another version, an unknown model, a repository without --models-dir.
    for (method, path, status) in [
        ("POST", format!("/v2/models/{MODEL}/versions/2/infer"), 404),
        ("GET", format!("/v2/models/{MODEL}/versions/2/ready"), 404),
        ("GET", "/v2/models/nope/config".to_owned(), 404),
        ("GET", "/v2/models/nope/stats".to_owned(), 404),
        ("POST", format!("/v2/repository/models/{MODEL}/unload"), 400),
    ] {
        let r = c.request(method.parse().unwrap(), format!("{}{path}", s.url)).body("{}").send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let err: Value = r.json().await.unwrap();
        assert!(err["error"].is_string() && err.get("success").is_none(), "{path}: {err}");
    }
    // Without --models-dir the index still lists what is served, as Triton's does.
    let index: Value =
        c.post(format!("{}/v2/repository/index", s.url)).body("{}").send().await.unwrap().json().await.unwrap();
    assert_eq!(index, json!([{"name": MODEL, "version": "1", "state": "READY", "reason": ""}]));
    let cfg: Value = c.get(format!("{}/v2/models/{MODEL}/config", s.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(cfg["instance_group"][0]["count"], 1);
    assert_eq!(cfg["input"][0]["format"], "FORMAT_NCHW");
    s.stop().await;
}
