"""Helpers shared by the benchmark scripts in bench/ (not a test module, not part of jobctl).

Every script runs with the interpreter that runs it (`sys.executable`, the venv's python) and
the `jobctl` console script installed beside it, against a store in a fresh temporary
directory (JOBCTL_STORE and JOBCTL_CONFIG point there, never at the user's own store).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

PYTHON = Path(sys.executable)
JOBCTL = PYTHON.parent / "jobctl"


class Sandbox:
    """A temporary directory holding the stores and the config; removed on exit.

    Children started through `run`/`start` are remembered by pid; any still alive when the
    sandbox closes is killed (its own process group, by pid; never by name).
    """

    def __init__(self, prefix: str, *, inherit_python_env: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.config = self.dir / "config.toml"  # never created: jobctl's defaults apply
        self.workdir = self.dir / "cwd"
        self.workdir.mkdir()
        self.inherit_python_env = inherit_python_env
        self.pycache = self.dir / "pycache"
        self.dropped = sorted(k for k in os.environ if k.startswith("PYTHON"))
        self._children: list[subprocess.Popen[bytes]] = []

    def env(self, store: Path) -> dict[str, str]:
        env = dict(os.environ)
        for k in ("JOBCTL_JOB_ID", "JOBCTL_ATTEMPT", "JOBCTL_OUTPUT_DIR", "JOBCTL_DEBUG"):
            env.pop(k, None)
        env["JOBCTL_STORE"] = str(store)
        env["JOBCTL_CONFIG"] = str(self.config)
        if not self.inherit_python_env:
            # A default Python, as a user's shell has it, for jobctl and the reference alike:
            # no PYTHON* variable from this shell (PYTHONUNBUFFERED=1 makes every small write to
            # stdout a system call; PYTHONDONTWRITEBYTECODE=1 with a source tree or package that
            # has no __pycache__ recompiles those modules on every run), and bytecode cached for
            # every module, as after an install. The cache lives in the sandbox, so nothing
            # outside it is written.
            for k in self.dropped:
                del env[k]
            env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        return env

    def describe_env(self) -> str:
        if self.inherit_python_env:
            kept = ", ".join(f"{k}={os.environ[k]}" for k in self.dropped) or "none"
            return f"python env: inherited from this shell (PYTHON* variables: {kept})"
        return (
            f"python env: default (unset for the children: {', '.join(self.dropped) or 'nothing'}); "
            f"bytecode cached in the sandbox (PYTHONPYCACHEPREFIX), filled by the warm-up runs"
        )

    def start(
        self, argv: Sequence[str], env: dict[str, str], stdout: int | object = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=stdout,  # type: ignore[arg-type]
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._children.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        env: dict[str, str],
        *,
        stdout: int | object = subprocess.DEVNULL,
        timeout: float | None = None,
    ) -> float:
        """Wall time of one whole process (spawn to exit), in seconds; raises on a non-zero exit.

        On timeout the child's process group is killed (by its pid) and TimeoutError raised.
        """
        t0 = time.perf_counter()
        proc = self.start(argv, env, stdout)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise TimeoutError(
                f"{' '.join(map(str, argv))} still running after {timeout:g}s; killed pid {proc.pid}"
            ) from None
        elapsed = time.perf_counter() - t0
        self._children.remove(proc)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(map(str, argv))} exited {proc.returncode}: {err.decode(errors='replace').strip()}"
            )
        return elapsed

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the group led by this pid (start_new_session)
            except ProcessLookupError:
                pass
            proc.wait()
        if proc in self._children:
            self._children.remove(proc)

    def close(self) -> None:
        for proc in list(self._children):
            self.kill(proc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def p90(xs: Sequence[float]) -> float:
    """Nearest-rank 90th percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    return "\n".join([fmt(header), line, *(fmt(r) for r in rows)])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def machine() -> str:
    import platform

    return (
        f"{platform.node()}: {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()} ({PYTHON})"
    )


def load() -> str:
    """The 1/5/15-minute load averages: other work on a 2-core machine shows up here."""
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def preamble(box: Sandbox, *extra: str) -> None:
    """The lines every script starts with: the machine, the jobctl it times, anything the
    script adds (`extra`), the load average before, and the children's Python environment."""
    print(f"machine: {machine()}")
    print(f"jobctl:  {JOBCTL}")
    for line in extra:
        print(line)
    print(f"before:  {load()}")
    print(box.describe_env())


def report(header: Sequence[str], rows: Sequence[Sequence[str]], ok: bool) -> int:
    """The closing table and verdict; the script's exit status (0: every target met)."""
    print()
    print(table(header, rows))
    print()
    print("all targets met" if ok else "some targets FAILED")
    return 0 if ok else 1


def arguments(description: str, quick_help: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; a script adds its own before parse_args()."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument(
        "--inherit-python-env",
        action="store_true",
        help="run the children with this shell's PYTHON* variables (PYTHONUNBUFFERED, "
        "PYTHONDONTWRITEBYTECODE, ...) instead of a default Python with a bytecode cache in the sandbox",
    )
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows through `| tee`
    return ap
