//! Lens on a Redis that speaks only TLS and has an ACL user: a real
//! `redis-server --port 0 --tls-port P`, certificates from a throwaway CA the
//! test makes with the `openssl` CLI, and real `lens serve --redis` and
//! `lens worker` processes with the real model.
//!
//! Process logs go to `target/tmp/redis_tls/<test>/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::processes::{LensProcess, RedisServer, free_port};

use lens::redis::conn::{self, TlsFiles};

const PASSWORD: &str = "tls-test-s3cret-pw";
const USER: &str = "lens";

/// One test at a time: the round trip runs a model worker on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn log_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("redis_tls").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl not found: run `scripts/system-deps test`");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate signed
/// by it, and a second CA that signed nothing here. ECDSA P-256, one day.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn make() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            let (key, crt, subj) = (format!("{ca}.key"), format!("{ca}.crt"), format!("/CN=lens test {ca}"));
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &key,
                    "-out",
                    &crt,
                    "-days",
                    "1",
                    "-subj",
                    &subj,
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, cn) in [("server", "127.0.0.1"), ("client", "lens client")] {
            let (key, csr, crt, ext) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
            let subj = format!("/CN={cn}");
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &subj,
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &crt,
                    "-days",
                    "1",
                    "-extfile",
                    &ext,
                ],
            );
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

/// A `redis-server` listening only on TLS, with ACL user `lens` and the
/// default user disabled; client certificates optional.
struct TlsRedis(RedisServer);

impl TlsRedis {
    fn start(pki: &Pki, logs: &Path) -> TlsRedis {
        let port = free_port();
        let mut args: Vec<String> = vec!["--port".into(), "0".into(), "--tls-port".into(), port.to_string()];
        args.extend(["--bind", "127.0.0.1"].map(String::from));
        args.extend(["--tls-cert-file".into(), pki.arg("server.crt"), "--tls-key-file".into(), pki.arg("server.key")]);
        args.extend(["--tls-ca-cert-file".into(), pki.arg("ca.crt"), "--tls-auth-clients".into(), "optional".into()]);
        args.extend(["--save", "", "--appendonly", "no", "--dir"].map(String::from));
        args.push(logs.display().to_string());
        args.extend(["--user", USER, "on", &format!(">{PASSWORD}"), "~*", "&*", "+@all"].map(String::from));
        args.extend(["--user", "default", "off"].map(String::from));
        TlsRedis(RedisServer::start(port, args, Some(logs.join("redis.log"))))
    }

    /// `rediss://` with the user, and the password unless `None`.
    fn url(&self, password: Option<&str>) -> String {
        match password {
            Some(p) => format!("rediss://{USER}:{p}@127.0.0.1:{}", self.0.port),
            None => format!("rediss://{USER}@127.0.0.1:{}", self.0.port),
        }
    }
}

