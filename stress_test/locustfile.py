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
import sys
import time
from pathlib import Path

from locust import FastHttpUser, between, constant, constant_throughput, events, task

ROOT = Path(__file__).resolve().parent.parent
# locust imports this file by path, so only stress_test/ is on sys.path; the
# request-body helpers it shares with scripts/bench_openloop.py and
# scripts/bench-distributed are the lensbench package in scripts/.
sys.path.insert(0, str(ROOT / "scripts"))

from lensbench import multipart  # noqa: E402
from lensbench.photos import PhotoStream  # noqa: E402

SCENARIO = os.environ.get("LENS_SCENARIO", "original").strip().lower()
ORIGINAL_IMAGE = Path(os.environ.get("LENS_IMAGE", ROOT / "tests" / "fixtures" / "dog.jpeg"))
STAMP = os.environ.get("LENS_STAMP", "1") != "0"
RATE_PER_USER = float(os.environ.get("LENS_RATE_PER_USER", "1"))
SCENARIOS = ("original", "distinct", "closed", "paced")

if SCENARIO not in SCENARIOS:
    sys.exit(f"LENS_SCENARIO={SCENARIO!r}: expected one of {', '.join(SCENARIOS)}")


_distinct: PhotoStream | None = None


def distinct() -> PhotoStream:
    """The distinct photos, opened on first use (made first if the default folder is empty)."""
    global _distinct
    if _distinct is None:
        env_dir = os.environ.get("LENS_IMAGES_DIR")
        _distinct = PhotoStream(Path(env_dir) if env_dir else None, STAMP, tag="lens-locust")
    return _distinct


_original_body: bytes | None = None


def original_body() -> bytes:
    global _original_body
    if _original_body is None:
        _original_body = multipart.file_body(ORIGINAL_IMAGE.read_bytes(), ORIGINAL_IMAGE.name)
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
            "/predict", data=body, headers={"Content-Type": multipart.CONTENT_TYPE}, name="/predict", catch_response=True
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
