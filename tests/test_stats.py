"""`jobctl stats`: every figure checked against a known set of jobs, recomputed independently
from `status --json`; the pure computation checked on hand-made jobs with known answers."""

from __future__ import annotations

import json
import re
import statistics
import time
from collections import Counter
from datetime import datetime
from fractions import Fraction
from typing import Any

import pytest

from jobctl import stats as figures
from jobctl.model import Job, State, WorkerRef, iso
from tests.helpers import cli, cli_report, finish, job, jobs, run, submit, wait_until

STATES = ["queued", "waiting", "running", "completed", "failed", "cancelled"]


def stats_json(*args: str) -> dict[str, Any]:
    return cli_report("stats", *args)


def ms(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def sec(value: Fraction | int) -> float:
    return float(round(Fraction(value) / 1000, 3))


def expected(records: list[dict[str, Any]], report: dict[str, Any], *, queues: list[str] | None = None,
             since_s: float | None = None) -> dict[str, Any]:
    """What `stats --json` must say about these `status --json` records, computed from scratch
    (no worker is alive in these tests). `report` gives only the moment stats ran."""
    at = report["at"]
    at_ms = ms(at)
    window_start = None
    if since_s is not None:  # `at` is truncated to the millisecond, so is the start: 1 ms apart at most
        assert abs(at_ms - since_s * 1000 - ms(report["window_start"])) <= 1
        window_start = report["window_start"]
    sel = [r for r in records if queues is None or r["queue"] in queues]
    if since_s is not None:
        sel = [r for r in sel if ms(r["created_at"]) >= at_ms - since_s * 1000]
    count = Counter(r["state"] for r in sel)
    names = sorted({r["queue"] for r in sel} | set(queues or []))
    pris = sorted({r["priority"] for r in sel if r["state"] in ("queued", "waiting")}, reverse=True)
    depth = []
    for p in pris:
        q = sum(1 for r in sel if r["priority"] == p and r["state"] == "queued")
        w = sum(1 for r in sel if r["priority"] == p and r["state"] == "waiting")
        depth.append({"priority": p, "queued": q, "waiting": w, "total": q + w})
    finished = [r for r in sel if r["state"] in ("completed", "failed", "cancelled")]
    runs = sorted(ms(r["finished_at"]) - ms(r["started_at"]) for r in finished if r["started_at"])
    if len(runs) >= 2:
        cuts = statistics.quantiles([Fraction(d) for d in runs], n=100, method="inclusive")
        p50, p95 = cuts[49], cuts[94]
    else:
        p50 = p95 = Fraction(runs[0]) if runs else Fraction(0)
    if since_s is not None:
        window: Fraction | None = Fraction(since_s) * 1000
    elif finished:
        window = Fraction(max(60_000, at_ms - min(ms(r["finished_at"]) for r in finished)))
    else:
        window = None
    queued = sorted((r for r in sel if r["state"] == "queued"), key=lambda r: (ms(r["created_at"]), r["id"]))
    decided = count["completed"] + count["failed"]
    return {
        "at": at,
        "since_s": since_s,
        "window_start": window_start,
        "queues": None if queues is None else sorted(set(queues)),
        "total": len(sel),
        "states": {s: count[s] for s in STATES},
        "by_queue": {n: {s: sum(1 for r in sel if r["queue"] == n and r["state"] == s) for s in STATES} for n in names},
        "depth_by_priority": depth,
        "success_rate": count["completed"] / decided if decided else None,
        "durations": {
            "count": len(runs),
            "mean_s": sec(statistics.mean([Fraction(d) for d in runs])) if runs else None,
            "p50_s": sec(p50) if runs else None,
            "p95_s": sec(p95) if runs else None,
            "max_s": sec(max(runs)) if runs else None,
        },
        "throughput": {
            "finished": len(finished),
            "window_s": None if window is None else sec(window),
            "per_hour": None if not window else float(round(len(finished) * Fraction(3_600_000) / window, 3)),
        },
        "oldest_queued": None if not queued else {
            "id": queued[0]["id"], "created_at": queued[0]["created_at"],
            "age_s": sec(at_ms - ms(queued[0]["created_at"])),
        },
        "workers": [],
    }


def known_set(workers: Any) -> dict[str, int]:
    """Two completed and two failed runs of different lengths, one job cancelled before it ran;
    then, with no worker left, four unfinished jobs over three queues and priorities."""
    ids = {
        "ok": submit("true"),
        "ok_slow": submit("sleep", "0.3", opts=("--priority", "high")),
        "bad": submit("sh", "-c", "exit 3", opts=("--queue", "batch")),
        "bad_slow": submit("sh", "-c", "sleep 0.1; exit 3", opts=("--queue", "batch", "--priority", "5")),
        "gone": submit("true"),
    }
    run("cancel", str(ids["gone"]))
    finish(workers, ids["ok"], ids["ok_slow"], ids["bad"], ids["bad_slow"])
    ids["q_default"] = submit("true")
    ids["q_gpu"] = submit("true", opts=("--queue", "[red]gpu", "--priority", "10"))
    ids["held"] = submit("true", opts=("--hold",))
    ids["q_batch"] = submit("true", opts=("--queue", "batch", "--priority", "-3"))
    return ids


def test_every_figure_matches_the_jobs(workers):
    ids = known_set(workers)
    records = jobs()
    report = stats_json()
    assert report == expected(records, report)

    # The same figures, spelled out, so that a mistake shared by stats and `expected` shows.
    by_id = {r["id"]: r for r in records}
    assert {k: by_id[i]["state"] for k, i in ids.items()} == {
        "ok": "completed", "ok_slow": "completed", "bad": "failed", "bad_slow": "failed", "gone": "cancelled",
        "q_default": "queued", "q_gpu": "queued", "held": "waiting", "q_batch": "queued",
    }
    assert report["states"] == {"queued": 3, "waiting": 1, "running": 0, "completed": 2, "failed": 2, "cancelled": 1}
    assert report["total"] == 9
    assert list(report["by_queue"]) == ["[red]gpu", "batch", "default"]
    assert report["by_queue"]["batch"] == {"queued": 1, "waiting": 0, "running": 0, "completed": 0, "failed": 2, "cancelled": 0}
    assert report["depth_by_priority"] == [
        {"priority": 10, "queued": 1, "waiting": 0, "total": 1},
        {"priority": 0, "queued": 1, "waiting": 1, "total": 2},
        {"priority": -3, "queued": 1, "waiting": 0, "total": 1},
    ]
    assert report["success_rate"] == 0.5
    d = report["durations"]
    assert d["count"] == 4  # the cancelled job never ran
    runs = sorted(ms(by_id[i]["finished_at"]) - ms(by_id[i]["started_at"]) for i in
                  (ids["ok"], ids["ok_slow"], ids["bad"], ids["bad_slow"]))
    assert runs[-1] >= 300
    assert abs(d["max_s"] - runs[-1] / 1000) <= 0.0015
    # the records' times are printed to the millisecond: a median from them may be 1 ms off
    assert abs(d["p50_s"] - (runs[1] + runs[2]) / 2000) <= 0.0015
    assert d["p50_s"] <= d["p95_s"] <= d["max_s"]
    assert report["throughput"]["finished"] == 5
    assert report["throughput"]["window_s"] == 60.0  # everything finished within the last minute
    assert report["throughput"]["per_hour"] == 300.0
    assert report["oldest_queued"]["id"] == ids["q_default"]
    assert report["oldest_queued"]["created_at"] == by_id[ids["q_default"]]["created_at"]
    assert report["workers"] == []


def test_queue_filter_and_window(workers):
    ids = known_set(workers)
    records = jobs()

    report = stats_json("--queue", "batch", "--queue", "nothing-here")
    assert report == expected(records, report, queues=["batch", "nothing-here"])
    assert report["states"] == {"queued": 1, "waiting": 0, "running": 0, "completed": 0, "failed": 2, "cancelled": 0}
    assert report["by_queue"]["nothing-here"] == dict.fromkeys(STATES, 0)
    assert report["success_rate"] == 0.0
    assert report["oldest_queued"]["id"] == ids["q_batch"]

    report = stats_json("--since", "1h")
    assert report == expected(records, report, since_s=3600.0)
    assert report["throughput"] == {"finished": 5, "window_s": 3600.0, "per_hour": 5.0}

    # A window that leaves out every job but the newest.
    created = ms(job(ids["q_batch"])["created_at"]) / 1000
    wait_until(lambda: time.time() - created > 1.3, what="the first jobs to be over 1.3 s old")
    newest = submit("true", opts=("--priority", "7"))
    report = json.loads(run("stats", "--json", "--since", "1").stdout)
    assert report["total"] == 1
    assert report["states"]["queued"] == 1
    assert report["depth_by_priority"] == [{"priority": 7, "queued": 1, "waiting": 0, "total": 1}]
    assert report["oldest_queued"]["id"] == newest
    assert report["durations"] == {"count": 0, "mean_s": None, "p50_s": None, "p95_s": None, "max_s": None}
    assert report["throughput"] == {"finished": 0, "window_s": 1.0, "per_hour": 0.0}
    assert report["success_rate"] is None
    assert abs(ms(report["at"]) - ms(report["window_start"]) - 1000) <= 1


def test_human_output(workers):
    ids = known_set(workers)
    records = {r["id"]: r for r in jobs()}
    report = json.loads(run("stats", "--json").stdout)
    text = cli("stats").stdout
    assert "\x1b[" not in text  # not a terminal: no colours
    lines = text.splitlines()
    assert lines[:10] == [
        "9 jobs",
        "QUEUE     QUEUED  WAITING  RUNNING  COMPLETED  FAILED  CANCELLED  TOTAL",
        "[red]gpu       1        0        0          0       0          0      1",  # never read as markup
        "batch          1        0        0          0       2          0      3",
        "default        1        1        0          2       0          1      5",
        "all            3        1        0          2       2          1      9",
        "depth       priority 10: 1 queued, priority 0: 1 queued + 1 waiting, priority -3: 1 queued",
        "success     50.0% (2 completed, 2 failed)",
        lines[8],
        "throughput  300.0 jobs/h (5 finished in 1m)",
    ]
    assert re.fullmatch(r"durations   4 ran: mean \S+, p50 \S+, p95 \S+, max \S+", lines[8])
    if report["durations"]["max_s"] < 1:
        assert lines[8].endswith(f", max {report['durations']['max_s'] * 1000:.0f}ms")
    created = records[ids["q_default"]]["created_at"]
    assert re.fullmatch(rf"oldest      job {ids['q_default']}, queued [\d.]+s ago \({created}\)", lines[10])
    assert lines[11:] == ["workers     none live"]


def test_live_workers_with_what_they_run(workers):
    a = submit("sleep", "30")
    b = submit("sleep", "30")
    g = submit("sleep", "30", opts=("--queue", "gpu"))
    main = workers.start("--concurrency", "2", "--queue", "default")
    gpu = workers.start("--concurrency", "1", "--queue", "gpu", "--queue", "other")
    wait_until(lambda: all(job(i)["state"] == "running" for i in (a, b, g)), what="the jobs to run")
    host = job(a)["worker"]["host"]
    assert job(a)["worker"] == job(b)["worker"] == {"host": host, "pid": main.pid}
    assert job(g)["worker"] == {"host": host, "pid": gpu.pid}

    report = stats_json()
    assert report["states"]["running"] == 3
    assert sorted(report["workers"], key=lambda w: w["pid"]) == sorted([
        {"host": host, "pid": main.pid, "slots": 2, "gpus": 0, "queues": ["default"], "running": sorted([a, b])},
        {"host": host, "pid": gpu.pid, "slots": 1, "gpus": 0, "queues": ["gpu", "other"], "running": [g]},
    ], key=lambda w: w["pid"])
    assert report["durations"]["count"] == 0  # running jobs have no duration yet
    assert report["throughput"] == {"finished": 0, "window_s": None, "per_hour": None}

    # --queue keeps the workers that may serve one of those queues, with their jobs of them.
    assert [(w["pid"], w["running"]) for w in stats_json("--queue", "other")["workers"]] == [(gpu.pid, [])]
    # --since never hides what runs now.
    assert {w["pid"]: w["running"] for w in json.loads(run("stats", "--json", "--since", "0.001").stdout)["workers"]} == {
        main.pid: sorted([a, b]), gpu.pid: [g]}

    text = cli("stats").stdout.splitlines()
    assert text[-3] == "workers     2 live"
    assert f"  {host}:{main.pid}  2 slots, queues default; running {min(a, b)}, {max(a, b)}" in text
    assert f"  {host}:{gpu.pid}  1 slot, queues gpu, other; running {g}" in text


def test_empty_store_and_bad_input():
    report = stats_json()
    assert report == {
        "at": report["at"], "since_s": None, "window_start": None, "queues": None, "total": 0,
        "states": dict.fromkeys(STATES, 0), "by_queue": {}, "depth_by_priority": [], "success_rate": None,
        "durations": {"count": 0, "mean_s": None, "p50_s": None, "p95_s": None, "max_s": None},
        "throughput": {"finished": 0, "window_s": None, "per_hour": None}, "oldest_queued": None, "workers": [],
    }
    assert cli("stats").stdout.splitlines() == [
        "0 jobs",
        "depth       nothing queued",
        "success     - (0 completed, 0 failed)",
        "durations   no finished job ran",
        "throughput  0 finished",
        "oldest      -",
        "workers     none live",
    ]
    bad = cli("stats", "--since", "soon", ok=False)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "jobctl: error: Invalid value for '--since': invalid duration 'soon' (examples: 90, 90s, 5m, 2h, 7d, 1h30m)"
        " (see 'jobctl stats --help')"
    ]


