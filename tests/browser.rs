//! The upload page in a real browser: starts the real `lens serve` on port 0,
//! runs the Playwright tests in `tests/browser/page.test.mjs` against it with
//! Debian's chromium, then checks through `lens feedback export` that the
//! reports the browser sent were stored with their images; the review page
//! (`tests/browser/review.test.mjs`) with JavaScript off and on; and
//! `tests/browser/auth.test.mjs` against a server behind an API key (HTTP
//! Basic credentials in the browser).
//!
//! Needs `node`, `npm` and `/usr/bin/chromium` (`make test-deps` installs
//! them); it fails, never skips, when they are missing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// A small `--body-limit`, so the 413 test uploads only a few megabytes.
const BODY_LIMIT: &str = "2000000";

/// A `lens serve` child, killed when dropped so a failing test leaves nothing behind.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lens"))
            .args(["serve", "--addr", "127.0.0.1:0", "--body-limit", BODY_LIMIT, "--data-dir"])
            .env("LENS_GRPC_ADDR", "127.0.0.1:0")
            .arg(data_dir)
            .args(extra)
            .current_dir(common::root())
            // Warnings only, unless the caller asks for more.
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("could not start `lens serve`");
        let stdout = child.stdout.take().expect("piped stdout");
        // Guard first, so the child dies even if no address line ever comes.
        let mut server = Server { child, url: String::new() };
        let (tx, rx) = mpsc::channel();
        // Reads the address line, then keeps draining stdout so the server never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.trim().strip_prefix("listening on ") {
                    let _ = tx.send(url.trim_end_matches('/').to_owned());
                }
            }
        });
        server.url = rx.recv_timeout(START_TIMEOUT).expect("`lens serve` printed no `listening on http://...` line");
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if http_status(&self.url, "/health/ready") == Some(200) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("`lens serve` exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "`lens serve` not ready after {START_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asks for a graceful stop (SIGTERM) and waits a little; `Drop` kills otherwise.
    fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The status code of `GET url+path`, or `None` if the server did not answer.
fn http_status(url: &str, path: &str) -> Option<u16> {
    let host = url.strip_prefix("http://")?;
    let mut stream = TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Fails with the one instruction that fixes a missing tool.
fn require_tool(program: &str, arg: &str) {
    let ok = Command::new(program).arg(arg).output().is_ok_and(|o| o.status.success());
    assert!(ok, "`{program}` is missing: run `make test-deps` (installs chromium, node and npm)");
}

/// Installs playwright-core from the lockfile if `node_modules` is missing.
fn ensure_node_modules(dir: &Path) {
    if dir.join("node_modules/playwright-core").is_dir() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .status()
        .expect("`npm` is missing: run `make test-deps`");
    assert!(status.success(), "`npm ci` in {} failed", dir.display());
}

/// A report the browser says it sent, from `feedback.json`.
struct SentReport {
    id: i64,
    correct_label: String,
    prediction: String,
}

fn sent_reports(path: &Path) -> Vec<SentReport> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).expect("feedback.json is a JSON array");
    list.iter()
        .map(|v| SentReport {
            id: v["id"].as_i64().expect("id"),
            correct_label: v["correct_label"].as_str().expect("correct_label").to_owned(),
            prediction: v["prediction"].as_str().expect("prediction").to_owned(),
        })
        .collect()
}

/// Checks that every sent report is a row of the export, with its image.
fn assert_exported(export: &Path, sent: &[SentReport]) {
    let rows = common::csv_rows(&std::fs::read_to_string(export.join("feedback.csv")).expect("feedback.csv"));
    let header = &rows[0];
    let col = |name: &str| header.iter().position(|h| h == name).unwrap_or_else(|| panic!("no {name} column"));
    let (id, predicted, correct, image) = (col("id"), col("predicted_label"), col("correct_label"), col("image_file"));
    for report in sent {
        let row = rows[1..]
            .iter()
            .find(|r| r[id] == report.id.to_string())
            .unwrap_or_else(|| panic!("report #{} is not in the export: {rows:?}", report.id));
        assert_eq!(row[correct], report.correct_label, "correct_label of #{}", report.id);
        assert_eq!(row[predicted], report.prediction, "predicted_label of #{}", report.id);
        assert!(!row[image].is_empty(), "report #{} kept no image", report.id);
        assert!(export.join("images").join(&row[image]).is_file(), "image of #{} not exported", report.id);
    }
}

#[test]
fn the_upload_page_works_in_a_real_browser() {
    let browser_dir = browser_dir();
    let out: PathBuf = common::root().join("target/test-output");
    std::fs::create_dir_all(&out).unwrap();
    for stale in ["feedback.json", "result-page.png", "result-page-narrow.png", "result-page-nojs.png"] {
        let _ = std::fs::remove_file(out.join(stale));
    }
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);

    let status = Command::new("node")
        .args(["--test", "--test-reporter=spec", "page.test.mjs"])
        .current_dir(&browser_dir)
        .env("LENS_URL", &server.url)
        .env("LENS_TEST_OUTPUT", &out)
        .env("LENS_BODY_LIMIT", BODY_LIMIT)
        .status()
        .expect("could not run node");
    assert!(status.success(), "browser tests failed (see the output above)");
    server.stop();

    let sent = sent_reports(&out.join("feedback.json"));
    assert!(sent.iter().any(|r| r.correct_label == "malamute"), "the JS report was not sent");
    let export = data.path().join("export");
    let exported = Command::new(env!("CARGO_BIN_EXE_lens"))
        .args(["feedback", "export"])
        .arg(&export)
        .arg("--data-dir")
        .arg(data.path())
        .current_dir(common::root())
        .status()
        .expect("could not run `lens feedback export`");
    assert!(exported.success(), "`lens feedback export` failed");
    assert_exported(&export, &sent);

    let png = std::fs::read(out.join("result-page.png")).expect("no result-page.png screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "result-page.png is not a PNG");
}

/// Checks the tools and installs playwright-core; returns `tests/browser`.
fn browser_dir() -> PathBuf {
    require_tool("node", "--version");
    require_tool("npm", "--version");
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: run `make test-deps`");
    let dir = common::root().join("tests/browser");
    ensure_node_modules(&dir);
    dir
}

#[test]
fn the_upload_page_works_behind_an_api_key_in_a_real_browser() {
    const KEY: &str = "browser-test-key-0123456789";
    let browser_dir = browser_dir();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &["--api-key", KEY]);
    // The health probe used to wait for readiness is open; the page is not.
    assert_eq!(http_status(&server.url, "/"), Some(401));
    let status = Command::new("node")
        .args(["--test", "--test-reporter=spec", "auth.test.mjs"])
        .current_dir(&browser_dir)
        .env("LENS_URL", &server.url)
        .env("LENS_API_KEY", KEY)
        .status()
        .expect("could not run node");
    assert!(status.success(), "browser tests behind a key failed (see the output above)");
    server.stop();
    let store = lens::feedback::FeedbackStore::open(&data.path().join("feedback")).unwrap();
    let rows = store.list().unwrap();
    assert!(rows.iter().any(|(_, _, r)| r.correct_label.as_deref() == Some("malamute") && r.image_file.is_some()));
}

