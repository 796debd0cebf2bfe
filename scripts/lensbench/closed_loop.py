"""Closed-loop runs against servers on this machine, shared by
scripts/bench-tracing and scripts/bench-bentoml: start a `lens serve`, drive
a URL's POST /predict with scripts/bench_openloop.py, read a process's peak
RSS and a Prometheus counter.
"""

from __future__ import annotations

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
