"""A small asyncio load generator for Lens (no dependencies beyond the stdlib).

Two modes:

* open loop (``--rate R``): requests are *scheduled* at a fixed arrival rate,
  whatever the server does; a slow answer never delays the next arrival.
  Latency is measured from each request's scheduled time, so a generator
  that falls behind shows up as latency instead of hiding it (no
  coordinated omission), and the lag between schedule and actual send is
  reported separately as the generator's own health.
* closed loop (``--concurrency C``): C clients send back to back.

Every request carries a different photo (``--images-dir``, default
target/distinct-images) with a unique JPEG comment segment, so no cache can
help; ``--image FILE`` sends one photo instead (cache-friendly). Traffic
goes only to the loopback address given by ``--url``; the run is bounded by
``--duration`` plus ``--grace`` for answers still in flight, and by
``--max-in-flight`` open requests.

    .venv/bin/python scripts/bench_openloop.py --url http://127.0.0.1:8000 --rate 150 --duration 30
    .venv/bin/python scripts/bench_openloop.py --url http://127.0.0.1:8000 --concurrency 32 --duration 30

Prints a summary; ``--json FILE`` writes the full one (scripts/bench uses it).
``Pool``, ``open_loop`` and ``closed_loop`` are also the soak test's engine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from . import multipart
from .photos import PhotoStream

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# A request: given the time it was scheduled for, do it and record the outcome.
Fire = Callable[[float], Awaitable[None]]


class Pool:
    """Keep-alive HTTP/1.1 connections to one host; just enough for Lens's POSTs.

    An idle connection is reused only while fresh (the server may close idle
    ones); ``open_now`` counts the connections this client holds, so a
    caller can tell its own sockets from the server's.
    """

    IDLE_MAX_S = 4.0

    def __init__(self, host: str, port: int, max_idle: int = 256) -> None:
        self.host, self.port = host, port
        self.max_idle = max_idle
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.opened = 0
        self.open_now = 0

    @classmethod
    def loopback(cls, url: str, **kw) -> Pool:
        """A pool to ``url``, which must be on this machine."""
        u = urlsplit(url)
        if u.hostname not in LOOPBACK:
            sys.exit(f"{url}: only loopback addresses are load-tested")
        return cls(u.hostname, u.port or 80, **kw)

    async def _connection(self, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer, since = self.idle.pop()
            if not reader.at_eof() and time.monotonic() - since < self.IDLE_MAX_S:
                return reader, writer
            self._close(writer)
        conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
        self.opened += 1
        self.open_now += 1
        return conn

    def _close(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        self.open_now -= 1

    async def post(
        self,
        path: str,
        body: bytes,
        content_type: str,
        timeout: float,
        headers: dict[str, str] | None = None,
        chunks: int = 1,
        spread_s: float = 0.0,
    ) -> tuple[int, bytes]:
        """(status, body). With ``chunks`` > 1 the body goes out in that many
        pieces spread over ``spread_s`` seconds, like a slow client."""
        reader, writer = await self._connection(timeout)
        try:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
                + "\r\n"
            ).encode()
            status, payload, keep = await asyncio.wait_for(
                self._exchange(reader, writer, head, body, chunks, spread_s), timeout
            )
        except BaseException:
            self._close(writer)
            raise
        if keep and len(self.idle) < self.max_idle:
            self.idle.append((reader, writer, time.monotonic()))
        else:
            self._close(writer)
        return status, payload

    async def _exchange(self, reader, writer, head: bytes, body: bytes, chunks: int, spread_s: float):
        writer.write(head)
        if chunks <= 1:
            writer.write(body)
        else:
            size = -(-len(body) // chunks)
            for i in range(0, len(body), size):
                writer.write(body[i : i + size])
                await writer.drain()
                await asyncio.sleep(spread_s / chunks)
        return await self._read(reader)

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            payload = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            payload = b"".join(parts)
        else:
            payload = await reader.read()
            return status, payload, False
        keep = headers.get("connection", "").lower() != "close"
        return status, payload, keep

    def close(self) -> None:
        for _, w, _ in self.idle:
            self._close(w)
        self.idle.clear()


# What a request can fail with short of an HTTP status: no answer at all.
TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, asyncio.TimeoutError)


def error_name(e: BaseException) -> str:
    return "timeout" if isinstance(e, asyncio.TimeoutError) else type(e).__name__


@dataclass
class OpenLoopRun:
    send_span_s: float  # first to last scheduled send; longer than asked when the generator fell behind
    skipped_at_cap: int  # arrivals not sent because max_in_flight requests were open
    cut_at_grace: int  # requests still open when the grace period ended (cancelled)


async def open_loop(rate: float, duration: float, fire: Fire, max_in_flight: int, grace: float) -> OpenLoopRun:
    """``rate * duration`` arrivals at fixed times, each ``fire(scheduled)``d without waiting for the last."""
    interval = 1.0 / rate
    tasks: set[asyncio.Task] = set()
    skipped = 0
    t0 = time.perf_counter()
    for i in range(int(rate * duration)):
        scheduled = t0 + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_in_flight:
            skipped += 1
            continue
        t = asyncio.create_task(fire(scheduled))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    span = time.perf_counter() - t0
    cut = 0
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for t in pending:
            t.cancel()
        cut = len(pending)
    return OpenLoopRun(span, skipped, cut)


async def closed_loop(concurrency: int, duration: float, fire: Fire, grace: float) -> float:
    """``concurrency`` clients, each firing its next request when the last is answered; the elapsed time."""
    t0 = time.perf_counter()
    end = t0 + duration

    async def client() -> None:
        while time.perf_counter() < end:
            await fire(time.perf_counter())

    workers = [asyncio.create_task(client()) for _ in range(concurrency)]
    _, pending = await asyncio.wait(workers, timeout=duration + grace)
    for t in pending:
        t.cancel()
    return time.perf_counter() - t0


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


class Bodies:
    """Distinct stamped photos, or one fixed photo (``--image``)."""

    def __init__(self, images_dir: Path | None, image: Path | None, stamp: bool) -> None:
        if image:
            self.fixed: bytes | None = multipart.file_body(image.read_bytes(), image.name)
        else:
            self.fixed = None
            self.stream = PhotoStream(images_dir, stamp, tag="lens-openloop")

    def next(self) -> bytes:
        return self.fixed if self.fixed is not None else self.stream.next_body()


class Recorder:
    def __init__(self) -> None:
        self.status = collections.Counter()
        self.ok_ms: list[float] = []
        self.all_ms: list[float] = []
        self.lag_ms: list[float] = []
        self.errors = collections.Counter()
        self.last_done = 0.0

    def done(self, status: int, payload: bytes, started: float, scheduled: float) -> None:
        now = time.perf_counter()
        self.last_done = max(self.last_done, now)
        ms = (now - scheduled) * 1000
        if status == 200:
            try:
                body = json.loads(payload)
                # A batchable BentoML API (scripts/bench-bentoml) answers a
                # request of one image with a list of one answer.
                if isinstance(body, list) and len(body) == 1:
                    body = body[0]
                ok = isinstance(body, dict) and body.get("success") is True
            except ValueError:
                ok = False
            if not ok:
                status = -200  # 200 without success=true
        self.status[status] += 1
        self.all_ms.append(ms)
        if status == 200:
            self.ok_ms.append(ms)
        self.lag_ms.append((started - scheduled) * 1000)


def predict_fire(pool: Pool, bodies: Bodies, rec: Recorder, timeout: float) -> Fire:
    """POST /predict of the next body, recorded in ``rec``."""

    async def fire(scheduled: float) -> None:
        started = time.perf_counter()
        try:
            status, payload = await pool.post("/predict", bodies.next(), multipart.CONTENT_TYPE, timeout)
        except TRANSPORT_ERRORS as e:
            rec.errors[error_name(e)] += 1
            status, payload = 0, b""
        rec.done(status, payload, started, scheduled)

    return fire


def summarize(args, rec: Recorder, elapsed: float, cpu_s: float, opened: int, cut: int, skipped: int) -> dict:
    ok = sorted(rec.ok_ms)
    everything = sorted(rec.all_ms)
    lag = sorted(rec.lag_ms)
    answered = sum(rec.status.values())
    errors = dict(rec.errors)
    if cut:
        errors["cut at grace"] = cut
    out = {
        "mode": "open" if args.rate else "closed",
        "rate": args.rate,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 3),
        "requests": answered + cut,
        "skipped_at_cap": skipped,
        "status": {str(k): v for k, v in sorted(rec.status.items())},
        "errors": errors,
        "ok": len(ok),
        "ok_per_sec": round(len(ok) / elapsed, 2) if elapsed else 0.0,
        "requests_per_sec": round(answered / elapsed, 2) if elapsed else 0.0,
        "ok_ms": {f"p{q}": percentile(ok, q) for q in (50, 95, 99)},
        "all_ms": {f"p{q}": percentile(everything, q) for q in (50, 95, 99)},
        "ok_mean_ms": round(sum(ok) / len(ok), 2) if ok else None,
        "send_lag_ms": {f"p{q}": percentile(lag, q) for q in (50, 99)} | {"max": lag[-1] if lag else None},
        "generator_cpu_s": round(cpu_s, 3),
        "connections_opened": opened,
    }
    for d in (out["ok_ms"], out["all_ms"], out["send_lag_ms"]):
        for k, v in d.items():
            if v is not None:
                d[k] = round(v, 2)
    return out


async def amain(args) -> dict:
    pool = Pool.loopback(args.url)
    rec = Recorder()
    fire = predict_fire(pool, Bodies(args.images_dir, args.image, not args.no_stamp), rec, args.timeout)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    run = None
    if args.rate:
        run = await open_loop(args.rate, args.duration, fire, args.max_in_flight, args.grace)
        # Throughput over the time answers kept coming: arrivals plus the drain.
        elapsed = max(rec.last_done - t0, args.duration)
    else:
        elapsed = await closed_loop(args.concurrency, args.duration, fire, args.grace)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    pool.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    out = summarize(args, rec, elapsed, cpu, pool.opened, run.cut_at_grace if run else 0, run.skipped_at_cap if run else 0)
    out["wall_s"] = round(wall, 3)
    if run:
        out["send_span_s"] = round(run.send_span_s, 3)
        # Arrivals actually achieved: a generator that cannot keep the
        # schedule stretches the span beyond --duration.
        span = run.send_span_s
        out["offered_per_sec"] = round((out["requests"] + run.skipped_at_cap) / span, 2) if span else None
    out["generator_cpu_cores"] = round(cpu / wall, 3) if wall else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="scripts/bench_openloop.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="base URL of Lens, e.g. http://127.0.0.1:8000")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rate", type=float, help="open loop: arrivals per second")
    mode.add_argument("--concurrency", type=int, help="closed loop: clients sending back to back")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals (default 30)")
    ap.add_argument("--grace", type=float, default=40.0, help="seconds to wait for answers after the last arrival")
    ap.add_argument("--timeout", type=float, default=90.0, help="per-request timeout, seconds")
    ap.add_argument("--max-in-flight", type=int, default=4000, help="open requests at most (open loop)")
    ap.add_argument("--images-dir", type=Path, help="folder of photos (default target/distinct-images)")
    ap.add_argument("--image", type=Path, help="send this one photo every time instead")
    ap.add_argument("--no-stamp", action="store_true", help="do not make every JPEG body unique")
    ap.add_argument("--json", type=Path, help="write the summary here")
    args = ap.parse_args()
    if args.duration <= 0 or args.duration > 3600:
        ap.error("--duration must be in (0, 3600]")
    if args.rate is not None and not 0 < args.rate <= 5000:
        ap.error("--rate must be in (0, 5000]")
    if args.concurrency is not None and not 0 < args.concurrency <= 4096:
        ap.error("--concurrency must be in (0, 4096]")
    out = asyncio.run(amain(args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    ok = out["ok_ms"]
    print(
        f"{out['mode']}: {out['requests']} requests, {out['ok']} ok ({out['ok_per_sec']}/s), "
        f"status {out['status']}, errors {out['errors'] or 0}; ok p50/p95/p99 "
        f"{ok['p50']}/{ok['p95']}/{ok['p99']} ms; send lag p99 {out['send_lag_ms']['p99']} ms; "
        f"generator {out['generator_cpu_cores']} cores"
    )
