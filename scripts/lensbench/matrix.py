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
* ``int8``: the asyncio closed loop of ``closed`` again, served with
  ``--precision int8`` (the model directory's int8 variant), so the served
  int8 speed-up and the model-only one come from the same run.
* ``imagenet``: the asyncio closed loop on distinct photos of ImageNet's size
  (long side 500 px, target/imagenet-photos). The distinct photos above are
  larger (median about 800x600), and the issue's 75% goal names this size.
* ``phone``: the asyncio closed loop on 12 MP phone photos (tools/phone_photos.py).
* ``open``: open loop (asyncio client, fixed arrival rate, distinct photos)
  at fractions of the best closed-loop rate just measured, by default 50%
  (latency at moderate load) and 150% (overload: Lens should shed with 429).

Topologies: ``inproc`` (one ``lens serve``), ``redis1``/``redis2`` (``lens
serve --redis`` plus 1 or 2 ``lens worker --redis``, a private redis-server
on a free loopback port); Redis rows are skipped with a note when ``lens
worker --help`` fails or redis-server is missing.

The ceiling: ``lens bench --model-only``, and ``lens bench --pipeline`` on the
distinct photos and (with their rows) on the ImageNet-size and 12 MP photos,
when ``lens bench --help`` works ("n/a" otherwise). The pipeline runs decode and inference of the
rows' own photos with no HTTP, so the report can say how much of the gap to the
ceiling is decoding and how much is the service. ``--model-only`` runs again
after the rows, and the goals divide by the mean of the two: this machine's
speed drifts over the minutes between them.

Everything a run produces goes to target/bench/<time>/ (results.json, per-row
logs and locust CSVs); the report and plot go to docs/results/ (full run) or next to
results.json (--quick), unless --out says otherwise. ``--report-only
results.json`` redraws a report from saved results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import machine
from .goals import goals
from .loads import LOCUST, parse_asyncio, parse_locust, run_asyncio, run_locust
from .machine import CORES, ROOT, children_cpu_s, proc_cpu_s, sys_cpu, vm_kb, wait_idle
from .photos import DEFAULT_DIR, DEFAULT_SEED, FIXTURES, IMAGENET_DIR, IMAGENET_LONG_SIDE, SUFFIXES
from .prometheus import metrics_delta
from .report import report
from .rows import SCENARIO_FLAGS, SCENARIOS, TOPOLOGIES, Row, best_closed, build_matrix, judge
from .server import DEFAULT_LENS, Topology, private_copy, redis_unavailable, warm_up


PHONE_DIR = ROOT / "target" / "phone-photos"
PHONE_PER_SOURCE = 6  # 24 photos from the four test photos: about 60 MB, read from the page cache


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def deadline_from(serve_args: list[str]) -> float:
    for i, a in enumerate(serve_args):
        if a == "--deadline-secs" and i + 1 < len(serve_args):
            return float(serve_args[i + 1])
        if a.startswith("--deadline-secs="):
            return float(a.split("=", 1)[1])
    return float(os.environ.get("LENS_DEADLINE_SECS", "30"))


def stop_generator(gen: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the generator's process group, SIGKILL it if it lingers."""
    os.killpg(gen.pid, signal.SIGTERM)
    try:
        gen.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(gen.pid, signal.SIGKILL)
        gen.wait()


def run_row(row: Row, lens: Path, outdir: Path, args) -> None:
    """Start a fresh Lens, load it with the row's generator, measure, stop everything."""
    rowdir = outdir / row.id
    rowdir.mkdir(parents=True, exist_ok=True)
    other_before = wait_idle(args.idle_wait) if args.idle_wait > 0 else None
    flags = SCENARIO_FLAGS.get(row.scenario, [])
    topo = Topology(lens, rowdir, TOPOLOGIES[row.topology], [*args.serve_args, *flags], [*args.worker_args, *flags],
                    worker_health=args.worker_health)
    gen = None
    res: dict = {"other_cpu_before": round(other_before, 2) if other_before is not None else None}
    try:
        url = topo.start()
        warm_up(url)  # photos the scenarios never send: no cache entry left behind that matters
        m0 = topo.scrape()
        pids = topo.lens_pids()
        # CPU of the system under test counts redis-server too; RSS is Lens's only.
        cpu_pids = {**pids, **({"redis": topo.procs["redis"].pid} if "redis" in topo.procs else {})}
        lens_cpu0 = {k: proc_cpu_s(pid) or 0.0 for k, pid in cpu_pids.items()}
        sys0, ch0, t0 = sys_cpu()[0], children_cpu_s(), time.monotonic()
        run = run_locust if row.generator == "locust" else run_asyncio
        gen, argv = run(row, url, rowdir, args)
        res["generator_argv"] = " ".join(shlex.quote(a) for a in argv)
        try:
            gen.wait(timeout=row.run_time + args.deadline + 60)
        except subprocess.TimeoutExpired:
            stop_generator(gen)
            res["generator_timeout"] = True
        elapsed = time.monotonic() - t0
        sys1, ch1 = sys_cpu()[0], children_cpu_s()
        lens_cpu1 = {k: proc_cpu_s(pid) for k, pid in cpu_pids.items()}
        hwm = {k: vm_kb(pid, "VmHWM") for k, pid in pids.items()}
        m1 = topo.scrape()
        lens_cpu = sum((lens_cpu1[k] or lens_cpu0[k]) - lens_cpu0[k] for k in cpu_pids)
        gen_cpu = ch1 - ch0
        res.update(
            elapsed_s=round(elapsed, 1),
            lens_cpu_cores=round(lens_cpu / elapsed, 2),
            gen_cpu_cores=round(gen_cpu / elapsed, 2),
            other_cpu_cores=round(max(0.0, (sys1 - sys0) - lens_cpu - gen_cpu) / elapsed, 2),
            lens_cpu_s=round(lens_cpu, 2),
            peak_rss_mb={k: round(v / 1024, 1) for k, v in hwm.items() if v},
            processes_alive={k: p.poll() is None for k, p in topo.procs.items()},
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
        shutil.rmtree(topo.data_dir, ignore_errors=True)
    runtime = served_runtime(rowdir)
    if runtime:
        res["runtime"] = runtime
    row.result = res
    judge(row, args.locust_processes)


def last_json_with(stdout: str, key: str) -> dict | None:
    """The last line of ``stdout`` that is a JSON object holding ``key``."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if key in obj:
                return obj
    return None


def engine_rows(stdout: str) -> list[dict]:
    """`lens bench`'s per engine and precision lines: the best of each in
    `--model-only`, the one row of each in `--pipeline`, or why it was skipped."""
    rows = []
    for line in stdout.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        if "best_of" in obj:
            rows.append({"runtime": obj["best_of"], **obj["best"]})
        elif obj.get("mode") == "pipeline" and "images_per_sec" in obj:
            rows.append({"runtime": f"{obj.get('engine')}-{obj.get('precision')}", **obj})
        elif "skipped" in obj:
            rows.append({"runtime": f"{obj.get('engine')}-{obj.get('precision')}", "skipped": obj["skipped"]})
    return rows


def served_runtime(rowdir: Path) -> str | None:
    """The engine-precision the row's Lens served with ("openvino-fp32"),
    from the "model ready" line of its logs; None if none says."""
    ready = re.compile(r'model ready .*?engine="?(\w+)"? precision="?(\w+)"?')
    for log in sorted(rowdir.glob("*.log")):
        text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace"))
        if m := ready.search(text):
            return f"{m.group(1)}-{m.group(2)}"
    return None


def bench_run(lens: Path, mode: list[str], extra: list[str], timeout: float) -> dict:
    """One `lens bench` run: its last summary line, with the CPU it and other
    work took meanwhile (the figure is only as good as the machine was quiet)."""
    argv = [str(lens), "bench", *mode, *extra]
    log(f"ceiling: {' '.join(argv[1:])}")
    b0, c0, t0 = sys_cpu()[0], children_cpu_s(), time.monotonic()
    try:
        r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    el = time.monotonic() - t0
    own = children_cpu_s() - c0
    other = max(0.0, sys_cpu()[0] - b0 - own) / el if el else 0.0
    out = last_json_with(r.stdout, "images_per_sec")
    if not out:
        return {"error": f"no JSON line with images_per_sec (exit {r.returncode})", "stderr": r.stderr[-500:]}
    # Each engine and precision's row, measured in this same run.
    out["engines"] = engine_rows(r.stdout)
    out["bench_cpu_cores"] = round(own / el, 2) if el else None
    out["other_cpu_cores"] = round(other, 2)
    return out


def ceiling(lens: Path, extra: list[str], timeout: float, photos: dict[str, Path]) -> dict:
    """`lens bench --model-only`, and `--pipeline` on each folder of `photos`
    (key "pipeline" for the distinct photos, "pipeline-imagenet" for the
    ImageNet-size ones, "pipeline-phone" for the 12 MP ones)."""
    try:
        h = subprocess.run([str(lens), "bench", "--help"], cwd=ROOT, capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"available": False, "why": str(e)}
    if h.returncode != 0:
        return {"available": False, "why": "`lens bench --help` failed: this build has no `lens bench`"}
    out: dict = {"available": True, "model-only": bench_run(lens, ["--model-only"], extra, timeout)}
    # A build whose `--images` takes no folder runs the pipeline on its own default photos.
    folders = b"directories" in h.stdout
    for key, folder in photos.items():
        out[key] = bench_run(lens, ["--pipeline", *(["--images", str(folder)] if folders else [])], extra, timeout)
        if "images_per_sec" in out[key]:
            out[key]["photos_dir"] = str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder)
    return out


def make_phone_photos(folder: Path) -> None:
    """The phone rows' 12 MP photos: tools/phone_photos.py, once (it writes manifest.json last)."""
    if (folder / "manifest.json").exists():
        return
    log(f"making 12 MP phone photos in {folder} (tools/phone_photos.py, a few seconds each)")
    subprocess.run([str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "tools" / "phone_photos.py"), "make",
                    "--per-source", str(PHONE_PER_SOURCE), str(folder)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


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


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced matrix: in-process and Redis, 50 and 200 users, 15 s rows")
    ap.add_argument("--scenarios", type=csv_words(SCENARIOS), help=f"rows to run, from {','.join(SCENARIOS)} (default all)")
    ap.add_argument("--topologies", type=csv_words(tuple(TOPOLOGIES)), help="from inproc,redis1,redis2 (default all)")
    ap.add_argument("--users", type=csv_ints, help="locust users for the distinct rows (default 200,600,1000; quick 50,200)")
    ap.add_argument("--original-users", type=csv_ints,
                    help="locust users for the original rows (default 200,600,1000,5000; quick 50,200)")
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
    ap.add_argument("--locust-processes", type=int, default=1,
                    help=f"locust --processes (default 1: each extra process takes CPU from Lens on this {CORES}-core machine)")
    ap.add_argument("--serve-args", default="", help="extra `lens serve` flags, one string (e.g. '--max-batch 16')")
    ap.add_argument("--worker-args", default="", help="extra `lens worker` flags, one string")
    ap.add_argument("--bench-args", default="", help="extra flags for `lens bench --model-only/--pipeline`")
    ap.add_argument("--no-ceiling", action="store_true", help="skip `lens bench`")
    ap.add_argument("--ceiling-timeout", type=float, default=600, help="seconds per `lens bench` run (default 600)")
    ap.add_argument("--images-dir", type=Path, help="photos for the distinct rows (default: generated into target/distinct-images)")
    ap.add_argument("--images", type=int, default=2000, help="distinct photos to generate (default 2000)")
    ap.add_argument("--imagenet-dir", type=Path, default=IMAGENET_DIR,
                    help=f"photos for the imagenet rows (default {IMAGENET_DIR.relative_to(ROOT)}, made like the distinct ones "
                         f"with a long side of {IMAGENET_LONG_SIDE[0]} px)")
    ap.add_argument("--phone-dir", type=Path, default=PHONE_DIR,
                    help=f"12 MP photos for the phone rows (default {PHONE_DIR.relative_to(ROOT)}, made by tools/phone_photos.py)")
    ap.add_argument("--idle-wait", type=float, help="wait up to this many seconds before each row for other work on the machine to calm down (default 30; quick 10; 0: never)")
    ap.add_argument("--lens", type=Path, default=DEFAULT_LENS, help="the lens binary (copied aside for the run)")
    ap.add_argument("--out", type=Path, help="report path (default docs/results/benchmarks.md; quick: next to results.json)")
    ap.add_argument("--keep-data", action="store_true", help="keep each row's --data-dir")
    ap.add_argument("--report-only", type=Path, metavar="RESULTS_JSON", help="only redraw the report from saved results")
    return ap


def settle(ap: argparse.ArgumentParser, args) -> None:
    """Fill the defaults that depend on --quick, and check the bounds."""
    q = args.quick
    args.scenarios = args.scenarios or list(SCENARIOS)
    args.topologies = args.topologies or list(TOPOLOGIES)
    args.users = args.users or ([50, 200] if q else [200, 600, 1000])
    args.original_users = args.original_users or ([50, 200] if q else [200, 600, 1000, 5000])
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
    if any(u < 1 or u > 5000 for u in args.users + args.original_users):
        ap.error("--users and --original-users must be within 1..5000")


def run_meta(args, outdir: Path, lens: Path, n_images: int) -> dict:
    locust_version = subprocess.run([str(LOCUST), "--version"], capture_output=True, text=True).stdout.split()[1:2]
    return {
        **machine.describe(),
        "quick": args.quick,
        "lens_sha256": hashlib.sha256(lens.read_bytes()).hexdigest()[:12],
        "serve_args": args.serve_args,
        "worker_args": args.worker_args,
        "deadline_s": args.deadline,
        "queue_note": "`--queue-capacity`, default 256 jobs; `--max-pending`, default 1024 requests",
        "ramp_s": args.ramp,
        "locust_version": locust_version[0] if locust_version else "?",
        "locust_processes": args.locust_processes,
        "distinct_images": n_images,
        "imagenet_photos": sum(1 for p in args.imagenet_dir.glob("*.jpg")) if args.imagenet_dir.exists() else 0,
        "phone_photos": sum(1 for p in args.phone_dir.glob("*.jpg")) if args.phone_dir.exists() else 0,
        "outdir": os.path.relpath(outdir, ROOT),
        "argv": sys.argv[1:],
    }


def log_result(r: dict) -> None:
    if "error" in r:
        log(f"    error: {r['error']}")
        return
    ok = r["ok_ms"]
    log(f"    {r['predict_requests']} POSTs, {r['predict_failures']} failed, {r['ok_rps']} ok/s, "
        f"p50/p95/p99 {ok.get('p50')}/{ok.get('p95')}/{ok.get('p99')} ms, "
        f"RSS {r.get('peak_rss_mb')}, CPU lens {r['lens_cpu_cores']} gen {r['gen_cpu_cores']} other {r['other_cpu_cores']}; {r['limit']}")


def main() -> None:
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so every row's
    # `finally` stops the Lens processes and the generator it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = parser()
    args = ap.parse_args()

    if args.report_only:
        data = json.loads(args.report_only.read_text())
        md = args.out or (ROOT / "docs" / "results" / "benchmarks.md" if not data["meta"]["quick"] else args.report_only.parent / "benchmarks.md")
        print(report(data, md, md.with_suffix(".png")))
        log(f"wrote {md} and {md.with_suffix('.png')}")
        return

    settle(ap, args)
    rows = build_matrix(args)
    if args.list:
        for r in rows:
            print(r.id)
        return
    if not rows:
        ap.error("no rows selected")

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = ROOT / "target" / "bench" / (stamp + ("-quick" if args.quick else ""))
    lens = private_copy(args.lens, outdir)

    if any(r.scenario != "original" for r in rows):
        # Made here, not by the generators on first use: --images sets how many.
        from .distinct_photos import make

        if not args.images_dir:
            make(DEFAULT_DIR, args.images, DEFAULT_SEED, FIXTURES)
        if any(r.scenario == "imagenet" for r in rows) and args.imagenet_dir == IMAGENET_DIR:
            make(IMAGENET_DIR, args.images, DEFAULT_SEED, FIXTURES, long_side=IMAGENET_LONG_SIDE)
    if any(r.scenario == "phone" for r in rows):
        make_phone_photos(args.phone_dir)
    images_dir = args.images_dir or DEFAULT_DIR
    n_images = sum(1 for p in images_dir.iterdir() if p.suffix.lower() in SUFFIXES) if images_dir.exists() else 0

    args.worker_health = False
    if any(r.topology != "inproc" for r in rows):
        why_no_redis, args.worker_health = redis_unavailable(lens)
        if why_no_redis:
            for r in rows:
                if r.topology != "inproc":
                    r.skipped = why_no_redis
            log(f"Redis rows skipped: {why_no_redis}")

    meta = run_meta(args, outdir, lens, n_images)
    ceil: dict = {"available": False, "why": "skipped (--no-ceiling)"}
    if not args.no_ceiling:
        if args.idle_wait:
            wait_idle(args.idle_wait)
        photos = {"pipeline": images_dir}
        if any(r.scenario == "imagenet" for r in rows):
            photos["pipeline-imagenet"] = args.imagenet_dir
        if any(r.scenario == "phone" for r in rows):
            photos["pipeline-phone"] = args.phone_dir
        ceil = ceiling(lens, shlex.split(args.bench_args), args.ceiling_timeout, photos)
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
        log_result(row.result)
        save()
    if ceil.get("available"):
        # Again after the rows: the goals divide by the mean of the two (goals.served_ceiling).
        if args.idle_wait:
            wait_idle(args.idle_wait)
        ceil["model-only-after"] = bench_run(lens, ["--model-only"], shlex.split(args.bench_args), args.ceiling_timeout)
        log(f"ceiling after the rows: {json.dumps(ceil['model-only-after'])[:300]}")
    data = save()
    lens.unlink(missing_ok=True)  # 90 MB; results.json keeps its sha256
    md = args.out or ((outdir / "benchmarks.md") if args.quick else ROOT / "docs" / "results" / "benchmarks.md")
    table = report(data, md, md.with_suffix(".png"))
    print()
    print(table)
    print()
    for g in goals(rows, ceil, meta):
        print(f"- {g[0]}: {g[1]} ({g[2]})")
    log(f"wrote {md} and {md.with_suffix('.png')}; raw data in {outdir}")


if __name__ == "__main__":
    main()
