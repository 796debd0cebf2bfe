"""Soak test: Lens under mixed traffic for a long time, watched every 10 s (run it through scripts/soak).

    scripts/soak [MINUTES] [options] [-- LENS SERVE FLAGS...]

1. Starts ``lens serve`` (a private copy of target/release/lens) on a free
   loopback port with a fresh temporary ``--data-dir``. Small disk caps
   (``--uploads-max-bytes``, ``--feedback-max-bytes``, 32 MiB each) are
   added when this build's ``lens serve --help`` has them and they are not
   given after ``--``; every flag after ``--`` goes to ``lens serve`` as is.
2. Capacity: a closed loop of distinct photos to /predict for ~10 s.
3. The soak: an open loop at 70% of that capacity (``--load``) for MINUTES
   minutes (default 30) of mixed traffic (lensbench/soak_traffic.py: distinct
   and 12-megapixel photos, one repeated photo, hostile inputs, page
   uploads, feedback, slow clients).
4. Every 10 s: the server's RSS, threads and open FDs (/proc), disk used
   under the data dir, its CPU, and the last window's answers (2xx/4xx/5xx,
   no answer) and p50/p99.
5. Stops the server (also on Ctrl-C) and writes docs/results/soak.md and
   docs/results/soak.png (``--out``), with verdicts against the goals. Raw samples
   and the server log are kept in target/soak/<time>/. An interrupted run
   writes its report there, not to docs/results/.

Every request goes to the 127.0.0.1 server this script started; the number
of requests is rate x duration, each with a timeout, and at most 512 are
open at once.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import machine
from .machine import CORES, ROOT, disk_usage, open_fds, proc_cpu_s, proc_status
from .openloop import Bodies, Pool, Recorder, closed_loop, open_loop, percentile, predict_fire
from .photos import PhotoStream, distinct_folder
from .server import DEFAULT_LENS, Topology, http_get, private_copy, serve_flags, warm_up
from .soak_report import CAPPED_STORES, STORE_PATHS, write_report
from .soak_traffic import KINDS, Traffic, big_photos

SAMPLE_EVERY_S = 10.0
DEFAULT_CAPS = {flag: 32 * 2**20 for flag in CAPPED_STORES}
MAX_IN_FLIGHT = 512  # well under the default 1024 open files of this process and of Lens
CAPACITY_CLIENTS = max(8, 4 * CORES)


@dataclass
class SoakRun:
    """What a run found; filled as it goes, so an interrupted run still has its samples."""

    settings: dict
    capacity: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    traffic: Traffic | None = None
    open_loop: dict = field(default_factory=dict)
    ended: str = "completed"  # or "interrupted", "server exited"


def split_at_dashdash(argv: list[str]) -> tuple[list[str], list[str]]:
    """(this script's arguments, the ones after ``--`` for lens serve)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def with_default_caps(lens: Path, serve_extra: list[str]) -> list[str]:
    """``serve_extra`` plus the default caps this build knows and the user did not set."""
    known = serve_flags(lens)
    given = {a.split("=", 1)[0] for a in serve_extra if a.startswith("--")}
    added = []
    for flag, value in DEFAULT_CAPS.items():
        if flag in known and flag not in given:
            added += [flag, str(value)]
    return added + serve_extra


def labels_of(url: str) -> list[str]:
    status, body = http_get(url + "/api/labels")
    try:
        labels = json.loads(body) if status == 200 else []
    except ValueError:
        labels = []
    return [x for x in labels if isinstance(x, str)]


class Sampler:
    """One row of measurements: the server process, its data dir, the last window's answers."""

    def __init__(self, server: subprocess.Popen, data_dir: Path, pool: Pool, traffic: Traffic) -> None:
        self.server, self.pid = server, server.pid
        self.data_dir, self.pool, self.traffic = data_dir, pool, traffic
        self.t0 = self.last_t = time.monotonic()
        self.last_cpu = proc_cpu_s(self.pid) or 0.0

    async def take(self) -> dict | None:
        """A sample, or None once the server has exited."""
        if self.server.poll() is not None:  # reaps it: a zombie's /proc entry would pass for alive
            return None
        status = proc_status(self.pid)
        fds, sockets = open_fds(self.pid)
        disk = await asyncio.to_thread(disk_usage, self.data_dir)
        now, cpu = time.monotonic(), proc_cpu_s(self.pid) or self.last_cpu
        row = {
            "t_s": round(now - self.t0, 1),
            "rss_mb": round(status.get("VmRSS", 0) / 1024, 1),
            "hwm_mb": round(status.get("VmHWM", 0) / 1024, 1),
            "threads": status.get("Threads", 0),
            "fds": fds,
            "sockets": sockets,
            "client_conns": self.pool.open_now,
            # The server's FDs less one per connection this client holds open:
            # what is left is Lens's own (listener, files, pipes, leaked sockets).
            "fds_own": fds - self.pool.open_now,
            "disk_mb": round(disk[""] / 2**20, 2),
            # The stores the caps are for: <data-dir>/uploads and <data-dir>/feedback/images.
            **{f"{store}_mb": round(disk.get(STORE_PATHS[store], 0) / 2**20, 2) for store in CAPPED_STORES.values()},
            "feedback_db_mb": round((disk.get("feedback", 0) - disk.get("feedback/images", 0)) / 2**20, 2),
            "cpu_cores": round((cpu - self.last_cpu) / (now - self.last_t), 2) if now > self.last_t else 0.0,
            "window_s": round(now - self.last_t, 1),
            **self.traffic.outcomes.take_window(),
        }
        self.last_t, self.last_cpu = now, cpu
        return row


async def measure_capacity(pool: Pool, seconds: float, timeout: float) -> dict:
    """Closed loop of distinct photos to /predict: answered per second."""
    rec = Recorder()
    fire = predict_fire(pool, Bodies(None, None, stamp=True), rec, timeout)
    elapsed = await closed_loop(CAPACITY_CLIENTS, seconds, fire, grace=timeout)
    ok = sorted(rec.ok_ms)
    return {
        "clients": CAPACITY_CLIENTS,
        "seconds": round(elapsed, 1),
        "ok_per_s": round(len(ok) / elapsed, 1) if elapsed else 0.0,
        "status": {str(k): v for k, v in rec.status.items()},
        "p50_ms": percentile(ok, 50),
        "p99_ms": percentile(ok, 99),
    }


async def watch(run: SoakRun, sampler: Sampler) -> None:
    """A sample every SAMPLE_EVERY_S into ``run.samples``; returns only if the server exits."""
    k = 0
    while True:
        sample = await sampler.take()
        if sample is None:
            return
        if k:  # the first is the baseline, taken before any soak traffic
            print(f"[soak] {sample['t_s'] / 60:5.1f} min: RSS {sample['rss_mb']} MB, FDs {sample['fds']}, "
                  f"disk {sample['disk_mb']} MB, {sample['answered']} answered, 5xx {sample['5xx']}, "
                  f"p99 {sample['p99_ms']} ms", flush=True)
        run.samples.append(sample)
        k += 1
        await asyncio.sleep(max(0.0, sampler.t0 + k * SAMPLE_EVERY_S - time.monotonic()))


async def soak(run: SoakRun, topo: Topology, url: str, args) -> None:
    """Capacity, then the open loop of mixed traffic while ``watch`` samples; fills ``run``."""
    pool = Pool.loopback(url)
    timeout = args.timeout
    run.capacity = await measure_capacity(pool, args.capacity_secs, timeout)
    capacity = run.capacity["ok_per_s"]
    if capacity <= 0:
        raise SystemExit(f"scripts/soak: Lens answered nothing in the capacity run ({run.capacity['status']}); see {topo.logdir}")
    rate = round(min(args.load * capacity, 2000.0), 1)
    run.settings.update(capacity_per_s=capacity, rate_per_s=rate)
    print(f"[soak] capacity {capacity}/s; soaking at {rate}/s for {args.minutes:g} min", flush=True)
    traffic = Traffic(pool, PhotoStream(None, True, tag="lens-soak"), big_photos(), labels_of(url), args.seed, timeout)
    run.traffic = traffic
    sampler = Sampler(topo.procs["serve"], topo.data_dir, pool, traffic)

    watcher = asyncio.create_task(watch(run, sampler))
    load = asyncio.create_task(open_loop(rate, args.minutes * 60, traffic.fire, MAX_IN_FLIGHT, grace=timeout))
    done, _ = await asyncio.wait({watcher, load}, return_when=asyncio.FIRST_COMPLETED)
    if load in done:
        watcher.cancel()
        run.open_loop = asdict(load.result())
        last = await sampler.take()  # the partial window since the last sample
        if last is not None:
            run.samples.append(last)
    else:
        load.cancel()
        run.ended = "server exited"
    pool.close()


def interrupt(*_) -> None:
    """SIGTERM unwinds like Ctrl-C, so the server is stopped either way."""
    raise KeyboardInterrupt


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("minutes", nargs="?", type=float, default=30.0, help="soak duration in minutes (default 30)")
    ap.add_argument("--load", type=float, default=0.7, help="offered rate as a fraction of the measured capacity (default 0.7)")
    ap.add_argument("--capacity-secs", type=float, default=10.0, help="length of the capacity run (default 10)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds (default 60, above Lens's 30 s deadline)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the traffic mix (default 7)")
    ap.add_argument("--lens", type=Path, default=DEFAULT_LENS, help="the lens binary (copied aside for the run)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "soak.md", help="report path; the plot goes beside it as .png (default docs/results/soak.md)")
    ap.add_argument("--keep-data", action="store_true", help="keep the temporary --data-dir")
    return ap


def settings_of(args, lens: Path, serve_args: list[str], data_dir: Path, outdir: Path) -> dict:
    return {
        "minutes": args.minutes,
        "load": args.load,
        "capacity_secs": args.capacity_secs,
        "capacity_clients": CAPACITY_CLIENTS,
        "sample_every_s": SAMPLE_EVERY_S,
        "max_in_flight": MAX_IN_FLIGHT,
        "serve_args": serve_args,
        "data_dir": str(data_dir),
        **machine.describe(),
        "lens_sha256": hashlib.sha256(lens.read_bytes()).hexdigest()[:12],
        "mix": [{"kind": k.name, "weight": k.weight, "expect": k.expect, "what": k.what} for k in KINDS],
        "outdir": os.path.relpath(outdir, ROOT),
    }


def finish(run: SoakRun, out: Path, outdir: Path) -> int:
    """Save the raw samples, write the report (an interrupted run's beside them, not at ``out``); the exit code."""
    (outdir / "soak.json").write_text(json.dumps(
        {"settings": run.settings, "capacity": run.capacity, "open_loop": run.open_loop, "ended": run.ended,
         "samples": run.samples, "per_kind": run.traffic.outcomes.per_kind() if run.traffic else []}, indent=1) + "\n")
    if not run.samples:
        print(f"[soak] no samples taken ({run.ended}); the server log is in {outdir}", file=sys.stderr)
        return 1
    md = out if run.ended != "interrupted" else outdir / "soak.md"
    verdicts = write_report(run, md, md.with_suffix(".png"))
    for goal, verdict, measured in verdicts:
        print(f"- {goal}: {verdict} ({measured})")
    print(f"[soak] wrote {md} and {md.with_suffix('.png')}; raw samples and the server log in {outdir}")
    return 0 if run.ended == "completed" and not any(v.startswith("FAIL") for _, v, _ in verdicts) else 1


def main() -> None:
    ours, serve_extra = split_at_dashdash(sys.argv[1:])
    ap = parser()
    args = ap.parse_args(ours)
    if not 0.5 <= args.minutes <= 24 * 60:
        ap.error("MINUTES must be within 0.5..1440")
    if not 0 < args.load <= 1.5 or not 2 <= args.capacity_secs <= 120 or not 1 <= args.timeout <= 600:
        ap.error("--load must be in (0, 1.5], --capacity-secs in [2, 120], --timeout in [1, 600]")
    signal.signal(signal.SIGTERM, interrupt)
    distinct_folder()  # both made once (about a minute) before anything is timed
    big_photos()

    outdir = ROOT / "target" / "soak" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    lens = private_copy(args.lens, outdir)
    serve_args = with_default_caps(lens, serve_extra)
    data_dir = Path(tempfile.mkdtemp(prefix="lens-soak-"))
    run = SoakRun(settings_of(args, lens, serve_args, data_dir, outdir))
    topo = Topology(lens, outdir, serve_args=serve_args, data_dir=data_dir)
    try:
        url = topo.start()
        print(f"[soak] lens serve {' '.join(serve_args) or '(defaults)'} at {url}, data in {data_dir}", flush=True)
        warm_up(url)
        asyncio.run(soak(run, topo, url, args))
    except KeyboardInterrupt:
        run.ended = "interrupted"
        print("\n[soak] interrupted: stopping the server", flush=True)
    except RuntimeError as e:  # the server did not start
        run.ended = f"error: {e}"
    finally:
        topo.stop()
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
        lens.unlink(missing_ok=True)  # 90 MB; the settings keep its sha256
    sys.exit(finish(run, args.out, outdir))


if __name__ == "__main__":
    main()
