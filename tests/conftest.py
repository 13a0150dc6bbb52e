from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.helpers import JOBCTL


@pytest.fixture(autouse=True)
def jobctl_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own store and config file."""
    store = tmp_path / "store"
    monkeypatch.setenv("JOBCTL_STORE", str(store))
    monkeypatch.setenv("JOBCTL_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.delenv("JOBCTL_DEBUG", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    return store


def _processes_of(store: str) -> list[psutil.Process]:
    """Every process (worker, supervisor, job) started for this test's store."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("JOBCTL_STORE") == store:
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return [p for p in found if p.pid != os.getpid()]


class Workers:
    def __init__(self, store: Path) -> None:
        self.store = store
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [JOBCTL, "worker", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="surrogateescape",
            env={**os.environ, **env},
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for other in _processes_of(str(self.store)):
            try:
                other.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        for proc in self.procs:
            proc.communicate(timeout=10)


@pytest.fixture
def workers(jobctl_env: Path) -> Iterator[Workers]:
    """Start `jobctl worker` processes; the finalizer kills them and every process of this store."""
    w = Workers(jobctl_env)
    yield w
    w.stop_all()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server for the whole session (tests/pgserver.py)."""
    from tests.pgserver import postgres_server

    try:
        server = postgres_server()
        url = server.__enter__()
    except (FileNotFoundError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        if os.environ.get("JOBCTL_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required here (JOBCTL_REQUIRE_POSTGRES) but did not start: {detail}")
        pytest.skip(f"no PostgreSQL server: {detail}")
    try:
        yield url
    finally:
        server.__exit__(None, None, None)
