"""docs/results/soak.md and docs/results/soak.png: the soak's verdicts, settings, per-kind outcomes and samples."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from .markdown import fmt_ms, md_table, provenance
from .plot import save_figure
from .soak_traffic import Outcomes

if TYPE_CHECKING:
    from .soak import SoakRun

TEMPLATE = Path(__file__).parent / "templates" / "soak.md"
GROWTH_GOAL = 0.05
FD_SLACK = 2  # descriptors: a connection mid-close is not a leak
P99_RATIO, P99_SLACK_MS = 1.5, 10.0
MIN_WINDOW_ANSWERS = 20  # fewer (the drain after the last arrival) make no p99 worth comparing
# `lens serve` cap flag -> the store under --data-dir it bounds.
CAPPED_STORES = {"--uploads-max-bytes": "uploads", "--feedback-max-bytes": "feedback"}
# What each cap bounds under --data-dir: page uploads, and the images kept with
# feedback (feedback/ also holds the SQLite database, which no cap covers).
STORE_PATHS = {"uploads": "uploads", "feedback": "feedback/images"}
CAP_MARGIN, CAP_SLACK_MB = 1.1, 1.0  # 10% and 1 MiB: allocation rounding, directory blocks, a file being replaced


def caps_from(serve_args: list[str]) -> dict[str, int]:
    """The byte caps given to lens serve, where they are plain integers."""
    caps = {}
    for i, a in enumerate(serve_args):
        flag, _, value = a.partition("=")
        if flag in CAPPED_STORES:
            value = value or (serve_args[i + 1] if i + 1 < len(serve_args) else "")
            if value.isdigit():
                caps[flag] = int(value)
    return caps


def steady(samples: list[dict]) -> list[dict]:
    """The last two thirds of the run (the first sample is the baseline before any soak traffic)."""
    return samples[len(samples) // 3 :]


def growth(samples: list[dict], key: str) -> tuple[float, float, float] | None:
    """(start, end, relative growth) over the steady part; None if too short to tell."""
    tail = [s[key] for s in steady(samples) if s.get(key) is not None]
    if len(tail) < 3:
        return None
    k = max(1, min(3, len(tail) // 3))
    start, end = statistics.fmean(tail[:k]), statistics.fmean(tail[-k:])
    return start, end, (end - start) / start if start else 0.0


def flat_verdict(samples: list[dict], key: str, unit: str, slack: float = 0.0) -> tuple[str, str]:
    g = growth(samples, key)
    if g is None:
        return "too short", "fewer than 3 samples in the last two thirds"
    start, end, rel = g
    ok = rel < GROWTH_GOAL or end - start <= slack
    peak = max(s[key] for s in samples if s.get(key) is not None)
    return ("PASS" if ok else "FAIL"), f"{start:.1f} -> {end:.1f} {unit} ({rel:+.1%}); peak {peak:.1f} {unit}"


def verdicts(run: SoakRun) -> list[list[str]]:
    samples = run.samples
    outcomes = run.traffic.outcomes if run.traffic else Outcomes()
    total = outcomes.totals()
    errors = dict(outcomes.errors)
    died = run.ended == "server exited"
    out = [[
        "zero 5xx, every request answered, the server alive to the end",
        "PASS" if not (total["5xx"] or total["no answer"] or died) else "FAIL",
        f"{sum(total.values()):,} requests: {total['5xx']} x 5xx, {total['no answer']} without an answer"
        + (f" ({', '.join(f'{k} {v}' for k, v in errors.items())})" if errors else "")
        + ("; the server exited" if died else ""),
    ]]
    wrong = {f"{kind} got {status}": n for (kind, status), n in outcomes.unexpected.items() if status // 100 != 5 and status}
    out.append(["every kind got what it expects (hostile 4xx, the rest 2xx or 429)", "PASS" if not wrong else "FAIL",
                ", ".join(f"{k}: {v}" for k, v in sorted(wrong.items())) or f"{total['429']} shed with 429"])
    out.append([f"RSS flat over the last two thirds (growth < {GROWTH_GOAL:.0%})", *flat_verdict(samples, "rss_mb", "MB")])
    out.append([f"open FDs flat over the last two thirds (growth < {GROWTH_GOAL:.0%})",
                *flat_verdict(samples, "fds_own", "FDs", FD_SLACK)])
    out.append(["disk under --data-dir within the caps", *disk_verdict(samples, caps_from(run.settings["serve_args"]))])
    out.append(["p99 stable (last third vs first third)", *p99_verdict(samples)])
    return out


def disk_verdict(samples: list[dict], caps: dict[str, int]) -> tuple[str, str]:
    """Each capped store's peak against its cap."""
    total = f"all of --data-dir: peak {max(s['disk_mb'] for s in samples):.1f} MiB, last {samples[-1]['disk_mb']:.1f} MiB"
    if not caps:
        return "n/a", f"no cap given to lens serve (this build has none of {', '.join(CAPPED_STORES)}?); {total}"
    parts, ok = [], True
    for flag, cap in caps.items():
        store = CAPPED_STORES[flag]
        peak = max(s.get(f"{store}_mb", 0) for s in samples)
        budget = cap / 2**20 * CAP_MARGIN + CAP_SLACK_MB
        ok &= peak <= budget
        parts.append(f"{STORE_PATHS[store]}/ peak {peak:.1f} MiB against {flag} {cap / 2**20:.1f} MiB")
    db = max(s.get("feedback_db_mb", 0) for s in samples)
    return ("PASS" if ok else "FAIL"), "; ".join(parts) + f"; the feedback database (uncapped) peak {db:.1f} MiB; {total}"


