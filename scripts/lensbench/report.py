"""docs/results/benchmarks.md from results.json: the tables, filled into templates/benchmarks.md."""

from __future__ import annotations

import os
from pathlib import Path
from string import Template

from .goals import ceiling_reference, goals, runtime_row, served_ceiling
from .markdown import fmt_ms, md_table, provenance
from .plot import plot
from .rows import TOPOLOGY_NAMES, Row, best_closed, inproc_row, judge, shed_count

TEMPLATE = Path(__file__).parent / "templates" / "benchmarks.md"

# The original system's report: locust, 200 users, mixed GET / and POST /predict.
YARDSTICK = [
    ("1 model container, 200 users", "7.1", "18.2 s", "0-1.9%"),
    ("4 containers, 200 users", "19.8", "4.9 s", "7.8%"),
    ("4 containers, 600 users", "19.7", "16.7 s", "7.4%"),
    ("above 600 users", "-", "-", "unstable, ~50% errors"),
]
RESULT_COLUMNS = ["scenario", "topology", "load", "POST requests", "failures", "answered POST/s", "p50 ms", "p95 ms",
                  "p99 ms", "peak RSS MB", "CPU cores Lens / gen (/ other)", "mean batch", "limit / notes"]


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def row_cells(row: Row, cores: int) -> list[str]:
    r = row.result
    gen = "" if (row.generator == "locust" and row.scenario in ("original", "distinct")) else f" ({row.generator})"
    head = [row.scenario + gen, TOPOLOGY_NAMES[row.topology], row.load]
    if row.skipped:
        return head + ["-"] * 9 + [f"not available: {row.skipped}"]
    if "error" in r:
        return head + ["-"] * 9 + [f"error: {r['error']}"]
    reqs = r["predict_requests"] + r["get_requests"]
    fails = r["predict_failures"] + r["get_failures"]
    pct = f" ({100 * fails / reqs:.1f}%)" if reqs and fails else ""
    shed = shed_count(r)
    fail_txt = f"{fails}{pct}" + (f", {shed:.0f} shed" if shed else "")
    ok = r["ok_ms"]
    rss = r.get("peak_rss_mb", {})
    rss_txt = f"{rss.get('serve', 0):.0f}"
    workers = [v for k, v in rss.items() if k.startswith("worker")]
    if workers:
        rss_txt += f" (+{max(workers):.0f}/worker)"
    cpu = f"{r['lens_cpu_cores']:.2f} / {r['gen_cpu_cores']:.2f}"
    if r.get("other_cpu_cores", 0) >= 0.05 * cores:
        cpu += f" / {r['other_cpu_cores']:.2f}"
    note = r.get("limit", "")
    if r.get("cpu_warning"):
        note += "; locust warned: CPU above 90%"
    if r.get("notes"):
        note += "; " + "; ".join(r["notes"])
    return head + [
        f"{r['predict_requests']:,}",
        fail_txt,
        f"{r['ok_rps']:.1f}",
        fmt_ms(ok.get("p50")),
        fmt_ms(ok.get("p95")),
        fmt_ms(ok.get("p99")),
        rss_txt,
        cpu,
        f"{r['metrics'].get('mean_batch') or '-'}",
        note,
    ]


def results_table(rows: list[Row], cores: int) -> str:
    cells, seen = [], set()
    for r in rows:
        if r.skipped and r.topology != "inproc":
            # One line for a whole topology that could not run.
            if r.topology not in seen:
                seen.add(r.topology)
                n = sum(1 for x in rows if x.topology == r.topology and x.skipped)
                c = row_cells(r, cores)
                cells.append(["all", c[1], f"{n} rows"] + c[3:])
            continue
        cells.append(row_cells(r, cores))
    return md_table(RESULT_COLUMNS, cells)


def where_time_goes(rows: list[Row]) -> str:
    hdr = ["row", "server /predict mean", "decode mean", "queue wait mean", "inference per batch", "mean batch",
           "images inferred", "cache hits", "coalesced", "Lens CPU ms per POST", "client mean (answered)"]
    body = []
    for r in rows:
        if not r.ran:
            continue
        m = r.result.get("metrics", {})
        posts = r.result.get("predict_requests") or 0
        body.append([
            r.id,
            fmt_ms((m.get("server_predict") or {}).get("mean_ms")),
            fmt_ms((m.get("decode") or {}).get("mean_ms")),
            fmt_ms((m.get("queue_wait") or {}).get("mean_ms")),
            fmt_ms((m.get("inference") or {}).get("mean_ms")),
            f"{m.get('mean_batch') or '-'}",
            f"{m.get('inferred_images') or 0:,.0f}",
            f"{m.get('cache_hits', 0):,.0f}",
            f"{m.get('coalesced', 0):,.0f}",
            f"{1000 * r.result['lens_cpu_s'] / posts:.2f}" if posts else "-",
            fmt_ms(r.result.get("ok_mean_ms")),
        ])
    return md_table(hdr, body) if body else "_no rows ran_"


