"""A throwaway PostgreSQL 15 server for the tests: initdb and pg_ctl in a temp dir, on
127.0.0.1 and a free port, stopped (immediate mode) and removed at the end of the session.

initdb refuses to run as root, so as root the server runs as the `postgres` user (runuser).
Without the binaries the PostgreSQL tests skip, unless JOBCTL_REQUIRE_POSTGRES is set (CI),
which turns a missing server into a failure.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_BIN = Path(os.environ.get("JOBCTL_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(argv: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *argv] if owner else argv


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a URL of an empty database `jobctl` on a server of its own."""
    if not (PG_BIN / "initdb").exists():
        raise FileNotFoundError(f"PostgreSQL binaries not found in {PG_BIN}")
    owner = "postgres" if os.geteuid() == 0 else None
    # The server's user must be able to reach its directory: /tmp may be root's alone.
    parent = next((d for d in (os.environ.get("JOBCTL_PG_TMP"), tempfile.gettempdir(), "/var/tmp", "/dev/shm")
                   if d and (not owner or os.stat(d).st_mode & 0o001)), None)
    base = Path(tempfile.mkdtemp(prefix="jobctl-pg-", dir=parent))
    if owner:
        user = pwd.getpwnam(owner)
        os.chown(base, user.pw_uid, user.pw_gid)
    data, port = base / "data", _free_port()
    run = lambda *argv: subprocess.run(_as_owner([str(a) for a in argv], owner), check=True,  # noqa: E731
                                       capture_output=True, text=True, timeout=120)
    try:
        run(PG_BIN / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        run(PG_BIN / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "-t", "60", "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", "start")
        try:
            run(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "jobctl")
            yield f"postgresql://postgres@127.0.0.1:{port}/jobctl"
        finally:
            run(PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)
