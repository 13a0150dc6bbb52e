"""Durable, private file writes.

`atomic_write` survives a power cut: the data is in a temp file in the same directory,
fsync'ed, renamed over the target, and the directory is fsync'ed so the rename itself is
durable. A failed write or fsync raises (never retried: after a failed fsync the page
cache cannot be trusted) and leaves the target as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from jobctl.errors import StoreError


@cache
def _sha256() -> Callable[[bytes], Any]:
    """The interpreter's built-in SHA-256 when it has one: `hashlib` initialises OpenSSL on
    import, about 2 ms on every command's start. Looked up once (a failed import is not
    cached by Python, and each retry searches sys.path)."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]  # CPython 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found]  # CPython 3.12 and later
        except ImportError:
            from hashlib import sha256
    return sha256  # type: ignore[no-any-return]


def sha256_hex(data: bytes) -> str:
    digest: str = _sha256()(data).hexdigest()
    return digest


def env_ref(env: dict[str, str]) -> tuple[str, bytes]:
    """A captured environment's content address (its reference in a job record) and its
    canonical JSON: the same environment always gives the same pair, in every store."""
    data = json.dumps(env, sort_keys=True, separators=(",", ":")).encode()
    return sha256_hex(data)[:32], data


def hostname() -> str:
    """This host's name, as socket.gethostname() gives it, without importing socket."""
    return os.uname().nodename

FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise _failed(path, e) from e


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _failed(path: Path, e: OSError) -> StoreError:
    return StoreError(f"cannot write {path}: {e.strerror or e}")


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Raises StoreError naming `path` when a write, fsync or rename fails; never retries."""
    try:
        _atomic_write(path, data, durable)
    except OSError as e:
        raise _failed(path, e) from e


def _atomic_write(path: Path, data: bytes, durable: bool) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(path.parent)


def append_durable(path: Path, data: bytes) -> None:
    """Append `data` and fsync. A crash may leave a torn tail, which readers recover."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise _failed(path, e) from e


def private_dir(path: Path) -> None:
    """Create `path` (and parents) 0700 whatever the umask; tighten an existing one we own."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        os.chmod(path, DIR_MODE)


NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "ceph", "glusterfs",
    "fuse.glusterfs", "lustre", "gpfs", "fuse.s3fs", "fuse.rclone", "davfs", "fuse.davfs2",
})


def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the filesystem holding `path`, from /proc/mounts (Linux); None elsewhere."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def detach(keep: Sequence[int], limit: int | None = None) -> None:
    """For a forked child that lives on its own: stdin, stdout and stderr on /dev/null (not
    the worker's terminal or pipes, which a long job must not hold open), and every other
    descriptor closed but `keep` (the parent's lock files, FIFOs, sockets and pidfds are not
    the child's). `limit`: no descriptor to close is at or above it (spares listing them)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, max(low, limit or max_fd()))


def max_fd() -> int:
    try:
        return max(int(n) for n in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")
