"""`jobctl progress`, `history`, and `status --watch`, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import JOBCTL, cli, finish, job, run, submit, wait_until


def test_progress_from_a_running_job_shows_live_and_stays_in_the_record(workers, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = (f'"{JOBCTL}" progress 40 "epoch 4/10"; while [ ! -e {go} ]; do sleep 0.05; done; '
              f'"{JOBCTL}" progress 100 done')
    i = submit("sh", "-c", script)
    workers.start()
    wait_until(lambda: job(i)["progress"] == {"percent": 40.0, "message": "epoch 4/10"}, what="live progress")
    assert job(i)["state"] == "running"
    assert cli("status", env={"COLUMNS": "160"}).stdout.splitlines()[1].rstrip().endswith("40% epoch 4/10")
    go.touch()
    wait_until(lambda: job(i)["state"] == "completed")
    assert job(i)["progress"] == {"percent": 100.0, "message": "done"}
    milestones = [(e["percent"], e["message"]) for e in history_of(i) if e["event"] == "progress"]
    assert milestones == [(25.0, "epoch 4/10"), (100.0, "done")]


def test_progress_outside_a_job_is_a_clean_error(monkeypatch) -> None:
    monkeypatch.delenv("JOBCTL_JOB_ID", raising=False)
    result = run("progress", "50", ok=False)
    assert (result.exit_code, result.stderr) == (
        2, "jobctl: error: jobctl progress runs inside a job: JOBCTL_JOB_ID and JOBCTL_ATTEMPT are not set\n")


def test_progress_of_a_job_that_is_not_running_is_refused(monkeypatch) -> None:
    i = submit("true")
    monkeypatch.setenv("JOBCTL_JOB_ID", str(i))
    monkeypatch.setenv("JOBCTL_ATTEMPT", "1")
    result = run("progress", "50", ok=False)
    assert (result.exit_code, result.stderr) == (1, f"jobctl: error: job {i} attempt 1 is not running\n")


def history_of(job_id: int) -> list[dict]:
    return [json.loads(line) for line in cli("history", str(job_id), "--json").stdout.splitlines()]


def test_history_records_submit_start_finish_cancel_retry_and_release(workers) -> None:
    ok = submit("true")
    bad = submit("sh", "-c", "exit 3")
    gone = submit("true")
    held = submit("true", opts=("--hold",))
    cli("cancel", str(gone))
    finish(workers, ok, bad)
    cli("retry", str(bad))
    cli("release", str(held))
    events = {i: [e["event"] for e in history_of(i)] for i in (ok, bad, gone, held)}
    assert events[ok] == ["submitted", "started", "completed"]
    assert events[bad] == ["submitted", "started", "failed", "retried", "queued"]
    assert events[gone] == ["submitted", "cancelled"]
    assert events[held] == ["submitted", "released", "queued"]
    [submitted] = [e for e in history_of(ok) if e["event"] == "submitted"]
    assert {"user", "host", "pid"} <= submitted.keys()
    [started] = [e for e in history_of(ok) if e["event"] == "started"]
    assert started["attempt"] == 1 and started["worker"] == f"{job(ok)['worker']['host']}:{job(ok)['worker']['pid']}"
    [failed] = [e for e in history_of(bad) if e["event"] == "failed"]
    assert (failed["exit_code"], failed["error"]) == (3, "exit code 3")
    [cancelled] = [e for e in history_of(gone) if e["event"] == "cancelled"]
    import getpass
    import os
    import re

    assert re.fullmatch(rf"{re.escape(getpass.getuser())}@{re.escape(os.uname().nodename)} pid \d+", cancelled["by"])


def test_cleanup_prunes_the_events_of_removed_jobs_and_says_what_it_removed(workers) -> None:
    a, b = submit("true"), submit("true")
    finish(workers, a, b)
    cli("cleanup", "--older-than", "0", "--quiet")
    lines = [json.loads(x) for x in cli("history", "--json").stdout.splitlines()]
    assert [e["event"] for e in lines] == ["cleaned up"]
    assert (lines[0]["count"], lines[0]["ids"]) == (2, f"{a}-{b}")
    assert cli("history", str(a), ok=False).returncode == 1  # the job itself is gone


def test_history_follow_prints_events_until_the_job_finishes(workers, tmp_path: Path) -> None:
    import subprocess

    go = tmp_path / "go"
    i = submit("sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
    follow = subprocess.Popen([JOBCTL, "history", "--follow", str(i)], stdout=subprocess.PIPE, text=True)
    assert follow.stdout is not None
    assert " submitted " in follow.stdout.readline()
    workers.start()
    assert " started " in follow.stdout.readline()
    go.touch()
    rest, _ = follow.communicate(timeout=30)
    assert " completed " in rest and follow.returncode == 0


def tmux(socket: str, *args: str) -> str:
    import subprocess

    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, check=False).stdout


def test_status_watch_in_a_real_terminal_follows_a_job_to_completion(workers, jobctl_env: Path, tmp_path: Path) -> None:
    import os
    import shutil

    assert shutil.which("tmux"), "tmux is needed for this test (.ci/run installs it)"
    socket = f"jobctl-test-{os.getpid()}"
    go = tmp_path / "go"
    i = submit("sh", "-c", f'"{JOBCTL}" progress 40 "epoch 4/10"; while [ ! -e {go} ]; do sleep 0.05; done',
               opts=("--name", "train"))
    command = f"env JOBCTL_STORE={jobctl_env} JOBCTL_CONFIG={jobctl_env.parent / 'config.toml'} {JOBCTL} status --watch"
    tmux(socket, "new-session", "-d", "-s", "w", "-x", "80", "-y", "12", command)
    try:
        screen = lambda: tmux(socket, "capture-pane", "-p", "-t", "w")  # noqa: E731
        row = lambda: next((line for line in screen().splitlines() if line.split()[:1] == [str(i)]), "")  # noqa: E731
        wait_until(lambda: row().split()[1:3] == ["waiting", "train"] or row().split()[1:3] == ["queued", "train"],
                   what="the queued job on screen")
        workers.start()
        wait_until(lambda: "running" in row() and "40%" in row() and "epoch 4/10" in row(), what="running at 40%")
        assert "running 1" in screen()
        go.touch()
        wait_until(lambda: row().split()[1:3] == ["completed", "train"] and "exit 0" in row(), what="completed")
        assert "completed 1" in screen() and "workers 1" in screen()
        tmux(socket, "send-keys", "-t", "w", "C-c")
        wait_until(lambda: "w" not in tmux(socket, "list-sessions", "-F", "#S").split(), what="a clean exit on Ctrl-C")
    finally:
        tmux(socket, "kill-server")


def test_status_watch_without_a_terminal_prints_one_snapshot() -> None:
    i = submit("true", opts=("--name", "snap"))
    proc = cli("status", "--watch", timeout=10)
    assert proc.stdout.splitlines()[1].split()[:2] == [str(i), "queued"]


def test_bash_completes_unfinished_job_ids_and_queue_names_from_the_store() -> None:
    import os
    import subprocess

    from tests.test_docs import BASH_COMPLETE, ROOT, _shell_env

    queued = submit("true", opts=("--queue", "gpu"))
    done = submit("true")
    run("cancel", str(done))  # finished: not offered
    held = submit("true", opts=("--hold",))

    def complete(*words: str) -> list[str]:
        proc = subprocess.run(
            ["bash", "--norc", "--noprofile", "-c", BASH_COMPLETE, "bash", *words],
            cwd=ROOT, env={**_shell_env(), "LINE": " ".join(words), "JOBCTL_STORE": os.environ["JOBCTL_STORE"]},
            capture_output=True, text=True, timeout=30,
        )
        assert (proc.returncode, proc.stderr) == (0, "")
        return proc.stdout.splitlines()

    assert complete("jobctl", "cancel", "") == [str(queued), str(held)]
    assert complete("jobctl", "logs", str(held)) == [str(held)]
    assert complete("jobctl", "worker", "--queue", "g") == ["gpu"]
    assert complete("jobctl", "pause", "") == ["default", "gpu"]


def test_status_of_a_failed_job_ends_with_the_last_lines_of_its_stderr(workers) -> None:
    i = submit("sh", "-c", "for n in 1 2 3 4 5 6 7; do echo line $n >&2; done; echo 'Traceback: boom' >&2; exit 1")
    finish(workers, i)
    lines = cli("status", str(i)).stdout.splitlines()
    assert lines[-6:] == ["last 5 line(s) of stderr:", "  line 4", "  line 5", "  line 6", "  line 7", "  Traceback: boom"]
    ok = submit("sh", "-c", "echo fine >&2")
    finish(workers, ok)
    assert not any(line.startswith("last ") for line in cli("status", str(ok)).stdout.splitlines())
