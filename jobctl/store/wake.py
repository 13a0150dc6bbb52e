"""Wake-ups for idle workers on one host: a FIFO per listening worker in `<root>/wake/`.

A listener holds its FIFO open for reading (O_RDWR, so it never sees end-of-file); a notifier
writes one byte into every FIFO it finds. A FIFO nobody holds open (its worker died) refuses
the open with ENXIO and is removed. The listener creates its FIFO under a temporary name and
opens it before renaming it into place, so a notifier never mistakes a new one for a dead one.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any


class FifoWaker:
    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(mode=0o700, exist_ok=True)
        self.path = directory / f"{name}.fifo"
        tmp = directory / f".{name}.{os.getpid()}.tmp"
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        os.mkfifo(tmp, 0o600)
        self.fd = os.open(tmp, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        os.replace(tmp, self.path)

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> None:
        drain(self.fd)

    def close(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)


def drain(fd: int) -> None:
    """Read a non-blocking pipe or FIFO empty."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def notify(directory: Path) -> None:
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return
    with entries:
        for entry in entries:
            if not entry.name.endswith(".fifo"):
                continue
            try:
                fd = os.open(entry.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    try:
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        pass
                continue
            try:
                os.write(fd, b"!")
            except BlockingIOError:
                pass  # full: the worker has wake-ups pending already
            finally:
                os.close(fd)


def drain_and_rewatch(sel: Any, waker: Any) -> None:
    """Drain `waker` and keep `sel` watching it even if draining replaced its descriptor
    (a PostgreSQL listener reconnects under a new one)."""
    import selectors

    old = waker.fileno()
    waker.drain()
    if waker.fileno() != old:
        key = sel.unregister(old)
        sel.register(waker.fileno(), selectors.EVENT_READ, key.data)
