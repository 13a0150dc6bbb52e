"""What a worker runs besides jobs: the hooks after a job finishes, and the periodic cleanup.

Each is a plain child process in a session of its own, started and never waited for in a
blocking call: the worker watches it through a pidfd in its selectors loop (like a
supervisor), reaps it when it exits, and kills a hook's whole process group once it passes
`hooks.timeout`. None of them can change a job's state: a failed hook is logged and added
to the job's history, nothing more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from jobctl.model import Job, format_size
from jobctl.supervisor import job_variables

HOOKS_LOG = "hooks.log"
CLEANUP = "cleanup"
SHOWN_IDS = 10


@dataclass
class Child:
    """One hook run (`what` is the hook's name) or one cleanup run (`what` is CLEANUP)."""

    proc: subprocess.Popen[bytes]
    pidfd: int
    what: str
    job_id: int | None = None
    deadline: float | None = None
    """time.monotonic() after which a hook is killed; None for a cleanup."""
    killed: str | None = None
    """Why the worker killed it, once it did."""
    output: IO[bytes] | None = None
    errors: IO[bytes] | None = None


def hook_env(job: Job, jd: Path, store: str) -> dict[str, str]:
    """The worker's environment, the job's own `JOBCTL_*` variables, and how it ended."""
    return {
        **os.environ,
        **job_variables(job, jd, store),
        "JOBCTL_JOB_NAME": job.name or "",
        "JOBCTL_STATE": job.state.value,
        "JOBCTL_EXIT_CODE": "" if job.exit_code is None else str(job.exit_code),
        "JOBCTL_ERROR": job.error or "",
    }


def start_hook(what: str, line: str, job: Job, jd: Path, store: str, timeout_s: float) -> Child:
    """`/bin/sh -c LINE` in the job's directory, output appended to its hooks.log.

    Raises OSError when it cannot start (the job directory is gone, no /bin/sh).
    """
    log = os.open(jd / HOOKS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", line], cwd=jd, env=hook_env(job, jd, store), stdin=subprocess.DEVNULL,
            stdout=log, stderr=log, start_new_session=True,
        )
    finally:
        os.close(log)
    return Child(proc, os.pidfd_open(proc.pid), what, job.id, time.monotonic() + timeout_s)


def start_cleanup(store: str) -> Child:
    """`python -m jobctl cleanup --json` on this store, with the thresholds of the config
    the worker's environment points to; its output goes to unnamed temporary files (not
    pipes: a long report must not fill a pipe nobody reads until the process exits)."""
    output, errors = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobctl", "cleanup", "--json"], env={**os.environ, "JOBCTL_STORE": store},
            stdin=subprocess.DEVNULL, stdout=output, stderr=errors, start_new_session=True,
        )
    except OSError:
        output.close()
        errors.close()
        raise
    return Child(proc, os.pidfd_open(proc.pid), CLEANUP, output=output, errors=errors)


def kill(child: Child, why: str) -> None:
    """SIGKILL the hook's process group (its pid is the group's id: it started a session,
    and it is not reaped yet, so the id cannot have been reused)."""
    child.killed = why
    try:
        os.killpg(child.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _status(code: int) -> str:
    return f"exit code {code}" if code >= 0 else f"killed by signal {-code}"


def hook_error(child: Child) -> str | None:
    """Why a reaped hook failed, or None if it succeeded."""
    code = child.proc.returncode
    if child.killed:
        return child.killed
    return None if code == 0 else _status(code)


def cleanup_summary(child: Child) -> str:
    """One log line for a reaped cleanup: what it removed, or why it failed."""
    assert child.output is not None and child.errors is not None
    with child.output, child.errors:
        child.output.seek(0)
        child.errors.seek(0)
        out, err = child.output.read(), child.errors.read()
    code = child.proc.returncode
    if code == 0:
        try:
            report = json.loads(out)
            ids = [r["id"] for r in report["removed"]]
            leftovers = len(report["leftover_dirs"])
            freed = int(report["bytes_freed"])
        except (ValueError, KeyError, TypeError):
            return "cleanup done (its report was unreadable)"
        shown = ", ".join(map(str, ids[:SHOWN_IDS])) + (", …" if len(ids) > SHOWN_IDS else "")
        which = f" ({shown})" if ids else ""
        extra = f" and {leftovers} leftover director{'y' if leftovers == 1 else 'ies'}" if leftovers else ""
        return f"cleanup removed {len(ids)} job(s){which}{extra}, {format_size(freed)}"
    lines = [x for x in err.decode(errors="replace").splitlines() if x.strip()]
    why = lines[-1].removeprefix("jobctl: error: ") if lines else _status(code)
    return f"cleanup failed: {why}"
