"""Interleaved closed-loop comparison of `lens serve` configurations.

Each argument is ``NAME=COMMAND``; the command is run with ``--addr
127.0.0.1:PORT --cache-entries 0`` appended. Rounds alternate the
configurations; the summary gives each one's median images/s and p99, the
server's CPU per answer and how often its threads were preempted per answer
(from /proc), and every configuration's ratio to the first. Run from the repository root (the
``scripts/bench-compare`` wrapper does).

With ``CEILING`` set to a ``lens bench --model-only`` command, each round
starts by measuring the model's ceiling, and every configuration's answers
per second are also divided by the ceiling of their own round. This machine's
speed drifts by 20% within minutes, so a ratio to a ceiling measured a minute
earlier is a steadier estimate than one to a ceiling measured at the start of
a long run; the summary gives the median of the per-round ratios.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROUNDS = int(os.environ.get("ROUNDS", 3))
SECONDS = float(os.environ.get("SECONDS", 20))
CONCURRENCY = int(os.environ.get("CONCURRENCY", 32))
IMAGES = Path(os.environ.get("IMAGES", "target/distinct-images"))
CEILING = os.environ.get("CEILING", "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, limit: float = 120.0) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not become ready")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the whole process, exited threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def preemptions(pid: int) -> int:
    """Involuntary context switches of the process's live threads."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("nonvoluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:  # the thread ended meanwhile
            pass
    return total


def ceiling() -> float:
    """Images/s of the `lens bench` command in CEILING: its last JSON line's best."""
    out = subprocess.run(shlex.split(CEILING), check=True, capture_output=True, text=True).stdout
    last = [line for line in out.splitlines() if line.startswith("{")][-1]
    return float(json.loads(last)["images_per_sec"])


def one_round(name: str, command: str) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tempfile.mkdtemp(prefix="lens-compare-")
    argv = shlex.split(command) + ["--addr", f"127.0.0.1:{port}", "--cache-entries", "0", "--data-dir", data]
    log = open(Path(data) / "server.log", "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, proc)
        cpu0, pre0 = cpu_s(proc.pid), preemptions(proc.pid)
        out = Path(data) / "result.json"
        subprocess.run(
            [sys.executable, "scripts/bench_openloop.py", "--url", url, "--concurrency", str(CONCURRENCY),
             "--duration", str(SECONDS), "--images-dir", str(IMAGES), "--json", str(out)],
            check=True, stdout=subprocess.DEVNULL,
        )
        summary = json.loads(out.read_text())
        ok = max(1, int(summary["ok"]))
        summary["cpu_ms_per_ok"] = 1000 * (cpu_s(proc.pid) - cpu0) / ok
        summary["preemptions_per_ok"] = (preemptions(proc.pid) - pre0) / ok
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return summary


def main() -> None:
    configs = []
    for arg in sys.argv[1:]:
        name, _, command = arg.partition("=")
        if not command:
            raise SystemExit(f"expected NAME=COMMAND, got {arg!r}")
        configs.append((name, command))
    if len(configs) < 1:
        raise SystemExit(__doc__)
    if not IMAGES.is_dir():
        subprocess.run([sys.executable, "scripts/make_distinct_images.py"], check=True)
    results: dict[str, list[tuple[float, float, int, float, float]]] = {n: [] for n, _ in configs}
    ratios: dict[str, list[float]] = {n: [] for n, _ in configs}
    ceilings: list[float] = []
    for r in range(ROUNDS):
        if CEILING:
            ceilings.append(ceiling())
            print(f"round {r + 1} ceiling: {ceilings[-1]:.1f} img/s", flush=True)
        for name, command in configs:
            s = one_round(name, command)
            rate = float(s["ok_per_sec"])
            p99 = float(s["ok_ms"]["p99"] or 0.0)
            failed = int(s["requests"]) - int(s["ok"])
            cpu, pre = s["cpu_ms_per_ok"], s["preemptions_per_ok"]
            results[name].append((rate, p99, failed, cpu, pre))
            share = ""
            if CEILING:
                ratios[name].append(rate / ceilings[-1])
                share = f" = {100 * ratios[name][-1]:.1f}% of the round's ceiling"
            print(f"round {r + 1} {name}: {rate:.1f} img/s{share}, p99 {p99:.0f} ms, failed {failed}, "
                  f"server CPU {cpu:.2f} ms and {pre:.1f} preemptions per answer", flush=True)
    base = statistics.median(x[0] for x in results[configs[0][0]])
    print(f"\n{CONCURRENCY} closed-loop clients, distinct photos from {IMAGES}, no cache, {SECONDS:.0f} s x {ROUNDS} rounds")
    print("| configuration | median img/s | median p99 ms | failed | median server CPU ms per answer | median preemptions per answer | ratio to first |")
    print("|---|---|---|---|---|---|---|")
    for name, _ in configs:
        rows = results[name]
        med = statistics.median(x[0] for x in rows)
        p99 = statistics.median(x[1] for x in rows)
        failed = sum(x[2] for x in rows)
        cpu = statistics.median(x[3] for x in rows)
        pre = statistics.median(x[4] for x in rows)
        print(f"| {name} | {med:.1f} | {p99:.0f} | {failed} | {cpu:.2f} | {pre:.1f} | {med / base:.2f} |")
    if CEILING:
        print(f"\nceiling ({CEILING}): median {statistics.median(ceilings):.1f} img/s, "
              f"rounds {', '.join(f'{c:.1f}' for c in ceilings)}")
        for name, _ in configs:
            each = ", ".join(f"{100 * x:.1f}%" for x in ratios[name])
            print(f"{name}: median {100 * statistics.median(ratios[name]):.1f}% of its round's ceiling ({each})")


if __name__ == "__main__":
    main()
