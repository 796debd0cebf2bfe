"""Throughput of Lens scaled out on Redis against the in-process mode (run it through scripts/bench-distributed).

Modes, each a fresh Topology (its own Lens, and its own redis-server for the
Redis modes, so no answer is cached from the mode before): in-process (one
session per core), then an API node with 1, 2 and 3 ``lens worker``
processes of one session each. Every request is a distinct real-size JPEG
from target/distinct-images, the same ones in every mode; the client keeps
CONCURRENCY requests in flight. Prints a Markdown table.

Environment: REQUESTS (default 600 per mode), CONCURRENCY (default 16).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from . import multipart
from .machine import CORES
from .openloop import TRANSPORT_ERRORS, Pool, percentile
from .photos import DEFAULT_COUNT, distinct_folder
from .server import DEFAULT_LENS, Topology, private_copy, redis_unavailable

REQUESTS = int(os.environ.get("REQUESTS", 600))
CONCURRENCY = int(os.environ.get("CONCURRENCY", 16))
WARMUP = 32
MODES = [("in-process", 0), ("redis, 1 worker", 1), ("redis, 2 workers", 2), ("redis, 3 workers", 3)]


async def send_all(url: str, bodies: list[bytes], concurrency: int) -> tuple[list[float], int, float]:
    """Each body POSTed once to /predict, ``concurrency`` at a time: (latencies of 200s in s, other outcomes, wall s)."""
    pool = Pool.loopback(url)
    queue = iter(bodies)  # shared by the clients; each takes the next body
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        for body in queue:
            t = time.perf_counter()
            try:
                status, _ = await pool.post("/predict", body, multipart.CONTENT_TYPE, timeout=60)
            except TRANSPORT_ERRORS:
                status = 0
            if status == 200:
                latencies.append(time.perf_counter() - t)
            else:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    pool.close()
    return latencies, errors, wall


def run_mode(lens: Path, logdir: Path, workers: int, worker_health: bool, bodies: list[bytes]) -> tuple[float, float, float, int]:
    """(images/s, p50 ms, p95 ms, errors) of one mode."""
    topo = Topology(lens, logdir, workers, ["--deadline-secs", "60"], ["--sessions", "1"], worker_health=worker_health)
    try:
        url = topo.start()
        time.sleep(1.5 if workers else 0.5)  # let every worker register
        asyncio.run(send_all(url, bodies[:WARMUP], CONCURRENCY))
        lat, errors, wall = asyncio.run(send_all(url, bodies[WARMUP:], CONCURRENCY))
    finally:
        topo.stop()
    lat.sort()
    p50, p95 = (1000 * percentile(lat, q) if lat else float("nan") for q in (50, 95))
    return (len(lat) + errors) / wall, p50, p95, errors


def main() -> None:
    n = REQUESTS + WARMUP
    if not 0 < REQUESTS <= DEFAULT_COUNT - WARMUP:
        sys.exit(f"REQUESTS must be within 1..{DEFAULT_COUNT - WARMUP} (the shared folder holds {DEFAULT_COUNT} images)")
    if not 0 < CONCURRENCY <= 256:
        sys.exit("CONCURRENCY must be within 1..256")
    files = sorted(distinct_folder().glob("img_*.jpg"))[:n]
    bodies = [multipart.file_body(f.read_bytes(), f.name) for f in files]
    rows = []
    with tempfile.TemporaryDirectory(prefix="lens-distributed-") as d:
        tmp = Path(d)
        lens = private_copy(DEFAULT_LENS, tmp)
        why_not, worker_health = redis_unavailable(lens)
        if why_not:
            sys.exit(f"scripts/bench-distributed: {why_not}")
        for name, workers in MODES:
            print(f"{name}: {REQUESTS} requests, {CONCURRENCY} in flight ...", file=sys.stderr, flush=True)
            logdir = tmp / name.replace(" ", "").replace(",", "-")
            rows.append((name, *run_mode(lens, logdir, workers, worker_health, bodies)))
    print(f"\n{CORES} cores, {REQUESTS} distinct JPEGs per mode, {CONCURRENCY} in flight; "
          f"in-process = {CORES} sessions, each worker = 1 session; API node, workers, Redis and client share the machine.\n")
    print("| mode | images/s | p50 ms | p95 ms | errors |")
    print("|---|---:|---:|---:|---:|")
    for name, rate, p50, p95, errors in rows:
        print(f"| {name} | {rate:.1f} | {p50:.0f} | {p95:.0f} | {errors} |")


if __name__ == "__main__":
    main()
