#!/usr/bin/env python3
"""A small asyncio load generator for Lens's POST /predict (no dependencies).

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
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import resource
import struct
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BOUNDARY = "lens-openloop-4b7e2a91c3"
_MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


def multipart(data: bytes, filename: str) -> bytes:
    mime = _MIME.get(Path(filename).suffix.lower(), "application/octet-stream")
    head = (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {mime}\r\n\r\n"
    ).encode()
    return b"".join((head, data, f"\r\n--{BOUNDARY}--\r\n".encode()))


def stamp_jpeg(data: bytes, tag: bytes) -> bytes:
    if not data.startswith(b"\xff\xd8"):
        return data
    return b"".join((data[:2], b"\xff\xfe", struct.pack(">H", len(tag) + 2), tag, data[2:]))


class Bodies:
    def __init__(self, images_dir: Path | None, image: Path | None, stamp: bool) -> None:
        self.pid = os.getpid()
        self.stamp = stamp
        self.n = 0
        if image:
            self.files = [image]
            self.stamp = False
            self.fixed = multipart(image.read_bytes(), image.name)
        else:
            folder = images_dir or ROOT / "target" / "distinct-images"
            self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _MIME)
            if not self.files:
                sys.exit(f"{folder}: no images (run scripts/make_distinct_images.py)")
            self.fixed = None

    def next(self) -> bytes:
        if self.fixed is not None:
            return self.fixed
        n = self.n
        self.n += 1
        path = self.files[n % len(self.files)]
        data = path.read_bytes()
        if self.stamp:
            data = stamp_jpeg(data, f"lens-openloop pid={self.pid} n={n}".encode())
        return multipart(data, path.name)


class Pool:
    """Keep-alive HTTP/1.1 connections to one host; just enough for POST /predict."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def post(self, path: str, body: bytes, content_type: str, timeout: float) -> tuple[int, bytes]:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.opened += 1
        try:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            writer.write(head)
            writer.write(body)
            status, payload, keep = await asyncio.wait_for(self._read(reader), timeout)
        except BaseException:
            writer.close()
            raise
        if keep:
            self.idle.append((reader, writer))
        else:
            writer.close()
        return status, payload

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
        for _, w in self.idle:
            w.close()
        self.idle.clear()


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


class Recorder:
    def __init__(self) -> None:
        self.status = collections.Counter()
        self.ok_ms: list[float] = []
        self.all_ms: list[float] = []
        self.lag_ms: list[float] = []
        self.errors = collections.Counter()
        self.skipped = 0
        self.last_done = 0.0

    def done(self, status: int, payload: bytes, started: float, scheduled: float) -> None:
        now = time.perf_counter()
        self.last_done = max(self.last_done, now)
        ms = (now - scheduled) * 1000
        if status == 200:
            try:
                ok = json.loads(payload).get("success") is True
            except ValueError:
                ok = False
            if not ok:
                status = -200  # 200 without success=true
        self.status[status] += 1
        self.all_ms.append(ms)
        if status == 200:
            self.ok_ms.append(ms)
        self.lag_ms.append((started - scheduled) * 1000)


async def one(pool: Pool, bodies: Bodies, rec: Recorder, scheduled: float, timeout: float) -> None:
    started = time.perf_counter()
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    try:
        status, payload = await pool.post("/predict", bodies.next(), ctype, timeout)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        rec.errors[type(e).__name__] += 1
        status, payload = 0, b""
    except asyncio.TimeoutError:
        rec.errors["timeout"] += 1
        status, payload = 0, b""
    rec.done(status, payload, started, scheduled)


async def open_loop(args, pool: Pool, bodies: Bodies, rec: Recorder) -> float:
    interval = 1.0 / args.rate
    total = int(args.rate * args.duration)
    tasks: set[asyncio.Task] = set()
    t0 = time.perf_counter()
    for i in range(total):
        scheduled = t0 + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= args.max_in_flight:
            rec.skipped += 1
            continue
        t = asyncio.create_task(one(pool, bodies, rec, scheduled, args.timeout))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    sent_for = time.perf_counter() - t0
    rec.send_span = sent_for
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=args.grace)
        for t in pending:
            t.cancel()
        if pending:
            rec.errors["cut at grace"] += len(pending)
    return sent_for


async def closed_loop(args, pool: Pool, bodies: Bodies, rec: Recorder) -> float:
    t0 = time.perf_counter()
    end = t0 + args.duration

    async def client() -> None:
        while time.perf_counter() < end:
            now = time.perf_counter()
            await one(pool, bodies, rec, now, args.timeout)

    workers = [asyncio.create_task(client()) for _ in range(args.concurrency)]
    _, pending = await asyncio.wait(workers, timeout=args.duration + args.grace)
    for t in pending:
        t.cancel()
    return time.perf_counter() - t0


def summarize(args, rec: Recorder, elapsed: float, cpu_s: float, opened: int) -> dict:
    ok = sorted(rec.ok_ms)
    everything = sorted(rec.all_ms)
    lag = sorted(rec.lag_ms)
    answered = sum(rec.status.values())
    out = {
        "mode": "open" if args.rate else "closed",
        "rate": args.rate,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 3),
        "requests": answered + sum(v for k, v in rec.errors.items() if k == "cut at grace"),
        "skipped_at_cap": rec.skipped,
        "status": {str(k): v for k, v in sorted(rec.status.items())},
        "errors": dict(rec.errors),
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
    u = urlsplit(args.url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("--url must be a loopback address")
    pool = Pool(u.hostname, u.port or 80)
    bodies = Bodies(args.images_dir, args.image, not args.no_stamp)
    rec = Recorder()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.rate:
        await open_loop(args, pool, bodies, rec)
        # Throughput over the time answers kept coming: arrivals plus the drain.
        elapsed = max(rec.last_done - t0, args.duration)
    else:
        elapsed = await closed_loop(args, pool, bodies, rec)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    pool.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    out = summarize(args, rec, elapsed, cpu, pool.opened)
    out["wall_s"] = round(wall, 3)
    if args.rate:
        span = getattr(rec, "send_span", args.duration)
        out["send_span_s"] = round(span, 3)
        # Arrivals actually achieved: a generator that cannot keep the
        # schedule stretches the span beyond --duration.
        out["offered_per_sec"] = round((out["requests"] + rec.skipped) / span, 2) if span else None
    out["generator_cpu_cores"] = round(cpu / wall, 3) if wall else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


if __name__ == "__main__":
    main()
