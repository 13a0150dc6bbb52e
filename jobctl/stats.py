"""`jobctl stats`: figures about a set of jobs and the live workers, as one plain dict.

Pure: the caller passes the jobs, the live workers and `now`; nothing here reads a clock or
a store, so the same input always gives the same figures. The dict is what `stats --json`
prints; its field names are a promise (SPEC "JSON": names never change meaning).

Times are taken at millisecond resolution, exactly as `status --json` shows them (ISO 8601
with milliseconds), and figures are computed in exact fractions and rounded once, half to
even, to the millisecond: a script recomputing a duration, an age or a percentile from
`status --json` gets the very same number, with no float noise to argue about.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from jobctl.model import FINISHED, Job, State, iso

_EPOCH = datetime.fromtimestamp(0, UTC)
_MS = timedelta(milliseconds=1)
MIN_SPAN_MS = 60_000
"""Throughput without --since is measured over at least a minute (no 3,600 jobs/h from one
job that finished a second ago)."""


def ms(ts: float) -> int:
    """Milliseconds since the epoch, truncated the way `model.iso` shows them."""
    return (datetime.fromtimestamp(ts, UTC) - _EPOCH) // _MS


P50 = Fraction(1, 2)
P95 = Fraction(19, 20)


def percentile(sorted_values: Sequence[int], q: Fraction) -> Fraction:
    """Linear interpolation between closest ranks (numpy's default, `statistics.quantiles(...,
    method="inclusive")`): rank k = (n - 1) * q counted from 0; the value is interpolated
    between the values at floor(k) and ceil(k). Exact. `sorted_values`: sorted, non-empty."""
    k = (len(sorted_values) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _seconds(milliseconds: Fraction | float) -> float:
    """Milliseconds -> seconds, rounded exactly (half to even) to the millisecond."""
    return float(round(Fraction(milliseconds) / 1000, 3))


def _counts(jobs: Sequence[Job]) -> dict[str, int]:
    counts = dict.fromkeys((s.value for s in State), 0)
    for j in jobs:
        counts[j.state.value] += 1
    return counts


def compute(
    jobs: Sequence[Job],
    workers: Sequence[Mapping[str, Any]],
    *,
    now: float,
    since_s: float | None = None,
    queues: Collection[str] | None = None,
) -> dict[str, Any]:
    """The figures of `jobctl stats` (every value a JSON type).

    Filters: `queues` keeps the jobs of those queues (and the workers that may serve one of
    them); `since_s` keeps the jobs created in the last `since_s` seconds. Every job figure is
    over the kept jobs. The workers and what they run are a view of now: `since_s` does not
    hide a job a worker is running.

    - `states`: count per state (every state present, zeros included); `by_queue`: the same per
      queue (each queue of `queues` even without jobs), sorted by queue name; `total`.
    - `depth_by_priority`: queued and waiting jobs per priority, highest priority (runs first)
      first: `[{"priority", "queued", "waiting", "total"}]`.
    - `success_rate`: completed / (completed + failed); cancelled jobs do not count either
      way; null if there are none.
    - `durations`: of the finished jobs that ran (have started_at and finished_at, whatever
      the outcome, cancelled while running included): `count`, `mean_s`, `p50_s`, `p95_s`,
      `max_s`, in seconds rounded to the millisecond; null when count is 0. Percentiles by
      linear interpolation (see `percentile`).
    - `throughput`: `finished` (jobs in a finished state, cancelled included), `window_s` and
      `per_hour` = finished / window hours (rounded to 3 decimals). With `since_s` the window is `since_s`; without,
      it runs from the earliest finished_at to now, at least a minute, and is null (and
      per_hour with it) when no job has finished.
    - `oldest_queued`: the queued job (state `queued`, not `waiting`) created first:
      `{"id", "created_at", "age_s"}`, or null.
    - `workers`: `[{"host", "pid", "slots", "gpus", "queues", "running"}]` sorted by host and
      pid; `queues` null means all; `running` the ids of the kept queues' running jobs whose
      worker is this one.
    """
    now_ms = ms(now)
    wanted = None if queues is None else frozenset(queues)
    current = [j for j in jobs if wanted is None or j.queue in wanted]
    start = None if since_s is None else now - since_s
    kept = [j for j in current if start is None or j.created_at >= start]

    by_queue: dict[str, list[Job]] = {q: [] for q in wanted or ()}
    for j in kept:
        by_queue.setdefault(j.queue, []).append(j)

    depth: dict[int, dict[str, int]] = {}
    for j in kept:
        if j.state in (State.QUEUED, State.WAITING):
            row = depth.setdefault(j.priority, {"queued": 0, "waiting": 0})
            row[j.state.value] += 1

    states = _counts(kept)
    decided = states[State.COMPLETED] + states[State.FAILED]

    return {
        "at": iso(now),
        "since_s": since_s,
        "window_start": iso(start),
        "queues": None if wanted is None else sorted(wanted),
        "total": len(kept),
        "states": states,
        "by_queue": {q: _counts(by_queue[q]) for q in sorted(by_queue)},
        "depth_by_priority": [
            {"priority": p, **depth[p], "total": depth[p]["queued"] + depth[p]["waiting"]}
            for p in sorted(depth, reverse=True)
        ],
        "success_rate": None if decided == 0 else states[State.COMPLETED] / decided,
        "durations": _durations(kept),
        "throughput": _throughput(kept, now_ms, since_s),
        "oldest_queued": _oldest_queued(kept, now_ms),
        "workers": _workers(current, workers, wanted),
    }


def _durations(jobs: Sequence[Job]) -> dict[str, Any]:
    runs = sorted(
        ms(j.finished_at) - ms(j.started_at)
        for j in jobs
        if j.state in FINISHED and j.started_at is not None and j.finished_at is not None
    )
    if not runs:
        return {"count": 0, "mean_s": None, "p50_s": None, "p95_s": None, "max_s": None}
    return {
        "count": len(runs),
        "mean_s": _seconds(Fraction(sum(runs), len(runs))),
        "p50_s": _seconds(percentile(runs, P50)),
        "p95_s": _seconds(percentile(runs, P95)),
        "max_s": _seconds(runs[-1]),
    }


def _throughput(jobs: Sequence[Job], now_ms: int, since_s: float | None) -> dict[str, Any]:
    ends = [j.finished_at for j in jobs if j.state in FINISHED and j.finished_at is not None]
    if since_s is not None:
        window_ms: float | None = since_s * 1000
    elif ends:
        window_ms = max(MIN_SPAN_MS, now_ms - ms(min(ends)))
    else:
        window_ms = None
    return {
        "finished": len(ends),
        "window_s": None if window_ms is None else _seconds(window_ms),
        "per_hour": None if not window_ms else float(round(len(ends) * 3_600_000 / Fraction(window_ms), 3)),
    }


def _oldest_queued(jobs: Sequence[Job], now_ms: int) -> dict[str, Any] | None:
    queued = [j for j in jobs if j.state is State.QUEUED]
    if not queued:
        return None
    oldest = min(queued, key=lambda j: (j.created_at, j.id))
    return {"id": oldest.id, "created_at": iso(oldest.created_at), "age_s": _seconds(now_ms - ms(oldest.created_at))}


def _workers(
    jobs: Sequence[Job], workers: Sequence[Mapping[str, Any]], wanted: frozenset[str] | None
) -> list[dict[str, Any]]:
    running: dict[tuple[str, int], list[int]] = {}
    for j in jobs:
        if j.state is State.RUNNING and j.worker is not None:
            running.setdefault((j.worker.host, j.worker.pid), []).append(j.id)
    found = []
    for w in sorted(workers, key=lambda w: (str(w["host"]), int(w["pid"]))):
        serves = w.get("queues")
        if wanted is not None and serves is not None and not wanted & set(serves):
            continue
        found.append({
            "host": w["host"], "pid": w["pid"], "slots": w.get("slots"), "gpus": w.get("gpus"),
            "queues": None if serves is None else list(serves),
            "running": sorted(running.get((w["host"], w["pid"]), [])),
        })
    return found
