"""The matrix's load generators: starting locust or the asyncio client for a row, and reading what they wrote.

Both run as their own process group (so a stuck one can be killed whole)
and write their figures to the row's folder: locust its CSVs and CPU
samples, the asyncio client one JSON summary. ``parse_*`` turn those into
the same result keys, so the report does not care which generator ran.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

from .machine import ROOT
from .rows import Row

PY = ROOT / ".venv" / "bin" / "python"
LOCUST = ROOT / ".venv" / "bin" / "locust"
LOCUSTFILE = ROOT / "stress_test" / "locustfile.py"
OPENLOOP = ROOT / "scripts" / "bench_openloop.py"


def _spawn(argv: list[str], rowdir: Path, env: dict | None = None) -> subprocess.Popen:
    with open(rowdir / "generator.log", "wb") as out:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def run_locust(row: Row, url: str, rowdir: Path, args) -> tuple[subprocess.Popen, list[str]]:
    spawn = max(1.0, row.users / args.ramp)
    argv = [
        str(LOCUST), "-f", str(LOCUSTFILE), "--host", url, "--headless",
        "-u", str(row.users), "-r", f"{spawn:g}", "-t", f"{row.run_time}s",
        "--csv", str(rowdir / "locust"), "--only-summary", "--reset-stats",
        "--exit-code-on-error", "0", "--loglevel", "INFO",
    ]
    if args.locust_processes > 1:
        argv += ["--processes", str(args.locust_processes)]
    env = dict(os.environ)
    env.update(LENS_SCENARIO=row.scenario, LENS_LOCUST_USAGE_DIR=str(rowdir / "locust-usage"), PYTHONUNBUFFERED="1")
    if args.images_dir:
        env["LENS_IMAGES_DIR"] = str(args.images_dir)
    return _spawn(argv, rowdir, env), argv


def run_asyncio(row: Row, url: str, rowdir: Path, args) -> tuple[subprocess.Popen, list[str]]:
    argv = [str(PY), str(OPENLOOP), "--url", url, "--duration", str(row.run_time), "--json", str(rowdir / "asyncio.json"),
            "--grace", f"{args.deadline + 10:g}"]
    if row.scenario == "open":
        argv += ["--rate", f"{row.rate:g}"]
    else:
        argv += ["--concurrency", str(row.users)]
    images = {"phone": args.phone_dir, "imagenet": args.imagenet_dir}.get(row.scenario, args.images_dir)
    if images:
        argv += ["--images-dir", str(images)]
    return _spawn(argv, rowdir), argv


def num(x) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def parse_locust(rowdir: Path) -> dict:
    path = rowdir / "locust_stats.csv"
    if not path.exists():
        return {"error": "locust wrote no stats"}
    stats = list(csv.DictReader(path.open()))
    pred = [r for r in stats if r["Name"].startswith("/predict")]
    ok = next((r for r in stats if r["Name"] == "/predict"), None)
    get = next((r for r in stats if r["Name"] == "/"), None)
    agg = next((r for r in stats if r["Name"] == "Aggregated"), None)
    res = {
        "predict_requests": sum(int(r["Request Count"]) for r in pred),
        "predict_failures": sum(int(r["Failure Count"]) for r in pred),
        "predict_ok": int(ok["Request Count"]) - int(ok["Failure Count"]) if ok else 0,
        "get_requests": int(get["Request Count"]) if get else 0,
        "get_failures": int(get["Failure Count"]) if get else 0,
        "outcomes": {r["Name"]: int(r["Request Count"]) for r in pred},
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
    log = rowdir / "generator.log"
    warned = log.exists() and "CPU usage above" in log.read_text(errors="replace")
    samples, warnings = [], 0
    for f in (rowdir / "locust-usage").glob("usage-*.json"):
        try:
            u = json.loads(f.read_text())
        except ValueError:
            continue
        samples += u.get("cpu_samples", [])
        warnings += u.get("cpu_warnings", 0)
    res["cpu_warning"] = warned or warnings > 0
    res["locust_cpu_max_pct"] = max(samples) if samples else None
    return res


def parse_asyncio(rowdir: Path) -> dict:
    path = rowdir / "asyncio.json"
    if not path.exists():
        return {"error": "the asyncio client wrote no summary"}
    a = json.loads(path.read_text())
    outcomes = {"/predict": a["ok"]}
    for code, n in ((int(k), v) for k, v in a["status"].items()):
        if code != 200:
            outcomes[f"/predict [{code if code else 'no response'}]"] = n
    for k, n in a.get("errors", {}).items():
        outcomes[f"error: {k}"] = n
    return {
        "predict_requests": a["requests"],
        "predict_failures": a["requests"] - a["ok"],
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
