"""Shared test helpers: run the CLI in-process or as the real installed script, and wait."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from jobctl.cli import app

JOBCTL = str(Path(sys.executable).parent / "jobctl")


def run(*args: str, ok: bool = True, input: str | None = None) -> Result:
    """Run jobctl in-process through CliRunner; fail on a non-zero exit unless ok=False."""
    result = CliRunner().invoke(app, list(args), input=input, catch_exceptions=False)
    if ok and result.exit_code != 0:
        raise AssertionError(
            f"jobctl {' '.join(args)} exited {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


def cli(*args: str, ok: bool = True, input: str | None = None, timeout: float = 60,
        env: dict[str, str] | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `jobctl` script in a real subprocess."""
    proc = subprocess.run(
        [JOBCTL, *args], input=input, capture_output=True, text=True, timeout=timeout,
        env=None if env is None else {**os.environ, **env}, cwd=cwd,
    )
    if ok and proc.returncode != 0:
        raise AssertionError(
            f"jobctl {' '.join(args)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


# submit/job/jobs run in-process (CliRunner): the same CLI against the same files, without
# a process start each. What a test is about runs as a real process (`cli`, workers).
def cli_report(*args: str) -> dict[str, Any]:
    """A command's `--json` report (stats, cleanup): exactly one JSON object on stdout, and
    nothing on stderr."""
    r = cli(*args, "--json")
    report = json.loads(r.stdout)
    assert isinstance(report, dict)
    assert r.stderr == ""
    return report  # type: ignore[no-any-return]


def swarm(workers: Any, effects: Path, *, jobs: int, worker_count: int, timeout: float) -> list[str]:
    """Queue `jobs` jobs that each append `ID.ATTEMPT` to `effects`, run `worker_count`
    workers of two slots over them until they are idle, and return what the jobs wrote."""
    lines = "".join(f"echo $JOBCTL_JOB_ID.$JOBCTL_ATTEMPT >> {effects}\n" for _ in range(jobs))
    subprocess.run([JOBCTL, "submit", "--from", "-"], input=lines, text=True, check=True, capture_output=True)
    procs = [workers.start("--concurrency", "2", "--exit-when-idle") for _ in range(worker_count)]
    for proc in procs:
        assert proc.wait(timeout=timeout) == 0
    return sorted(effects.read_text().split(), key=lambda r: int(r.split(".")[0]))


def submit(*command: str, opts: tuple[str, ...] = ()) -> int:
    return int(run("submit", *opts, "--", *command).stdout)


def job(job_id: int) -> dict[str, Any]:
    [record] = json.loads(run("status", "--json", str(job_id)).stdout)
    return record  # type: ignore[no-any-return]


def jobs() -> list[dict[str, Any]]:
    return json.loads(run("status", "--json").stdout)  # type: ignore[no-any-return]


FINISHED = {"completed", "failed", "cancelled"}


def finish(workers: Any, *ids: int, concurrency: str = "2") -> None:
    """Run every queued job with a real worker (until it is idle); these must have finished."""
    proc = workers.start("--exit-when-idle", "--concurrency", concurrency)
    wait_until(lambda: proc.poll() is not None, timeout=30, what="the worker to run the queue")
    assert proc.returncode == 0
    states = {r["id"]: r["state"] for r in jobs()}
    assert all(states[i] in FINISHED for i in ids), states


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stderr_so_far(proc: Any) -> bytes:
    """What a worker (a Popen with stderr=PIPE) printed on stderr so far, without blocking."""
    import fcntl

    fd = proc.stderr.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        chunk = b""
    proc._seen = getattr(proc, "_seen", b"") + chunk
    return proc._seen  # type: ignore[no-any-return]
