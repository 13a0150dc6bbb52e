"""A small process of the worker's that forks the supervisors, so the worker never forks.

Forking the worker itself cost more than the fork: for as long as a supervisor shared the
worker's pages, every page the worker wrote to (Python writes reference counts on every
object it reads) was copied first, some 700 page faults per job, and the worker is the one
process every job waits for. The launcher is forked once, when the worker starts, before
the worker reads the store; it touches almost nothing afterwards, so its forks stay cheap,
and they happen on another core.

The worker sends a `supervisor.Launch` (pickled, length-prefixed) over a socket pair; the
launcher calls `supervisor.start` (which takes the job directory's life lock and forks) and
answers with the supervisor's pid and a pidfd for it (SCM_RIGHTS), opened before the
launcher could reap it, so the worker never waits on a recycled pid. Failures come back as
the exception's text. The launcher reaps its children as they exit (SIGCHLD wakes it) and
leaves when the worker closes the socket, or dies: supervisors are sessions of their own and
carry on, exactly as when the worker forked them.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import struct

from jobctl import fsutil, supervisor
from jobctl.store import wake

_LEN = struct.Struct("!I")
_PID = struct.Struct("!q")


class LauncherGone(Exception):
    """The launcher process is not there to answer (it died, or was never started)."""


class Launcher:
    def __init__(self) -> None:
        supervisor.prepare()  # here, before the fork: neither the launcher nor a supervisor repeats it
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.set_inheritable(False)
        theirs.set_inheritable(False)
        pid = os.fork()
        if pid == 0:  # the launcher
            code = 0
            try:
                ours.close()
                _serve(theirs)
            except BaseException:
                code = 70
            finally:
                os._exit(code)
        theirs.close()
        self.pid = pid
        self.sock = ours

    def start(self, launch: supervisor.Launch) -> tuple[int, int]:
        """Fork the supervisor of `launch` in the launcher: (its pid, a pidfd for it)."""
        data = pickle.dumps(launch, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.sock.sendall(_LEN.pack(len(data)) + data)
            head, fds, _, _ = socket.recv_fds(self.sock, _PID.size, 1, socket.MSG_CMSG_CLOEXEC)
        except OSError as e:
            raise LauncherGone(f"the launcher (pid {self.pid}) is gone: {e}") from None
        if len(head) < _PID.size:
            for fd in fds:
                os.close(fd)
            raise LauncherGone(f"the launcher (pid {self.pid}) is gone")
        (pid,) = _PID.unpack(head)
        if pid < 0:  # an error: its text follows
            raise OSError(_recv_exact(self.sock, -pid).decode(errors="replace"))
        return pid, fds[0]

    def close(self) -> None:
        """Let the launcher go (it exits on end-of-file) and reap it."""
        self.sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _serve(sock: socket.socket) -> None:
    # Ctrl-C reaches the whole foreground process group; the worker decides what it means.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # Nothing of the worker's: not its store lock, FIFO, database connection or terminal.
    keep = [sock.fileno(), wake_r, wake_w]
    fsutil.detach(keep)
    fd_limit = max(keep) + 1  # nothing of ours above it but a life lock: spares listing them
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if wake_r in ready:
            wake.drain(wake_r)
            supervisor.reap_exited()
        if sock.fileno() in ready:
            head = _recv_exact(sock, _LEN.size)
            if not head:
                return  # the worker is gone
            launch = pickle.loads(_recv_exact(sock, _LEN.unpack(head)[0]))
            try:
                pid = supervisor.start(launch, fd_limit)
                pidfd = os.pidfd_open(pid)  # not reaped yet: this process has not waited
            except Exception as e:
                text = f"cannot start the supervisor of job {launch.job.id}: {e}".encode()
                sock.sendall(_PID.pack(-len(text)) + text)
                continue
            socket.send_fds(sock, [_PID.pack(pid)], [pidfd])
            os.close(pidfd)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            return b""
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
