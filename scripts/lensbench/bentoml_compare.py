"""Lens against a real BentoML serving the same model, in one run.

scripts/bench-bentoml is the command. One `lens serve --cache-entries 0` and
BentoML (lensbench/bentoml_peer.py: adaptive batching, Pillow decode, ONNX
Runtime) with 1 and with 2 workers run side by side on 127.0.0.1; rounds
drive each in turn, the order rotating, for SECONDS with CONCURRENCY
closed-loop clients sending distinct photos (target/distinct-images, every
body unique) to POST /predict as multipart `file`, the same request for all.

It prints each server's median answers/s and p50/p99 over the rounds, the
failures, and Lens / the better BentoML, all from this run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from .closed_loop import interleaved, parse_args, start_lens
from .machine import ROOT, free_port
from .protocols import cpu_name

VENV = ROOT / ".venv-bentoml"
REQUIREMENT = "bentoml==1.4.40"


def ensure_venv() -> None:
    """Makes .venv-bentoml once: BentoML with requirements.txt's engine and image pins."""
    if (VENV / "bin" / "bentoml").exists():
        return
    pins = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    pins = [p for p in pins if p.split("==")[0] in ("onnxruntime", "numpy", "pillow")]
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", REQUIREMENT, *pins], check=True)


def start_bentoml(workers: int, tmp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = os.environ | {"BENTO_WORKERS": str(workers), "BENTOML_HOME": str(tmp / "bentoml-home")}
    argv = [str(VENV / "bin" / "bentoml"), "serve", "lensbench.bentoml_peer:Lite0", "--port", str(port)]
    argv += ["--host", "127.0.0.1"]
    log = open(tmp / f"bentoml-{workers}.log", "wb")
    proc = subprocess.Popen(argv, cwd=ROOT / "scripts", env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/readyz", timeout=2).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.5)
    sys.exit(f"BentoML did not become ready; see {tmp}/bentoml-{workers}.log")


def main() -> None:
    args = parse_args(__doc__)
    ensure_venv()
    tmp = Path(tempfile.mkdtemp(prefix="lens-bench-bentoml-"))
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        servers["Lens"] = start_lens("lens", {}, tmp)
        for workers in (1, 2):
            servers[f"BentoML, {workers} worker{'s' if workers > 1 else ''}"] = start_bentoml(workers, tmp)
        runs = interleaved({name: url for name, (_, url) in servers.items()}, args, tmp)
        print(f"\n{cpu_name()}, {os.cpu_count()} cores; {args.rounds} rounds of {args.seconds:.0f} s, "
              f"{args.concurrency} closed-loop clients, distinct photos, POST /predict (multipart file)")
        print(f"{'server':>20} {'answers/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
        rate = {}
        for name, summaries in runs.items():
            rate[name] = statistics.median(s["ok_per_sec"] for s in summaries)
            p50 = statistics.median(s["ok_ms"]["p50"] or 0 for s in summaries)
            p99 = statistics.median(s["ok_ms"]["p99"] or 0 for s in summaries)
            failed = sum(s["requests"] - s["ok"] for s in summaries)
            print(f"{name:>20} {rate[name]:10.1f} {p50:8.0f} {p99:8.0f} {failed:7d}")
            if failed:
                statuses = [(k, v) for s in summaries for k, v in s["status"].items() if k != "200"]
                errors = [(k, v) for s in summaries for k, v in s["errors"].items()]
                print(f"{'':>20} not answered: status {statuses}, errors {errors}")
        best = max((n for n in runs if n != "Lens"), key=rate.get)
        print(f"Lens / {best}: {rate['Lens'] / rate[best]:.2f}")
    finally:
        for proc, _ in servers.values():
            try:
                os.killpg(proc.pid, 15)
            except ProcessLookupError:
                pass
        for proc, _ in servers.values():
            proc.wait()


if __name__ == "__main__":
    main()
