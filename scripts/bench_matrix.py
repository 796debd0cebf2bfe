#!/usr/bin/env python3
"""Lens's load-test matrix (run it through scripts/bench).

For every row, Lens is started fresh (cold cache, fresh peak RSS) on
127.0.0.1 with a free port, warmed up with a few requests, loaded for a
bounded time, measured, and stopped. Rows:

* ``original``: locust, users alternate GET / and POST /predict of dog.jpeg,
  ``between(1, 5)`` (the original's test), at each user count.
* ``distinct``: the same, but every POST is a different photo.
* ``closed``: closed-loop maximum throughput with distinct photos, no wait:
  once with locust users, once with the asyncio client (a much cheaper
  generator, so the two together show when locust is the limit).
* ``open``: open loop (asyncio client, fixed arrival rate, distinct photos)
  at fractions of the best closed-loop rate just measured, by default 50%
  (latency at moderate load) and 150% (overload: Lens should shed with 429).

Topologies: ``inproc`` (one ``lens serve``), ``redis1``/``redis2`` (``lens
serve --redis`` plus 1 or 2 ``lens worker --redis``, a private redis-server
on a free loopback port); Redis rows are skipped with a note when ``lens
worker --help`` fails or redis-server is missing.

The ceiling: ``lens bench --model-only`` and ``lens bench --pipeline`` when
``lens bench --help`` works ("n/a" otherwise).

Everything a run produces goes to target/bench/<time>/ (results.json, per-row
logs and locust CSVs); the report and plot go to docs/ (full run) or next to
results.json (--quick), unless --out says otherwise. ``--report-only
results.json`` redraws a report from saved results.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = ROOT / ".venv" / "bin" / "python"
LOCUST = ROOT / ".venv" / "bin" / "locust"
LOCUSTFILE = ROOT / "stress_test" / "locustfile.py"
OPENLOOP = ROOT / "scripts" / "bench_openloop.py"
MAKE_IMAGES = ROOT / "scripts" / "make_distinct_images.py"
FIXTURES = ROOT / "tests" / "fixtures"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

TOPOLOGIES = {"inproc": 0, "redis1": 1, "redis2": 2}
SCENARIOS = ("original", "distinct", "closed", "open")

# The original system's report: locust, 200 users, mixed GET / and POST /predict.
YARDSTICK = [
    ("1 model container, 200 users", "7.1", "18.2 s", "0-1.9%"),
    ("4 containers, 200 users", "19.8", "4.9 s", "7.8%"),
    ("4 containers, 600 users", "19.7", "16.7 s", "7.4%"),
    ("above 600 users", "-", "-", "unstable, ~50% errors"),
]
P99_GOAL_MS = 100.0
RSS_GOAL_MB = 300.0
CEILING_FRACTION_GOAL = 0.80
CEILING_REFERENCE = 110.0  # img/s: the model-only figure quoted for this machine


# ---------------------------------------------------------------- helpers --


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process, all its threads."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def sys_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + vals[4]  # idle + iowait
    total = sum(vals[:8])  # guest time is already in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def wait_idle(max_wait: float, threshold: float = 0.35) -> float:
    """Wait (at most max_wait s) until the machine's other work uses < threshold cores; return what it used."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, _ = sys_cpu()
        t0 = time.monotonic()
        time.sleep(2.0)
        b1, _ = sys_cpu()
        busy = (b1 - b0) / (time.monotonic() - t0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def http_post_file(url: str, path: Path, timeout: float = 30.0) -> int:
    boundary = "lens-bench-warmup"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape(url: str) -> dict[str, float]:
    """Prometheus text to {'name{labels}': value}."""
    status, body = http_get(url + "/metrics")
    out: dict[str, float] = {}
    if status != 200:
        return out
    for line in body.decode(errors="replace").splitlines():
        m = _METRIC.match(line)
        if m:
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict:
    d = {k: v - before.get(k, 0.0) for k, v in after.items()}

    def get(name: str) -> float:
        return d.get(name, 0.0)

    def family(prefix: str) -> dict[str, float]:
        res = {}
        for k, v in d.items():
            if k.startswith(prefix + "{") and v:
                m = re.search(r'reason="([^"]*)"', k)
                res[m.group(1) if m else k] = v
        return res

    def stage(stage: str) -> dict:
        s = get(f'lens_stage_duration_seconds_sum{{stage="{stage}"}}')
        c = get(f'lens_stage_duration_seconds_count{{stage="{stage}"}}')
        return {"count": c, "mean_ms": round(1000 * s / c, 2) if c else None}

    def route(r: str) -> dict:
        s = get(f'lens_http_request_duration_seconds_sum{{route="{r}"}}')
        c = get(f'lens_http_request_duration_seconds_count{{route="{r}"}}')
        return {"count": c, "mean_ms": round(1000 * s / c, 2) if c else None}

    statuses = {}
    for k, v in d.items():
        m = re.match(r'lens_http_requests_total\{route="/predict",status="(\d+)"\}', k) or re.match(
            r'lens_http_requests_total\{status="(\d+)",route="/predict"\}', k
        )
        if m and v:
            statuses[m.group(1)] = v
    bs, bc = get("lens_batch_size_sum"), get("lens_batch_size_count")
    return {
        "available": bool(after),
        "inferred_images": get("lens_inferred_images_total"),
        "cache_hits": get("lens_cache_hits_total"),
        "cache_misses": get("lens_cache_misses_total"),
        "coalesced": get("lens_coalesced_requests_total"),
        "rejected": family("lens_rejected_requests_total"),
        "dropped": family("lens_dropped_jobs_total"),
        "predict_status": statuses,
        "decode": stage("decode"),
        "queue_wait": stage("queue_wait"),
        "inference": stage("inference"),
        "batches": bc,
        "mean_batch": round(bs / bc, 2) if bc else None,
        "server_predict": route("/predict"),
    }


def git_info() -> dict:
    def run(*a: str) -> str:
        try:
            return subprocess.run(a, cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {"commit": run("git", "rev-parse", "--short", "HEAD"), "dirty": bool(run("git", "status", "--porcelain", "src"))}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def deadline_from(serve_args: list[str]) -> float:
    for i, a in enumerate(serve_args):
        if a == "--deadline-secs" and i + 1 < len(serve_args):
            return float(serve_args[i + 1])
        if a.startswith("--deadline-secs="):
            return float(a.split("=", 1)[1])
    return float(os.environ.get("LENS_DEADLINE_SECS", "30"))


# --------------------------------------------------------------- topology --


class Topology:
    """One fresh Lens (and, for Redis, a private redis-server and workers)."""

    def __init__(self, name: str, lens: Path, rowdir: Path, serve_args: list[str], worker_args: list[str]):
        self.name = name
        self.workers_n = TOPOLOGIES[name]
        self.lens = lens
        self.rowdir = rowdir
        self.serve_args = serve_args
        self.worker_args = worker_args
        self.procs: dict[str, subprocess.Popen] = {}
        self.url = ""
        # Where /metrics can be read: the API node, and each worker that
        # serves its own (`lens worker --health-addr`).
        self.metrics_urls: list[str] = []
        self.worker_health = False

    def _spawn(self, key: str, argv: list[str]) -> subprocess.Popen:
        logf = open(self.rowdir / f"{key}.log", "wb")
        p = subprocess.Popen(argv, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logf.close()
        self.procs[key] = p
        return p

    def lens_pids(self) -> dict[str, int]:
        return {k: p.pid for k, p in self.procs.items() if k != "redis" and p.poll() is None}

    def start(self) -> str:
        redis_args: list[str] = []
        if self.workers_n:
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
                            break
                except OSError:
                    pass
                if time.monotonic() > end:
                    raise RuntimeError("redis-server did not answer PING")
                time.sleep(0.1)
            redis_args = ["--redis", f"redis://127.0.0.1:{port}"]
        data = self.rowdir / "data"
        data.mkdir(exist_ok=True)
        serve = self._spawn(
            "serve", [str(self.lens), "serve", "--addr", "127.0.0.1:0", "--data-dir", str(data), *redis_args, *self.serve_args]
        )
        worker_urls = []
        for i in range(self.workers_n):
            extra = []
            if self.worker_health:
                port = free_port()
                extra = ["--health-addr", f"127.0.0.1:{port}"]
                worker_urls.append(f"http://127.0.0.1:{port}")
            self._spawn(f"worker{i + 1}", [str(self.lens), "worker", *redis_args, *extra, *self.worker_args])
        end = time.monotonic() + 90
        logp = self.rowdir / "serve.log"
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
                raise RuntimeError(f"{k} exited at start-up; see {self.rowdir / (k + '.log')}")
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


def redis_unavailable(lens: Path) -> tuple[str | None, bool]:
    """(why Redis rows cannot run or None, whether workers serve their own /metrics)."""
    try:
        r = subprocess.run([str(lens), "worker", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`lens worker --help` failed ({e})", False
    if r.returncode != 0:
        return "`lens worker --help` failed: this build has no Redis worker", False
    if not shutil.which("redis-server"):
        return "redis-server is not installed (apt-get install redis-server)", False
    return None, "--health-addr" in r.stdout


# -------------------------------------------------------------------- rows --


@dataclass
class Row:
    id: str
    scenario: str  # original | distinct | closed | open
    generator: str  # locust | asyncio
    topology: str
    users: int = 0  # locust users or asyncio concurrency
    rate: float = 0.0  # open loop, arrivals/s
    rate_fraction: float = 0.0  # of the best closed-loop rate, when derived from it
    run_time: int = 60
    skipped: str = ""
    result: dict = field(default_factory=dict)

    @property
    def load(self) -> str:
        if self.scenario == "open":
            frac = f" ({self.rate_fraction:.0%} of max)" if self.rate_fraction else ""
            return f"{self.rate:.0f}/s open loop{frac}"
        if self.scenario == "closed":
            return f"{self.users} {'users' if self.generator == 'locust' else 'clients'}, no wait"
        return f"{self.users} users"


def build_matrix(args) -> list[Row]:
    rows: list[Row] = []
    for topo in args.topologies:
        for sc in ("closed",):
            if sc in args.scenarios:
                if "locust" in args.generators:
                    rows.append(Row(f"{topo}-closed-locust", "closed", "locust", topo, users=args.closed_users, run_time=args.closed_time))
                if "asyncio" in args.generators:
                    rows.append(Row(f"{topo}-closed-asyncio", "closed", "asyncio", topo, users=args.closed_users, run_time=args.closed_time))
        if "open" in args.scenarios:
            if args.open_rates:
                for r in args.open_rates:
                    rows.append(Row(f"{topo}-open-{r:g}", "open", "asyncio", topo, rate=r, run_time=args.open_time))
            else:
                for f in args.open_fractions:
                    rows.append(Row(f"{topo}-open-{round(f * 100)}pct", "open", "asyncio", topo, rate_fraction=f, run_time=args.open_time))
        for sc in ("original", "distinct"):
            if sc in args.scenarios and "locust" in args.generators:
                for u in args.users:
                    rows.append(Row(f"{topo}-{sc}-{u}", sc, "locust", topo, users=u, run_time=args.run_time))
    if args.only:
        rx = re.compile(args.only)
        rows = [r for r in rows if rx.search(r.id)]
    return rows


def run_locust(row: Row, url: str, rowdir: Path, args) -> tuple[subprocess.Popen, list[str]]:
    scenario = row.scenario
    ramp = args.ramp
    spawn = max(1.0, row.users / ramp)
    argv = [
        str(LOCUST), "-f", str(LOCUSTFILE), "--host", url, "--headless",
        "-u", str(row.users), "-r", f"{spawn:g}", "-t", f"{row.run_time}s",
        "--csv", str(rowdir / "locust"), "--only-summary", "--reset-stats",
        "--exit-code-on-error", "0", "--loglevel", "INFO",
    ]
    if args.locust_processes > 1:
        argv += ["--processes", str(args.locust_processes)]
    env = dict(os.environ)
    env.update(
        LENS_SCENARIO=scenario,
        LENS_LOCUST_USAGE_DIR=str(rowdir / "locust-usage"),
        PYTHONUNBUFFERED="1",
    )
    if args.images_dir:
        env["LENS_IMAGES_DIR"] = str(args.images_dir)
    out = open(rowdir / "generator.log", "wb")
    p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    out.close()
    return p, argv


def run_asyncio(row: Row, url: str, rowdir: Path, args, deadline: float) -> tuple[subprocess.Popen, list[str]]:
    argv = [str(PY), str(OPENLOOP), "--url", url, "--duration", str(row.run_time), "--json", str(rowdir / "asyncio.json"),
            "--grace", f"{deadline + 10:g}"]
    if row.scenario == "open":
        argv += ["--rate", f"{row.rate:g}"]
    else:
        argv += ["--concurrency", str(row.users)]
    if args.images_dir:
        argv += ["--images-dir", str(args.images_dir)]
    out = open(rowdir / "generator.log", "wb")
    p = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    out.close()
    return p, argv


def num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def parse_locust(rowdir: Path) -> dict:
    path = rowdir / "locust_stats.csv"
    if not path.exists():
        return {"error": "locust wrote no stats"}
    stats = list(csv.DictReader(path.open()))
    pred = [r for r in stats if r["Name"].startswith("/predict")]
    ok = next((r for r in stats if r["Name"] == "/predict"), None)
    get = next((r for r in stats if r["Name"] == "/"), None)
    agg = next((r for r in stats if r["Name"] == "Aggregated"), None)
    total_req = sum(int(r["Request Count"]) for r in pred)
    total_fail = sum(int(r["Failure Count"]) for r in pred)
    get_req = int(get["Request Count"]) if get else 0
    get_fail = int(get["Failure Count"]) if get else 0
    by_name = {r["Name"]: int(r["Request Count"]) for r in pred}
    res = {
        "predict_requests": total_req,
        "predict_failures": total_fail,
        "predict_ok": int(ok["Request Count"]) - int(ok["Failure Count"]) if ok else 0,
        "get_requests": get_req,
        "get_failures": get_fail,
        "outcomes": by_name,
        "predict_rps": round(sum(num(r["Requests/s"]) or 0 for r in pred), 2),
        "ok_rps": round(num(ok["Requests/s"]) or 0, 2) if ok else 0.0,
        "ok_ms": {q: num(ok[f"{q[1:]}%"]) if ok else None for q in ("p50", "p95", "p99")},
        "ok_mean_ms": round(num(ok["Average Response Time"]) or 0, 1) if ok else None,
        "get_ms": {q: num(get[f"{q[1:]}%"]) if get else None for q in ("p50", "p99")},
        "all_mean_ms": num(agg["Average Response Time"]) if agg else None,
    }
    fpath = rowdir / "locust_failures.csv"
    if fpath.exists():
        res["failure_messages"] = {f"{r['Name']}: {r['Error']}": int(r["Occurrences"]) for r in csv.DictReader(fpath.open())}
    text = (rowdir / "generator.log").read_text(errors="replace") if (rowdir / "generator.log").exists() else ""
    res["cpu_warning"] = "CPU usage above" in text
    samples, warnings = [], 0
    for f in (rowdir / "locust-usage").glob("usage-*.json"):
        try:
            u = json.loads(f.read_text())
        except ValueError:
            continue
        samples += u.get("cpu_samples", [])
        warnings += u.get("cpu_warnings", 0)
    res["cpu_warning"] = res["cpu_warning"] or warnings > 0
    res["locust_cpu_max_pct"] = max(samples) if samples else None
    return res


def parse_asyncio(rowdir: Path) -> dict:
    path = rowdir / "asyncio.json"
    if not path.exists():
        return {"error": "the asyncio client wrote no summary"}
    a = json.loads(path.read_text())
    st = {int(k): v for k, v in a["status"].items()}
    reqs = a["requests"]
    fails = reqs - a["ok"]
    outcomes = {"/predict": a["ok"]}
    for code, n in st.items():
        if code != 200:
            outcomes[f"/predict [{code if code else 'no response'}]"] = n
    for k, n in a.get("errors", {}).items():
        outcomes[f"error: {k}"] = n
    return {
        "predict_requests": reqs,
        "predict_failures": fails,
        "predict_ok": a["ok"],
        "get_requests": 0,
        "get_failures": 0,
        "outcomes": outcomes,
        "predict_rps": a["requests_per_sec"],
        "ok_rps": a["ok_per_sec"],
        "ok_ms": a["ok_ms"],
        "ok_mean_ms": a["ok_mean_ms"],
        "all_ms": a["all_ms"],
        "send_lag_ms": a["send_lag_ms"],
        "skipped_at_cap": a["skipped_at_cap"],
        "send_span_s": a.get("send_span_s"),
        "offered_per_sec": a.get("offered_per_sec"),
        "cpu_warning": False,
    }


def run_row(row: Row, lens: Path, outdir: Path, args) -> None:
    rowdir = outdir / row.id
    rowdir.mkdir(parents=True, exist_ok=True)
    other_before = wait_idle(args.idle_wait) if args.idle_wait > 0 else None
    topo = Topology(row.topology, lens, rowdir, args.serve_args, args.worker_args)
    topo.worker_health = args.worker_health
    gen = None
    res: dict = {"other_cpu_before": round(other_before, 2) if other_before is not None else None}
    try:
        url = topo.start()
        # Warm-up: first model calls are slow (allocation, caches). Photos the
        # scenarios never send, so no cache entry is left behind that matters.
        for name in ("grace_hopper.jpg", "coffee.png", "chelsea.png", "grace_hopper.jpg"):
            http_post_file(url + "/predict", FIXTURES / name)
        http_get(url + "/")
        m0 = topo.scrape()
        pids = topo.lens_pids()
        # CPU of the system under test counts redis-server too; RSS is Lens's only.
        cpu_pids = {**pids, **({"redis": topo.procs["redis"].pid} if "redis" in topo.procs else {})}
        lens_cpu0 = {k: proc_cpu_s(pid) or 0.0 for k, pid in cpu_pids.items()}
        sys0, ch0, t0 = sys_cpu()[0], children_cpu_s(), time.monotonic()
        if row.generator == "locust":
            gen, argv = run_locust(row, url, rowdir, args)
        else:
            gen, argv = run_asyncio(row, url, rowdir, args, args.deadline)
        res["generator_argv"] = " ".join(shlex.quote(a) for a in argv)
        limit = row.run_time + args.deadline + 60
        try:
            gen.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(gen.pid, signal.SIGTERM)
            try:
                gen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(gen.pid, signal.SIGKILL)
                gen.wait()
            res["generator_timeout"] = True
        elapsed = time.monotonic() - t0
        sys1, ch1 = sys_cpu()[0], children_cpu_s()
        lens_cpu1 = {k: proc_cpu_s(pid) for k, pid in cpu_pids.items()}
        hwm = {k: vm_kb(pid, "VmHWM") for k, pid in pids.items()}
        m1 = topo.scrape()
        alive = {k: p.poll() is None for k, p in topo.procs.items()}
        lens_cpu = sum((lens_cpu1[k] or lens_cpu0[k]) - lens_cpu0[k] for k in cpu_pids)
        gen_cpu = ch1 - ch0
        busy = sys1 - sys0
        res.update(
            elapsed_s=round(elapsed, 1),
            lens_cpu_cores=round(lens_cpu / elapsed, 2),
            gen_cpu_cores=round(gen_cpu / elapsed, 2),
            other_cpu_cores=round(max(0.0, busy - lens_cpu - gen_cpu) / elapsed, 2),
            lens_cpu_s=round(lens_cpu, 2),
            peak_rss_mb={k: round(v / 1024, 1) for k, v in hwm.items() if v},
            processes_alive=alive,
            metrics=metrics_delta(m0, m1),
            generator_rc=gen.returncode,
        )
        res.update(parse_locust(rowdir) if row.generator == "locust" else parse_asyncio(rowdir))
    except Exception as e:  # a row that fails is reported, the matrix goes on
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        if gen is not None and gen.poll() is None:
            os.killpg(gen.pid, signal.SIGKILL)
            gen.wait()
        topo.stop()
    if not args.keep_data:
        shutil.rmtree(rowdir / "data", ignore_errors=True)
    row.result = res
    judge(row, args.locust_processes)


def judge(row: Row, locust_processes: int) -> None:
    """What limited the row, in a few words, from what was measured."""
    r = row.result
    if row.skipped or not r:
        return
    if "error" in r:
        r["limit"] = "error"
        return
    notes = []
    procs = max(1, locust_processes) if row.generator == "locust" else 1
    gen_limited = r.get("cpu_warning") or r.get("gen_cpu_cores", 0) >= 0.85 * procs
    if row.generator == "asyncio" and row.scenario == "open":
        lag = (r.get("send_lag_ms") or {}).get("p99") or 0
        span = r.get("send_span_s") or row.run_time
        if span > 1.05 * row.run_time + 0.5 or r.get("skipped_at_cap"):
            gen_limited = True
            notes.append(f"could not keep the arrival rate ({r.get('offered_per_sec')}/s sent)")
        elif lag > 50:
            notes.append(f"sends up to {lag:.0f} ms late at p99 (CPU contention; counted in latency)")
    total = r.get("lens_cpu_cores", 0) + r.get("gen_cpu_cores", 0) + r.get("other_cpu_cores", 0)
    if row.scenario in ("original", "distinct"):
        # between(1, 5): a 3 s mean think time, and half the requests are
        # POSTs, so N users ask an instant server for N/6 POSTs a second.
        # (Closed-loop users slow down as latency grows, so comparing with a
        # latency-adjusted rate would always look like keeping up.)
        offered = row.users / 6.0
        r["offered_predict_rps"] = round(offered, 1)
        failed = r.get("predict_failures", 0) + r.get("get_failures", 0)
        if gen_limited:
            limit = "generator (locust CPU)"
        elif r.get("ok_rps", 0) >= 0.9 * offered and not failed:
            limit = "offered load (Lens keeps up)"
        else:
            limit = f"Lens (saturated: {offered:.0f}/s asked)"
    elif row.scenario == "closed":
        limit = "generator (locust CPU)" if gen_limited else "Lens"
    else:
        shed = sum(v for k, v in r.get("outcomes", {}).items() if "429" in k)
        if gen_limited:
            limit = "generator"
        elif shed:
            limit = "Lens (sheds 429)"
        elif r.get("ok_rps", 0) >= 0.95 * row.rate:
            limit = "offered load (Lens keeps up)"
        else:
            limit = "Lens"
    if total >= 1.8 and limit.startswith("Lens"):
        notes.append(f"machine CPU-bound ({total:.1f}/{os.cpu_count()} cores; generator {r.get('gen_cpu_cores', 0):.2f})")
    if r.get("other_cpu_cores", 0) >= 0.3:
        notes.append(f"other work on the machine used {r['other_cpu_cores']:.2f} cores")
    m = r.get("metrics", {})
    if row.scenario != "original" and m.get("cache_hits"):
        notes.append(f"{m['cache_hits']:.0f} cache hits")
    if not all(r.get("processes_alive", {}).values()):
        notes.append("a Lens process died")
    r["limit"] = limit
    r["notes"] = notes


# ----------------------------------------------------------------- ceiling --


def ceiling(lens: Path, extra: list[str], timeout: float) -> dict:
    out: dict = {}
    try:
        h = subprocess.run([str(lens), "bench", "--help"], cwd=ROOT, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"available": False, "why": str(e)}
    if h.returncode != 0:
        return {"available": False, "why": "`lens bench --help` failed: this build has no `lens bench`"}
    out["available"] = True
    for mode in ("--model-only", "--pipeline"):
        key = mode.lstrip("-")
        argv = [str(lens), "bench", mode, *extra]
        log(f"ceiling: {' '.join(argv[1:])}")
        b0, c0, t0 = sys_cpu()[0], children_cpu_s(), time.monotonic()
        try:
            r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            out[key] = {"error": f"timed out after {timeout:.0f} s"}
            continue
        el = time.monotonic() - t0
        own = children_cpu_s() - c0
        other = max(0.0, sys_cpu()[0] - b0 - own) / el if el else 0.0
        found = None
        for line in reversed(r.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if "images_per_sec" in obj:
                    found = obj
                    break
        out[key] = found or {"error": f"no JSON line with images_per_sec (exit {r.returncode})", "stderr": r.stderr[-500:]}
        # The ceiling is only as good as the machine was quiet while it ran.
        out[key]["bench_cpu_cores"] = round(own / el, 2) if el else None
        out[key]["other_cpu_cores"] = round(other, 2)
    return out


# ------------------------------------------------------------------ report --


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def fmt_ms(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 10 else f"{v:.1f}"


def row_cells(row: Row) -> list[str]:
    r = row.result
    topo = {"inproc": "in-process", "redis1": "Redis, 1 worker", "redis2": "Redis, 2 workers"}[row.topology]
    gen = "" if (row.generator == "locust" and row.scenario in ("original", "distinct")) else f" ({row.generator})"
    head = [row.scenario + gen, topo, row.load]
    if row.skipped:
        return head + ["-"] * 9 + [f"not available: {row.skipped}"]
    if "error" in r:
        return head + ["-"] * 9 + [f"error: {r['error']}"]
    reqs = r["predict_requests"] + r["get_requests"]
    fails = r["predict_failures"] + r["get_failures"]
    pct = f" ({100 * fails / reqs:.1f}%)" if reqs and fails else ""
    shed = sum(v for k, v in r["outcomes"].items() if "429" in k)
    fail_txt = f"{fails}{pct}" + (f", {shed} shed" if shed else "")
    ok = r["ok_ms"]
    rss = r.get("peak_rss_mb", {})
    rss_txt = f"{rss.get('serve', 0):.0f}"
    workers = [v for k, v in rss.items() if k.startswith("worker")]
    if workers:
        rss_txt += f" (+{max(workers):.0f}/worker)"
    cpu = f"{r['lens_cpu_cores']:.2f} / {r['gen_cpu_cores']:.2f}"
    if r.get("other_cpu_cores", 0) >= 0.1:
        cpu += f" / {r['other_cpu_cores']:.2f}"
    note = r.get("limit", "")
    if r.get("cpu_warning"):
        note += "; locust warned: CPU above 90%"
    if r.get("notes"):
        note += "; " + "; ".join(r["notes"])
    return head + [
        f"{r['predict_requests']:,}",
        fail_txt,
        f"{r['ok_rps']:.1f}",
        fmt_ms(ok.get("p50")),
        fmt_ms(ok.get("p95")),
        fmt_ms(ok.get("p99")),
        rss_txt,
        cpu,
        f"{r['metrics'].get('mean_batch') or '-'}",
        note,
    ]


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def best_closed(rows: list[Row], topo: str) -> tuple[float, str]:
    best, who = 0.0, ""
    for r in rows:
        if r.topology == topo and r.scenario == "closed" and not r.skipped and "error" not in r.result:
            if r.result.get("ok_rps", 0) > best:
                best, who = r.result["ok_rps"], r.generator
    return best, who


def goals(rows: list[Row], ceil: dict, meta: dict) -> list[list[str]]:
    out = []
    done = [r for r in rows if not r.skipped and "error" not in r.result]
    # 1. original scenario: 0 failures, p99 < 100 ms, at 200/600/1000 users.
    orig = [r for r in done if r.scenario == "original"]
    if orig:
        bad = [r for r in orig if (r.result["predict_failures"] + r.result["get_failures"]) or (r.result["ok_ms"].get("p99") or 1e9) >= P99_GOAL_MS]
        users = sorted({r.users for r in orig})
        worst = max((r.result["ok_ms"].get("p99") or 0) for r in orig)
        missing = [u for u in (200, 600, 1000) if u not in users]
        verdict = "FAIL" if bad else ("PASS" if not missing else "PASS (partial)")
        detail = f"users {', '.join(map(str, users))}; worst p99 {fmt_ms(worst)} ms; failures {sum(r.result['predict_failures'] + r.result['get_failures'] for r in orig)}"
        if bad:
            detail += "; failing rows: " + ", ".join(r.id for r in bad)
        if missing:
            detail += f"; not run at {', '.join(map(str, missing))} users"
        out.append(["original scenario: 0 failures, p99 < 100 ms at 200/600/1000 users", verdict, detail])
    else:
        out.append(["original scenario: 0 failures, p99 < 100 ms at 200/600/1000 users", "not run", ""])
    # 2. distinct closed loop >= 80% of the model-only ceiling.
    best, who = best_closed(rows, "inproc")
    mo = (ceil.get("model-only") or {}).get("images_per_sec")
    cpu_note = ""
    for r in rows:
        if r.topology == "inproc" and r.scenario == "closed" and r.generator == who and r.result.get("lens_cpu_cores"):
            x = r.result
            cpu_note = (f" (Lens had {x['lens_cpu_cores']:.2f} of {meta['cores']} cores, other work {x['other_cpu_cores']:.2f}: "
                        f"{best / x['lens_cpu_cores']:.0f} img/s per Lens core)")
    if best:
        if mo:
            frac = best / mo
            out.append([f"distinct closed loop >= {CEILING_FRACTION_GOAL:.0%} of the model-only ceiling", "PASS" if frac >= CEILING_FRACTION_GOAL else "FAIL",
                        f"{best:.1f} img/s ({who}) = {frac:.0%} of {mo:.1f} img/s measured by `lens bench --model-only`{cpu_note}"])
        else:
            frac = best / CEILING_REFERENCE
            out.append([f"distinct closed loop >= {CEILING_FRACTION_GOAL:.0%} of the model-only ceiling",
                        ("PASS" if frac >= CEILING_FRACTION_GOAL else "FAIL") + " (vs reference)",
                        f"{best:.1f} img/s ({who}) = {frac:.0%} of the {CEILING_REFERENCE:.0f} img/s reference; `lens bench` n/a in this build{cpu_note}"])
    else:
        out.append([f"distinct closed loop >= {CEILING_FRACTION_GOAL:.0%} of the model-only ceiling", "not run", ""])
    # 3. peak RSS under 1000 users.
    big = [r for r in done if r.users >= 1000 and r.scenario in ("original", "distinct")]
    if big:
        parts, peak = [], 0.0
        for r in big:
            mb = max(r.result.get("peak_rss_mb", {}).values() or [0])
            peak = max(peak, mb)
            parts.append(f"{r.id} {mb:.0f} MB")
        out.append([f"peak RSS under 1000 users < {RSS_GOAL_MB:.0f} MB", "PASS" if peak < RSS_GOAL_MB else "FAIL",
                    "VmHWM of the largest Lens process: " + ", ".join(parts)])
    else:
        allrss = [max(r.result.get("peak_rss_mb", {}).values() or [0]) for r in done]
        top = max((r.users for r in done if r.scenario in ("original", "distinct")), default=0)
        out.append([f"peak RSS under 1000 users < {RSS_GOAL_MB:.0f} MB", "not run",
                    f"largest locust row had {top} users; peak {max(allrss or [0]):.0f} MB over all rows"])
    # 4. shedding.
    over = [r for r in done if r.scenario == "open" and (r.rate_fraction > 1 or (best and r.rate > best))]
    if over:
        dl = meta["deadline_s"] * 1000
        res = []
        ok_all = True
        for r in over:
            shed = sum(v for k, v in r.result["outcomes"].items() if "429" in k)
            p99 = r.result["ok_ms"].get("p99")
            good = shed > 0 and p99 is not None and p99 <= dl
            ok_all &= good
            res.append(f"{r.id}: {shed} x 429 of {r.result['predict_requests']}, answered p99 {fmt_ms(p99)} ms (deadline {dl:,.0f} ms)")
        out.append(["overload: sheds with 429, answered p99 within the deadline", "PASS" if ok_all else "FAIL", "; ".join(res)])
    else:
        out.append(["overload: sheds with 429, answered p99 within the deadline", "not run", ""])
    return out


def where_time_goes(rows: list[Row]) -> str:
    hdr = ["row", "server /predict mean", "decode mean", "queue wait mean", "inference per batch", "mean batch", "images inferred", "cache hits", "coalesced", "Lens CPU ms per POST", "client mean (answered)"]
    body = []
    for r in rows:
        if r.skipped or "error" in r.result:
            continue
        m = r.result.get("metrics", {})
        inf = m.get("inferred_images") or 0
        posts = r.result.get("predict_requests") or 0
        cpu_per = f"{1000 * r.result['lens_cpu_s'] / posts:.2f}" if posts else "-"
        body.append([
            r.id,
            fmt_ms((m.get("server_predict") or {}).get("mean_ms")),
            fmt_ms((m.get("decode") or {}).get("mean_ms")),
            fmt_ms((m.get("queue_wait") or {}).get("mean_ms")),
            fmt_ms((m.get("inference") or {}).get("mean_ms")),
            f"{m.get('mean_batch') or '-'}",
            f"{inf:,.0f}",
            f"{m.get('cache_hits', 0):,.0f}",
            f"{m.get('coalesced', 0):,.0f}",
            cpu_per,
            fmt_ms(r.result.get("ok_mean_ms")),
        ])
    return md_table(hdr, body) if body else "_no rows ran_"


def plot(rows: list[Row], ceil: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 12))
    gs = fig.add_gridspec(3, 2, height_ratios=[1, 1, 1.1])
    ax_rps, ax_p99 = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1])
    ax_rss, ax_cpu = fig.add_subplot(gs[1, 0]), fig.add_subplot(gs[1, 1])
    ax_ceil = fig.add_subplot(gs[2, :])
    done = [r for r in rows if not r.skipped and "error" not in r.result]
    styles = {"inproc": "-", "redis1": "--", "redis2": ":"}
    colors = {"original": "tab:blue", "distinct": "tab:orange"}
    for sc in ("original", "distinct"):
        for topo in TOPOLOGIES:
            rs = sorted((r for r in done if r.scenario == sc and r.topology == topo), key=lambda r: r.users)
            if not rs:
                continue
            x = [r.users for r in rs]
            lab = f"{sc}, {topo}"
            ax_rps.plot(x, [r.result["ok_rps"] for r in rs], styles[topo], marker="o", color=colors[sc], label=lab)
            ax_rps.plot(x, [r.result.get("offered_predict_rps", 0) for r in rs], styles[topo], color=colors[sc], alpha=0.25)
            ax_p99.plot(x, [max(r.result["ok_ms"].get("p99") or 0.1, 0.1) for r in rs], styles[topo], marker="o", color=colors[sc], label=lab)
            ax_rss.plot(x, [max(r.result.get("peak_rss_mb", {}).values() or [0]) for r in rs], styles[topo], marker="o", color=colors[sc], label=lab)
    ax_rps.set(title="POST /predict answered per second (faint: offered by the users)", xlabel="locust users", ylabel="req/s")
    ax_rps.set_ylim(bottom=0)
    users = sorted({r.users for r in done if r.scenario in ("original", "distinct")})
    for ax in (ax_rps, ax_p99, ax_rss):
        if users:
            ax.set_xticks(users)
    ax_p99.axhline(P99_GOAL_MS, color="red", lw=1, ls="--", label="goal: p99 < 100 ms")
    ax_p99.set_yscale("log")
    ax_p99.set(title="POST /predict p99 of answered requests", xlabel="locust users", ylabel="ms (log)")
    ax_rss.axhline(RSS_GOAL_MB, color="red", lw=1, ls="--", label="goal: < 300 MB")
    ax_rss.set(title="Peak RSS of the largest Lens process (VmHWM)", xlabel="locust users", ylabel="MB")
    ax_rss.set_ylim(bottom=0)
    for ax in (ax_rps, ax_p99, ax_rss):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    labels, vals, cols, rss_txt = [], [], [], []
    for key, lab in (("model-only", "model only"), ("pipeline", "pipeline (no HTTP)")):
        v = (ceil.get(key) or {}).get("images_per_sec")
        if v:
            labels.append(lab.replace(" (", "\n("))
            vals.append(v)
            cols.append("tab:gray")
            rss_txt.append("")
    for r in done:
        if r.scenario in ("closed", "open"):
            rss = max(r.result.get("peak_rss_mb", {}).values() or [0])
            labels.append(f"{r.topology}\n{r.scenario}\n{r.generator if r.scenario == 'closed' else f'{r.rate:.0f}/s'}")
            rss_txt.append(f"\n{rss:.0f} MB")
            vals.append(r.result["ok_rps"])
            cols.append("tab:green" if r.scenario == "closed" else "tab:purple")
    if vals:
        ax_ceil.bar(range(len(vals)), vals, color=cols)
        ax_ceil.set_xticks(range(len(vals)), labels, fontsize=7)
        for i, v in enumerate(vals):
            ax_ceil.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
            if rss_txt[i]:
                ax_ceil.text(i, 2, f"RSS{rss_txt[i]}", ha="center", va="bottom", fontsize=7, color="white")
    if not (ceil.get("model-only") or {}).get("images_per_sec"):
        ax_ceil.axhline(CEILING_REFERENCE, color="gray", ls="--", lw=1, label=f"model-only reference {CEILING_REFERENCE:.0f} img/s")
        ax_ceil.legend(fontsize=8)
    ax_ceil.set(title="Distinct photos: answered img/s, closed loop (green) and open loop (purple), vs the ceiling (grey)", ylabel="img/s")
    # Where the CPU went in each load row: Lens, the generator, everything else.
    cpu_rows = [r for r in done if "lens_cpu_cores" in r.result]
    if cpu_rows:
        xs = range(len(cpu_rows))
        lens_c = [r.result["lens_cpu_cores"] for r in cpu_rows]
        gen_c = [r.result["gen_cpu_cores"] for r in cpu_rows]
        oth_c = [r.result["other_cpu_cores"] for r in cpu_rows]
        ax_cpu.bar(xs, lens_c, color="tab:blue", label="Lens")
        ax_cpu.bar(xs, gen_c, bottom=lens_c, color="tab:red", label="load generator")
        ax_cpu.bar(xs, oth_c, bottom=[a + b for a, b in zip(lens_c, gen_c)], color="lightgray", label="other work")
        ax_cpu.set_xticks(list(xs), [r.id for r in cpu_rows], rotation=90, fontsize=6)
        ax_cpu.axhline(os.cpu_count() or 2, color="black", lw=0.8)
        ax_cpu.legend(fontsize=7, loc="upper left")
    ax_cpu.set(title="CPU cores used during each row", ylabel="cores")
    ax_ceil.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(data: dict, md_path: Path, png_path: Path) -> str:
    meta = data["meta"]
    rows = [Row(**r) for r in data["rows"]]
    for r in rows:  # judged again, so a report redrawn by a newer script uses its rules
        judge(r, meta.get("locust_processes", 1))
    ceil = data["ceiling"]
    title = f"Lens load tests, {meta['date']} ({'quick' if meta['quick'] else 'full'} matrix, {meta['cores']} cores)"
    plot(rows, ceil, png_path, title)
    hdr = ["scenario", "topology", "load", "POST requests", "failures", "answered POST/s", "p50 ms", "p95 ms", "p99 ms",
           "peak RSS MB", "CPU cores Lens / gen (/ other)", "mean batch", "limit / notes"]
    cells, seen = [], set()
    for r in rows:
        if r.skipped and r.topology != "inproc":
            # One line for a whole topology that could not run.
            if r.topology not in seen:
                seen.add(r.topology)
                n = sum(1 for x in rows if x.topology == r.topology and x.skipped)
                c = row_cells(r)
                cells.append(["all", c[1], f"{n} rows"] + c[3:])
            continue
        cells.append(row_cells(r))
    table = md_table(hdr, cells)
    gtab = md_table(["goal", "verdict", "measured"], goals(rows, ceil, meta))
    if ceil.get("available"):
        crow = []
        best, who = best_closed(rows, "inproc")
        for key in ("model-only", "pipeline"):
            c = ceil.get(key) or {}
            ips = c.get("images_per_sec")
            extra = ", ".join(f"{k}={v}" for k, v in flatten(c).items()
                              if k.split(".")[-1] not in ("images_per_sec", "summary", "mode", "bench_cpu_cores", "other_cpu_cores"))
            if c.get("other_cpu_cores") is not None:
                extra += f"; CPU during the run: lens bench {c.get('bench_cpu_cores')}, other work {c['other_cpu_cores']} cores"
            frac = f"{best / ips:.0%}" if (ips and best) else "-"
            if ips and best > ips:
                extra += "; the service beat this figure, so it is no ceiling for the service's configuration"
            crow.append([f"`lens bench --{key}`", f"{ips:.1f}" if ips else "n/a", frac, extra or "-"])
        ctab = md_table(["ceiling", "img/s", f"service closed loop ({best:.1f} img/s, {who}) as a fraction", "details"], crow)
    else:
        ctab = (f"`lens bench`: n/a ({ceil.get('why', 'not run')}). The model-only and pipeline ceilings are not measured in this "
                f"build; the goal is checked against the {CEILING_REFERENCE:.0f} img/s reference instead.")
    skipped = sorted({r.skipped for r in rows if r.skipped})
    yrows = [["original: " + y[0], *y[1:]] for y in YARDSTICK]
    names = {"inproc": "1 process", "redis1": "Redis + 1 worker", "redis2": "Redis + 2 workers"}
    for r in rows:
        if r.scenario == "original" and not r.skipped and "error" not in r.result:
            x = r.result
            reqs = x["predict_requests"] + x["get_requests"]
            fails = x["predict_failures"] + x["get_failures"]
            mean = x.get("ok_mean_ms")
            yrows.append([f"**Lens**: {names[r.topology]}, {r.users} users", f"{x['predict_rps']:.1f}",
                          f"{fmt_ms(mean)} ms" if mean is not None else "-", f"{100 * fails / reqs:.1f}%" if reqs else "-"])
    yard = md_table(["setup", "POST /predict req/s", "mean latency", "failures"], yrows)
    png_rel = os.path.relpath(png_path, md_path.parent)
    serve_args = " ".join(meta["serve_args"]) or "(defaults)"
    text = f"""# Lens benchmarks

_Generated by `scripts/bench{' --quick' if meta['quick'] else ''}` on {meta['date']}: commit {meta['git']['commit']}{' + uncommitted src/ changes' if meta['git']['dirty'] else ''}, {meta['cpu']} x {meta['cores']} cores, {meta['mem_gb']} GB. Do not edit by hand: rerun the script._

![load-test results]({png_rel})

## Goals

{gtab}

## Results

Every row starts a fresh Lens (`lens serve {serve_args}`, cold cache), warms it with four requests, then loads it for {', '.join(sorted({f'{r.run_time} s' for r in rows if not r.skipped}))} from the same 2-core machine. Latencies are of **answered** POST /predict requests (200 with `success: true`); refusals are counted in *failures* (with 429 sheds called out) and timed separately in the raw data. Locust statistics are reset once all users are spawned (ramp {meta['ramp_s']:g} s), so the numbers are steady state.

{table}

Columns: *POST requests* counts every outcome; *failures* includes GET / failures, with their share of all requests; *answered POST/s* is throughput of successful predictions; *peak RSS* is VmHWM of `lens serve` (and of the largest worker); *CPU cores* is the average use over the row by Lens (every Lens process, and redis-server in the Redis rows), by the load generator (locust or the asyncio client, measured from its own rusage) and by anything else on the machine (e.g. other builds); *mean batch* is images per model call. *limit* says what bounded the row: **offered load** when Lens answered what the users asked for (the think time sets the rate, so more throughput was not asked for), **Lens** when it saturated, **generator** when locust hit its CPU (it warns "CPU usage above 90%") or the asyncio client sent late.

## Ceiling

{ctab}

## Where the time goes

From Lens's own `/metrics`, as deltas over each row (server-side means; *client mean* is what the generator saw for answered requests, so the gap is queueing in the generator, the kernel and the HTTP layer).

{where_time_goes(rows)}

## The original's report (the yardstick)

Locust, 200 users (unless said), mixed GET / and POST /predict, `between(1, 5)`; Lens's rows are the same test from the table above. With a 3 s mean think time, N users offer about N/6 POSTs per second, so Lens's POST rate is what the users asked for, while the original's 7-20 req/s was its saturation.

{yard}

## Notes

- Skipped: {'; '.join(skipped) if skipped else 'nothing'}.
- Load generators: locust {meta['locust_version']} (`FastHttpUser`, {meta['locust_processes']} process{'es' if meta['locust_processes'] > 1 else ''}) and `scripts/bench_openloop.py` (asyncio, open loop measured from each request's *scheduled* time, so a late generator shows as latency). Locust and Lens share the machine's {meta['cores']} cores: every core-second locust spends is one Lens does not get, which is why the closed-loop rows are also run with the much cheaper asyncio client.
- Distinct photos: {meta['distinct_images']} JPEGs made by `scripts/make_distinct_images.py` from the fixture photos; every request body also carries a unique JPEG comment, so no byte-keyed cache can hit (see the cache hits column above).
- Open-loop rates are fractions of the best closed-loop rate measured just before in the same topology. The overload row must shed: Lens refuses with 429 once its queue ({meta['queue_note']}) is full, and what it answers stays within the deadline ({meta['deadline_s']:g} s).
- Raw data: `{meta['outdir']}` (results.json, each row's locust CSVs and Lens logs). Redraw this page with `scripts/bench --report-only {meta['outdir']}/results.json`.

## Reproduce

```
make setup
scripts/bench                        # full matrix: original and distinct at 200/600/1000 users, closed and open loop, every topology
scripts/bench --quick                # reduced matrix, report under target/bench/
scripts/bench --topologies inproc --scenarios original --users 200,600   # select rows
cargo bench --bench batching         # batch formation micro-benchmark
```
"""
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)
    return table


# -------------------------------------------------------------------- main --


def csv_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def csv_floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def csv_words(allowed):
    def parse(s: str) -> list[str]:
        words = [w.strip() for w in s.split(",") if w.strip()]
        bad = [w for w in words if w not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; expected some of {', '.join(allowed)}")
        return words

    return parse


def main() -> None:
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every row's
    # `finally` stops the Lens processes and the generator it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced matrix: in-process and Redis, 50 and 200 users, 15 s rows")
    ap.add_argument("--scenarios", type=csv_words(SCENARIOS), help=f"rows to run, from {','.join(SCENARIOS)} (default all)")
    ap.add_argument("--topologies", type=csv_words(tuple(TOPOLOGIES)), help="from inproc,redis1,redis2 (default all)")
    ap.add_argument("--users", type=csv_ints, help="locust users for original/distinct rows (default 200,600,1000; quick 50,200)")
    ap.add_argument("--generators", type=csv_words(("locust", "asyncio")), default=["locust", "asyncio"], help="closed-loop generators (default both)")
    ap.add_argument("--only", help="regular expression on row ids (e.g. 'inproc-original'); see --list")
    ap.add_argument("--list", action="store_true", help="print the row ids and exit")
    ap.add_argument("--run-time", type=int, help="seconds per original/distinct row (default 60; quick 15)")
    ap.add_argument("--closed-time", type=int, help="seconds per closed-loop row (default 45; quick 12)")
    ap.add_argument("--open-time", type=int, help="seconds per open-loop row (default 45; quick 12)")
    ap.add_argument("--closed-users", type=int, default=32, help="closed-loop users / clients (default 32)")
    ap.add_argument("--open-fractions", type=csv_floats, default=[0.5, 1.5], help="open-loop rates as fractions of the best closed-loop rate (default 0.5,1.5)")
    ap.add_argument("--open-rates", type=csv_floats, help="open-loop rates in req/s instead of fractions")
    ap.add_argument("--ramp", type=float, help="seconds to spawn all locust users (default 5; quick 3)")
    ap.add_argument("--locust-processes", type=int, default=1, help="locust --processes (default 1: the machine has 2 cores shared with Lens)")
    ap.add_argument("--serve-args", default="", help="extra `lens serve` flags, one string (e.g. '--max-batch 16')")
    ap.add_argument("--worker-args", default="", help="extra `lens worker` flags, one string")
    ap.add_argument("--bench-args", default="", help="extra flags for `lens bench --model-only/--pipeline`")
    ap.add_argument("--no-ceiling", action="store_true", help="skip `lens bench`")
    ap.add_argument("--ceiling-timeout", type=float, default=600, help="seconds per `lens bench` run (default 600)")
    ap.add_argument("--images-dir", type=Path, help="photos for the distinct rows (default: generated into target/distinct-images)")
    ap.add_argument("--images", type=int, default=2000, help="distinct photos to generate (default 2000)")
    ap.add_argument("--idle-wait", type=float, help="wait up to this many seconds before each row for other work on the machine to calm down (default 30; quick 10; 0: never)")
    ap.add_argument("--lens", type=Path, default=ROOT / "target" / "release" / "lens", help="the lens binary (copied aside for the run)")
    ap.add_argument("--out", type=Path, help="report path (default docs/benchmarks.md; quick: next to results.json)")
    ap.add_argument("--keep-data", action="store_true", help="keep each row's --data-dir")
    ap.add_argument("--report-only", type=Path, metavar="RESULTS_JSON", help="only redraw the report from saved results")
    args = ap.parse_args()

    if args.report_only:
        data = json.loads(args.report_only.read_text())
        md = args.out or (ROOT / "docs" / "benchmarks.md" if not data["meta"]["quick"] else args.report_only.parent / "benchmarks.md")
        print(report(data, md, md.with_suffix(".png")))
        log(f"wrote {md} and {md.with_suffix('.png')}")
        return

    q = args.quick
    args.scenarios = args.scenarios or list(SCENARIOS)
    args.topologies = args.topologies or list(TOPOLOGIES)
    args.users = args.users or ([50, 200] if q else [200, 600, 1000])
    args.run_time = args.run_time or (15 if q else 60)
    args.closed_time = args.closed_time or (12 if q else 45)
    args.open_time = args.open_time or (12 if q else 45)
    args.ramp = args.ramp or (3.0 if q else 5.0)
    args.idle_wait = args.idle_wait if args.idle_wait is not None else (10.0 if q else 30.0)
    args.serve_args = shlex.split(args.serve_args)
    args.worker_args = shlex.split(args.worker_args)
    args.deadline = deadline_from(args.serve_args)
    for t in (args.run_time, args.closed_time, args.open_time):
        if not 1 <= t <= 600:
            ap.error("row times must be within 1..600 s")
    if any(u < 1 or u > 5000 for u in args.users):
        ap.error("--users must be within 1..5000")

    rows = build_matrix(args)
    if args.list:
        for r in rows:
            print(r.id)
        return
    if not rows:
        ap.error("no rows selected")

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = ROOT / "target" / "bench" / (stamp + ("-quick" if q else ""))
    outdir.mkdir(parents=True, exist_ok=True)
    if not args.lens.exists():
        sys.exit(f"{args.lens}: not built; run `make setup` (or cargo build --release)")
    # A private copy: other engineers may rebuild target/release/lens mid-run.
    lens = outdir / "lens"
    shutil.copy2(args.lens, lens)
    lens_sha = hashlib.sha256(lens.read_bytes()).hexdigest()[:12]

    if any(r.scenario != "original" for r in rows) and not args.images_dir:
        subprocess.run([str(PY), str(MAKE_IMAGES), "-n", str(args.images)], cwd=ROOT, check=True)
    images_dir = args.images_dir or ROOT / "target" / "distinct-images"
    exts = (".jpg", ".jpeg", ".png", ".webp")
    n_images = sum(1 for p in images_dir.iterdir() if p.suffix.lower() in exts) if images_dir.exists() else 0

    why_no_redis, args.worker_health = redis_unavailable(lens) if any(r.topology != "inproc" for r in rows) else (None, False)
    if why_no_redis:
        for r in rows:
            if r.topology != "inproc":
                r.skipped = why_no_redis
        log(f"Redis rows skipped: {why_no_redis}")

    locust_version = subprocess.run([str(LOCUST), "--version"], capture_output=True, text=True).stdout.split()[1:2]
    meta = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "quick": q,
        "git": git_info(),
        "lens_sha256": lens_sha,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "mem_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
        "serve_args": args.serve_args,
        "worker_args": args.worker_args,
        "deadline_s": args.deadline,
        "queue_note": "`--queue-capacity`, default 256 jobs; `--max-pending`, default 1024 requests",
        "ramp_s": args.ramp,
        "locust_version": locust_version[0] if locust_version else "?",
        "locust_processes": args.locust_processes,
        "distinct_images": n_images,
        "outdir": os.path.relpath(outdir, ROOT),
        "argv": sys.argv[1:],
    }
    ceil: dict = {"available": False, "why": "skipped (--no-ceiling)"}
    if not args.no_ceiling:
        if args.idle_wait:
            wait_idle(args.idle_wait)
        ceil = ceiling(lens, shlex.split(args.bench_args), args.ceiling_timeout)
        log(f"ceiling: {json.dumps(ceil)[:300]}")

    def save() -> dict:
        data = {"meta": meta, "ceiling": ceil, "rows": [asdict(r) for r in rows]}
        (outdir / "results.json").write_text(json.dumps(data, indent=1) + "\n")
        return data

    todo = [r for r in rows if not r.skipped]
    total_s = sum(r.run_time + 8 for r in todo)
    log(f"{len(todo)} rows to run (~{total_s / 60:.0f} min + idle waits), {len(rows) - len(todo)} skipped; raw data in {outdir}")
    for i, row in enumerate(todo, 1):
        if row.scenario == "open" and row.rate_fraction:
            best, _ = best_closed(rows, row.topology)
            if not best:
                row.skipped = "no closed-loop rate measured to derive the open-loop rate from (use --open-rates)"
                continue
            row.rate = round(best * row.rate_fraction, 1)
        log(f"[{i}/{len(todo)}] {row.id}: {row.load}, {row.run_time} s")
        run_row(row, lens, outdir, args)
        r = row.result
        if "error" in r:
            log(f"    error: {r['error']}")
        else:
            log(f"    {r['predict_requests']} POSTs, {r['predict_failures']} failed, {r['ok_rps']} ok/s, "
                f"p50/p95/p99 {r['ok_ms'].get('p50')}/{r['ok_ms'].get('p95')}/{r['ok_ms'].get('p99')} ms, "
                f"RSS {r.get('peak_rss_mb')}, CPU lens {r['lens_cpu_cores']} gen {r['gen_cpu_cores']} other {r['other_cpu_cores']}; {r['limit']}")
        save()
    data = save()
    lens.unlink(missing_ok=True)  # 90 MB; results.json keeps its sha256
    md = args.out or ((outdir / "benchmarks.md") if q else ROOT / "docs" / "benchmarks.md")
    table = report(data, md, md.with_suffix(".png"))
    print()
    print(table)
    print()
    for g in goals(rows, ceil, meta):
        print(f"- {g[0]}: {g[1]} ({g[2]})")
    log(f"wrote {md} and {md.with_suffix('.png')}; raw data in {outdir}")


if __name__ == "__main__":
    main()
