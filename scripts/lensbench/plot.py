"""docs/results/benchmarks.png: throughput, p99, peak RSS, CPU split and the ceiling, one figure."""

from __future__ import annotations

from pathlib import Path

from .goals import P99_GOAL_MS, RSS_GOAL_MB, ceiling_reference, peak_mb
from .rows import TOPOLOGIES, Row

STYLES = {"inproc": "-", "redis1": "--", "redis2": ":"}
COLORS = {"original": "tab:blue", "distinct": "tab:orange"}


def _users_axes(ax_rps, ax_p99, ax_rss, done: list[Row]) -> None:
    """The locust rows against their user count."""
    for sc in ("original", "distinct"):
        for topo in TOPOLOGIES:
            rs = sorted((r for r in done if r.scenario == sc and r.topology == topo), key=lambda r: r.users)
            if not rs:
                continue
            x = [r.users for r in rs]
            style = dict(color=COLORS[sc], label=f"{sc}, {topo}")
            ax_rps.plot(x, [r.result["ok_rps"] for r in rs], STYLES[topo], marker="o", **style)
            ax_rps.plot(x, [r.result.get("offered_predict_rps", 0) for r in rs], STYLES[topo], color=COLORS[sc], alpha=0.25)
            ax_p99.plot(x, [max(r.result["ok_ms"].get("p99") or 0.1, 0.1) for r in rs], STYLES[topo], marker="o", **style)
            ax_rss.plot(x, [peak_mb(r) for r in rs], STYLES[topo], marker="o", **style)
    ax_rps.set(title="POST /predict answered per second (faint: offered by the users)", xlabel="locust users", ylabel="req/s")
    ax_rps.set_ylim(bottom=0)
    ax_p99.axhline(P99_GOAL_MS, color="red", lw=1, ls="--", label=f"goal: p99 < {P99_GOAL_MS:.0f} ms")
    ax_p99.set_yscale("log")
    ax_p99.set(title="POST /predict p99 of answered requests", xlabel="locust users", ylabel="ms (log)")
    ax_rss.axhline(RSS_GOAL_MB, color="red", lw=1, ls="--", label=f"goal: < {RSS_GOAL_MB:.0f} MB")
    ax_rss.set(title="Peak RSS of the largest Lens process (VmHWM)", xlabel="locust users", ylabel="MB")
    ax_rss.set_ylim(bottom=0)
    users = sorted({r.users for r in done if r.scenario in ("original", "distinct")})
    for ax in (ax_rps, ax_p99, ax_rss):
        if users:
            ax.set_xticks(users)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)


def _ceiling_axis(ax, done: list[Row], ceil: dict, cores: int) -> None:
    """Distinct-photo throughput of every closed and open row, next to `lens bench`'s figures."""
    labels, vals, cols, rss_txt = [], [], [], []
    engines = [e for e in (ceil.get("model-only") or {}).get("engines") or [] if "images_per_sec" in e]
    for e in engines:  # each engine and precision's model-only ceiling
        labels.append("model only\n" + e["runtime"].replace("-", "\n"))
        vals.append(e["images_per_sec"])
        cols.append("tab:gray")
        rss_txt.append("")
    for key, lab in (("model-only", "model only"), ("pipeline", "pipeline\n(no HTTP)"),
                     ("pipeline-imagenet", "pipeline\nImageNet\nsize\n(no HTTP)"),
                     ("pipeline-phone", "pipeline\n12 MP\n(no HTTP)")):
        v = (ceil.get(key) or {}).get("images_per_sec")
        if v and not (key == "model-only" and engines):
            labels.append(lab)
            vals.append(v)
            cols.append("tab:gray")
            rss_txt.append("")
    for r in done:
        if r.scenario in ("closed", "imagenet", "phone", "open"):
            how = {"closed": r.generator, "imagenet": "500 px", "phone": "12 MP", "open": f"{r.rate:.0f}/s"}[r.scenario]
            labels.append(f"{r.topology}\n{r.scenario}\n{how}")
            rss_txt.append(f"\n{peak_mb(r):.0f} MB")
            vals.append(r.result["ok_rps"])
            cols.append({"closed": "tab:green", "imagenet": "tab:cyan", "phone": "tab:olive", "open": "tab:purple"}[r.scenario])
    if vals:
        ax.bar(range(len(vals)), vals, color=cols)
        ax.set_xticks(range(len(vals)), labels, fontsize=7)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
            if rss_txt[i]:
                ax.text(i, 2, f"RSS{rss_txt[i]}", ha="center", va="bottom", fontsize=7, color="white")
    if not (ceil.get("model-only") or {}).get("images_per_sec"):
        ref = ceiling_reference(cores)
        ax.axhline(ref, color="gray", ls="--", lw=1, label=f"model-only reference {ref:.0f} img/s")
        ax.legend(fontsize=8)
    ax.set(title="Distinct photos: answered img/s, closed loop (green; olive: 12 MP photos) and open loop (purple), "
                 "vs the ceiling (grey)", ylabel="img/s")
    ax.grid(axis="y", alpha=0.3)


def _cpu_axis(ax, done: list[Row], cores: int) -> None:
    """Where the CPU went in each load row: Lens, the generator, everything else."""
    cpu_rows = [r for r in done if "lens_cpu_cores" in r.result]
    if cpu_rows:
        xs = list(range(len(cpu_rows)))
        lens_c = [r.result["lens_cpu_cores"] for r in cpu_rows]
        gen_c = [r.result["gen_cpu_cores"] for r in cpu_rows]
        oth_c = [r.result["other_cpu_cores"] for r in cpu_rows]
        ax.bar(xs, lens_c, color="tab:blue", label="Lens")
        ax.bar(xs, gen_c, bottom=lens_c, color="tab:red", label="load generator")
        ax.bar(xs, oth_c, bottom=[a + b for a, b in zip(lens_c, gen_c)], color="lightgray", label="other work")
        ax.set_xticks(xs, [r.id for r in cpu_rows], rotation=90, fontsize=6)
        ax.axhline(cores, color="black", lw=0.8)
        ax.legend(fontsize=7, loc="upper left")
    ax.set(title="CPU cores used during each row", ylabel="cores")


def plot(rows: list[Row], ceil: dict, path: Path, title: str, cores: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(13, 12))
    gs = fig.add_gridspec(3, 2, height_ratios=[1, 1, 1.1])
    done = [r for r in rows if r.ran]
    _users_axes(fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, 0]), done)
    _cpu_axis(fig.add_subplot(gs[1, 1]), done, cores)
    _ceiling_axis(fig.add_subplot(gs[2, :]), done, ceil, cores)
    save_figure(fig, path, title, dpi=110)


def save_figure(fig, path: Path, title: str, dpi: int) -> None:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
