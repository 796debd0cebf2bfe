"""A waterfall picture of one trace, from the spans tests/otlp_receiver.py wrote.

    scripts/plot-trace RECEIVED.jsonl TRACE_ID OUT.png

One row per span, in start order, indented under its parent; the bar's
colour says which process sent it (the `lens.role` resource attribute:
the API node or the worker), and its label the duration.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"serve": "#3b75af", "worker": "#ef8636"}


def depth(span: dict, by_id: dict) -> int:
    d, parent = 0, by_id.get(span["parent_span_id"])
    while parent is not None:
        d, parent = d + 1, by_id.get(parent["parent_span_id"])
    return d


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    received, trace, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    spans = [json.loads(line) for line in received.read_text().splitlines()]
    spans = sorted((s for s in spans if s.get("trace_id") == trace), key=lambda s: s["start_ns"])
    if not spans:
        sys.exit(f"no span of trace {trace} in {received}")
    by_id = {s["span_id"]: s for s in spans}
    t0 = spans[0]["start_ns"]
    end = max(s["end_ns"] for s in spans)
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(spans) + 1.2))
    for row, s in enumerate(spans):
        start, took = (s["start_ns"] - t0) / 1e6, (s["end_ns"] - s["start_ns"]) / 1e6
        role = s["resource"].get("lens.role", "?")
        ax.barh(row, max(took, (end - t0) / 1e6 / 400), left=start, color=COLOURS.get(role, "grey"), height=0.6)
        ax.text(start + took, row, f"  {took:.2f} ms", va="center", fontsize=8)
    labels = ["\u00a0\u00a0\u00a0\u00a0" * depth(s, by_id) + s["name"] for s in spans]
    ax.set_yticks(range(len(spans)), labels, fontsize=9, ha="left")
    ax.tick_params(axis="y", pad=6.2 * max(map(len, labels)))
    ax.invert_yaxis()
    ax.set_xlabel("ms since the request's first span")
    ax.set_xlim(0, (end - t0) / 1e6 * 1.18)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    ax.legend(handles, ["API node (lens serve)", "worker (lens worker)"], loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=8)
    ax.set_title(f"One POST /predict on Redis, trace {trace}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