def p99_verdict(samples: list[dict]) -> tuple[str, str]:
    p99 = [s["p99_ms"] for s in samples if s.get("p99_ms") is not None and s["answered"] >= MIN_WINDOW_ANSWERS]
    if len(p99) < 3:
        return "too short", "fewer than 3 windows with answers"
    third = max(1, len(p99) // 3)
    first, last = statistics.median(p99[:third]), statistics.median(p99[-third:])
    ok = last <= max(P99_RATIO * first, first + P99_SLACK_MS)
    return ("PASS" if ok else "FAIL"), f"median window p99 {fmt_ms(first)} ms -> {fmt_ms(last)} ms; worst window {fmt_ms(max(p99))} ms"


def samples_table(samples: list[dict]) -> str:
    hdr = ["t", "RSS MB", "threads", "FDs (sockets)", "own FDs", "disk MB (uploads / feedback images / feedback db)", "CPU", "answered", "2xx", "4xx (429)",
           "5xx", "no answer", "p50 ms", "p99 ms"]
    rows = [[
        f"{int(s['t_s'] // 60)}:{int(s['t_s'] % 60):02d}", f"{s['rss_mb']:.1f}", str(s["threads"]), f"{s['fds']} ({s['sockets']})", str(s["fds_own"]),
        f"{s['disk_mb']:.1f} ({s['uploads_mb']:.1f} / {s['feedback_mb']:.1f} / {s.get('feedback_db_mb', 0):.1f})", f"{s['cpu_cores']:.2f}", str(s["answered"]), str(s["2xx"]), f"{s['4xx']} ({s['429']})",
        str(s["5xx"]), str(s["no_answer"]), fmt_ms(s["p50_ms"]), fmt_ms(s["p99_ms"]),
    ] for s in samples]
    return md_table(hdr, rows)


def kinds_table(run: SoakRun) -> str:
    if not run.traffic:
        return "_no soak traffic was sent_"
    rows = [[k["kind"], f"{k['requests']:,}", f"{k['2xx']:,}", f"{k['4xx']:,}", f"{k['429']:,}", str(k["5xx"]),
             str(k["no answer"]), fmt_ms(k["p50_ms"]), fmt_ms(k["p99_ms"])] for k in run.traffic.outcomes.per_kind()]
    return md_table(["kind", "requests", "2xx", "4xx", "429", "5xx", "no answer", "p50 ms", "p99 ms"], rows)


def plot(samples: list[dict], caps: dict[str, int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 2, figsize=(12, 10), sharex=True)
    (ax_rss, ax_fd), (ax_disk, ax_lat), (ax_ans, ax_cpu) = axes
    ax_rss.plot(t, [s["rss_mb"] for s in samples], marker=".", label="RSS")
    ax_rss.plot(t, [s["hwm_mb"] for s in samples], ls="--", alpha=0.6, label="peak (VmHWM)")
    ax_rss.set(title="lens serve memory", ylabel="MB")
    ax_fd.plot(t, [s["fds"] for s in samples], marker=".", label="open FDs")
    ax_fd.plot(t, [s["fds_own"] for s in samples], marker=".", label="less the generator's connections")
    ax_fd.plot(t, [s["threads"] for s in samples], ls="--", label="threads")
    ax_fd.set(title="descriptors and threads", ylabel="count")
    ax_disk.plot(t, [s["disk_mb"] for s in samples], marker=".", color="black", label="all of --data-dir")
    for (flag, store), color in zip(CAPPED_STORES.items(), ("tab:blue", "tab:orange")):
        ax_disk.plot(t, [s[f"{store}_mb"] for s in samples], marker=".", color=color, label=f"{STORE_PATHS[store]}/")
        if flag in caps:
            ax_disk.axhline(caps[flag] / 2**20, color=color, ls="--", lw=1, label=flag)
    ax_disk.set(title="disk", ylabel="MB")
    for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
        pts = [(x, s[key]) for x, s in zip(t, samples) if s.get(key)]
        if pts:
            ax_lat.plot(*zip(*pts), style, marker=".", label=key.replace("_ms", ""))
    ax_lat.set_yscale("log")
    ax_lat.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax_lat.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_lat.set(title="latency per window (timed kinds)", ylabel="ms (log)")
    for key, color in (("2xx", "tab:green"), ("4xx", "tab:orange"), ("5xx", "tab:red"), ("no_answer", "black")):
        ax_ans.plot(t, [s[key] / s["window_s"] if s["window_s"] else 0 for s in samples], color=color, marker=".", label=key)
    ax_ans.set(title="answers per second", ylabel="1/s", xlabel="minutes")
    ax_cpu.plot(t, [s["cpu_cores"] for s in samples], marker=".", label="Lens")
    ax_cpu.set(title="CPU", ylabel="cores", xlabel="minutes")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        if ax is not ax_lat:
            ax.set_ylim(bottom=0)
    save_figure(fig, path, title, dpi=100)


def write_report(run: SoakRun, md_path: Path, png_path: Path) -> list[list[str]]:
    """Write the page and the plot; return the verdicts."""
    st, cap = run.settings, run.capacity
    caps = caps_from(st["serve_args"])
    plot(run.samples, caps, png_path,
         f"Lens soak, {st['date']}: {st['minutes']:g} min at {st.get('rate_per_s', '?')}/s, {st['cores']} cores")
    result = verdicts(run)
    ol = run.open_loop
    open_loop = (f"{ol['skipped_at_cap']} arrivals skipped with {st['max_in_flight']} requests open, {ol['cut_at_grace']} cut after the grace period, "
                 f"arrivals took {ol['send_span_s'] / 60:.1f} min") if ol else "the open loop did not finish"
    ended = {"completed": "", "interrupted": "**Interrupted before the end.** ",
             "server exited": "**The server exited during the run.** "}.get(run.ended, f"**{run.ended}** ")
    text = Template(TEMPLATE.read_text()).substitute(
        provenance(st),
        minutes=f"{st['minutes']:g}",
        ended=ended,
        png=os.path.relpath(png_path, md_path.parent),
        goals=md_table(["goal", "verdict", "measured"], result),
        fd_slack=FD_SLACK,
        serve_args=" ".join(st["serve_args"]) or "(defaults)",
        capacity_per_s=cap.get("ok_per_s", "?"),
        capacity_secs=f"{st['capacity_secs']:g}",
        capacity_clients=st["capacity_clients"],
        capacity_p50=fmt_ms(cap.get("p50_ms")),
        capacity_p99=fmt_ms(cap.get("p99_ms")),
        rate_per_s=st.get("rate_per_s", "?"),
        load_pct=f"{st['load']:.0%}",
        open_loop=open_loop,
        sample_every_s=f"{st['sample_every_s']:g}",
        mix=md_table(["kind", "share", "expects", "what"],
                     [[m["kind"], f"{m['weight'] / sum(x['weight'] for x in st['mix']):.0%}", m["expect"], m["what"]] for m in st["mix"]]),
        kinds=kinds_table(run),
        samples=samples_table(run.samples),
        outdir=st["outdir"],
    )
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)
    return result
