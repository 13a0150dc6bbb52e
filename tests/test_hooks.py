"""Hooks and the worker's periodic cleanup, through real `jobctl worker` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import JOBCTL, cli, job, pid_alive, run, stderr_so_far, submit, wait_until


def worker_log(proc: subprocess.Popen[str]) -> str:
    """Everything a worker printed on stderr, once it has exited by itself."""
    wait_until(lambda: proc.poll() is not None, timeout=30, what="the worker to exit")
    assert proc.returncode == 0
    seen = None
    while (so_far := stderr_so_far(proc)) != seen:  # at the pipe's end it stops growing
        seen = so_far
    return so_far.decode()


def history(job_id: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in cli("history", str(job_id), "--json").stdout.splitlines()]


def hook_failures(job_id: int) -> list[dict[str, Any]]:
    return [{k: e[k] for k in ("job", "hook", "error")} for e in history(job_id) if e["event"] == "hook failed"]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_hooks_see_how_the_job_ended_and_on_failure_runs_only_for_failures(workers, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    fields = "$JOBCTL_JOB_ID|$JOBCTL_ATTEMPT|$JOBCTL_STATE|$JOBCTL_EXIT_CODE|$JOBCTL_ERROR|$JOBCTL_JOB_NAME|$PWD|$JOBCTL_OUTPUT_DIR|$JOBCTL_STORE"
    run("config", "set", "hooks.on_finish", f'echo "{fields}" > {seen}/finish.$JOBCTL_JOB_ID; echo said by the hook')
    run("config", "set", "hooks.on_failure",  # slow: the idle worker must wait for it
        f'sleep 0.5; echo "$JOBCTL_STATE $JOBCTL_EXIT_CODE" > {seen}/failure.$JOBCTL_JOB_ID')
    ok = submit("true", opts=("--name", "fine"))
    bad = submit("sh", "-c", "exit 3")
    slow = submit("sleep", "60")
    proc = workers.start("--concurrency", "3", "--exit-when-idle")
    wait_until(lambda: job(slow)["state"] == "running", what="the slow job to start")
    cli("cancel", str(slow))
    worker_log(proc)  # it waited for the hooks before exiting: their files are complete
    store = os.environ["JOBCTL_STORE"]

    def expected(i: int, rest: str) -> str:
        jd = job(i)["job_dir"]
        return f"{i}|1|{rest}|{jd}|{jd}/out|{store}\n"

    assert (seen / f"finish.{ok}").read_text() == expected(ok, "completed|0||fine")
    assert (seen / f"finish.{bad}").read_text() == expected(bad, "failed|3|exit code 3|")
    assert (seen / f"finish.{slow}").read_text() == expected(slow, "cancelled||cancelled|")
    assert sorted(p.name for p in seen.glob("failure.*")) == [f"failure.{bad}"]
    assert (seen / f"failure.{bad}").read_text() == "failed 3\n"
    assert Path(job(ok)["job_dir"], "hooks.log").read_text() == "said by the hook\n"
    assert [job(i)["state"] for i in (ok, bad, slow)] == ["completed", "failed", "cancelled"]
    assert all(hook_failures(i) == [] for i in (ok, bad, slow))


def test_a_hook_that_hangs_is_killed_after_its_timeout_and_never_blocks_the_pool(workers, tmp_path: Path) -> None:
    run("config", "set", "hooks.timeout", "2s")
    run("config", "set", "hooks.on_finish",
        f'echo $$ > {tmp_path}/hook.$JOBCTL_JOB_ID; if [ "$JOBCTL_JOB_ID" = 1 ]; then sleep 600; fi')
    first, *later = submit("true"), submit("true"), submit("true")
    proc = workers.start("--concurrency", "1")
    pid_file = tmp_path / f"hook.{first}"
    wait_until(lambda: all(job(i)["state"] == "completed" for i in later), what="the next jobs")
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the hanging hook to start")
    hook = int(pid_file.read_text())
    assert group_alive(hook)  # the next jobs completed while it still hung
    assert b"timed out" not in stderr_so_far(proc)
    wait_until(lambda: b"timed out" in stderr_so_far(proc), what="the hook to time out")
    assert f"job {first}: hook on_finish failed: timed out after 2s\n" in stderr_so_far(proc).decode()
    wait_until(lambda: not group_alive(hook), timeout=5, what="the hook's process group to be gone")
    assert not pid_alive(hook)
    assert hook_failures(first) == [{"job": first, "hook": "on_finish", "error": "timed out after 2s"}]
    assert job(first)["state"] == "completed"
    assert all(hook_failures(i) == [] for i in later)
    assert proc.poll() is None


def test_a_failing_hook_is_logged_and_does_not_fail_the_job(workers) -> None:
    run("config", "set", "hooks.on_finish", "echo no luck >&2; exit 3")
    i = submit("true")
    log = worker_log(workers.start("--exit-when-idle"))
    assert f"job {i}: hook on_finish failed: exit code 3\n" in log
    record = job(i)
    assert (record["state"], record["exit_code"], record["error"]) == ("completed", 0, None)
    assert hook_failures(i) == [{"job": i, "hook": "on_finish", "error": "exit code 3"}]
    assert Path(record["job_dir"], "hooks.log").read_text() == "no luck\n"


def _all_jobs() -> list[dict[str, Any]]:
    return json.loads(cli("status", "--all", "--json").stdout)  # type: ignore[no-any-return]


def test_the_worker_cleans_up_periodically(workers) -> None:
    run("config", "set", "cleanup_interval", "1s")
    run("config", "set", "cleanup.older_than", "1s")
    i = submit("true")
    proc = workers.start()
    wait_until(lambda: job(i)["state"] == "completed", what="the job to complete")
    jd = Path(job(i)["job_dir"])
    wait_until(lambda: all(j["id"] != i for j in _all_jobs()), timeout=10, what="the worker's cleanup")
    assert not jd.exists()
    wait_until(lambda: f"cleanup removed 1 job(s) ({i})" in stderr_so_far(proc).decode(), what="the cleanup's log line")
    assert proc.poll() is None


def test_cleanup_runs_at_start_and_an_idle_worker_waits_for_it(workers) -> None:
    i = submit("true")
    worker_log(workers.start("--exit-when-idle"))  # no cleanup_interval: nothing removed
    assert [j["id"] for j in _all_jobs()] == [i]
    run("config", "set", "cleanup_interval", "1h")
    run("config", "set", "cleanup.older_than", "0s")
    log = worker_log(workers.start("--exit-when-idle"))
    assert f"cleanup removed 1 job(s) ({i})" in log
    assert _all_jobs() == []


def test_an_idle_worker_runs_what_a_hook_queues_before_exiting(workers) -> None:
    run("config", "set", "hooks.on_finish", f'if [ "$JOBCTL_JOB_ID" = 1 ]; then {JOBCTL} submit --name chained -- true; fi')
    first = submit("true")
    log = worker_log(workers.start("--exit-when-idle"))
    assert job(first + 1)["name"] == "chained" and job(first + 1)["state"] == "completed", log
    assert "failed" not in log


def test_a_second_signal_kills_the_hooks_a_stopping_worker_waits_for(workers) -> None:
    run("config", "set", "hooks.on_finish", "sleep 600")
    i = submit("true")
    proc = workers.start()
    wait_until(lambda: b"completed" in stderr_so_far(proc), what="the job to complete")
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: b"waiting for 1 hook" in stderr_so_far(proc), what="SIGTERM acknowledged")
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert f"job {i}: hook on_finish failed: killed: the worker was stopped" in worker_log(proc)
    assert hook_failures(i) == [{"job": i, "hook": "on_finish", "error": "killed: the worker was stopped"}]
