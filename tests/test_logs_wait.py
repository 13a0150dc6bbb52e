"""`jobctl logs` (--tail, --follow) and `jobctl wait` (--timeout)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import JOBCTL, cli, job, run, submit, wait_until


def test_tail_shows_the_last_lines(workers) -> None:
    i = submit("seq", "1", "1000")
    workers.start("--exit-when-idle").wait(timeout=30)
    assert cli("logs", str(i), "--tail", "3").stdout == "998\n999\n1000\n"
    assert cli("logs", str(i), "-n", "0").stdout == ""
    assert len(cli("logs", str(i)).stdout.splitlines()) == 1000


def test_follow_prints_output_as_it_comes_until_the_job_ends(workers, tmp_path: Path) -> None:
    go = tmp_path / "go"
    i = submit("sh", "-c", f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second")
    workers.start()
    follow = subprocess.Popen([JOBCTL, "logs", "--follow", str(i)], stdout=subprocess.PIPE, text=True)
    assert follow.stdout is not None
    assert follow.stdout.readline() == "first\n"  # before the job has finished
    assert follow.poll() is None and job(i)["state"] == "running"
    go.touch()
    rest, _ = follow.communicate(timeout=30)
    assert (rest, follow.returncode) == ("second\n", 0)


def test_logs_of_a_job_that_has_not_started_are_empty() -> None:
    i = submit("true")
    assert run("logs", str(i)).stdout == ""


def test_wait_gives_up_after_its_timeout() -> None:
    i = submit("true")  # no worker: it stays queued
    result = run("wait", "--timeout", "0.3", str(i), ok=False)
    assert (result.exit_code, result.stderr) == (1, f"jobctl: error: timed out waiting for job(s) {i}\n")


def test_wait_returns_as_soon_as_a_worker_records_the_result(workers, tmp_path: Path) -> None:
    go = tmp_path / "go"
    i = submit("sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done; exit 4")
    workers.start()
    waiter = subprocess.Popen([JOBCTL, "wait", str(i)])
    wait_until(lambda: job(i)["state"] == "running")
    assert waiter.poll() is None
    go.touch()
    assert waiter.wait(timeout=30) == 4
