"""Job directories: where they are, packaging their output as a zip, removing them.

Everything here refuses to follow symlinks: a job controls the contents of its directory and
must not be able to make jobctl read or delete anything outside it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import stat
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jobctl import __version__
from jobctl.errors import JobctlError
from jobctl.model import Job, iso

LOGS = ("stdout.log", "stderr.log")
_CHUNK = 1 << 20


def job_dir(root: Path, job_id: int) -> Path:
    return root / "jobs" / str(int(job_id))


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
    if include and not any(fnmatch.fnmatch(rel, g) for g in include):
        return False
    return not any(fnmatch.fnmatch(rel, g) for g in exclude)


def _add_file(zf: zipfile.ZipFile, dir_fd: int, name: str, arcname: str) -> dict[str, Any] | None:
    """Stream one regular file into the zip; None if it is not a regular file (any more)."""
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
    dest = dest or jd / "output.zip"
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    files: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
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
                            skipped.append({"path": f"out/{rel}", "reason": _kind(name, dir_fd)})
                        else:
                            files.append(entry)
            if logs:
                jd_fd = os.open(jd, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    for name in LOGS:
                        entry = _add_file(zf, jd_fd, name, f"logs/{name}")
                        if entry is not None:
                            files.append(entry)
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


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _kind(name: str, dir_fd: int) -> str:
    try:
        mode = os.lstat(name, dir_fd=dir_fd).st_mode
    except OSError:
        return "vanished"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"


def size(path: Path) -> int:
    """Bytes used below `path`, counting symlinks as themselves (never their targets)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in filenames + dirnames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def remove(root: Path, job_id: int) -> None:
    """Remove `<root>/jobs/<id>`: a directory with everything in it, or a symlink as itself."""
    path = job_dir(root, job_id)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # fd-based on Linux: never follows a symlink inside
    else:
        os.unlink(path)


def log_path(root: Path, job_id: int, stream: str) -> Path:
    path = job_dir(root, job_id) / f"{stream}.log"
    if path.is_symlink():
        raise JobctlError(f"{path} is a symlink; jobctl does not follow it")
    return path
