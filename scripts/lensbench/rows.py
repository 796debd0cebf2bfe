"""The rows of the load-test matrix (scripts/bench), and the rule that says what limited each."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .machine import CORES

# Topology name -> `lens worker` processes behind a Redis (0: in-process).
TOPOLOGIES = {"inproc": 0, "redis1": 1, "redis2": 2}
TOPOLOGY_NAMES = {"inproc": "in-process", "redis1": "Redis, 1 worker", "redis2": "Redis, 2 workers"}
SCENARIOS = ("original", "distinct", "closed", "int8", "imagenet", "phone", "open")
# Extra `lens serve` / `lens worker` flags of a scenario: the int8 row is the
# asyncio closed loop on the same distinct photos, served by the int8 variant.
SCENARIO_FLAGS = {"int8": ["--precision", "int8"]}

# Machine-size thresholds, as fractions of the core count: the machine is
# CPU-bound at 90% of its cores, and other work is worth a note from 15% of
# them (0.3 cores on the 2-core development machine).
CPU_BOUND = 0.9
OTHER_WORK_NOTE = 0.15


@dataclass
class Row:
    id: str
    scenario: str  # original | distinct | closed | int8 | imagenet | phone | open
    generator: str  # locust | asyncio
    topology: str
    users: int = 0  # locust users or asyncio concurrency
    rate: float = 0.0  # open loop, arrivals/s
    rate_fraction: float = 0.0  # of the best closed-loop rate, when derived from it
    run_time: int = 60
    skipped: str = ""
    result: dict = field(default_factory=dict)

    @property
    def load(self) -> str:
        if self.scenario == "open":
            frac = f" ({self.rate_fraction:.0%} of max)" if self.rate_fraction else ""
            return f"{self.rate:.0f}/s open loop{frac}"
        if self.scenario == "closed":
            return f"{self.users} {'users' if self.generator == 'locust' else 'clients'}, no wait"
        if self.scenario == "int8":
            return f"{self.users} clients, no wait, --precision int8"
        if self.scenario == "phone":
            return f"{self.users} clients, 12 MP photos, no wait"
        if self.scenario == "imagenet":
            return f"{self.users} clients, ImageNet-size photos, no wait"
        return f"{self.users} users"

    @property
    def ran(self) -> bool:
        return not self.skipped and "error" not in self.result


def build_matrix(args) -> list[Row]:
    rows: list[Row] = []
    for topo in args.topologies:
        if "closed" in args.scenarios:
            for gen in ("locust", "asyncio"):
                if gen in args.generators:
                    rows.append(Row(f"{topo}-closed-{gen}", "closed", gen, topo, users=args.closed_users, run_time=args.closed_time))
        if "int8" in args.scenarios and "asyncio" in args.generators:
            rows.append(Row(f"{topo}-int8-asyncio", "int8", "asyncio", topo, users=args.closed_users, run_time=args.closed_time))
        for sc in ("imagenet", "phone"):
            if sc in args.scenarios and "asyncio" in args.generators:
                rows.append(Row(f"{topo}-{sc}-asyncio", sc, "asyncio", topo, users=args.closed_users, run_time=args.closed_time))
        if "open" in args.scenarios:
            if args.open_rates:
                for r in args.open_rates:
                    rows.append(Row(f"{topo}-open-{r:g}", "open", "asyncio", topo, rate=r, run_time=args.open_time))
            else:
                for f in args.open_fractions:
                    rows.append(Row(f"{topo}-open-{round(f * 100)}pct", "open", "asyncio", topo, rate_fraction=f, run_time=args.open_time))
        for sc, users in (("original", args.original_users), ("distinct", args.users)):
            if sc in args.scenarios and "locust" in args.generators:
                for u in users:
                    rows.append(Row(f"{topo}-{sc}-{u}", sc, "locust", topo, users=u, run_time=args.run_time))
    if args.only:
        rx = re.compile(args.only)
        rows = [r for r in rows if rx.search(r.id)]
    return rows


def inproc_row(rows: list[Row], scenario: str) -> Row | None:
    """The first in-process row of ``scenario`` that ran."""
    return next((r for r in rows if r.ran and r.scenario == scenario and r.topology == "inproc"), None)


def best_closed(rows: list[Row], topo: str) -> tuple[float, str]:
    """The best closed-loop answered rate in a topology, and which generator got it."""
    best, who = 0.0, ""
    for r in rows:
        if r.topology == topo and r.scenario == "closed" and r.ran and r.result.get("ok_rps", 0) > best:
            best, who = r.result["ok_rps"], r.generator
    return best, who


def shed_count(result: dict) -> float:
    return sum(v for k, v in result.get("outcomes", {}).items() if "429" in k)


def judge(row: Row, locust_processes: int, cores: int = CORES) -> None:
    """What limited the row, in a few words, from what was measured on a machine of ``cores``."""
    r = row.result
    if row.skipped or not r:
        return
    if "error" in r:
        r["limit"] = "error"
        return
    notes = []
    procs = max(1, locust_processes) if row.generator == "locust" else 1
    gen_limited = r.get("cpu_warning") or r.get("gen_cpu_cores", 0) >= 0.85 * procs
    if row.generator == "asyncio" and row.scenario == "open":
        lag = (r.get("send_lag_ms") or {}).get("p99") or 0
        span = r.get("send_span_s") or row.run_time
        if span > 1.05 * row.run_time + 0.5 or r.get("skipped_at_cap"):
            gen_limited = True
            notes.append(f"could not keep the arrival rate ({r.get('offered_per_sec')}/s sent)")
        elif lag > 50:
            notes.append(f"sends up to {lag:.0f} ms late at p99 (CPU contention; counted in latency)")
    total = r.get("lens_cpu_cores", 0) + r.get("gen_cpu_cores", 0) + r.get("other_cpu_cores", 0)
    if row.scenario in ("original", "distinct"):
        # between(1, 5): a 3 s mean think time, and half the requests are
        # POSTs, so N users ask an instant server for N/6 POSTs a second.
        # (Closed-loop users slow down as latency grows, so comparing with a
        # latency-adjusted rate would always look like keeping up.)
        offered = row.users / 6.0
        r["offered_predict_rps"] = round(offered, 1)
        failed = r.get("predict_failures", 0) + r.get("get_failures", 0)
        if gen_limited:
            limit = "generator (locust CPU)"
        elif r.get("ok_rps", 0) >= 0.9 * offered and not failed:
            limit = "offered load (Lens keeps up)"
        else:
            limit = f"Lens (saturated: {offered:.0f}/s asked)"
    elif row.scenario in ("closed", "int8", "imagenet", "phone"):
        limit = "generator (locust CPU)" if gen_limited else "Lens"
    elif gen_limited:
        limit = "generator"
    elif shed_count(r):
        limit = "Lens (sheds 429)"
    elif r.get("ok_rps", 0) >= 0.95 * row.rate:
        limit = "offered load (Lens keeps up)"
    else:
        limit = "Lens"
    if total >= CPU_BOUND * cores and limit.startswith("Lens"):
        notes.append(f"machine CPU-bound ({total:.1f}/{cores} cores; generator {r.get('gen_cpu_cores', 0):.2f})")
    if r.get("other_cpu_cores", 0) >= OTHER_WORK_NOTE * cores:
        notes.append(f"other work on the machine used {r['other_cpu_cores']:.2f} cores")
    m = r.get("metrics", {})
    if row.scenario != "original" and m.get("cache_hits"):
        notes.append(f"{m['cache_hits']:.0f} cache hits")
    if not all(r.get("processes_alive", {}).values()):
        notes.append("a Lens process died")
    r["limit"] = limit
    r["notes"] = notes
