"""Crashes cost nothing: workers killed with SIGKILL, jobs adopted, lost attempts, floods."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import psutil

from tests.helpers import JOBCTL, cli, job, jobs, pid_alive, stderr_so_far, submit, swarm, wait_until


def run_info(store: Path, job_id: int) -> dict:
    return json.loads((store / "jobs" / str(job_id) / "run.json").read_text())


def started(store: Path, job_id: int) -> bool:
    try:
        return run_info(store, job_id)["job"] is not None
    except (FileNotFoundError, ValueError):
        return False


def kill9(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_killed_workers_running_jobs_are_adopted_and_complete_once(workers, jobctl_env: Path, tmp_path: Path) -> None:
    go, effects = tmp_path / "go", tmp_path / "effects"
    ids = [submit("sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done; echo $JOBCTL_JOB_ID >> {effects}")
           for _ in range(2)]
    first = workers.start("--concurrency", "2")
    wait_until(lambda: all(started(jobctl_env, i) for i in ids), what="both jobs started")
    first.kill()
    first.wait(timeout=10)
    # status does not lie: the jobs still run, their worker is gone
    assert {j["id"]: (j["state"], j["worker_alive"]) for j in jobs()} == {i: ("running", False) for i in ids}
    assert [line.split()[-2:] for line in cli("status").stdout.splitlines()[1:]] == [["worker", "gone"]] * 2
    assert "(gone; the next worker on that host adopts the job)" in cli("status", str(ids[0])).stdout
    second = workers.start("--concurrency", "2")
    wait_until(lambda: all(job(i)["worker"]["pid"] == second.pid for i in ids), what="adoption")
    assert all(job(i)["state"] == "running" and job(i)["worker_alive"] for i in ids)
    go.touch()
    wait_until(lambda: all(job(i)["state"] == "completed" for i in ids), what="both completed")
    assert sorted(int(x) for x in effects.read_text().split()) == ids
    assert [job(i)["attempt"] for i in ids] == [1, 1]


def test_jobs_lost_with_their_worker_retry_or_fail_with_worker_lost(workers, jobctl_env: Path, tmp_path: Path) -> None:
    mark = tmp_path / "ran"
    again = submit("sh", "-c", f'echo $JOBCTL_ATTEMPT >> {mark}; [ "$JOBCTL_ATTEMPT" = 2 ] || sleep 300',
                   opts=("--retries", "1"))
    once = submit("sleep", "300")
    first = workers.start("--concurrency", "2")
    wait_until(lambda: started(jobctl_env, again) and started(jobctl_env, once), what="both started")
    # a host crash, as far as these jobs can tell: worker, supervisors and jobs all gone
    first.kill()
    for i in (again, once):
        info = run_info(jobctl_env, i)
        kill9(info["supervisor"]["pid"])
        os.killpg(info["job"]["pid"], signal.SIGKILL)
    first.wait(timeout=10)
    workers.start("--concurrency", "2", "--exit-when-idle")
    wait_until(lambda: job(again)["state"] == "completed" and job(once)["state"] == "failed", what="outcomes")
    assert (job(again)["attempt"], job(again)["lost_attempts"]) == (2, 1)
    assert mark.read_text().split() == ["1", "2"]
    record = job(once)
    assert (record["error"], record["reason"], record["lost_attempts"]) == ("worker lost", "lost", 1)
    assert cli("wait", str(once), ok=False).returncode == 125


def test_a_job_lost_again_and_again_fails_after_max_lost(workers, jobctl_env: Path) -> None:
    cli("config", "set", "max_lost", "2")
    i = submit("sleep", "300", opts=("--retries", "10"))
    for round_ in range(2):
        proc = workers.start()
        wait_until(lambda n=round_ + 1: job(i)["state"] == "running" and started(jobctl_env, i)
                   and run_info(jobctl_env, i)["attempt"] == n, what=f"attempt {round_ + 1}")
        info = run_info(jobctl_env, i)
        proc.kill()
        kill9(info["supervisor"]["pid"])
        os.killpg(info["job"]["pid"], signal.SIGKILL)
        proc.wait(timeout=10)
    workers.start("--exit-when-idle").wait(timeout=30)
    record = job(i)
    assert (record["state"], record["error"], record["attempt"], record["lost_attempts"]) == ("failed", "worker lost", 2, 2)


def test_ten_worker_kills_during_150_jobs_run_each_exactly_once(workers, jobctl_env: Path, tmp_path: Path) -> None:
    effects = tmp_path / "effects"
    lines = "".join(f"sleep 0.0{n % 5}; echo $JOBCTL_JOB_ID >> {effects}\n" for n in range(150))
    subprocess.run([JOBCTL, "submit", "--from", "-"], input=lines, text=True, check=True, capture_output=True)
    rng = random.Random(7)
    for _ in range(10):
        proc = workers.start("--concurrency", "2")
        done_before = len(effects.read_text().split()) if effects.exists() else 0
        target = done_before + rng.randint(1, 6)
        wait_until(lambda t=target: (len(effects.read_text().split()) if effects.exists() else 0) >= min(t, 150),
                   timeout=30, what="some progress")
        proc.kill()
        proc.wait(timeout=10)
    workers.start("--concurrency", "2", "--exit-when-idle").wait(timeout=120)
    assert {j["state"] for j in jobs()} == {"completed"}
    ran = [int(x) for x in effects.read_text().split()]
    assert sorted(ran) == list(range(1, 151))  # every job, each exactly once
    assert {j["attempt"] for j in jobs()} == {1}


def test_three_workers_never_run_a_job_twice(workers, tmp_path: Path) -> None:
    runs = swarm(workers, tmp_path / "effects", jobs=300, worker_count=3, timeout=120)
    assert runs == [f"{i}.1" for i in range(1, 301)]  # every job, once, at its first attempt
    assert len({j["worker"]["pid"] for j in jobs()}) == 3


def test_a_200_mb_output_flood_leaves_the_worker_small(workers) -> None:
    i = submit("sh", "-c", "head -c 200000000 /dev/zero")
    proc = workers.start()
    peak = 0
    def done() -> bool:
        nonlocal peak
        peak = max(peak, psutil.Process(proc.pid).memory_info().rss)
        return job(i)["state"] == "completed"
    wait_until(done, timeout=60, interval=0.02, what="the flood to end")
    assert (Path(job(i)["job_dir"]) / "stdout.log").stat().st_size == 200_000_000
    assert peak < 150 * 1024 * 1024


def test_submitters_killed_at_random_moments_lose_no_printed_id(jobctl_env: Path) -> None:
    rng = random.Random(11)
    printed: list[int] = []
    loop = f'while :; do "{JOBCTL}" submit -- true || exit 1; done'
    for _ in range(12):
        proc = subprocess.Popen(["sh", "-c", loop], stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            proc.communicate(timeout=rng.uniform(0.2, 0.6))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the shell and the submit it is running, mid-write
            out, _ = proc.communicate()
        printed += [int(x) for x in out.split()]
    assert printed and len(set(printed)) == len(printed)
    stored = {j["id"] for j in jobs()}  # the store loads...
    assert set(printed) <= stored  # ...and holds every id that was printed


def test_a_job_that_daemonizes_out_of_its_session_is_still_killed_on_cancel(workers, tmp_path: Path) -> None:
    cli("config", "set", "kill_grace", "1s")
    daemon_pid = tmp_path / "daemon"
    # double fork + setsid: the daemon leaves the job's process group and session
    script = f"setsid sh -c 'echo $$ > {daemon_pid}; exec sleep 300' & sleep 300"
    i = submit("sh", "-c", script)
    workers.start()
    wait_until(lambda: daemon_pid.exists() and daemon_pid.read_text().strip(), what="daemon started")
    pid = int(daemon_pid.read_text())
    assert os.getsid(pid) == pid  # its own session, outside the job's process group
    cli("cancel", str(i))
    wait_until(lambda: not pid_alive(pid), timeout=3, what="the daemon gone")
    assert job(i)["state"] == "cancelled"


def test_a_daemonized_child_dies_with_a_timeout_too(workers, tmp_path: Path) -> None:
    daemon_pid = tmp_path / "daemon"
    i = submit("sh", "-c", f"setsid sh -c 'echo $$ > {daemon_pid}; exec sleep 300' & sleep 300",
               opts=("--timeout", "1"))
    workers.start()
    wait_until(lambda: job(i)["state"] == "failed", what="the timeout")
    assert job(i)["error"] == "timed out after 1s"
    pid = int(daemon_pid.read_text())
    wait_until(lambda: not pid_alive(pid), timeout=3, what="the daemon gone")


def test_a_claimed_job_whose_worker_died_before_starting_it_is_queued_again_uncharged(
    workers, jobctl_env: Path
) -> None:
    # As if the worker had been killed between its claim and the fork of the supervisor:
    # the job is `running` for a dead worker, with no supervisor and no run.json.
    from jobctl.model import WorkerRef
    from jobctl.scheduler import Capacity
    from jobctl.store.jsonfile import JsonStore

    i = submit("true")
    dead = subprocess.Popen(["true"])
    dead.wait()
    [claimed] = JsonStore(jobctl_env).claim(WorkerRef(os.uname().nodename, dead.pid), Capacity(1, 1), at=0.0)
    assert (claimed.id, claimed.attempt) == (i, 1)
    workers.start("--exit-when-idle").wait(timeout=30)
    record = job(i)
    assert (record["state"], record["attempt"], record["lost_attempts"]) == ("completed", 1, 0)


def launcher_of(worker_pid: int) -> psutil.Process:
    """The worker's launcher: its one child that is a fork of it (hooks and cleanup are not)."""
    worker = psutil.Process(worker_pid)
    [launcher] = [p for p in worker.children() if p.cmdline() == worker.cmdline()]
    return launcher


