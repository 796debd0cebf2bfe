"""Starting and stopping the Lens under test, on 127.0.0.1 only.

``Topology`` is one fresh Lens: ``lens serve`` alone, or an API node with a
private redis-server and N ``lens worker`` processes. It binds port 0 and
reads the address back from the log line ``listening on http://...``, so
two runs never race for a port. ``stop()`` ends what it started (SIGTERM,
then SIGKILL after 20 s).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import multipart
from .machine import ROOT, free_port
from .photos import FIXTURES
from .prometheus import parse_metrics

DEFAULT_LENS = ROOT / "target" / "release" / "lens"


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def post_file(url: str, path: Path, timeout: float = 30.0) -> int:
    """POST one file as the multipart part ``file``; the status, 0 if none."""
    body = multipart.file_body(path.read_bytes(), path.name)
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", multipart.CONTENT_TYPE)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


def warm_up(url: str) -> None:
    """First model calls are slow (allocation, caches): a few photos the loads never send, and the page."""
    for name in ("grace_hopper.jpg", "coffee.png", "chelsea.png", "grace_hopper.jpg"):
        post_file(url + "/predict", FIXTURES / name)
    http_get(url + "/")


def scrape(url: str) -> dict[str, float]:
    """One Lens process's /metrics as {'name{labels}': value}; empty if it did not answer."""
    status, body = http_get(url + "/metrics")
    return parse_metrics(body.decode(errors="replace")) if status == 200 else {}


def private_copy(lens: Path, folder: Path) -> Path:
    """Copy the binary aside: other engineers may rebuild target/release/lens mid-run."""
    if not lens.exists():
        raise SystemExit(f"{lens}: not built; run `make setup` (or cargo build --release)")
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "lens"
    shutil.copy2(lens, copy)
    return copy


def redis_unavailable(lens: Path) -> tuple[str | None, bool]:
    """(why Redis topologies cannot run or None, whether workers serve their own /metrics)."""
    try:
        r = subprocess.run([str(lens), "worker", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`lens worker --help` failed ({e})", False
    if r.returncode != 0:
        return "`lens worker --help` failed: this build has no Redis worker", False
    if not shutil.which("redis-server"):
        return "redis-server is not installed (apt-get install redis-server)", False
    return None, "--health-addr" in r.stdout


def serve_flags(lens: Path) -> str:
    """`lens serve --help`, to learn which optional flags this build has."""
    try:
        return subprocess.run([str(lens), "serve", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


class Topology:
    """One fresh Lens (and, with workers, a private redis-server); logs go to ``logdir``."""

    def __init__(
        self,
        lens: Path,
        logdir: Path,
        workers: int = 0,
        serve_args: list[str] | None = None,
        worker_args: list[str] | None = None,
        data_dir: Path | None = None,
        worker_health: bool = False,
    ):
        self.lens = lens
        self.logdir = logdir
        self.workers = workers
        self.serve_args = serve_args or []
        self.worker_args = worker_args or []
        self.data_dir = data_dir or logdir / "data"
        # Workers serve /health and /metrics themselves (`--health-addr`).
        self.worker_health = worker_health
        self.procs: dict[str, subprocess.Popen] = {}
        self.url = ""
        # Where /metrics can be read: the API node, and each worker that serves its own.
        self.metrics_urls: list[str] = []

    def _spawn(self, key: str, argv: list[str]) -> subprocess.Popen:
        with open(self.logdir / f"{key}.log", "wb") as logf:
            # A free port for the gRPC front unless the caller chose one, so servers never collide.
            env = {"LENS_GRPC_ADDR": "127.0.0.1:0", **os.environ}
            p = subprocess.Popen(argv, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.procs[key] = p
        return p

    def lens_pids(self) -> dict[str, int]:
        return {k: p.pid for k, p in self.procs.items() if k != "redis" and p.poll() is None}

    def _start_redis(self) -> list[str]:
        port = free_port()
        self._spawn(
            "redis",
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "yes", "--loglevel", "warning"],
        )
        end = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return ["--redis", f"redis://127.0.0.1:{port}"]
            except OSError:
                pass
            if time.monotonic() > end:
                raise RuntimeError("redis-server did not answer PING")
            time.sleep(0.1)

    def start(self, timeout: float = 90) -> str:
        """Start everything, wait until ready; the API node's URL."""
        self.logdir.mkdir(parents=True, exist_ok=True)
        redis_args = self._start_redis() if self.workers else []
        self.data_dir.mkdir(parents=True, exist_ok=True)
        serve = self._spawn(
            "serve",
            [str(self.lens), "serve", "--addr", "127.0.0.1:0", "--data-dir", str(self.data_dir), *redis_args, *self.serve_args],
        )
        worker_urls = []
        for i in range(self.workers):
            extra = []
            if self.worker_health:
                port = free_port()
                extra = ["--health-addr", f"127.0.0.1:{port}"]
                worker_urls.append(f"http://127.0.0.1:{port}")
            self._spawn(f"worker{i + 1}", [str(self.lens), "worker", *redis_args, *extra, *self.worker_args])
        end = time.monotonic() + timeout
        logp = self.logdir / "serve.log"
        while not self.url:
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", logp.read_text(errors="replace"))
            if m:
                self.url = m.group(1)
            elif serve.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"lens serve did not start; see {logp}")
            else:
                time.sleep(0.1)
        while http_get(self.url + "/health/ready")[0] != 200:
            if serve.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"lens serve never became ready; see {logp}")
            time.sleep(0.2)
        for wurl in worker_urls:
            while http_get(wurl + "/health/ready")[0] != 200:
                if time.monotonic() > end:
                    raise RuntimeError(f"a worker never became ready at {wurl}")
                time.sleep(0.2)
        for k, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{k} exited at start-up; see {self.logdir / (k + '.log')}")
        self.metrics_urls = [self.url, *worker_urls]
        return self.url

    def scrape(self) -> dict[str, float]:
        """Every process's metrics, summed (counters and histograms add up)."""
        total: dict[str, float] = {}
        for u in self.metrics_urls:
            for k, v in scrape(u).items():
                total[k] = total.get(k, 0.0) + v
        return total

    def stop(self) -> None:
        """Workers first, then the API node, then Redis: the drain order."""
        order = [k for k in self.procs if k.startswith("worker")] + ["serve", "redis"]
        for k in order:
            p = self.procs.get(k)
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for k in order:
            p = self.procs.get(k)
            if p is None:
                continue
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