# --- the pure computation, on hand-made jobs --------------------------------------------------

BASE = 1_800_000_000.0  # 2027-01-15T08:00:00Z
FAILED_RUNS = {2, 4, 6, 8, 10, 12}


def hand_made() -> list[Job]:
    """Jobs 1-20 ran for 1..20 s (job i: i seconds; the even ones up to 12 failed), job 21 was
    cancelled before it ran, jobs 22-27 wait in queues; 28 and 29 are running."""
    out = []
    for i in range(1, 21):
        state = State.FAILED if i in FAILED_RUNS else State.COMPLETED
        out.append(Job(id=i, command=("true",), cwd="/", created_at=BASE + i, state=state,
                       started_at=BASE + 100 * i, finished_at=BASE + 100 * i + i, queue="a" if i % 2 else "b"))
    out.append(Job(id=21, command=("true",), cwd="/", created_at=BASE + 0.5, state=State.CANCELLED,
                   finished_at=BASE + 150))
    for i, (pri, state, created) in enumerate(
        [(0, State.QUEUED, 60), (0, State.QUEUED, 50), (10, State.QUEUED, 50), (-10, State.QUEUED, 70),
         (0, State.WAITING, 40), (5, State.WAITING, 41)], start=22,
    ):
        out.append(Job(id=i, command=("true",), cwd="/", created_at=BASE + created, state=state, priority=pri))
    out.append(Job(id=28, command=("sleep", "9"), cwd="/", created_at=BASE, state=State.RUNNING,
                   started_at=BASE + 3000, worker=WorkerRef("h", 1), queue="b"))
    out.append(Job(id=29, command=("sleep", "9"), cwd="/", created_at=BASE, state=State.RUNNING,
                   started_at=BASE + 3000, worker=WorkerRef("h", 9)))  # its worker is gone
    return out


