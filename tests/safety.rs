//! Running Lens in front of real users: API keys (Bearer and Basic, admin
//! paths, reload on SIGHUP), per-client limits (429 with Retry-After),
//! bounded disk (LRU eviction, caps, a real full file system) and the bare
//! `POST /`. A real server on port 0 with the real model.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Server, fixture, form, variant};
use lens::disk::charged;
use serde_json::Value;

const ADMIN_KEY: &str = "admin-key-0123456789";
const ALICE_KEY: &str = "alice-key-0123456789";
const BOB_KEY: &str = "bob-key-0123456789";

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

async fn metrics_text(url: &str) -> String {
    reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap()
}

/// `POST /` with a photo; returns the status and the page.
async fn upload_page(c: &reqwest::Client, url: &str, name: &str, bytes: Vec<u8>) -> (u16, String) {
    let r = c.post(url).multipart(form(name, bytes)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The `/uploads/<name>` the result page shows, if the image was kept.
fn shown_image(html: &str) -> Option<String> {
    Some(html.split("/uploads/").nth(1)?.split('"').next()?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_every_endpoint_but_health() {
    let tmp = tempfile::tempdir().unwrap();
    let keys_file = tmp.path().join("keys");
    std::fs::write(&keys_file, format!("# name:key[:admin]\nalice:{ALICE_KEY}\n")).unwrap();
    let file_arg = keys_file.display().to_string();
    let s = Server::start(&["--api-key", ADMIN_KEY, "--api-keys-file", &file_arg]).await;
    let c = reqwest::Client::new();
    let dog = || form("dog.jpeg", fixture("dog.jpeg"));

    // Without a key, or with a wrong one: 401, the JSON error, a Basic challenge.
    for auth in [None, Some("Bearer wrong-key"), Some("Basic !!"), Some("Bearer ")] {
        let mut req = c.post(format!("{}/predict", s.url)).multipart(dog());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"lens\"");
        let body: Value = r.json().await.unwrap();
        assert_eq!(keys(&body), ["error", "prediction", "score", "success"]);
        assert!(body["error"].as_str().unwrap().contains("Bearer"));
    }
    for path in ["/", "/api/status", "/feedback", "/openapi.json", "/v2/models/efficientnet-lite0"] {
        assert_eq!(c.get(format!("{}{path}", s.url)).send().await.unwrap().status(), 401, "{path}");
    }
    // Health and (by default) metrics stay open.
    for path in ["/health/live", "/health/ready", "/v2/health/ready", "/metrics"] {
        assert_eq!(c.get(format!("{}{path}", s.url)).send().await.unwrap().status(), 200, "{path}");
    }

    // Bearer and Basic (any user name, the key as password) both work.
    let r = c.post(format!("{}/predict", s.url)).bearer_auth(ALICE_KEY).multipart(dog()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["prediction"], "Eskimo_dog");
    let r = c.post(&s.url).basic_auth("anyone", Some(ALICE_KEY)).multipart(dog()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Eskimo_dog"));
    let r = c.get(format!("{}/api/status", s.url)).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Admin paths: 403 for alice, through for the admin key (404: no such
    // endpoint in this build, but past the key check).
    let admin_path = format!("{}/v2/repository/index", s.url);
    let r = c.post(&admin_path).bearer_auth(ALICE_KEY).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(keys(&r.json::<Value>().await.unwrap()), ["error", "prediction", "score", "success"]);
    assert_ne!(c.post(&admin_path).bearer_auth(ADMIN_KEY).send().await.unwrap().status(), 403);
    assert_eq!(c.post(&admin_path).send().await.unwrap().status(), 401);

    // Metrics name the keys, never show them.
    let text = metrics_text(&s.url).await;
    assert!(text.contains("lens_key_requests_total{key=\"alice\"}"), "{text}");
    assert!(text.contains("reason=\"unauthorized\""));
    assert!(!text.contains(ALICE_KEY) && !text.contains(ADMIN_KEY));

    // SIGHUP reloads the file: bob in, alice out; the flag key stays.
    std::fs::write(&keys_file, format!("bob:{BOB_KEY}:admin\n")).unwrap();
    let pid = std::process::id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let status_with = |key: &'static str| {
        let req = c.get(format!("{}/api/status", s.url)).bearer_auth(key);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let mut reloaded = false;
    for _ in 0..100 {
        if status_with(BOB_KEY).await == 200 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "bob's key was not accepted after SIGHUP");
    assert_eq!(status_with(ALICE_KEY).await, 401);
    assert_eq!(status_with(ADMIN_KEY).await, 200);
    s.stop().await;

    // With --metrics-auth, /metrics needs a key too; health does not.
    let s = Server::start(&["--api-key", ADMIN_KEY, "--metrics-auth"]).await;
    assert_eq!(c.get(format!("{}/metrics", s.url)).send().await.unwrap().status(), 401);
    assert_eq!(c.get(format!("{}/metrics", s.url)).bearer_auth(ADMIN_KEY).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{}/health/ready", s.url)).send().await.unwrap().status(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_rate_gets_429_with_retry_after() {
    let s = Server::start(&["--rate-limit", "0.2", "--rate-burst", "3", "--trust-proxy"]).await;
    let c = reqwest::Client::new();
    let status = |from: &'static str| {
        let req = c.get(format!("{}/api/status", s.url)).header("x-forwarded-for", format!("203.0.113.9, {from}"));
        async move { req.send().await.unwrap() }
    };
    for _ in 0..3 {
        assert_eq!(status("198.51.100.1").await.status(), 200);
    }
    let r = status("198.51.100.1").await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "one token per 5 s: retry in {retry}");
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("too many requests"));
    // Another client (by its proxy-added address) has its own bucket; probes are never limited.
    assert_eq!(status("198.51.100.2").await.status(), 200);
    for _ in 0..5 {
        assert_eq!(c.get(format!("{}/health/ready", s.url)).send().await.unwrap().status(), 200);
    }
    assert!(s.metric("lens_rejected_requests_total").await >= 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_more_than_its_share_in_flight() {
    let s = Server::start(&["--max-inflight-per-client", "2", "--debug-slow-ms", "1500", "--cache-entries", "0"]).await;
    let c = reqwest::Client::new();
    let dog = fixture("dog.jpeg");
    let mut calls = Vec::new();
    for n in 0..4 {
        let req = c.post(format!("{}/predict", s.url)).multipart(form("dog.jpeg", variant(&dog, n)));
        calls.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.headers().get("retry-after").is_some())
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let busy = answers.iter().filter(|(s, retry)| *s == 429 && *retry).count();
    assert_eq!((ok, busy), (2, 2), "{answers:?}");
    let text = metrics_text(&s.url).await;
    assert!(text.contains("reason=\"client_busy\""), "{text}");
    // Once they finish, the client may send again.
    let r = c.post(format!("{}/predict", s.url)).multipart(form("dog.jpeg", dog)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_post_to_the_page_answers_the_page_with_a_message() {
    let s = Server::start(&[]).await;
    let c = reqwest::Client::new();
    let bare = c.post(&s.url).send().await.unwrap();
    let empty_multipart =
        c.post(&s.url).header("content-type", "multipart/form-data; boundary=x").body("").send().await.unwrap();
    let urlencoded = c.post(&s.url).form(&[("a", "b")]).send().await.unwrap();
    let no_file = c.post(&s.url).multipart(reqwest::multipart::Form::new().text("x", "y")).send().await.unwrap();
    for (what, r) in
        [("bare", bare), ("empty multipart", empty_multipart), ("urlencoded", urlencoded), ("no file", no_file)]
    {
        assert_eq!(r.status(), 200, "{what}");
        let html = r.text().await.unwrap();
        assert!(html.contains("No file selected"), "{what}: {html}");
        assert!(html.contains("enctype=\"multipart/form-data\""), "{what}: the form is there");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_uploads_are_evicted_least_recently_used_first() {
    let dog = fixture("dog.jpeg");
    let photos: Vec<Vec<u8>> = (0..7).map(|n| variant(&dog, n)).collect();
    let per_file = charged(photos[0].len() as u64);
    assert!(photos.iter().all(|p| charged(p.len() as u64) == per_file));
    let cap = (3 * per_file).to_string();
    let s = Server::start(&["--uploads-max-bytes", &cap]).await;
    let c = reqwest::Client::new();
    let mut names = Vec::new();
    for photo in &photos[..3] {
        let (status, html) = upload_page(&c, &s.url, "dog.jpeg", photo.clone()).await;
        assert_eq!(status, 200);
        names.push(shown_image(&html).expect("kept"));
    }
    let image = |name: &str| c.get(format!("{}/uploads/{name}", s.url)).send();
    // Showing A makes it recently used; D then evicts B, the least recent.
    assert_eq!(image(&names[0]).await.unwrap().status(), 200);
    let (_, html) = upload_page(&c, &s.url, "dog.jpeg", photos[3].clone()).await;
    names.push(shown_image(&html).expect("kept"));
    let present = |statuses: Vec<u16>| statuses.iter().map(|s| *s == 200).collect::<Vec<_>>();
    let mut statuses = Vec::new();
    for name in &names {
        statuses.push(image(name).await.unwrap().status().as_u16());
    }
    assert_eq!(present(statuses), [true, false, true, true], "B was evicted, A kept");
    assert_eq!(s.metric("lens_store_evictions_total").await, 1.0);
    let text = metrics_text(&s.url).await;
    assert_eq!(common::metric_in(&text, "lens_store_bytes"), (3 * per_file) as f64, "{text}");

    // A report on A copies it into the feedback store: evicting A from the
    // uploads afterwards loses nothing the report promised.
    let report = format!(r#"{{"sha256":"{}","prediction":"Eskimo_dog","score":0.6}}"#, &names[0][..64]);
    let r = c.post(format!("{}/feedback", s.url)).header("accept", "application/json").form(&[("report", report)]);
    let body: Value = r.send().await.unwrap().json().await.unwrap();
    assert_eq!(body["image_kept"], true, "{body}");
    for photo in &photos[4..] {
        upload_page(&c, &s.url, "dog.jpeg", photo.clone()).await;
    }
    assert_eq!(image(&names[0]).await.unwrap().status(), 404, "A left the uploads");
    assert!(s.data_dir.join("feedback/images").join(&names[0]).is_file(), "the report's copy stays");
    assert_eq!(uploads_in(&s.data_dir).len(), 3);
    s.stop().await;
}

/// Files in the upload store, temp files included.
fn uploads_in(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_caps_the_page_classifies_and_reports_lose_only_the_image() {
    // Caps smaller than any photo: nothing can be kept.
    let s = Server::start(&["--uploads-max-bytes", "4096", "--feedback-max-bytes", "4096"]).await;
    let c = reqwest::Client::new();
    let (status, html) = upload_page(&c, &s.url, "dog.jpeg", fixture("dog.jpeg")).await;
    assert_eq!(status, 200);
    assert!(html.contains("Predicted class: <strong>Eskimo_dog</strong>"), "{html}");
    assert!(html.contains("the image was not kept"), "{html}");
    assert_eq!(shown_image(&html), None, "no broken image link");
    assert!(uploads_in(&s.data_dir).is_empty(), "nothing half-written: {:?}", uploads_in(&s.data_dir));

    let r = c.post(format!("{}/feedback", s.url)).header("accept", "application/json").multipart(
        form("dog.jpeg", fixture("dog.jpeg")).text("predicted_label", "Eskimo_dog").text("correct_label", "malamute"),
    );
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["image_kept"], false);
    assert!(body["note"].as_str().unwrap().contains("without its image"), "{body}");
    // Without JavaScript, the page says the same.
    let r = c.post(format!("{}/feedback", s.url)).multipart(form("dog.jpeg", fixture("dog.jpeg")).text("report", "x"));
    assert!(r.send().await.unwrap().text().await.unwrap().contains("without its image"));
    let text = metrics_text(&s.url).await;
    assert!(text.contains("lens_store_refused_writes_total{store=\"feedback\",reason=\"cap\"} 2"), "{text}");
    assert!(text.contains("lens_store_cap_bytes{store=\"uploads\"} 4096"), "{text}");
    let store = lens::feedback::FeedbackStore::open(&s.data_dir.join("feedback")).unwrap();
    let rows = store.list().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|(_, _, r)| r.image_file.is_none() && r.image_sha256.is_some()));
    s.stop().await;
}

/// A 1 MiB tmpfs mounted for the test's life; unmounted on drop.
struct TinyFs {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl TinyFs {
    fn mount() -> Result<TinyFs, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(TinyFs { dir, _tmp: tmp })
    }

    /// Writes a filler file until the file system is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
        path
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_answers_500_and_recovers_by_itself() {
    let fs = match TinyFs::mount() {
        Ok(fs) => fs,
        Err(reason) => {
            println!("SKIPPED a_full_disk_never_answers_500_and_recovers_by_itself: {reason} (needs root)");
            return;
        }
    };
    let s = Server::start_in(fs.dir.clone(), &[]).await;
    let c = reqwest::Client::new();
    let feedback = |label: &'static str, with_file: bool| {
        let mut f = reqwest::multipart::Form::new().text("predicted_label", "Eskimo_dog").text("correct_label", label);
        if with_file {
            f = f.part("file", reqwest::multipart::Part::bytes(fixture("dog.jpeg")).file_name("dog.jpeg"));
        }
        c.post(format!("{}/feedback", s.url)).header("accept", "application/json").multipart(f).send()
    };
    // Works before the disk fills.
    assert_eq!(feedback("malamute", false).await.unwrap().status(), 200);

    let filler = fs.fill();
    let (status, html) = upload_page(&c, &s.url, "dog.jpeg", variant(&fixture("dog.jpeg"), 1)).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Predicted class: <strong>Eskimo_dog</strong>"), "{html}");
    assert!(html.contains("the image was not kept"), "{html}");
    let (status, body) = common::predict(&c, &s.url, "dog.jpeg", fixture("dog.jpeg")).await;
    assert_eq!((status, body["prediction"].as_str()), (200, Some("Eskimo_dog")));
    for with_file in [false, true] {
        let r = feedback("husky", with_file).await.unwrap();
        assert_eq!(r.status(), 507, "with_file={with_file}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("could not be stored"), "{body}");
    }
    let temps = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
            .count()
    };
    assert_eq!(temps(&fs.dir.join("uploads")), 0, "temp files are removed");
    assert_eq!(temps(&fs.dir.join("feedback/images")), 0, "temp files are removed");

    // Space returns: everything works again, nothing to restart.
    std::fs::remove_file(filler).unwrap();
    let r = feedback("husky", true).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["image_kept"], true);
    let (status, html) = upload_page(&c, &s.url, "dog.jpeg", variant(&fixture("dog.jpeg"), 2)).await;
    assert_eq!(status, 200);
    assert!(shown_image(&html).is_some(), "kept again");
    let text = metrics_text(&s.url).await;
    let five_hundreds: f64 = text
        .lines()
        .filter(|l| l.starts_with("lens_http_requests_total") && l.contains("status=\"500\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(five_hundreds, 0.0, "{text}");
    assert!(text.contains("reason=\"disk_full\""), "{text}");
    s.stop().await;
    let store = lens::feedback::FeedbackStore::open(&fs.dir.join("feedback")).unwrap();
    assert_eq!(store.count().unwrap(), 2, "the report before and the one after; none half-written");
}
