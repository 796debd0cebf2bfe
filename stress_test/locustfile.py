"""Load test for Lens, compatible with the original's locust test.

The original scenario: every user alternates ``GET /`` and ``POST /predict``
of ``tests/fixtures/dog.jpeg`` (multipart field ``file``), waiting 1-5 s
between requests. Pick another scenario with ``LENS_SCENARIO``:

=============  ==============================================================
original       (default) GET / and POST /predict of one photo, alternating,
               ``between(1, 5)``; the cache and coalescing can help.
distinct       Same shape, but every POST sends a different real photo, so no
               cache can help.
closed         Closed-loop maximum throughput: POST /predict of distinct
               photos only, no wait between requests.
paced          Fixed rate per user (``LENS_RATE_PER_USER`` req/s, default 1;
               locust's ``constant_throughput``): distinct photos, POST only.
               A user with a request still in flight cannot send the next, so
               for a true open loop use ``scripts/bench_openloop.py``.
=============  ==============================================================

Distinct photos come from ``LENS_IMAGES_DIR`` (every .jpg/.jpeg/.png/.webp in
it) or, by default, from ``target/distinct-images``, which
``scripts/make_distinct_images.py`` fills deterministically (made here if
missing). Each JPEG is also sent with a unique comment segment (process id
and sequence number), so no two request bodies are ever the same even when
the folder is smaller than the number of requests; the pixels are untouched.
``LENS_STAMP=0`` turns that off.

Outcomes get their own rows in locust's statistics, so the latency of
answered requests is not mixed with that of refusals: ``/predict`` is a 200
with ``"success": true``; ``/predict [429 shed]``, ``/predict [504]``,
``/predict [other]`` and ``/predict [no response]`` are failures.

Examples (the server must be running; see stress_test/README.md)::

    .venv/bin/locust -f stress_test/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 200 -r 50 -t 60s
    LENS_SCENARIO=distinct .venv/bin/locust -f stress_test/locustfile.py ...

``LENS_LOCUST_USAGE_DIR``: if set, each locust process writes its CPU usage
samples and CPU warnings there as JSON when it quits (used by scripts/bench).
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import sys
import time
from pathlib import Path

from locust import FastHttpUser, between, constant, constant_throughput, events, task

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = os.environ.get("LENS_SCENARIO", "original").strip().lower()
ORIGINAL_IMAGE = Path(os.environ.get("LENS_IMAGE", ROOT / "tests" / "fixtures" / "dog.jpeg"))
DEFAULT_IMAGES_DIR = ROOT / "target" / "distinct-images"
STAMP = os.environ.get("LENS_STAMP", "1") != "0"
RATE_PER_USER = float(os.environ.get("LENS_RATE_PER_USER", "1"))
BOUNDARY = "lens-locust-7d1f0c2e9b"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
SCENARIOS = ("original", "distinct", "closed", "paced")

if SCENARIO not in SCENARIOS:
    sys.exit(f"LENS_SCENARIO={SCENARIO!r}: expected one of {', '.join(SCENARIOS)}")

_MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def multipart(data: bytes, filename: str) -> bytes:
    """A multipart/form-data body with one file part named ``file``."""
    mime = _MIME.get(Path(filename).suffix.lower(), "application/octet-stream")
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {mime}\r\n\r\n"
    ).encode()
    return b"".join((head, data, f"\r\n--{BOUNDARY}--\r\n".encode()))


def stamp_jpeg(data: bytes, tag: bytes) -> bytes:
    """The same JPEG with a COM (comment) segment right after SOI: other bytes, same pixels."""
    if not data.startswith(b"\xff\xd8"):
        return data
    return b"".join((data[:2], b"\xff\xfe", struct.pack(">H", len(tag) + 2), tag, data[2:]))


class DistinctImages:
    """Every photo of a folder, in order, starting at a per-process offset."""

    def __init__(self) -> None:
        env_dir = os.environ.get("LENS_IMAGES_DIR")
        folder = Path(env_dir) if env_dir else DEFAULT_IMAGES_DIR
        if not env_dir and not any(folder.glob("img_*.jpg")):
            sys.path.insert(0, str(ROOT / "scripts"))
            sys.dont_write_bytecode = True  # no __pycache__ left in scripts/
            from make_distinct_images import make  # noqa: PLC0415 (only when needed)

            make(folder, 2000, 20240601, ROOT / "tests" / "fixtures")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _MIME)
        if not self.files:
            sys.exit(f"{folder}: no .jpg/.jpeg/.png/.webp images")
        self.pid = os.getpid()
        # Processes started together (--processes) begin at different places.
        self.offset = (self.pid * 7919) % len(self.files)
        self.counter = itertools.count()

    def next_body(self) -> bytes:
        n = next(self.counter)
        path = self.files[(self.offset + n) % len(self.files)]
        data = path.read_bytes()
        if STAMP:
            data = stamp_jpeg(data, f"lens-bench pid={self.pid} n={n}".encode())
        return multipart(data, path.name)


_distinct: DistinctImages | None = None


def distinct() -> DistinctImages:
    global _distinct
    if _distinct is None:
        _distinct = DistinctImages()
    return _distinct


_original_body: bytes | None = None


def original_body() -> bytes:
    global _original_body
    if _original_body is None:
        _original_body = multipart(ORIGINAL_IMAGE.read_bytes(), ORIGINAL_IMAGE.name)
    return _original_body


class LensUser(FastHttpUser):
    """Shared request helpers; not run by itself."""

    abstract = True
    # Longer than Lens's own deadline and request timeout, so Lens answers
    # first and the generator never gives up on its own.
    network_timeout = 90.0
    connection_timeout = 30.0

    def index(self) -> None:
        self.client.get("/", name="/")

    def predict(self, body: bytes) -> None:
        with self.client.post(
            "/predict", data=body, headers={"Content-Type": CONTENT_TYPE}, name="/predict", catch_response=True
        ) as resp:
            status = resp.status_code or 0
            if status == 200:
                try:
                    ok = resp.json().get("success") is True
                except (ValueError, AttributeError):
                    ok = False
                if ok:
                    resp.success()
                else:
                    resp.request_meta["name"] = "/predict [other]"
                    resp.failure("200 without success=true")
                return
            if status == 429:
                resp.request_meta["name"] = "/predict [429 shed]"
            elif status == 504:
                resp.request_meta["name"] = "/predict [504]"
            elif status == 0:
                resp.request_meta["name"] = "/predict [no response]"
            else:
                resp.request_meta["name"] = "/predict [other]"
            resp.failure(f"status {status}")


class OriginalUser(LensUser):
    """The original test: GET / and POST /predict of the same photo, alternating."""

    wait_time = between(1, 5)

    def on_start(self) -> None:
        self._turn = itertools.cycle((self.index, lambda: self.predict(original_body())))

    @task
    def alternate(self) -> None:
        next(self._turn)()


class DistinctUser(LensUser):
    """Like OriginalUser, but every POST sends a different photo."""

    wait_time = between(1, 5)

    def on_start(self) -> None:
        self._turn = itertools.cycle((self.index, lambda: self.predict(distinct().next_body())))

    @task
    def alternate(self) -> None:
        next(self._turn)()


class ClosedLoopUser(LensUser):
    """Maximum throughput: distinct photos back to back, no wait."""

    wait_time = constant(0)

    @task
    def predict_distinct(self) -> None:
        self.predict(distinct().next_body())


class PacedUser(LensUser):
    """A fixed request rate per user (at most; a slow answer delays the next)."""

    wait_time = constant_throughput(RATE_PER_USER)

    @task
    def predict_distinct(self) -> None:
        self.predict(distinct().next_body())


# Only the scenario's class is run.
for _name, _cls in {
    "original": OriginalUser,
    "distinct": DistinctUser,
    "closed": ClosedLoopUser,
    "paced": PacedUser,
}.items():
    _cls.abstract = _name != SCENARIO


# --- generator health: CPU samples and warnings, for scripts/bench ---------

_usage = {"pid": os.getpid(), "cpu_samples": [], "cpu_warnings": 0, "rss_max": 0}


@events.usage_monitor.add_listener
def _on_usage(environment, cpu_usage, memory_usage, **_kw):
    _usage["cpu_samples"].append(round(float(cpu_usage), 1))
    _usage["rss_max"] = max(_usage["rss_max"], int(memory_usage))


@events.cpu_warning.add_listener
def _on_cpu_warning(environment, cpu_usage, **_kw):
    _usage["cpu_warnings"] += 1


@events.quitting.add_listener
def _on_quit(environment, **_kw):
    out = os.environ.get("LENS_LOCUST_USAGE_DIR")
    if not out:
        return
    runner = environment.runner
    _usage["role"] = type(runner).__name__ if runner else "none"
    _usage["time"] = time.time()
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"usage-{os.getpid()}.json").write_text(json.dumps(_usage))