LIVE = [
    {"host": "h", "pid": 2, "slots": 1, "gpus": 1, "queues": ["gpu"]},
    {"host": "h", "pid": 1, "slots": 4, "gpus": 0, "queues": None},
]


def test_compute_on_known_jobs():
    now = BASE + 101 + 2 * 3600  # the first job finished at BASE + 101: a window of exactly 2 h
    r = figures.compute(hand_made(), LIVE, now=now)
    assert r["total"] == 29
    assert r["states"] == {"queued": 4, "waiting": 2, "running": 2, "completed": 14, "failed": 6, "cancelled": 1}
    assert r["by_queue"]["a"]["completed"] == 10
    assert r["by_queue"]["b"] == {"queued": 0, "waiting": 0, "running": 1, "completed": 4, "failed": 6, "cancelled": 0}
    assert r["depth_by_priority"] == [
        {"priority": 10, "queued": 1, "waiting": 0, "total": 1},
        {"priority": 5, "queued": 0, "waiting": 1, "total": 1},
        {"priority": 0, "queued": 2, "waiting": 1, "total": 3},
        {"priority": -10, "queued": 1, "waiting": 0, "total": 1},
    ]
    assert r["success_rate"] == 0.7  # 14 / 20; the cancelled job counts neither way
    # 1..20 s: mean 10.5; p50 between 10 and 11; p95 at rank 19 * 0.95 = 18.05 -> 19 + 0.05
    assert r["durations"] == {"count": 20, "mean_s": 10.5, "p50_s": 10.5, "p95_s": 19.05, "max_s": 20.0}
    assert r["throughput"] == {"finished": 21, "window_s": 7200.0, "per_hour": 10.5}
    # Jobs 23 and 24 were both created at BASE + 50: the lower id is the older.
    assert r["oldest_queued"] == {"id": 23, "created_at": iso(BASE + 50), "age_s": now - BASE - 50}
    assert r["workers"] == [
        {"host": "h", "pid": 1, "slots": 4, "gpus": 0, "queues": None, "running": [28]},
        {"host": "h", "pid": 2, "slots": 1, "gpus": 1, "queues": ["gpu"], "running": []},
    ]
    assert r["at"] == iso(now) and r["since_s"] is None and r["window_start"] is None and r["queues"] is None


