"""What exporting traces costs: one `lens serve` with tracing off, one with
every request traced to a real OTLP receiver, and one tracing to a
collector that is down, in interleaved rounds of one run.

scripts/bench-tracing is the command. Each round drives every server in
turn for SECONDS with CONCURRENCY closed-loop clients sending distinct
photos to POST /predict (scripts/bench_openloop.py; `--cache-entries 0`),
the order rotating between rounds. The receiver is tests/otlp_receiver.py
in --count mode (it decodes each export and counts its spans), on this
machine, so its CPU is part of what the traced server pays.

It prints each server's median answers/s over the rounds, the ratio
traced / untraced, failures, each server's peak RSS (VmHWM), spans
exported and dropped, and the wire size of a span.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from .closed_loop import PY, interleaved, metric, parse_args, peak_mb, start_lens
from .machine import ROOT, free_port
from .protocols import cpu_name

def main() -> None:
    args = parse_args(__doc__)
    tmp = Path(tempfile.mkdtemp(prefix="lens-bench-tracing-"))
    received = tmp / "received.jsonl"
    receiver = subprocess.Popen(
        [str(PY), str(ROOT / "tests/otlp_receiver.py"), str(received), "--count"], stdout=subprocess.PIPE, text=True
    )
    port = int(receiver.stdout.readline().split()[-1])
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_TRACES_SAMPLER": "always_on"}
    dead = traced | {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    servers = {}
    try:
        for name, env in [("off", {}), ("traced", traced), ("dead collector", dead)]:
            servers[name] = start_lens(name.replace(" ", "-"), env, tmp)
        runs = interleaved({name: url for name, (_, url) in servers.items()}, args, tmp)
        rates = {name: [r["ok_per_sec"] for r in summaries] for name, summaries in runs.items()}
        failed = {name: sum(r["requests"] - r["ok"] for r in summaries) for name, summaries in runs.items()}
        time.sleep(6)  # one more export interval, so the counts below are whole
        exports = [json.loads(line) for line in received.read_text().splitlines()]
        spans, wire = sum(e["export"] for e in exports), sum(e["bytes"] for e in exports)
        print(f"\n{cpu_name()}, {os.cpu_count()} cores; {args.rounds} rounds of {args.seconds:.0f} s, "
              f"{args.concurrency} closed-loop clients, distinct photos, POST /predict, cache off")
        print(f"{'server':>15} {'answers/s':>10} {'failed':>7} {'peak RSS MB':>12} {'exported':>9} {'dropped':>8}")
        for name, (proc, url) in servers.items():
            print(f"{name:>15} {statistics.median(rates[name]):10.1f} {failed[name]:7d} {peak_mb(proc.pid):12.1f} "
                  f"{metric(url, 'lens_trace_spans_exported_total'):9.0f} {metric(url, 'lens_trace_spans_dropped_total'):8.0f}")
        off = statistics.median(rates["off"])
        for name in ("traced", "dead collector"):
            print(f"{name} / off: {statistics.median(rates[name]) / off:.3f}")
        if spans:
            print(f"receiver: {spans} spans in {len(exports)} exports, {wire / spans:.0f} bytes per span on the wire")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        receiver.terminate()
        for proc, _ in servers.values():
            proc.wait()


if __name__ == "__main__":
    main()
