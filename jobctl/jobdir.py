"""Job directories: where they are, packaging their output as a zip, removing them.

Everything here refuses to follow symlinks: a job controls the contents of its directory and
must not be able to make jobctl read or delete anything outside it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobctl import __version__, fsutil
from jobctl.errors import JobctlError
from jobctl.model import Job, Progress, iso

if TYPE_CHECKING:
    import zipfile

# zipfile, hashlib, shutil and fnmatch are imported where used: `submit` and `status`
# import this module for `job_dir` and must not pay for packaging.
LOGS = ("stdout.log", "stderr.log")
_CHUNK = 1 << 20


def job_dir(root: Path, job_id: int) -> Path:
    return root / "jobs" / str(int(job_id))


def jobs_prefix(root: Path) -> str:
    """`<root>/jobs/`: with an id appended, `str(job_dir(root, id))`, without a Path per job."""
    return os.path.join(root / "jobs", "")


def job_dir_ids(root: Path) -> list[int]:
    """The ids of the job directories present under `<root>/jobs/` (with or without a record)."""
    try:
        return [int(e.name) for e in os.scandir(root / "jobs") if e.name.isdigit()]
    except FileNotFoundError:
        return []


def manifest(job: Job) -> dict[str, Any]:
    """What a zip says about the job that made it; never the environment."""
    return {
        "job": job.id,
        "name": job.name,
        "attempt": job.attempt,
        "command": list(job.command),
        "cwd": job.cwd,
        "state": job.state.value,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "error": job.error,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "usage": None if job.usage is None else {
            "wall_s": job.usage.wall_s, "cpu_user_s": job.usage.cpu_user_s,
            "cpu_sys_s": job.usage.cpu_sys_s, "max_rss_kb": job.usage.max_rss_kb,
        },
        "jobctl_version": __version__,
    }


def _selected(rel: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    import fnmatch

    if include and not any(fnmatch.fnmatch(rel, g) for g in include):
        return False
    return not any(fnmatch.fnmatch(rel, g) for g in exclude)


def _add_file(zf: zipfile.ZipFile, dir_fd: int, name: str, arcname: str) -> dict[str, Any] | None:
    """Stream one regular file into the zip; None if it is not a regular file (any more)."""
    import hashlib
    import zipfile

    if not _utf8(arcname):
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    with open(fd, "rb") as src:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        date_time = max((1980, 1, 1, 0, 0, 0), time.localtime(st.st_mtime)[:6])
        info = zipfile.ZipInfo(arcname, date_time=date_time)
        info.external_attr = (st.st_mode & 0o777) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        digest = hashlib.sha256()
        size = 0
        with zf.open(info, "w", force_zip64=True) as dst:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                dst.write(chunk)
                size += len(chunk)
    return {"path": arcname, "size": size, "sha256": digest.hexdigest()}


def package(
    job: Job,
    jd: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    logs: bool = False,
    dest: Path | None = None,
) -> Path:
    """Zip the job's `out/` (and logs) with a manifest.json; written to a temp file, then renamed.

    Only regular files and directories are packed; symlinks, FIFOs and devices are listed in
    the manifest as skipped, never followed or read. Memory use is bounded (files stream).
    """
    import zipfile

    dest = dest or jd / "output.zip"
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    files: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    # Errors name the destination, not the temp file, and stay OSErrors (the supervisor's
    # --zip records those as a packaging failure without failing the job).
    if dest.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(dest))
    try:
        # Created 0600 from the start: the zip holds the job's output, private like the store.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(dest)) from None
    try:
        with open(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            out = jd / "out"
            if os.path.lexists(out) and not os.path.islink(out) and out.is_dir():
                for dirpath, dirnames, filenames, dir_fd in os.fwalk(out, follow_symlinks=False):
                    rel_dir = os.path.relpath(dirpath, out)
                    for name in sorted(filenames) + [d for d in dirnames if _is_link(d, dir_fd)]:
                        rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                        if not _selected(rel, include, exclude):
                            continue
                        entry = _add_file(zf, dir_fd, name, f"out/{rel}")
                        if entry is None:
                            skipped.append({"path": _printable(f"out/{rel}"), "reason": _kind(name, dir_fd, f"out/{rel}")})
                        else:
                            files.append(entry)
            if logs:
                jd_fd = os.open(jd, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    for name in LOGS:
                        entry = _add_file(zf, jd_fd, name, f"logs/{name}")
                        if entry is not None:
                            files.append(entry)
                        elif _lexists(name, jd_fd):
                            skipped.append({"path": f"logs/{name}", "reason": _kind(name, jd_fd, name)})
                finally:
                    os.close(jd_fd)
            meta = manifest(job)
            meta["files"] = files
            meta["skipped"] = skipped
            zf.writestr("manifest.json", json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return dest


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _utf8(text: str) -> bool:
    """Zip entry names are UTF-8; a file name with undecodable bytes cannot be one."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text: str) -> str:
    return text if _utf8(text) else os.fsencode(text).decode("utf-8", "backslashreplace")


def _kind(name: str, dir_fd: int, arcname: str) -> str:
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except OSError:
        return "vanished"
    if stat.S_ISREG(mode) and not _utf8(arcname):
        return "name is not valid UTF-8"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


