"""Scheduling through the real `jobctl` script and real workers: dependencies, timeouts,
retries, delays, holds, unique keys, queues, pause, and CPU/GPU/memory slots."""

from __future__ import annotations

import signal
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import FINISHED, cli, finish, job, jobs, pid_alive, stderr_so_far, submit, wait_until

USAGE, FAILED = 2, 1


def finished(job_id: int, timeout: float = 15.0) -> dict[str, Any]:
    return wait_until(lambda: (j := job(job_id))["state"] in FINISHED and j, timeout=timeout,
                      what=f"job {job_id} to finish")


def state_is(job_id: int, state: str, timeout: float = 15.0) -> dict[str, Any]:
    return wait_until(lambda: (j := job(job_id))["state"] == state and j, timeout=timeout,
                      what=f"job {job_id} to be {state}")


def ts(iso_text: str) -> float:
    return datetime.fromisoformat(iso_text.replace("Z", "+00:00")).timestamp()


def stamp(path: Path) -> str:
    """Shell that writes the current time (seconds, with nanoseconds) to path."""
    return f"date +%s.%N > {path}"


def read_time(path: Path) -> float:
    return float(path.read_text())


def spans(log: Path, names: list[str]) -> dict[str, tuple[float, float]]:
    return {n: (read_time(log / f"start.{n}"), read_time(log / f"end.{n}")) for n in names}


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def span_job(log: Path, name: str, seconds: float = 0.2) -> str:
    return f"{stamp(log / f'start.{name}')}; sleep {seconds}; {stamp(log / f'end.{name}')}"


# --- dependencies --------------------------------------------------------------------------


def test_after_starts_only_once_the_dependency_completed(workers, tmp_path: Path) -> None:
    a = submit("sh", "-c", f"sleep 0.3; {stamp(tmp_path / 'a.end')}")
    b = submit("sh", "-c", stamp(tmp_path / "b.start"), opts=("--after", str(a)))
    record = job(b)
    assert (record["state"], record["waiting_for"], record["depends_on"]) == ("waiting", f"dependency {a}", [a])
    finish(workers, a, b, concurrency="2")  # a free slot the whole time: only the rule holds b back
    assert job(a)["state"] == job(b)["state"] == "completed"
    assert read_time(tmp_path / "b.start") >= read_time(tmp_path / "a.end")
    assert job(b)["started_at"] >= job(a)["finished_at"]


def test_a_failure_fails_two_levels_of_dependents_at_once(workers) -> None:
    a = submit("sh", "-c", "exit 3")
    b = submit("true", opts=("--after", str(a)))
    c = submit("true", opts=("--after", str(b)))
    assert (job(b)["waiting_for"], job(c)["waiting_for"]) == (f"dependency {a}", f"dependency {b}")
    finish(workers, a, b, c)
    ra, rb, rc = job(a), job(b), job(c)
    assert (ra["state"], ra["error"]) == ("failed", "exit code 3")
    assert (rb["state"], rb["error"], rb["attempt"], rb["started_at"]) == ("failed", f"dependency {a} failed", 0, None)
    assert (rc["state"], rc["error"], rc["attempt"], rc["started_at"]) == ("failed", f"dependency {b} failed", 0, None)
    assert rb["finished_at"] == rc["finished_at"]  # in the one write that recorded a's result
    assert not Path(rb["job_dir"]).exists() and not Path(rc["job_dir"]).exists()  # never started
    assert cli("wait", str(c), ok=False).returncode == 125


def test_after_any_runs_after_a_failed_or_cancelled_dependency(workers, tmp_path: Path) -> None:
    a = submit("sh", "-c", "exit 3")
    gone = submit("true")
    b = submit("sh", "-c", f"touch {tmp_path}/b.ran", opts=("--after-any", str(a), "--after-any", str(gone)))
    cli("cancel", str(gone))
    assert (job(b)["state"], job(b)["waiting_for"]) == ("waiting", f"dependency {a}")
    finish(workers, a, b)
    assert job(a)["state"] == "failed"
    assert (job(b)["state"], job(b)["error"]) == ("completed", None)
    assert (tmp_path / "b.ran").exists()


