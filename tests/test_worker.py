"""The worker, through the real `jobctl` script: what a job sees, how it ends, how many run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.helpers import cli, job, stderr_so_far, submit, wait_until


def finished(job_id: int) -> dict:
    return wait_until(lambda: (j := job(job_id))["state"] in ("completed", "failed", "cancelled") and j,
                      what=f"job {job_id} to finish")


def test_output_goes_to_the_job_logs(workers) -> None:
    i = submit("sh", "-c", "echo out; echo err >&2")
    workers.start("--exit-when-idle")
    record = finished(i)
    assert record["state"] == "completed" and record["exit_code"] == 0 and record["error"] is None
    assert cli("logs", str(i)).stdout == "out\n"
    assert cli("logs", str(i), "--stderr").stdout == "err\n"
    assert Path(record["job_dir"], "stdout.log").read_text() == "out\n"
    assert record["usage"]["wall_s"] >= 0 and record["started_at"] <= record["finished_at"]
    assert record["worker"]["pid"] == workers.procs[0].pid


def test_failures_carry_an_error_and_the_right_wait_code(workers) -> None:
    exit3 = submit("sh", "-c", "exit 3")
    missing = submit("pyhton", "x")
    killed = submit("sh", "-c", "kill -9 $$")
    workers.start("--exit-when-idle")
    assert finished(exit3)["error"] == "exit code 3"
    assert finished(missing)["error"] == "command not found: pyhton"
    record = finished(killed)
    assert (record["state"], record["error"], record["signal"]) == ("failed", "killed by signal 9", 9)
    assert cli("wait", str(exit3), ok=False).returncode == 3
    assert cli("wait", str(missing), ok=False).returncode == 127
    assert cli("wait", str(killed), ok=False).returncode == 128 + 9
    assert cli("wait", str(killed), str(exit3), ok=False).returncode == 137  # the first non-zero


def test_submit_wait_exits_with_the_job_exit_code(workers) -> None:
    workers.start()
    proc = cli("submit", "--wait", "--", "sh", "-c", "echo hi; exit 7", ok=False)
    assert proc.returncode == 7
    [line] = proc.stdout.splitlines()
    assert job(int(line))["exit_code"] == 7


def test_the_job_sees_its_cwd_environment_and_variables(workers, tmp_path: Path) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    script = 'pwd; echo "$FOO|$CAPTURED|$JOBCTL_JOB_ID|$JOBCTL_ATTEMPT|$JOBCTL_OUTPUT_DIR|$JOBCTL_STORE"; cat'
    i = int(cli("submit", "--cwd", str(workdir), "--env", "FOO=bar=baz", "--", "sh", "-c", script,
                env={"CAPTURED": "at submit"}).stdout)
    workers.start("--exit-when-idle")  # the worker's own environment has no CAPTURED
    record = finished(i)
    store = os.environ["JOBCTL_STORE"]
    assert cli("logs", str(i)).stdout.splitlines() == [
        str(workdir),
        f"bar=baz|at submit|{i}|1|{record['job_dir']}/out|{store}",
    ]  # and `cat` read /dev/null: it returned at once
    assert record["cwd"] == str(workdir)


def test_bytes_that_are_not_utf8_reach_the_job_unchanged(workers) -> None:
    import subprocess

    from tests.helpers import JOBCTL

    env = {**{k.encode(): v.encode() for k, v in os.environ.items()}, b"RAW": b"\xff\xfe"}
    out = subprocess.run([JOBCTL.encode(), b"submit", b"--", b"sh", b"-c", b'printf "%s|%s" "$0" "$RAW"', b"caf\xe9"],
                         env=env, capture_output=True, check=True).stdout
    i = int(out)
    workers.start("--exit-when-idle")
    assert finished(i)["state"] == "completed"
    assert (Path(job(i)["job_dir"]) / "stdout.log").read_bytes() == b"caf\xe9|\xff\xfe"
    shown = subprocess.run([JOBCTL, "status", str(i)], capture_output=True, check=True).stdout
    assert b"'caf\xe9'" in shown  # shown as the bytes it was, not a crash


def test_never_more_than_concurrency_jobs_and_really_that_many(workers, tmp_path: Path) -> None:
    # Each job writes its start and end times; pairs (1,2), (3,4)... wait for each other,
    # so they complete only if two really run at once.
    log = tmp_path / "log"
    log.mkdir()
    ids = []
    for n in range(6):
        partner = n + 1 if n % 2 == 0 else n - 1
        script = (f"date +%s.%N > {log}/start.{n}; "
                  f"while [ ! -e {log}/start.{partner} ]; do sleep 0.02; done; "
                  f"sleep 0.2; date +%s.%N > {log}/end.{n}")
        ids.append(submit("sh", "-c", script))
    workers.start("--concurrency", "2", "--exit-when-idle")
    for i in ids:
        assert finished(i)["state"] == "completed"
    spans = [(float((log / f"start.{n}").read_text()), float((log / f"end.{n}").read_text())) for n in range(6)]
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2


def test_priority_order_then_submission_order(workers, tmp_path: Path) -> None:
    order = tmp_path / "order"
    names = [("low", "low"), ("n1", "normal"), ("h1", "high"), ("n2", "0"), ("c", "critical"), ("h2", "10")]
    for name, prio in names:
        cli("submit", "--priority", prio, "--", "sh", "-c", f"echo {name} >> {order}")
    workers.start("--concurrency", "1", "--exit-when-idle")
    wait_until(lambda: order.exists() and len(order.read_text().split()) == 6)
    assert order.read_text().split() == ["c", "h1", "h2", "n1", "n2", "low"]


def test_a_submitted_job_wakes_an_idle_worker(workers, tmp_path: Path) -> None:
    proc = workers.start()
    wait_until(lambda: any((Path(os.environ["JOBCTL_STORE"]) / "wake").glob("*.fifo")), what="worker listening")
    i = submit("true")
    assert finished(i)["state"] == "completed"
    assert proc.poll() is None


def test_sigterm_lets_running_jobs_finish_and_leaves_queued_ones(workers, tmp_path: Path) -> None:
    go = tmp_path / "go"
    running = submit("sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
    queued = submit("true")
    proc = workers.start("--concurrency", "1")
    wait_until(lambda: job(running)["state"] == "running")
    proc.send_signal(signal.SIGTERM)
    wait_until(lambda: b"stopping: waiting for 1 running job" in stderr_so_far(proc), what="SIGTERM acknowledged")
    go.touch()
    assert proc.wait(timeout=30) == 0
    assert job(running)["state"] == "completed"
    assert job(queued)["state"] == "queued"


def test_a_second_signal_returns_running_jobs_to_the_queue_uncharged(workers, tmp_path: Path) -> None:
    i = submit("sh", "-c", f"echo $$ > {tmp_path}/pid; exec sleep 300")
    proc = workers.start("--concurrency", "1")
    wait_until(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip())
    pid = int((tmp_path / "pid").read_text())
    proc.send_signal(signal.SIGINT)
    wait_until(lambda: b"signal again" in stderr_so_far(proc), what="first signal acknowledged")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    record = job(i)
    assert (record["state"], record["attempt"]) == ("queued", 0)
    wait_until(lambda: not _alive(pid), what="job process gone")


def _alive(pid: int) -> bool:
    from tests.helpers import pid_alive

    return pid_alive(pid)