def test_compute_with_filters():
    now = BASE + 3600
    # Keeps the jobs created at BASE + 10.5 or later: runs 11..20 and the waiting/queued ones.
    r = figures.compute(hand_made(), LIVE, now=now, since_s=3600 - 10.5)
    assert r["total"] == 10 + 6
    assert r["success_rate"] == 0.9  # only job 12 of 11..20 failed
    # 11..20 s: p95 at rank 9 * 0.95 = 8.55 -> 19 + 0.55
    assert r["durations"] == {"count": 10, "mean_s": 15.5, "p50_s": 15.5, "p95_s": 19.55, "max_s": 20.0}
    assert r["throughput"] == {"finished": 10, "window_s": 3589.5, "per_hour": round(10 * 3600 / 3589.5, 3)}
    assert r["window_start"] == iso(BASE + 10.5)
    assert [w["running"] for w in r["workers"]] == [[28], []]  # running jobs are shown whatever --since says

    r = figures.compute(hand_made(), LIVE, now=now, queues=["gpu", "b"])
    assert r["queues"] == ["b", "gpu"]
    assert list(r["by_queue"]) == ["b", "gpu"] and r["by_queue"]["gpu"] == dict.fromkeys(STATES, 0)
    assert r["total"] == 10 + 1
    assert r["success_rate"] == 0.4  # b: 2..20 even; 6 failed of 10
    assert r["oldest_queued"] is None
    assert [(w["pid"], w["running"]) for w in r["workers"]] == [(1, [28]), (2, [])]
    assert [w["pid"] for w in figures.compute(hand_made(), LIVE, now=now, queues=["a"])["workers"]] == [1]