/// `lens args`, with no Redis password from this test's own environment,
/// only what `env` gives.
fn spawn_lens(logs: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> LensProcess {
    LensProcess::spawn_with(logs, name, args, |cmd| {
        cmd.env_remove(conn::PASSWORD_ENV).envs(env.iter().copied());
    })
}

fn model() -> String {
    common::root().join("models/efficientnet-lite0").display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_node_and_a_worker_round_trip_over_tls_as_an_acl_user() {
    let _serial = SERIAL.lock().await;
    let logs = log_dir("round_trip");
    let pki = Pki::make();
    let redis = TlsRedis::start(&pki, &logs);
    // The API node: password in the URL, and a client certificate (mTLS).
    let url = redis.url(Some(PASSWORD));
    let (ca, cert, key, model, data) =
        (pki.arg("ca.crt"), pki.arg("client.crt"), pki.arg("client.key"), model(), logs.join("api-data"));
    let api = spawn_lens(
        &logs,
        "api",
        &[
            "serve",
            "--redis",
            &url,
            "--redis-ca-file",
            &ca,
            "--redis-client-cert",
            &cert,
            "--redis-client-key",
            &key,
            "--addr",
            "127.0.0.1:0",
            "--model",
            &model,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    // The worker: server verification only, password from the environment.
    let worker_url = redis.url(None);
    let _worker = spawn_lens(
        &logs,
        "worker",
        &["worker", "--redis", &worker_url, "--redis-ca-file", &ca, "--model", &model, "--sessions", "1"],
        &[(conn::PASSWORD_ENV, PASSWORD)],
    );
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client.get(format!("{}/health/ready", api.url())).send().await.map(|r| r.status().as_u16());
        if ready.is_ok_and(|s| s == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "the API node never became ready over TLS; see {}", logs.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status: serde_json::Value =
        client.get(format!("{}/api/status", api.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["workers"], 1, "{status}");
    for (i, (photo, label)) in [("dog.jpeg", "Eskimo_dog"), ("coffee.png", "espresso")].into_iter().enumerate() {
        // Byte-distinct, so that no cache answers: the job goes through Redis.
        let bytes = common::variant(&common::fixture(photo), 7000 + i);
        let (code, body) = common::predict(&client, &api.url(), photo, bytes).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["prediction"], label, "{body}");
    }
    // The jobs really travelled through this Redis, as user `lens`.
    let mut c = tls_client(&redis, "ca.crt", &pki).get_multiplexed_async_connection().await.unwrap();
    let who: String = redis::cmd("ACL").arg("WHOAMI").query_async(&mut c).await.unwrap();
    assert_eq!(who, USER);
    // The worker's heartbeat (every second) reports the jobs it ran.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let beats: std::collections::HashMap<String, String> =
            redis::cmd("HGETALL").arg("lens:workers:efficientnet-lite0").query_async(&mut c).await.unwrap();
        let processed: u64 = beats
            .values()
            .map(|b| serde_json::from_str::<serde_json::Value>(b).unwrap()["processed"].as_u64().unwrap())
            .sum();
        if processed >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the worker ran {processed} jobs: {beats:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(api);
    for name in ["api", "worker"] {
        let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap();
        assert!(!log.contains(PASSWORD), "{name}'s log shows the Redis password");
    }
}

/// The client of a `redis[s]://` URL (not Sentinels).
fn server(redis: conn::Redis) -> redis::Client {
    match redis {
        conn::Redis::Server(client) => *client,
        conn::Redis::Sentinels(_) => panic!("a single server was expected"),
    }
}

fn tls_client(redis: &TlsRedis, ca: &str, pki: &Pki) -> redis::Client {
    let tls = TlsFiles { ca_file: Some(pki.path(ca)), ..Default::default() };
    server(conn::client(&redis.url(Some(PASSWORD)), &tls, None).unwrap())
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_or_a_wrong_password_is_refused() {
    let _serial = SERIAL.lock().await;
    let logs = log_dir("refused");
    let pki = Pki::make();
    let redis = TlsRedis::start(&pki, &logs);
    let ping = async |client: redis::Client| -> redis::RedisResult<String> {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async(&mut c).await
    };
    assert_eq!(ping(tls_client(&redis, "ca.crt", &pki)).await.unwrap(), "PONG");
    let err = ping(tls_client(&redis, "other-ca.crt", &pki)).await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let tls = TlsFiles { ca_file: Some(pki.path("ca.crt")), ..Default::default() };
    let wrong = server(conn::client(&redis.url(Some("not-the-password")), &tls, None).unwrap());
    let err = ping(wrong).await.unwrap_err().to_string();
    assert!(!err.contains("not-the-password"), "{err}");
    // Plain TCP to a TLS-only port gets nowhere.
    let plain = redis::Client::open(format!("redis://{USER}:{PASSWORD}@127.0.0.1:{}", redis.0.port)).unwrap();
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let plain = async {
        let mut c = plain.get_multiplexed_async_connection_with_config(&config).await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    assert!(plain.await.is_err());
}

/// Runs `lens ARGS` to its end; its exit status and stderr.
fn lens(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lens")).args(args).env_remove(conn::PASSWORD_ENV).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn redis_settings_are_checked_before_the_model_loads() {
    // The model directory does not exist: an error about Redis proves the
    // Redis settings were checked first.
    let pki = Pki::make();
    let url = format!("rediss://{USER}:{PASSWORD}@127.0.0.1:1");
    let bad: Vec<(Vec<String>, &str)> = vec![
        (vec!["--redis".into(), "redis//127.0.0.1:6379".into()], "not valid"),
        (
            vec!["--redis".into(), url.clone(), "--redis-ca-file".into(), "/nonexistent/ca.pem".into()],
            "/nonexistent/ca.pem",
        ),
        (vec!["--redis".into(), url.clone(), "--redis-ca-file".into(), pki.arg("client.key")], "CA file"),
        (
            vec!["--redis".into(), url.replace("rediss", "redis"), "--redis-ca-file".into(), pki.arg("ca.crt")],
            "rediss://",
        ),
        (
            vec![
                "--redis".into(),
                url.clone(),
                "--redis-client-cert".into(),
                pki.arg("client.crt"),
                "--redis-client-key".into(),
                pki.arg("server.key"),
            ],
            "client key",
        ),
    ];
    for (settings, expected) in bad {
        for command in ["serve", "worker"] {
            let mut args = vec![command, "--model", "/nonexistent/model"];
            if command == "serve" {
                args.extend(["--addr", "127.0.0.1:0"]);
            }
            args.extend(settings.iter().map(String::as_str));
            let (ok, stderr) = lens(&args);
            assert!(!ok, "lens {args:?} succeeded");
            assert!(stderr.contains(expected), "lens {args:?}: expected {expected:?} in {stderr}");
            assert!(!stderr.contains("/nonexistent/model"), "lens {args:?} loaded the model first: {stderr}");
            assert!(!stderr.contains(PASSWORD), "lens {args:?} shows the password: {stderr}");
        }
    }
}

// -------------------------------------------------- settings, no Redis needed
#[test]
fn passwords_never_show() {
    assert_eq!(conn::redact("rediss://lens:s3cr%40t@redis:6380/0"), "rediss://lens:***@redis:6380/0");
    assert_eq!(conn::redact("redis://:pw@h"), "redis://:***@h");
    assert_eq!(conn::redact("redis://user@h:1"), "redis://user@h:1");
    assert_eq!(conn::redact("redis://h:1/2"), "redis://h:1/2");
    assert_eq!(conn::redact("redis://u:p@ss@h/x@y"), "redis://u:***@h/x@y");
    assert_eq!(conn::redact("not a url"), "not a url");
}

#[test]
fn configuration_errors_are_caught_before_connecting() {
    let none = TlsFiles::default();
    let err = conn::client("redis//typo:6379", &none, None).unwrap_err();
    assert!(matches!(err, conn::ConfigError::Url { .. }), "{err}");
    let err = conn::client("redis://u:hunter2@[bad", &none, None).unwrap_err().to_string();
    assert!(!err.contains("hunter2"), "{err}");
    let ca = TlsFiles { ca_file: Some("/nonexistent/ca.pem".into()), ..Default::default() };
    let err = conn::client("redis://u:hunter2@h:1", &ca, None).unwrap_err();
    assert!(matches!(err, conn::ConfigError::TlsWithoutRediss(ref u) if !u.contains("hunter2")), "{err}");
    let err = conn::client("rediss://h:1", &ca, None).unwrap_err();
    assert!(matches!(err, conn::ConfigError::Unreadable { .. }), "{err}");
    let half = TlsFiles { client_cert: Some("/x".into()), ..Default::default() };
    assert!(matches!(conn::client("rediss://h:1", &half, None), Err(conn::ConfigError::HalfClientIdentity)));
    assert!(matches!(conn::client("rediss://h:1/#insecure", &none, None), Err(conn::ConfigError::Insecure(_))));
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("ca.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let err = conn::client("rediss://h:1", &TlsFiles { ca_file: Some(junk), ..Default::default() }, None).unwrap_err();
    assert!(matches!(err, conn::ConfigError::Invalid { .. }), "{err}");
}

#[test]
fn the_password_comes_from_the_url_first_then_the_environment() {
    let none = TlsFiles::default();
    let c = server(conn::client("redis://lens@h:1", &none, Some("fromenv")).unwrap());
    let settings = c.get_connection_info().redis_settings();
    assert_eq!((settings.username(), settings.password()), (Some("lens"), Some("fromenv")));
    let c = server(conn::client("redis://lens:fromurl@h:1", &none, Some("fromenv")).unwrap());
    assert_eq!(c.get_connection_info().redis_settings().password(), Some("fromurl"));
    let c = server(conn::client("redis://h:1", &none, Some("")).unwrap());
    assert_eq!(c.get_connection_info().redis_settings().password(), None);
}

/// `rediss+sentinel://`: TLS to the Sentinels and to the data nodes, with
/// the same CA file; the replica and the Sentinels reach the primary over
/// TLS too. Without the CA, a clear error at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_and_data_nodes_over_tls() {
    let _serial = SERIAL.lock().await;
    let logs = log_dir("sentinel");
    let pki = Pki::make();
    let files = [pki.path("server.crt"), pki.path("server.key"), pki.path("ca.crt")];
    let set = tokio::task::block_in_place(|| common::processes::SentinelSet::start(Some(files)));
    let url = set.url();
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    let (ca, model, data) = (pki.arg("ca.crt"), model(), logs.join("api-data"));
    let untrusted =
        Command::new(env!("CARGO_BIN_EXE_lens")).args(["worker", "--redis", &url, "--model", &model]).output().unwrap();
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(!untrusted.status.success() && stderr.contains("no primary"), "{stderr}");
    let api = spawn_lens(
        &logs,
        "api",
        &["serve", "--redis", &url, "--redis-ca-file", &ca, "--addr", "127.0.0.1:0", "--model", &model, "--data-dir"]
            .into_iter()
            .chain([data.to_str().unwrap()])
            .collect::<Vec<_>>(),
        &[],
    );
    let _worker = spawn_lens(
        &logs,
        "worker",
        &["worker", "--redis", &url, "--redis-ca-file", &ca, "--model", &model, "--sessions", "1"],
        &[],
    );
    common::wait_ready(&api.url(), Duration::from_secs(60), &logs).await;
    let client = reqwest::Client::new();
    let bytes = common::variant(&common::fixture("dog.jpeg"), 8100);
    let (code, body) = common::predict(&client, &api.url(), "dog.jpeg", bytes).await;
    assert_eq!((code, body["prediction"].as_str()), (200, Some("Eskimo_dog")), "{body}");
}
