"""Closed-loop runs against servers on this machine, shared by
scripts/bench-tracing and scripts/bench-bentoml: start a `lens serve`, drive
a URL's POST /predict with scripts/bench_openloop.py, read a process's peak
RSS and a Prometheus counter.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from .machine import ROOT

LENS = ROOT / "target" / "release" / "lens"
PY = ROOT / ".venv" / "bin" / "python"


def start_lens(name: str, env: dict, tmp: Path) -> tuple[subprocess.Popen, str]:
    log = open(tmp / f"{name}.log", "wb")
    args = [str(LENS), "serve", "--addr", "127.0.0.1:0", "--cache-entries", "0", "--data-dir", str(tmp / name)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | {"LENS_GRPC_ADDR": ""} | env
    proc = subprocess.Popen(args, env=full_env, stdout=subprocess.PIPE, stderr=log, text=True)
    for line in proc.stdout:
        if line.startswith("listening on "):
            return proc, line.split()[-1]
    sys.exit(f"{name} did not start; see {tmp / name}.log")


def metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(f"{url}/metrics").read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def peak_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def drive(url: str, seconds: float, concurrency: int, out: Path) -> dict:
    argv = [str(PY), str(ROOT / "scripts/bench_openloop.py"), "--url", url, "--concurrency", str(concurrency)]
    argv += ["--duration", str(seconds), "--grace", "30", "--json", str(out)]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def parse_args(description: str) -> argparse.Namespace:
    """The options every interleaved closed-loop comparison takes."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=32)
    return ap.parse_args()


def interleaved(urls: dict[str, str], args: argparse.Namespace, tmp: Path) -> dict[str, list[dict]]:
    """Drives every URL in turn for each round, the order rotating between
    rounds so that machine drift hits them alike; every run's summary, by name."""
    names = list(urls)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            summary = drive(urls[name], args.seconds, args.concurrency, tmp / "round.json")
            runs[name].append(summary)
            print(f"round {r + 1} {name:>20}: {summary['ok_per_sec']:7.1f} answers/s", flush=True)
    return runs
