"""Queue limits, start rates and result reuse, through the real CLI and workers."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path

from tests.conftest import Workers
from tests.helpers import JOBCTL, cli, finish, jobs, run, stderr_so_far, wait_until


def ids_of() -> list[int]:
    return [j["id"] for j in jobs()]


def test_a_full_queue_refuses_a_submit_and_adds_nothing() -> None:
    run("config", "set", "max_queued", "2")  # every queue's limit, unless it has its own
    run("config", "set", "queues.gpu.max_queued", "1")
    cli("submit", "--", "true")
    cli("submit", "--", "true")
    full = cli("submit", "--", "true", ok=False)
    assert (full.returncode, full.stdout) == (1, "")
    assert full.stderr == "jobctl: error: queue default is full (2 jobs)\n"
    cli("submit", "--queue", "gpu", "--", "true")
    gpu = cli("submit", "--queue", "gpu", "--", "true", ok=False)
    assert gpu.returncode == 1 and gpu.stderr == "jobctl: error: queue gpu is full (1 jobs)\n"
    assert ids_of() == [1, 2, 3]
    assert cli("submit", "--", "true", ok=False).returncode == 1 and ids_of() == [1, 2, 3]


def test_a_batch_that_would_overflow_adds_nothing(tmp_path: Path) -> None:
    run("config", "set", "max_queued", "3")
    cli("submit", "--", "true")
    lines = "echo a\necho b\necho c\n"
    full = cli("submit", "--from", "-", input=lines, ok=False)
    assert full.returncode == 1 and full.stderr == "jobctl: error: queue default is full (1 jobs)\n"
    assert ids_of() == [1]
    assert cli("submit", "--from", "-", input="echo a\necho b\n").stdout.split() == ["2", "3"]


def test_submit_block_waits_for_room_then_succeeds(workers: Workers) -> None:
    run("config", "set", "max_queued", "1")
    first = int(cli("submit", "--", "true").stdout)
    blocked = subprocess.Popen([JOBCTL, "submit", "--block", "--", "true"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: b"waiting for room" in stderr_so_far(blocked), what="the submit to block")
        assert blocked.poll() is None and ids_of() == [first]  # it waits, having added nothing
        finish(workers, first)  # the queued job starts: room for one
        seen = stderr_so_far(blocked)
        out, rest = blocked.communicate(timeout=30)
    finally:
        if blocked.poll() is None:
            blocked.kill()
            blocked.communicate()
    assert blocked.returncode == 0 and int(out) == first + 1
    assert seen.decode() + rest == "jobctl: queue default is full (1 jobs); waiting for room (--block)\n"


def test_the_start_rate_holds_across_two_workers(workers: Workers) -> None:
    run("config", "set", "queues.slow.rate", "2/s")
    cli("submit", "--queue", "slow", "--from", "-", input="true\n" * 8)
    for _ in range(2):
        workers.start("--concurrency", "4", "--exit-when-idle")
    wait_until(lambda: all(j["state"] == "completed" for j in jobs()), timeout=30, what="all eight to run")
    starts = sorted(datetime.fromisoformat(j["started_at"]).timestamp() for j in jobs())
    assert len(starts) == 8
    # at most 2 starts in any 1-second window: every third start is a second after the first
    gaps = [later - earlier for earlier, later in zip(starts, starts[2:], strict=False)]
    assert min(gaps) >= 0.998, (gaps, [(j["id"], j["started_at"], j["worker"]) for j in jobs()])


def test_reuse_returns_the_completed_job_instead_of_running_again(workers: Workers, tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    command = ("sh", "-c", f"echo ran >> {effects}")
    first = int(cli("submit", "--unique", "build:abc", "--", *command).stdout)
    finish(workers, first)
    again = cli("submit", "--unique", "build:abc", "--reuse", "--wait", "--", *command)
    assert int(again.stdout) == first and ids_of() == [first]
    assert effects.read_text() == "ran\n"  # once
    rerun = int(cli("submit", "--unique", "build:abc", "--", *command).stdout)  # no --reuse: runs again
    assert rerun == first + 1
    finish(workers, rerun)
    assert effects.read_text() == "ran\nran\n"
    assert int(cli("submit", "--unique", "build:abc", "--reuse", "--", *command).stdout) == rerun  # the newest
    bad = cli("submit", "--reuse", "--", "true", ok=False)
    assert (bad.returncode, bad.stderr) == (2, "jobctl: error: --reuse goes with --unique KEY\n")


def test_poll_after_s_grows_with_a_jobs_age_and_is_null_once_it_finished(jobctl_env: Path) -> None:
    import time

    from jobctl.model import Job
    from jobctl.store.base import JobSpec
    from jobctl.store.jsonfile import JsonStore
    from tests.helpers import job

    fresh = int(cli("submit", "--hold", "--", "true").stdout)
    spec = JobSpec(Job(id=0, command=("true",), cwd="/", created_at=0.0, held=True), {})
    [old] = JsonStore(jobctl_env).submit([spec], at=time.time() - 120)  # submitted two minutes ago
    [older] = JsonStore(jobctl_env).submit([spec], at=time.time() - 3600)
    polls = {j["id"]: j["poll_after_s"] for j in jobs()}
    assert polls[fresh] == 0.5 and 11.0 <= polls[old.id] <= 13.0 and polls[older.id] == 30.0  # capped
    cli("cancel", str(fresh))
    assert job(fresh)["poll_after_s"] is None