def test_a_killed_worker_takes_its_launcher_along_but_not_its_jobs(workers, jobctl_env: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    i = submit("sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
    first = workers.start()
    wait_until(lambda: started(jobctl_env, i), what="job started")
    launcher = launcher_of(first.pid)
    supervisor_pid = run_info(jobctl_env, i)["supervisor"]["pid"]
    first.kill()
    first.wait(timeout=10)
    # The launcher leaves when its worker is gone; the job's supervisor (its child) does not.
    wait_until(lambda: not pid_alive(launcher.pid), what="the launcher exits")
    assert pid_alive(supervisor_pid)
    workers.start()
    go.touch()
    wait_until(lambda: job(i)["state"] == "completed", what="the adopted job completes")
    assert job(i)["attempt"] == 1


def test_a_worker_whose_launcher_died_starts_another_and_loses_no_job(workers, jobctl_env: Path) -> None:
    w = workers.start()
    wait_until(lambda: len(psutil.Process(w.pid).children()) == 1, what="the launcher is up")
    wait_until(lambda: b"started:" in stderr_so_far(w), what="the worker is up")
    launcher = launcher_of(w.pid)
    launcher.kill()
    wait_until(lambda: not pid_alive(launcher.pid), what="the launcher is dead")  # a zombie until its worker looks
    ids = [submit("true") for _ in range(3)]
    wait_until(lambda: all(job(i)["state"] == "completed" for i in ids), what="all three completed")
    # The first start found the launcher gone; that job went back to the queue uncharged.
    assert [job(i)["attempt"] for i in ids] == [1, 1, 1]
    assert b"starting a new launcher" in stderr_so_far(w)
    assert launcher_of(w.pid).pid != launcher.pid


def test_a_job_whose_result_is_not_yet_written_is_not_taken_for_an_orphan(jobctl_env: Path) -> None:
    # A worker records results with its next claim; a heartbeat in between must not look at
    # such a job as one of its own whose supervisor vanished (it would record it twice).
    from jobctl.model import State, WorkerRef, transition
    from jobctl.scheduler import Capacity
    from jobctl.store.jsonfile import JsonStore
    from jobctl.worker import Worker

    i = submit("true")
    store = JsonStore(jobctl_env)
    w = Worker(store, concurrency=1, queues=None, exit_when_idle=True, grace_s=1.0, log=lambda _: None)
    w.ref = WorkerRef(os.uname().nodename, os.getpid())
    [claimed] = store.claim(w.ref, Capacity(1, 1), at=0.0)
    assert claimed.id == i
    done = transition(claimed, State.COMPLETED, at=1.0, exit_code=0, reason="exit")
    w.results.append((claimed, done, None))
    before = (jobctl_env / "state.json").read_bytes()
    w._adopt_orphans()
    assert (jobctl_env / "state.json").read_bytes() == before
    assert w.results == [(claimed, done, None)] and not w.running
