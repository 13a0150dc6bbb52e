"""The store lock: bounded waits with a message naming the holder, never inherited by jobs."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tests.helpers import cli, job, jobs, submit, wait_until


def test_a_held_lock_fails_a_write_after_lock_timeout_naming_the_holder(jobctl_env: Path) -> None:
    submit("true")  # creates the store
    cli("config", "set", "lock_timeout", "0.3s")
    before = (jobctl_env / "state.json").read_bytes()
    fd = os.open(jobctl_env / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = cli("submit", "--", "true", ok=False)
    finally:
        os.close(fd)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"jobctl: error: store {jobctl_env} is locked by pid {os.getpid()} (")
    assert proc.stderr.endswith(" for more than 0.3s\n") and proc.stderr.count("\n") == 1
    assert (jobctl_env / "state.json").read_bytes() == before
    assert [j["id"] for j in jobs()] == [1]  # readers need no lock


def test_jobs_inherit_no_descriptor_of_jobctl(workers, jobctl_env: Path, tmp_path: Path) -> None:
    listing = tmp_path / "fds"
    i = submit("sh", "-c", f'for f in /proc/$$/fd/*; do readlink "$f" || true; done > {listing}')
    workers.start("--exit-when-idle")
    wait_until(lambda: job(i)["state"] == "completed")
    targets = set(listing.read_text().split())
    jd = jobctl_env / "jobs" / str(i)
    # stdin, stdout, stderr, and the descriptor the shell's redirection itself opened
    assert targets == {"/dev/null", str(jd / "stdout.log"), str(jd / "stderr.log"), str(listing)}


def test_the_captured_environment_is_never_shown(workers) -> None:
    i = int(cli("submit", "--env", "TOKEN=hunter2", "--", "true", env={"PASSWORD": "swordfish"}).stdout)
    workers.start("--exit-when-idle")
    wait_until(lambda: job(i)["state"] == "completed")
    shown = cli("status", str(i)).stdout + cli("status", "--json").stdout + cli("status").stdout
    assert "hunter2" not in shown and "swordfish" not in shown
