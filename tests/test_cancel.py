"""`jobctl cancel`: queued jobs at once, running ones with their whole process tree."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.helpers import cli, job, pid_alive, run, submit, wait_until


def test_cancel_a_queued_job(workers) -> None:
    i = submit("true")
    proc = cli("cancel", str(i))
    assert proc.stdout == f"cancelled job {i}\n"
    record = job(i)
    assert (record["state"], record["error"], record["started_at"]) == ("cancelled", "cancelled", None)
    assert cli("wait", str(i), ok=False).returncode == 125
    workers.start("--exit-when-idle").wait(timeout=30)
    assert job(i)["state"] == "cancelled"  # a worker never starts it


def test_cancel_a_running_job_kills_its_background_grandchild_too(workers, tmp_path: Path) -> None:
    cli("config", "set", "kill_grace", "3s")
    pids = tmp_path / "pids"
    i = submit("sh", "-c", f"sleep 300 & echo $$ $! > {pids}; wait")
    workers.start()
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, what="job started")
    shell, child = map(int, pids.read_text().split())
    started = time.monotonic()
    proc = cli("cancel", str(i))
    assert proc.stdout == f"cancelled job {i} (stopped its processes)\n"
    assert time.monotonic() - started < 3 + 1 + 2  # grace + 1 s, plus the CLI's own start-up
    assert not pid_alive(shell) and not pid_alive(child)
    record = job(i)
    assert (record["state"], record["error"]) == ("cancelled", "cancelled")


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(workers, tmp_path: Path) -> None:
    cli("config", "set", "kill_grace", "1s")
    pidfile = tmp_path / "pid"
    i = submit("sh", "-c", f"trap '' TERM; echo $$ > {pidfile}; while :; do sleep 0.1; done")
    workers.start()
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), what="job started")
    pid = int(pidfile.read_text())
    cli("cancel", str(i))
    assert not pid_alive(pid)
    assert job(i)["state"] == "cancelled"


def test_cancel_a_finished_job_fails_and_changes_nothing(workers) -> None:
    i = submit("true")
    workers.start("--exit-when-idle").wait(timeout=30)
    before = job(i)
    proc = cli("cancel", str(i), ok=False)
    assert proc.returncode == 1
    assert proc.stderr == f"jobctl: error: job(s) already finished: {i} (completed)\n"
    assert job(i)["state"] == before["state"] == "completed"


def test_cancel_all_and_by_queue() -> None:
    a = submit("true", opts=("--queue", "a"))
    b = submit("true", opts=("--queue", "b"))
    c = submit("true", opts=("--queue", "a"))
    assert run("cancel", "--all", "--queue", "a").stdout == f"cancelled job {a}\ncancelled job {c}\n"
    states = {r["id"]: r["state"] for r in json.loads(run("status", "--json").stdout)}
    assert states == {a: "cancelled", b: "queued", c: "cancelled"}
    run("cancel", "--all")
    assert job(b)["state"] == "cancelled"


def test_cancel_needs_ids_or_all() -> None:
    result = run("cancel", ok=False)
    assert (result.exit_code, result.stderr) == (2, "jobctl: error: give job ids or --all\n")
    i = submit("true")
    result = run("cancel", str(i), "99", ok=False)
    assert (result.exit_code, result.stderr) == (1, "jobctl: error: no job 99\n")
    assert job(i)["state"] == "queued"  # nothing changed
