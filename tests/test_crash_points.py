"""Crash consistency: the N-th write, fsync or rename of a command fails or kills the process,
for every N. Afterwards the store loads and holds exactly the state before or the state after."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobctl.store.jsonfile import JsonStore
from tests.helpers import run, submit

# Runs jobctl with os.write/os.fsync/os.replace/os.rename counted; the N-th call fails with
# EIO ("fail") or ends the process on the spot ("exit"), as a crash or a power cut would.
INJECT = r"""
import errno, os, sys
mode, n, *args = sys.argv[1:]
n = int(n)
calls = 0

def wrap(name):
    real = getattr(os, name)
    def inner(*a, **k):
        global calls
        calls += 1
        if calls == n and mode == "exit":
            os._exit(99)
        if calls == n and mode == "fail":
            raise OSError(errno.EIO, "Input/output error")
        return real(*a, **k)
    setattr(os, name, inner)

for name in ("write", "fsync", "replace", "rename"):
    wrap(name)
if mode == "count":  # jobctl leaves through os._exit (no atexit): report on the way out
    real_exit = os._exit

    def counted_exit(code):
        sys.stderr.write(f"CALLS {calls}\n")
        sys.stderr.flush()
        real_exit(code)

    os._exit = counted_exit
sys.argv = ["jobctl", *args]
from jobctl.cli import main
main()
"""


def state(store: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    return [(j.id, j.state.value, j.command) for j in JsonStore(store).query()]


def inject(store: Path, mode: str, n: int, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", INJECT, mode, str(n), *args], capture_output=True, text=True, timeout=60,
        env={**__import__("os").environ, "JOBCTL_STORE": str(store)},
    )


@pytest.mark.parametrize("args", [["submit", "--", "echo", "new"], ["cancel", "2"]], ids=["submit", "cancel"])
def test_every_crash_point_leaves_the_state_before_or_after(jobctl_env: Path, tmp_path: Path, args: list[str]) -> None:
    submit("true")
    submit("sleep", "1")
    run("cancel", "1")
    before = state(jobctl_env)

    reference = tmp_path / "reference"
    shutil.copytree(jobctl_env, reference)
    counted = inject(reference, "count", 0, args)
    assert counted.returncode == 0, counted.stderr
    calls = int(counted.stderr.rsplit("CALLS ", 1)[1])
    after = state(reference)
    assert after != before and calls >= 4  # temp write, fsync, rename, directory fsync at least

    for mode in ("fail", "exit"):
        seen = set()
        for n in range(1, calls + 1):
            copy = tmp_path / f"{mode}-{n}"
            shutil.copytree(jobctl_env, copy)
            proc = inject(copy, mode, n, args)
            now = state(copy)  # loads: nothing damaged
            assert now in (before, after), (mode, n, proc.stderr)
            seen.add("before" if now == before else "after")
            if mode == "fail" and proc.returncode == 0:
                # only the best-effort audit trail, written after the commit, may fail quietly
                assert now == after and proc.stderr == "", (n, proc.stderr)
            elif mode == "fail":
                assert proc.returncode == 1, (n, proc.stderr)
                [line] = proc.stderr.splitlines()
                assert line.startswith("jobctl: error: cannot write ") and line.endswith(": Input/output error"), line
            else:
                assert proc.returncode == 99
            # whatever happened, the store still takes changes
            JsonStore(copy).submit([], at=0.0)
        assert seen == {"before", "after"}, mode  # crash points on both sides of the commit