/// Seeds three reports with real photos: #1 dog (reporter says Eskimo_dog),
/// #2 coffee (predicted cup, reporter says coffee_mug), #3 a cat whose
/// filename and label are XSS attempts.
fn seed_reports(data_dir: &Path) {
    use lens::feedback::{FeedbackRecord, FeedbackStore};
    let store = FeedbackStore::open(&data_dir.join("feedback")).unwrap();
    let seed = |fixture: &str, filename: &str, predicted: &str, correct: &str| {
        let bytes = std::fs::read(common::root().join("tests/fixtures").join(fixture)).unwrap();
        let ext = fixture.rsplit('.').next().unwrap();
        let record = FeedbackRecord {
            model: "efficientnet-lite0".into(),
            image_sha256: Some(lens::feedback::sha256_hex(&bytes)),
            image_file: Some(store.images().put(&bytes, ext).unwrap()),
            filename: Some(filename.into()),
            predicted_label: Some(predicted.into()),
            score: Some(0.5),
            correct_label: Some(correct.into()),
            report: None,
        };
        store.record(&record).unwrap();
    };
    seed("dog.jpeg", "dog.jpeg", "Siberian_husky", "Eskimo_dog");
    seed("coffee.png", "coffee.png", "cup", "coffee_mug");
    seed("chelsea.png", "<script>alert(1)</script>.png", "tiger_cat", "<img src=x onerror=alert(2)>");
}

#[test]
fn the_review_page_works_with_and_without_javascript() {
    require_tool("node", "--version");
    require_tool("npm", "--version");
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: run `make test-deps`");
    let browser_dir = common::root().join("tests/browser");
    ensure_node_modules(&browser_dir);
    let data = tempfile::tempdir().unwrap();
    seed_reports(data.path());
    let server = Server::start(data.path(), &[]);
    let status = Command::new("node")
        .args(["--test", "--test-reporter=spec", "review.test.mjs"])
        .current_dir(&browser_dir)
        .env("LENS_URL", &server.url)
        .status()
        .expect("could not run node");
    assert!(status.success(), "review page browser tests failed (see the output above)");
    server.stop();

    use lens::feedback::{FeedbackStore, ReviewFilter, ReviewStatus};
    let store = FeedbackStore::open(&data.path().join("feedback")).unwrap();
    let decided: Vec<(i64, ReviewStatus, Option<String>)> = store
        .reports(&ReviewFilter::default())
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.status(), r.review.and_then(|v| v.label)))
        .collect();
    assert_eq!(
        decided,
        [
            (1, ReviewStatus::Accepted, Some("Eskimo_dog".to_owned())),
            (2, ReviewStatus::Relabelled, Some("espresso".to_owned())),
            (3, ReviewStatus::Rejected, None),
        ]
    );
}