def test_a_cancelled_dependency_fails_the_dependent() -> None:
    a = submit("true")
    b = submit("true", opts=("--after", str(a)))
    c = submit("true", opts=("--after", str(b)))
    assert cli("cancel", str(a)).stdout == f"cancelled job {a}\n"
    assert [(r["id"], r["state"], r["error"]) for r in jobs()] == [
        (a, "cancelled", "cancelled"), (b, "failed", f"dependency {a} failed"), (c, "failed", f"dependency {b} failed"),
    ]


@pytest.mark.parametrize("option", ["--after", "--after-any"])
def test_an_unknown_dependency_is_refused_at_submit(option: str) -> None:
    a = submit("true")
    proc = cli("submit", option, str(a), option, "99", "--", "true", ok=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (USAGE, "", "jobctl: error: unknown dependency 99 (no such job)\n")
    assert [r["id"] for r in jobs()] == [a]
    assert submit("true") == a + 1  # no id was used up


# --- timeouts --------------------------------------------------------------------------------


def test_a_timeout_kills_the_job_and_its_background_grandchild(workers, tmp_path: Path) -> None:
    cli("config", "set", "kill_grace", "1s")
    pids = tmp_path / "pids"
    i = submit("sh", "-c", f"sleep 300 & echo $$ $! > {pids}; wait", opts=("--timeout", "1"))
    workers.start("--exit-when-idle")
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, what="job started")
    shell, grandchild = map(int, pids.read_text().split())
    assert cli("wait", str(i), ok=False).returncode == 124
    record = job(i)
    assert (record["state"], record["error"], record["timeout_s"]) == ("failed", "timed out after 1s", 1.0)
    assert 1.0 <= ts(record["finished_at"]) - ts(record["started_at"]) < 1.0 + 1 + 1  # + grace + 1 s
    assert not pid_alive(shell) and not pid_alive(grandchild)


# --- retries ---------------------------------------------------------------------------------


def test_retries_back_off_doubling_and_keep_every_attempts_logs(workers, tmp_path: Path) -> None:
    script = (f'date +%s.%N > {tmp_path}/start.$JOBCTL_ATTEMPT; echo "out $JOBCTL_ATTEMPT"; '
              'echo "err $JOBCTL_ATTEMPT" >&2; exit 3')
    i = submit("sh", "-c", script, opts=("--retries", "2", "--retry-delay", "1"))
    workers.start("--exit-when-idle")
    seen: set[tuple[str, int, str | None]] = set()

    def done() -> bool:
        r = job(i)
        seen.add((r["state"], r["attempt"], r["waiting_for"]))
        return r["state"] in FINISHED

    wait_until(done, timeout=20, what=f"job {i} to finish")
    assert ("waiting", 1, "retry back-off") in seen and ("waiting", 2, "retry back-off") in seen
    record = job(i)
    assert (record["state"], record["attempt"], record["max_retries"], record["exit_code"], record["error"]) == (
        "failed", 3, 2, 3, "exit code 3")
    t1, t2, t3 = (read_time(tmp_path / f"start.{n}") for n in (1, 2, 3))
    assert 0.9 <= t2 - t1 < 1.8, t2 - t1  # 1 s ± 10 %, not yet doubled
    assert 1.8 <= t3 - t2 < 3.2, t3 - t2  # 2 s ± 10 %
    jd = Path(record["job_dir"])
    assert [(jd / f"stdout{n}.log").read_text() for n in (".1", ".2", "")] == ["out 1\n", "out 2\n", "out 3\n"]
    assert [(jd / f"stderr{n}.log").read_text() for n in (".1", ".2", "")] == ["err 1\n", "err 2\n", "err 3\n"]
    assert cli("logs", str(i)).stdout == "out 3\n"
    assert cli("wait", str(i), ok=False).returncode == 3