def test_throughput_counts_at_least_a_minute():
    just_done = [Job(id=1, command=("true",), cwd="/", created_at=BASE, state=State.COMPLETED,
                     started_at=BASE, finished_at=BASE + 0.25)]
    r = figures.compute(just_done, [], now=BASE + 1)
    assert r["throughput"] == {"finished": 1, "window_s": 60.0, "per_hour": 60.0}
    assert r["durations"] == {"count": 1, "mean_s": 0.25, "p50_s": 0.25, "p95_s": 0.25, "max_s": 0.25}


def test_a_job_cancelled_while_running_has_a_duration_but_no_say_in_success():
    def ran(i: int, state: State, seconds: float) -> Job:
        return Job(id=i, command=("true",), cwd="/", created_at=BASE, state=state, started_at=BASE + 10,
                   finished_at=BASE + 10 + seconds)

    r = figures.compute([ran(1, State.COMPLETED, 2), ran(2, State.CANCELLED, 4), ran(3, State.FAILED, 9)], [],
                        now=BASE + 3600)
    assert r["durations"] == {"count": 3, "mean_s": 5.0, "p50_s": 4.0, "p95_s": 8.5, "max_s": 9.0}
    assert r["success_rate"] == 0.5
    assert r["throughput"] == {"finished": 3, "window_s": 3600 - 12.0, "per_hour": round(3 * 3600 / 3588, 3)}


@pytest.mark.parametrize("values", [[5, 1], [3, 1, 2], [7, 7, 7, 1], list(range(0, 1000, 7)), [10, 13, 2, 99, 40, 41]])
def test_percentile_is_linear_interpolation(values):
    data = sorted(values)
    cuts = statistics.quantiles([Fraction(v) for v in data], n=100, method="inclusive")  # exact
    assert figures.percentile(data, figures.P50) == cuts[49] == statistics.median(data)
    assert figures.percentile(data, figures.P95) == cuts[94]
    assert figures.percentile(data, Fraction(1)) == max(data)
    assert figures.percentile(data, Fraction(0)) == min(data)
