//! Child processes of the multi-process tests, each killed on drop: a
//! `redis-server` of the test's own, and `lens` binaries.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A loopback port that nothing listened on when asked.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends the signal `name` (e.g. `TERM`) to `child`.
pub fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap();
    assert!(ok.success());
}

/// A `redis-server` on loopback, run with the flags it was started with.
pub struct RedisServer {
    pub port: u16,
    args: Vec<String>,
    /// Where its stdout goes (appended across restarts); none: discarded.
    log: Option<PathBuf>,
    child: Option<Child>,
    /// The working directory of [`RedisServer::plain`]: its append-only file
    /// outlives a restart.
    _dir: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// A plain server on a free port with no snapshots; with `appendonly`,
    /// every write goes to an append-only file in a directory of its own.
    pub fn plain(appendonly: bool) -> RedisServer {
        let (port, dir) = (free_port(), tempfile::tempdir().unwrap());
        let mut args: Vec<String> =
            ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""].map(String::from).into();
        args.extend(["--appendonly", if appendonly { "yes" } else { "no" }].map(String::from));
        args.extend(["--dir".to_owned(), dir.path().display().to_string()]);
        let mut redis = RedisServer::start(port, args, None);
        redis._dir = Some(dir);
        redis
    }

    /// Runs `redis-server` with `args`, which must make it listen on `port`
    /// (plain or TLS), its stdout appended to `log`; returns once the port
    /// accepts connections.
    pub fn start(port: u16, args: Vec<String>, log: Option<PathBuf>) -> RedisServer {
        let mut redis = RedisServer { port, args, log, child: None, _dir: None };
        redis.restart();
        redis
    }

    /// Starts it again with the same flags, after [`RedisServer::stop`].
    pub fn restart(&mut self) {
        let stdout = match &self.log {
            Some(path) => Stdio::from(OpenOptions::new().create(true).append(true).open(path).unwrap()),
            None => Stdio::null(),
        };
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(stdout)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: run `scripts/system-deps test`");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let see = self.log.as_ref().map(|p| format!("; see {}", p.display())).unwrap_or_default();
            assert!(Instant::now() < deadline, "redis-server did not start{see}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Graceful stop: SIGTERM, on which Redis flushes its append-only file.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    /// Hard kill (SIGKILL): no flush, no goodbye, as a machine dies.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis://127.0.0.1:PORT`, for a server without TLS.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `lens` process.
pub struct LensProcess {
    pub child: Child,
    /// The first stdout line: where it listens, or that the worker serves.
    pub banner: String,
    /// An API node's gRPC address (`host:port`), from the line after the banner.
    pub grpc: Option<String>,
}

impl LensProcess {
    /// Runs `lens args`, its stderr to `logs/NAME.log`; returns once it
    /// prints its banner.
    pub fn spawn(logs: &Path, name: &str, args: &[&str]) -> LensProcess {
        LensProcess::spawn_with(logs, name, args, |_| {})
    }

    /// [`LensProcess::spawn`], with `setup` adjusting the command first (its
    /// environment, say).
    pub fn spawn_with(logs: &Path, name: &str, args: &[&str], setup: impl FnOnce(&mut Command)) -> LensProcess {
        let log_path = logs.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lens"));
        // A free port for the gRPC front, so that API nodes never collide.
        cmd.args(args).env("LENS_GRPC_ADDR", "127.0.0.1:0");
        setup(&mut cmd);
        let mut child = cmd.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let want = |l: &String| l.starts_with("listening on http://") || l.starts_with("worker ");
        let banner = loop {
            match rx.recv_timeout(Duration::from_secs(90)) {
                Ok(line) if want(&line) => break line,
                Ok(_) => continue,
                Err(e) => panic!("{name} did not start ({e}); see {}", log_path.display()),
            }
        };
        let grpc = match banner.starts_with("listening on ") {
            true => rx
                .recv_timeout(Duration::from_secs(5))
                .ok()
                .and_then(|l| l.strip_prefix("grpc listening on ").map(str::to_owned)),
            false => None,
        };
        LensProcess { child, banner, grpc }
    }

    /// The base URL an API node printed.
    pub fn url(&self) -> String {
        self.banner.trim_start_matches("listening on ").to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LensProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis high availability on loopback: a primary, one replica and three
/// Sentinels (quorum 2, `down-after-milliseconds` 1000) watching the service
/// [`SentinelSet::SERVICE`]. `tls`: every server and Sentinel speaks only TLS
/// with these `(cert, key, ca)` files, and the replica and Sentinels use it
/// to reach the primary.
pub struct SentinelSet {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
    tls: Option<[PathBuf; 3]>,
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    pub const SERVICE: &'static str = "lens";

    pub fn start(tls: Option<[PathBuf; 3]>) -> SentinelSet {
        let dir = tempfile::tempdir().unwrap();
        let tls_args = |port: u16| -> Vec<String> {
            match &tls {
                None => vec!["--port".into(), port.to_string()],
                Some([cert, key, ca]) => [
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--tls-cert-file",
                    cert.to_str().unwrap(),
                    "--tls-key-file",
                    key.to_str().unwrap(),
                    "--tls-ca-cert-file",
                    ca.to_str().unwrap(),
                    "--tls-replication",
                    "yes",
                    "--tls-auth-clients",
                    "no",
                ]
                .map(String::from)
                .into(),
            }
        };
        let data = |name: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            let mut args: Vec<String> =
                ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"].map(String::from).into();
            args.push(d.display().to_string());
            args
        };
        let (p, r) = (free_port(), free_port());
        let primary =
            RedisServer::start(p, [tls_args(p), data("primary")].concat(), Some(dir.path().join("primary.log")));
        let mut replica_args = [tls_args(r), data("replica")].concat();
        replica_args.extend(["--replicaof".to_owned(), "127.0.0.1".to_owned(), p.to_string()]);
        let replica = RedisServer::start(r, replica_args, Some(dir.path().join("replica.log")));
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            let mut text = format!(
                "bind 127.0.0.1\nsentinel monitor {s} 127.0.0.1 {p} 2\nsentinel down-after-milliseconds {s} 1000\n\
                 sentinel failover-timeout {s} 10000\nsentinel parallel-syncs {s} 1\n",
                s = Self::SERVICE
            );
            match &tls {
                None => text.push_str(&format!("port {port}\n")),
                Some([cert, key, ca]) => text.push_str(&format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                     tls-replication yes\ntls-auth-clients no\n",
                    cert.display(),
                    key.display(),
                    ca.display()
                )),
            }
            std::fs::write(&conf, text).unwrap();
            let args = vec![conf.display().to_string(), "--sentinel".to_owned()];
            sentinels.push(RedisServer::start(port, args, Some(dir.path().join(format!("sentinel-{i}.log")))));
        }
        let set = SentinelSet { primary, replica, sentinels, tls, _dir: dir };
        // Ready once the replica is in sync and every Sentinel knows both
        // servers and the other Sentinels.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = set.cli(set.replica.port, &["INFO", "replication"]).contains("master_link_status:up");
            let known = set.sentinels.iter().all(|s| {
                let info = set.cli(s.port, &["SENTINEL", "MASTER", Self::SERVICE]);
                let field = |name: &str| info.lines().skip_while(|l| *l != name).nth(1).map(str::to_owned);
                field("num-slaves").as_deref() == Some("1") && field("num-other-sentinels").as_deref() == Some("2")
            });
            if synced && known {
                return set;
            }
            assert!(Instant::now() < deadline, "the Sentinel set did not settle; see {}", set._dir.path().display());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis-cli` against the server or Sentinel on `port`; its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
        if let Some([cert, key, ca]) = &self.tls {
            cmd.args(["--tls", "--cert"]).arg(cert).arg("--key").arg(key).arg("--cacert").arg(ca);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The Sentinels' URL for Lens.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        let scheme = if self.tls.is_some() { "rediss+sentinel" } else { "redis+sentinel" };
        format!("{scheme}://{}/{}", hosts.join(","), Self::SERVICE)
    }

    /// The primary's port as the first Sentinel that answers names it.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let out = self.cli(s.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::SERVICE]);
            out.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// Waits until the Sentinels name a primary other than `old`; its port.
    pub fn wait_for_new_primary(&self, old: u16, limit: Duration) -> u16 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(port) = self.primary_port().filter(|p| *p != old) {
                return port;
            }
            assert!(Instant::now() < deadline, "no failover within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