def ceiling_section(rows: list[Row], ceil: dict, cores: int) -> str:
    if not ceil.get("available"):
        return (f"`lens bench`: n/a ({ceil.get('why', 'not run')}). The model-only and pipeline ceilings are not measured in "
                f"this build; the goal is checked against the {ceiling_reference(cores):.0f} img/s reference instead.")
    crow = []
    best, who = best_closed(rows, "inproc")
    def asyncio_rate(scenario: str) -> float:
        row = inproc_row(rows, scenario)
        return row.result["ok_rps"] if row else 0.0

    served = {"model-only": (best, f"distinct, {who}"), "pipeline": (best, f"distinct, {who}"),
              "pipeline-imagenet": (asyncio_rate("imagenet"), "ImageNet-size photos"),
              "pipeline-phone": (asyncio_rate("phone"), "12 MP photos")}
    names = {"pipeline-imagenet": "`lens bench --pipeline`, ImageNet-size photos",
             "pipeline-phone": "`lens bench --pipeline`, 12 MP photos"}
    for key in served:
        c = ceil.get(key)
        if c is None and key in names:
            continue
        c = c or {}
        ips = c.get("images_per_sec")
        extra = ", ".join(f"{k}={v}" for k, v in flatten(c).items()
                          if k.split(".")[-1] not in ("images_per_sec", "summary", "mode", "bench_cpu_cores", "other_cpu_cores"))
        if key == "model-only":
            own, runtime = served_ceiling(rows, ceil)
            if own and own != ips:
                extra = f"{runtime}; the best of every engine before the rows was {ips:.1f} img/s: {extra}"
                ips = own
        else:
            row, runtime = runtime_row(rows, c)
            if row.get("images_per_sec") and row["images_per_sec"] != ips:
                extra = f"{runtime}; the best of every engine was {ips:.1f} img/s: {extra}"
                ips = row["images_per_sec"]
        if c.get("other_cpu_cores") is not None:
            extra += f"; CPU during the run: lens bench {c.get('bench_cpu_cores')}, other work {c['other_cpu_cores']} cores"
        rate, what = served[key]
        frac = f"{rate / ips:.0%} ({rate:.1f} img/s, {what})" if (ips and rate) else "-"
        if ips and rate > ips:
            extra += "; the service beat this figure, so it is no ceiling for the service's configuration"
        name = names.get(key, f"`lens bench --{key}`")
        crow.append([name, f"{ips:.1f}" if ips else "n/a", frac, extra or "-"])
    table = md_table(["ceiling", "img/s", "service closed loop as a fraction", "details"], crow)
    engines = (ceil.get("model-only") or {}).get("engines") or []
    if not engines:
        return table
    base = next((e["images_per_sec"] for e in engines if e["runtime"] == "onnxruntime-fp32" and "images_per_sec" in e), None)
    erows = []
    for e in engines:
        if "skipped" in e:
            erows.append([e["runtime"], "-", "-", f"skipped: {e['skipped']}"])
            continue
        ratio = f"{e['images_per_sec'] / base:.2f}" if base else "-"
        erows.append([e["runtime"], f"{e['images_per_sec']:.1f}", ratio,
                      f"best of sessions x threads x batch: {e['sessions']} x {e['threads']}, batch {e['batch']}"])
    return table + "\n\nEach engine and precision, from the same `lens bench --model-only` run:\n\n" + md_table(
        ["engine-precision", "img/s", "vs onnxruntime-fp32", "configuration"], erows)


def yardstick_table(rows: list[Row]) -> str:
    yrows = [["original: " + y[0], *y[1:]] for y in YARDSTICK]
    names = {"inproc": "1 process", "redis1": "Redis + 1 worker", "redis2": "Redis + 2 workers"}
    for r in rows:
        if r.scenario == "original" and r.ran:
            x = r.result
            reqs = x["predict_requests"] + x["get_requests"]
            fails = x["predict_failures"] + x["get_failures"]
            mean = x.get("ok_mean_ms")
            yrows.append([f"**Lens**: {names[r.topology]}, {r.users} users", f"{x['predict_rps']:.1f}",
                          f"{fmt_ms(mean)} ms" if mean is not None else "-", f"{100 * fails / reqs:.1f}%" if reqs else "-"])
    return md_table(["setup", "POST /predict req/s", "mean latency", "failures"], yrows)


def report(data: dict, md_path: Path, png_path: Path) -> str:
    """Write the page and the plot; return the results table (the script prints it)."""
    meta = data["meta"]
    cores = meta["cores"]
    rows = [Row(**r) for r in data["rows"]]
    for r in rows:  # judged again, so a report redrawn by a newer script uses its rules
        judge(r, meta.get("locust_processes", 1), cores)
    ceil = data["ceiling"]
    title = f"Lens load tests, {meta['date']} ({'quick' if meta['quick'] else 'full'} matrix, {cores} cores)"
    plot(rows, ceil, png_path, title, cores)
    table = results_table(rows, cores)
    skipped = sorted({r.skipped for r in rows if r.skipped})
    procs = meta["locust_processes"]
    text = Template(TEMPLATE.read_text()).substitute(
        provenance(meta),
        command="scripts/bench" + (" --quick" if meta["quick"] else ""),
        png=os.path.relpath(png_path, md_path.parent),
        goals=md_table(["goal", "verdict", "measured"], goals(rows, ceil, meta)),
        serve_args=" ".join(meta["serve_args"]) or "(defaults)",
        row_times=", ".join(sorted({f"{r.run_time} s" for r in rows if not r.skipped})),
        ramp_s=f"{meta['ramp_s']:g}",
        results=table,
        ceiling=ceiling_section(rows, ceil, cores),
        where_time_goes=where_time_goes(rows),
        yardstick=yardstick_table(rows),
        skipped="; ".join(skipped) if skipped else "nothing",
        locust_version=meta["locust_version"],
        locust_processes=f"{procs} process{'es' if procs > 1 else ''}",
        distinct_images=meta["distinct_images"],
        imagenet_photos=meta.get("imagenet_photos", 0),
        phone_photos=meta.get("phone_photos", 0),
        queue_note=meta["queue_note"],
        deadline_s=f"{meta['deadline_s']:g}",
        outdir=meta["outdir"],
    )
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)
    return table