def test_retry_back_off_is_capped_by_config(workers, tmp_path: Path) -> None:
    cli("config", "set", "retry_max_delay", "1s")
    script = f"date +%s.%N > {tmp_path}/start.$JOBCTL_ATTEMPT; exit 1"
    i = submit("sh", "-c", script, opts=("--retries", "2", "--retry-delay", "1"))
    workers.start("--exit-when-idle")
    assert (finished(i, timeout=20)["state"], job(i)["attempt"]) == ("failed", 3)
    t1, t2, t3 = (read_time(tmp_path / f"start.{n}") for n in (1, 2, 3))
    assert 0.9 <= t2 - t1 < 1.8, t2 - t1
    assert 1.0 <= t3 - t2 < 1.7, t3 - t2  # min(1 s, 2 s ± 10 %)


def test_retry_on_retries_only_those_exit_codes(workers) -> None:
    opts = ("--retries", "1", "--retry-delay", "0.2", "--retry-on", "75,137")
    retried = submit("sh", "-c", "exit 75", opts=opts)
    not_retried = submit("sh", "-c", "exit 3", opts=opts)
    finish(workers, retried, not_retried)
    r, n = job(retried), job(not_retried)
    assert (r["state"], r["attempt"], r["exit_code"], r["error"]) == ("failed", 2, 75, "exit code 75")
    assert (n["state"], n["attempt"], n["exit_code"], n["error"]) == ("failed", 1, 3, "exit code 3")
    assert r["retry_on"] == [75, 137]


def test_a_cancelled_job_is_never_retried(workers, tmp_path: Path) -> None:
    i = submit("sh", "-c", f"touch {tmp_path}/started; exec sleep 300", opts=("--retries", "3", "--retry-delay", "0.1"))
    proc = workers.start("--exit-when-idle")
    wait_until(lambda: (tmp_path / "started").exists(), what="job started")
    assert cli("cancel", str(i)).stdout == f"cancelled job {i} (stopped its processes)\n"
    assert proc.wait(timeout=10) == 0  # idle: no back-off pending, nothing to retry
    record = job(i)
    assert (record["state"], record["attempt"], record["error"], record["waiting_for"]) == (
        "cancelled", 1, "cancelled", None)


