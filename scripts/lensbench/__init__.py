"""lensbench: the load generators, benchmarks and soak test that drive Lens.

Every tool here talks to a Lens it started itself on 127.0.0.1 (or one the
user named on loopback), and every request loop is bounded in count and
time. The commands are thin wrappers in scripts/ (``scripts/bench``,
``scripts/bench-distributed``, ``scripts/soak``, ``scripts/bench_openloop.py``,
``scripts/make_distinct_images.py``); stress_test/locustfile.py imports the
same helpers.

# Layout

Request bodies and photos, shared by every generator:

- ``multipart``: multipart/form-data bodies with one file part.
- ``photos``: the JPEG comment "stamp" that makes each body distinct, and a
  stream of distinct photos from a folder.
- ``distinct_photos``: makes that folder (deterministic variants of the
  fixture photos).

Processes and measurements:

- ``machine``: /proc readers (CPU, RSS, FDs, threads), the core count,
  free loopback ports, disk use.
- ``server``: starts and stops ``lens serve`` (and Redis and ``lens worker``
  for the distributed rows), waits for readiness, small HTTP helpers.
- ``prometheus``: reads Lens's /metrics and diffs two scrapes.
- ``openloop``: the asyncio HTTP client (open and closed loop).

The load-test matrix (``scripts/bench``):

- ``matrix``: the command line and the runner (a fresh Lens per row).
- ``rows``: the rows, and the rule that says what limited each.
- ``loads``: starts a row's generator (locust or openloop), parses its output.
- ``goals``: the verdict on each goal.
- ``report``, ``plot``: results.json to docs/results/benchmarks.md (from
  ``templates/benchmarks.md``) and docs/results/benchmarks.png.
- ``markdown``: tables, milliseconds and the header line of every report.

The others:

- ``distributed`` (``scripts/bench-distributed``): in-process against 1-3
  Redis workers.
- ``soak`` (``scripts/soak``): long mixed traffic at 70% of capacity;
  ``soak_traffic`` is the mix, ``soak_report`` the verdicts, page
  (``templates/soak.md``) and plot.
"""