def size(path: Path | str) -> int:
    """Bytes used below `path`, counting symlinks as themselves (never their targets)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    return _below(os.fspath(path)) if stat.S_ISDIR(st.st_mode) else st.st_size


def _below(path: str) -> int:
    total = 0
    try:
        entries = os.scandir(path)
    except OSError:
        return 0
    with entries:
        for entry in entries:
            try:
                total += entry.stat(follow_symlinks=False).st_size
                if entry.is_dir(follow_symlinks=False):
                    total += _below(entry.path)
            except FileNotFoundError:
                pass
    return total


TRASH = ".trash"
"""`<root>/jobs/.trash/<batch>/<id>`: job directories cleanup took out of `jobs/`, being deleted."""
BACKGROUND_AT = 1000
"""From this many directories on, `discard` leaves the deleting to a background process."""


def discard(root: Path, ids: Sequence[int], *, background_at: int = BACKGROUND_AT) -> None:
    """Remove the job directories `<root>/jobs/<id>` (a symlink as itself), and whatever an
    interrupted discard left in the trash.

    The directories are renamed into a new batch in `jobs/.trash/` first (one rename each,
    however much a directory holds), so they leave `jobs/` at once. The batch is then deleted:
    by this process for fewer than `background_at` directories, else by a detached child,
    which outlives a `jobctl cleanup` (deleting costs 0.15-0.2 ms a directory here, 20 s for
    100,000). Whoever deletes a batch holds an flock on it; a batch nobody holds was left by
    a crash, and the next discard deletes it too.
    """
    import fcntl

    jobs = root / "jobs"
    trash = jobs / TRASH
    batches: list[tuple[int, str]] = []  # (locked descriptor, path)
    try:
        if ids:
            batches.append(_new_batch(trash))
            jobs_fd = os.open(jobs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for i in ids:
                    name = str(int(i))
                    try:
                        os.rename(name, name, src_dir_fd=jobs_fd, dst_dir_fd=batches[0][0])
                    except FileNotFoundError:
                        pass  # it never had a directory
            finally:
                os.close(jobs_fd)
        try:
            entries = [e.path for e in os.scandir(trash) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            entries = []
        for path in entries:
            if batches and path == batches[0][1]:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # being deleted by another process
                continue
            batches.append((fd, path))
        count = len(ids) + sum(len(os.listdir(path)) for _, path in batches[1 if ids else 0 :])
        if batches and (count < background_at or not _delete_in_background(batches, str(trash))):
            _delete(batches, str(trash), strict=True)
    finally:
        for fd, _ in batches:
            os.close(fd)


def _new_batch(trash: Path) -> tuple[int, str]:
    """A new directory in the trash, locked before another discard could take it for abandoned."""
    import fcntl

    for _ in range(100):
        os.makedirs(trash, mode=0o700, exist_ok=True)
        path = os.path.join(trash, f"{os.getpid()}-{time.time_ns()}")
        try:
            os.mkdir(path, 0o700)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, FileExistsError):
            continue  # the trash was just removed by a discard that emptied it, or a clash
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.lstat(path).st_ino == os.fstat(fd).st_ino:  # still there: nobody took it meanwhile
                return fd, path
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OSError(errno.EAGAIN, f"cannot make a directory in {trash}")


def _delete(batches: Sequence[tuple[int, str]], trash: str, *, strict: bool) -> None:
    """rmtree each batch (fd-based on Linux: never follows a symlink inside). What another
    process deleted first is no error; with `strict`, any other error is raised."""
    import shutil
    import sys

    def unless_missing(error: BaseException) -> None:
        if strict and not isinstance(error, FileNotFoundError):
            raise error

    for _, path in batches:
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=lambda _f, _p, e: unless_missing(e))
        else:
            shutil.rmtree(path, onerror=lambda _f, _p, info: unless_missing(info[1]))
    try:
        os.rmdir(trash)
    except OSError:
        pass  # not empty: another discard's batch is in it


def _delete_in_background(batches: Sequence[tuple[int, str]], trash: str) -> bool:
    """Delete the batches in a grandchild: in a session of its own, stdio on /dev/null (it
    holds no pipe or terminal of the caller), niced. It inherits the batches' locks (flock
    belongs to the open file, shared across fork). False if it could not be started."""
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid == 0:
        try:
            if os.fork() == 0:
                os.setsid()
                fsutil.detach(keep=[fd for fd, _ in batches])
                os.chdir("/")
                os.nice(10)
                _delete(batches, trash, strict=False)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return True


def log_path(root: Path, job_id: int, stream: str) -> Path:
    jd = job_dir(root, job_id)
    for path in (jd, jd / f"{stream}.log"):
        if path.is_symlink():
            raise JobctlError(f"{path} is a symlink; jobctl does not follow it")
    return jd / f"{stream}.log"


PROGRESS_FILE = "progress.json"


def write_progress(jd: Path, attempt: int, percent: float | None, message: str | None, at: float) -> float | None:
    """Record a running job's progress in its directory: atomic, no fsync, no store lock, so
    a job can report every second. Returns the percent reported before (for milestones)."""
    before = read_progress(jd, attempt)
    data = {"attempt": attempt, "percent": percent, "message": message, "at": at}
    fsutil.atomic_write(jd / PROGRESS_FILE, json.dumps(data).encode(), durable=False)
    return None if before is None else before.percent


def read_progress(jd: Path, attempt: int) -> Progress | None:
    """The progress this attempt reported last, if any."""
    try:
        data = json.loads((jd / PROGRESS_FILE).read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    if data.get("attempt") != attempt:
        return None
    return Progress(data.get("percent"), data.get("message"))
