"""Lens's /metrics (Prometheus text) as numbers, and what changed between two scrapes."""

from __future__ import annotations

import re

_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text to {'name{labels}': value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            try:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict:
    """The counters and histogram sums that moved, as the figures the reports show."""
    d = {k: v - before.get(k, 0.0) for k, v in after.items()}

    def get(name: str) -> float:
        return d.get(name, 0.0)

    def family(prefix: str) -> dict[str, float]:
        res = {}
        for k, v in d.items():
            if k.startswith(prefix + "{") and v:
                m = re.search(r'reason="([^"]*)"', k)
                res[m.group(1) if m else k] = v
        return res

    def mean_of(histogram: str, label: str) -> dict:
        s = get(f"{histogram}_sum{{{label}}}")
        c = get(f"{histogram}_count{{{label}}}")
        return {"count": c, "mean_ms": round(1000 * s / c, 2) if c else None}

    statuses = {}
    for k, v in d.items():
        m = re.match(r'lens_http_requests_total\{route="/predict",status="(\d+)"\}', k) or re.match(
            r'lens_http_requests_total\{status="(\d+)",route="/predict"\}', k
        )
        if m and v:
            statuses[m.group(1)] = v
    bs, bc = get("lens_batch_size_sum"), get("lens_batch_size_count")
    stage = "lens_stage_duration_seconds"
    return {
        "available": bool(after),
        "inferred_images": get("lens_inferred_images_total"),
        "cache_hits": get("lens_cache_hits_total"),
        "cache_misses": get("lens_cache_misses_total"),
        "coalesced": get("lens_coalesced_requests_total"),
        "rejected": family("lens_rejected_requests_total"),
        "dropped": family("lens_dropped_jobs_total"),
        "predict_status": statuses,
        "decode": mean_of(stage, 'stage="decode"'),
        "queue_wait": mean_of(stage, 'stage="queue_wait"'),
        "inference": mean_of(stage, 'stage="inference"'),
        "batches": bc,
        "mean_batch": round(bs / bc, 2) if bc else None,
        "server_predict": mean_of("lens_http_request_duration_seconds", 'route="/predict"'),
    }