def test_retry_command_queues_a_failed_job_as_a_new_attempt(workers, tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    i = submit("sh", "-c", f'echo "attempt $JOBCTL_ATTEMPT"; [ -e {flag} ]')
    finish(workers, i)
    assert (job(i)["state"], job(i)["attempt"], job(i)["error"]) == ("failed", 1, "exit code 1")
    flag.touch()
    assert cli("retry", str(i)).stdout == f"job {i} queued\n"
    record = job(i)
    assert (record["state"], record["attempt"], record["error"], record["exit_code"]) == ("queued", 1, None, None)
    finish(workers, i)
    record = job(i)
    assert (record["id"], record["state"], record["attempt"], record["exit_code"]) == (i, "completed", 2, 0)
    jd = Path(record["job_dir"])
    assert ((jd / "stdout.1.log").read_text(), (jd / "stdout.log").read_text()) == ("attempt 1\n", "attempt 2\n")
    proc = cli("retry", str(i), ok=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        FAILED, "", f"jobctl: error: only failed or cancelled jobs can be retried: {i} (completed)\n")
    assert [(r["id"], r["state"], r["attempt"]) for r in jobs()] == [(i, "completed", 2)]


def test_retry_command_queues_a_cancelled_job_again() -> None:
    i = submit("true", opts=("--delay", "1h"))
    cli("cancel", str(i))
    assert cli("retry", str(i)).stdout == f"job {i} queued\n"  # the delay is not applied again
    assert (job(i)["state"], job(i)["error"], job(i)["attempt"]) == ("queued", None, 0)
    proc = cli("retry", str(i), "99", ok=False)
    assert (proc.returncode, proc.stderr) == (FAILED, "jobctl: error: no job 99\n")


def test_an_attempt_handed_back_to_the_queue_keeps_the_earlier_attempts_logs(workers, tmp_path: Path) -> None:
    mark = tmp_path / "second"
    script = (f'echo "attempt $JOBCTL_ATTEMPT"; [ "$JOBCTL_ATTEMPT" = 1 ] && exit 1; '
              f"[ -e {mark} ] && exit 0; touch {mark}; exec sleep 300")
    i = submit("sh", "-c", script, opts=("--retries", "1", "--retry-delay", "0.1"))
    proc = workers.start("--concurrency", "1")
    wait_until(mark.exists, what="attempt 2 started")
    proc.send_signal(signal.SIGINT)
    wait_until(lambda: b"signal again" in stderr_so_far(proc), what="first signal acknowledged")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 0
    assert (job(i)["state"], job(i)["attempt"]) == ("queued", 1)  # the stopped run is not counted
    finish(workers, i)
    record = job(i)
    assert (record["state"], record["attempt"]) == ("completed", 2)
    jd = Path(record["job_dir"])
    assert (jd / "stdout.log").read_text() == "attempt 2\n"
    assert (jd / "stdout.1.log").read_text() == "attempt 1\n"


# --- delays, --at, holds ---------------------------------------------------------------------


def test_delay_does_not_start_early_and_does_start(workers, tmp_path: Path) -> None:
    i = submit("sh", "-c", stamp(tmp_path / "start"), opts=("--delay", "2"))
    record = job(i)
    assert (record["state"], record["waiting_for"]) == ("waiting", f"until {record['not_before']}")
    assert ts(record["not_before"]) - ts(record["created_at"]) == pytest.approx(2, abs=0.05)
    workers.start("--exit-when-idle")
    record = finished(i, timeout=10)
    assert record["state"] == "completed"
    created = ts(record["created_at"])
    # 2 s from the moment `submit` read the clock, a few ms before it stored created_at
    assert 2 - 0.05 <= ts(record["started_at"]) - created < 2 + 1
    assert 2 - 0.05 <= read_time(tmp_path / "start") - created


def test_at_accepts_hh_mm_and_iso_and_refuses_a_bad_time(workers) -> None:
    target = (datetime.now().astimezone() + timedelta(minutes=2)).replace(second=0, microsecond=0)
    later = submit("true", opts=("--at", target.strftime("%H:%M")))
    record = job(later)
    assert record["state"] == "waiting" and ts(record["not_before"]) == target.timestamp()
    assert record["waiting_for"] == f"until {record['not_before']}"
    iso_later = submit("true", opts=("--at", "2030-01-02T03:04:05Z"))
    assert job(iso_later)["waiting_for"] == "until 2030-01-02T03:04:05.000Z"
    past = submit("true", opts=("--at", "2020-01-01T00:00:00Z"))
    assert (job(past)["state"], job(past)["waiting_for"]) == ("queued", None)
    for bad in ("25:00", "tomorrow", "2026-13-01T00:00"):
        proc = cli("submit", "--at", bad, "--", "true", ok=False)
        assert proc.returncode == USAGE and proc.stdout == ""
        assert proc.stderr.startswith(f"jobctl: error: invalid time '{bad}'") and proc.stderr.count("\n") == 1
    assert [r["id"] for r in jobs()] == [later, iso_later, past]
    workers.start()
    assert finished(past)["state"] == "completed"
    assert job(later)["state"] == job(iso_later)["state"] == "waiting"


def test_hold_waits_for_release_while_other_jobs_run(workers, tmp_path: Path) -> None:
    held = submit("sh", "-c", f"touch {tmp_path}/held.ran", opts=("--hold",))
    other = submit("true")
    workers.start("--concurrency", "2")
    assert finished(other)["state"] == "completed"
    time.sleep(0.3)  # a window in which the held job must not start
    record = job(held)
    assert (record["state"], record["waiting_for"], record["held"]) == ("waiting", "held", True)
    assert not (tmp_path / "held.ran").exists()
    assert cli("release", str(held)).stdout == f"released job {held}\n"
    assert finished(held)["state"] == "completed"
    assert (tmp_path / "held.ran").exists()
    proc = cli("release", str(held), ok=False)
    assert (proc.returncode, proc.stderr) == (FAILED, f"jobctl: error: not held: {held} (completed)\n")


def test_release_of_a_job_that_is_not_held_fails() -> None:
    i = submit("true")
    proc = cli("release", str(i), ok=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (FAILED, "", f"jobctl: error: not held: {i} (queued)\n")
    assert cli("release", "99", ok=False).returncode == FAILED


def test_a_held_job_with_a_dependency_is_held_first_then_waits_for_it() -> None:
    a = submit("true")
    b = submit("true", opts=("--hold", "--after", str(a)))
    assert job(b)["waiting_for"] == "held"
    assert cli("release", str(b)).stdout == f"released job {b} (still waiting: dependency {a})\n"
    assert (job(b)["state"], job(b)["waiting_for"]) == ("waiting", f"dependency {a}")


# --- unique keys -----------------------------------------------------------------------------


def test_unique_key_adds_one_job_until_it_finished(workers, tmp_path: Path) -> None:
    go = tmp_path / "go"
    command = ("submit", "--unique", "nightly", "--", "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done")
    first = cli(*command).stdout
    assert cli(*command).stdout == first  # queued
    i = int(first)
    workers.start("--exit-when-idle")
    state_is(i, "running")
    assert cli(*command).stdout == first  # running
    assert len(jobs()) == 1
    go.touch()
    assert finished(i)["state"] == "completed"
    again = cli(*command).stdout
    assert int(again) == i + 1
    assert [(r["id"], r["state"]) for r in jobs()] == [(i, "completed"), (i + 1, "queued")]
    assert cli("submit", "--unique", "other", "--", "true").stdout == f"{i + 2}\n"


# --- queues and pause ------------------------------------------------------------------------


def test_queue_concurrency_is_never_exceeded_by_two_workers(workers, tmp_path: Path) -> None:
    assert cli("config", "set", "queues.one.concurrency", "1").returncode == 0
    names = [str(n) for n in range(4)]
    ids = [submit("sh", "-c", span_job(tmp_path, n), opts=("--queue", "one")) for n in names]
    # two jobs of another queue that only complete if they run at once: the limit is per queue
    free = [submit("sh", "-c", f"touch {tmp_path}/free.{n}; while [ ! -e {tmp_path}/free.{1 - n} ]; do sleep 0.02; done",
                   opts=("--queue", "two")) for n in (0, 1)]
    workers.start("--concurrency", "2")  # both stay up and compete for every job
    workers.start("--concurrency", "2")
    for i in ids + free:
        assert finished(i)["state"] == "completed"
    runs = sorted(spans(tmp_path, names).values())
    for before, after in zip(runs, runs[1:], strict=False):
        assert after[0] >= before[1], runs


def test_a_paused_queue_starts_nothing_until_resumed(workers, tmp_path: Path) -> None:
    assert cli("pause", "one").stdout == "paused queue one\n"
    paused = submit("sh", "-c", f"touch {tmp_path}/one.ran", opts=("--queue", "one"))
    other = submit("true", opts=("--queue", "two"))
    workers.start("--concurrency", "2")
    assert finished(other)["state"] == "completed"
    time.sleep(0.3)  # a window in which the paused queue's job must not start
    assert job(paused)["state"] == "queued" and not (tmp_path / "one.ran").exists()
    assert cli("resume", "one").stdout == "resumed queue one\n"
    assert finished(paused)["state"] == "completed"


def test_pause_all_lets_running_jobs_finish_and_starts_none(workers, tmp_path: Path) -> None:
    go = tmp_path / "go"
    running = submit("sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done")
    workers.start("--concurrency", "2")
    state_is(running, "running")
    assert cli("pause").stdout == "paused all queues\n"
    a = submit("true")
    b = submit("true", opts=("--queue", "other"))
    go.touch()
    assert finished(running)["state"] == "completed"
    time.sleep(0.3)  # a window in which nothing may start
    assert (job(a)["state"], job(b)["state"]) == ("queued", "queued")
    assert cli("resume").stdout == "resumed all queues\n"
    assert finished(a)["state"] == finished(b)["state"] == "completed"


def test_priorities_order_jobs_across_queues_of_a_worker(workers, tmp_path: Path) -> None:
    order = tmp_path / "order"
    plan = [("a-low", "a", "low"), ("b-norm", "b", "normal"), ("a-high", "a", "high"), ("c-crit", "c", "critical"),
            ("b-crit", "b", "critical"), ("b-high", "b", "10"), ("a-norm", "a", "0")]
    ids = {name: submit("sh", "-c", f"echo {name} >> {order}", opts=("--queue", q, "--priority", p))
           for name, q, p in plan}
    proc = workers.start("--concurrency", "1", "--queue", "a", "--queue", "b", "--exit-when-idle")
    assert proc.wait(timeout=20) == 0
    assert order.read_text().split() == ["b-crit", "a-high", "b-high", "b-norm", "a-norm", "a-low"]
    assert job(ids["c-crit"])["state"] == "queued"  # not a queue this worker serves


# --- resources -------------------------------------------------------------------------------


def test_a_job_with_cpus_2_runs_alone_on_two_slots(workers, tmp_path: Path) -> None:
    names = ["s1", "big", "s2", "s3"]
    ids = [submit("sh", "-c", span_job(tmp_path, n, 0.3), opts=("--cpus", "2") if n == "big" else ()) for n in names]
    finish(workers, *ids, concurrency="2")
    runs = spans(tmp_path, names)
    assert not any(overlap(runs["big"], runs[n]) for n in ("s1", "s2", "s3")), runs
    assert runs["big"][0] >= runs["s1"][1]  # it waited for s1 rather than being overtaken
    assert overlap(runs["s2"], runs["s3"])  # two slots: the small ones after it share them


def test_gpu_ids_are_never_shared_and_really_used_in_parallel(workers, tmp_path: Path) -> None:
    # Pairs (0,1) and (2,3) wait for each other: they complete only if two run at once.
    names = ["0", "1", "2", "3"]
    ids = []
    for n in names:
        partner = {"0": "1", "1": "0", "2": "3", "3": "2"}[n]
        script = (f"echo $CUDA_VISIBLE_DEVICES > {tmp_path}/dev.{n}; {stamp(tmp_path / f'start.{n}')}; "
                  f"while [ ! -e {tmp_path}/start.{partner} ]; do sleep 0.02; done; "
                  f"sleep 0.2; {stamp(tmp_path / f'end.{n}')}")
        ids.append(submit("sh", "-c", script, opts=("--gpus", "1")))
    workers.start("--gpus", "0,1", "--concurrency", "4", "--exit-when-idle")
    for i in ids:
        assert finished(i)["state"] == "completed"
    runs = spans(tmp_path, names)
    devs = {n: (tmp_path / f"dev.{n}").read_text().strip() for n in names}
    assert set(devs.values()) <= {"0", "1"}
    for n, i in zip(names, ids, strict=True):
        assert job(i)["gpu_ids"] == [int(devs[n])]
    for n in names:
        assert sum(1 for s, e in runs.values() if s <= runs[n][0] < e) <= 2, runs  # at most two at once
        for m in names:
            if m != n and overlap(runs[n], runs[m]):
                assert devs[n] != devs[m], (n, m, devs)


def test_a_job_asking_for_two_gpus_gets_both(workers, tmp_path: Path) -> None:
    i = submit("sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"', opts=("--gpus", "2"))
    workers.start("--gpus", "0,1", "--exit-when-idle")
    record = finished(i)
    assert (record["state"], record["gpu_ids"]) == ("completed", [0, 1])
    assert cli("logs", str(i)).stdout == "0,1\n"


def test_memory_limit_kills_a_job_that_allocates_past_it(workers) -> None:
    py = sys.executable
    over = submit(py, "-c", "b = bytearray(300*1024*1024); import time; time.sleep(5)", opts=("--mem", "100M"))
    under = submit(py, "-c", "b = bytearray(20*1024*1024); import time; time.sleep(0.5)", opts=("--mem", "100M"))
    holds = submit(py, "-c", "b = bytearray(100*1024*1024); import time; time.sleep(1.6)")
    workers.start("--concurrency", "3", "--exit-when-idle")
    record = finished(over)
    assert (record["state"], record["error"], record["mem_bytes"]) == (
        "failed", "memory limit exceeded (100.0 MiB)", 100 * 1024 * 1024)
    assert record["usage"]["wall_s"] < 4  # stopped, not left to sleep its 5 s
    assert cli("wait", str(over), ok=False).returncode == 125
    assert (finished(under)["state"], job(under)["error"]) == ("completed", None)
    record = finished(holds)
    assert record["state"] == "completed"
    assert 80 * 1024 <= record["usage"]["max_rss_kb"] <= 200 * 1024, record["usage"]


def test_a_job_no_worker_can_ever_fit_says_so_and_runs_when_one_can(workers) -> None:
    too_big = submit("true", opts=("--cpus", "3"))
    no_gpu = submit("true", opts=("--gpus", "1"))
    workers.start("--concurrency", "2")
    wait_until(lambda: job(too_big)["waiting_for"] == "needs 3 slots; the largest worker has 2",
               what=f"the worker to note that job {too_big} is too big")
    wait_until(lambda: job(no_gpu)["waiting_for"] == "needs 1 GPU; the largest worker has 0",
               what=f"the worker to note that job {no_gpu} needs a GPU")
    assert job(too_big)["state"] == job(no_gpu)["state"] == "queued"
    workers.start("--concurrency", "3", "--gpus", "0")
    assert (finished(too_big)["state"], job(too_big)["waiting_for"]) == ("completed", None)
    assert (finished(no_gpu)["state"], job(no_gpu)["gpu_ids"]) == ("completed", [0])


# --- a worker waiting for a timed job ------------------------------------------------------


def test_a_delayed_job_waiting_for_a_dependency_does_not_spin_the_worker(workers, tmp_path: Path) -> None:
    go = tmp_path / "go"
    a = submit("sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done")
    b = submit("true", opts=("--after", str(a), "--delay", "0.1"))
    proc = workers.start("--concurrency", "2")
    state_is(a, "running")
    time.sleep(0.3)  # b's delay has run out; it still waits for a
    assert job(b)["waiting_for"] == f"dependency {a}"
    worker = psutil.Process(proc.pid)
    before = sum(worker.cpu_times()[:2])
    time.sleep(1.0)  # a window in which an idle worker uses (almost) no CPU
    used = sum(worker.cpu_times()[:2]) - before
    go.touch()
    assert finished(b)["state"] == "completed"
    assert used < 0.2, f"the worker used {used:.2f} s of CPU in 1 s while waiting"


def test_a_job_without_gpus_sees_none_on_a_gpu_worker(workers, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    i = int(cli("submit", "--", "sh", "-c", f'echo "[${{CUDA_VISIBLE_DEVICES-unset}}]" > {seen}',
                env={"CUDA_VISIBLE_DEVICES": "0,1"}).stdout)  # even if the submitter could see some
    workers.start("--gpus", "0,1", "--exit-when-idle").wait(timeout=30)
    assert job(i)["state"] == "completed"
    assert seen.read_text() == "[]\n"
