"""The load-test goals and the verdict on each, from the matrix's rows."""

from __future__ import annotations

from .markdown import fmt_ms
from .rows import Row, best_closed, shed_count

P99_GOAL_MS = 100.0
RSS_GOAL_MB = 300.0
CEILING_FRACTION_GOAL = 0.80
# When `lens bench` is not in the build: the model-only figure quoted for
# the 2-core development machine (110 img/s), per core.
CEILING_REFERENCE_PER_CORE = 55.0


def ceiling_reference(cores: int) -> float:
    return CEILING_REFERENCE_PER_CORE * cores


def failures(r: Row) -> int:
    return r.result["predict_failures"] + r.result["get_failures"]


def original_goal(done: list[Row]) -> list[str]:
    """0 failures and p99 < 100 ms at 200/600/1000 users."""
    what = f"original scenario: 0 failures, p99 < {P99_GOAL_MS:.0f} ms at 200/600/1000 users"
    orig = [r for r in done if r.scenario == "original"]
    if not orig:
        return [what, "not run", ""]
    bad = [r for r in orig if failures(r) or (r.result["ok_ms"].get("p99") or 1e9) >= P99_GOAL_MS]
    users = sorted({r.users for r in orig})
    worst = max((r.result["ok_ms"].get("p99") or 0) for r in orig)
    missing = [u for u in (200, 600, 1000) if u not in users]
    verdict = "FAIL" if bad else ("PASS" if not missing else "PASS (partial)")
    detail = f"users {', '.join(map(str, users))}; worst p99 {fmt_ms(worst)} ms; failures {sum(failures(r) for r in orig)}"
    if bad:
        detail += "; failing rows: " + ", ".join(r.id for r in bad)
    if missing:
        detail += f"; not run at {', '.join(map(str, missing))} users"
    return [what, verdict, detail]


def ceiling_goal(rows: list[Row], ceil: dict, cores: int) -> list[str]:
    """Distinct closed loop at 80% of the model-only ceiling (or of the reference)."""
    what = f"distinct closed loop >= {CEILING_FRACTION_GOAL:.0%} of the model-only ceiling"
    best, who = best_closed(rows, "inproc")
    if not best:
        return [what, "not run", ""]
    cpu_note = ""
    for r in rows:
        if r.topology == "inproc" and r.scenario == "closed" and r.generator == who and r.result.get("lens_cpu_cores"):
            x = r.result
            cpu_note = (f" (Lens had {x['lens_cpu_cores']:.2f} of {cores} cores, other work {x['other_cpu_cores']:.2f}: "
                        f"{best / x['lens_cpu_cores']:.0f} img/s per Lens core)")
    mo = (ceil.get("model-only") or {}).get("images_per_sec")
    if mo:
        frac = best / mo
        return [what, "PASS" if frac >= CEILING_FRACTION_GOAL else "FAIL",
                f"{best:.1f} img/s ({who}) = {frac:.0%} of {mo:.1f} img/s measured by `lens bench --model-only`{cpu_note}"]
    ref = ceiling_reference(cores)
    frac = best / ref
    return [what, ("PASS" if frac >= CEILING_FRACTION_GOAL else "FAIL") + " (vs reference)",
            f"{best:.1f} img/s ({who}) = {frac:.0%} of the {ref:.0f} img/s reference "
            f"({CEILING_REFERENCE_PER_CORE:.0f} per core); `lens bench` n/a in this build{cpu_note}"]


def peak_mb(r: Row) -> float:
    return max(r.result.get("peak_rss_mb", {}).values() or [0])


def rss_goal(done: list[Row]) -> list[str]:
    what = f"peak RSS under 1000 users < {RSS_GOAL_MB:.0f} MB"
    big = [r for r in done if r.users >= 1000 and r.scenario in ("original", "distinct")]
    if not big:
        top = max((r.users for r in done if r.scenario in ("original", "distinct")), default=0)
        peak = max((peak_mb(r) for r in done), default=0)
        return [what, "not run", f"largest locust row had {top} users; peak {peak:.0f} MB over all rows"]
    peak = max(peak_mb(r) for r in big)
    return [what, "PASS" if peak < RSS_GOAL_MB else "FAIL",
            "VmHWM of the largest Lens process: " + ", ".join(f"{r.id} {peak_mb(r):.0f} MB" for r in big)]


def shedding_goal(done: list[Row], best: float, deadline_s: float) -> list[str]:
    what = "overload: sheds with 429, answered p99 within the deadline"
    over = [r for r in done if r.scenario == "open" and (r.rate_fraction > 1 or (best and r.rate > best))]
    if not over:
        return [what, "not run", ""]
    dl = deadline_s * 1000
    res, ok_all = [], True
    for r in over:
        shed = shed_count(r.result)
        p99 = r.result["ok_ms"].get("p99")
        ok_all &= shed > 0 and p99 is not None and p99 <= dl
        res.append(f"{r.id}: {shed:.0f} x 429 of {r.result['predict_requests']}, answered p99 {fmt_ms(p99)} ms (deadline {dl:,.0f} ms)")
    return [what, "PASS" if ok_all else "FAIL", "; ".join(res)]


def goals(rows: list[Row], ceil: dict, meta: dict) -> list[list[str]]:
    """[goal, verdict, what was measured] for each goal."""
    done = [r for r in rows if r.ran]
    best, _ = best_closed(rows, "inproc")
    return [
        original_goal(done),
        ceiling_goal(rows, ceil, meta["cores"]),
        rss_goal(done),
        shedding_goal(done, best, meta["deadline_s"]),
    ]
