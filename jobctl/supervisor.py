"""The small parent each job runs under, so that no worker has to be the job's parent.

The worker's launcher (jobctl/launcher.py) forks a supervisor per job (a fork, not a new
interpreter: cheap). The supervisor starts its own session, starts the job in another new
session (its process group is the job's pid), waits for it with `wait4`, and writes the
outcome to `<job dir>/result.json`. If the worker dies meanwhile, the supervisor and the job carry on, and whichever worker looks next
reads the result: a worker crash costs no work.

It is also the one place that stops a job: SIGTERM to the supervisor means "cancel", SIGUSR2
"hand back to the queue"; either way the job's process group gets SIGTERM, then SIGKILL after
the grace period, and any process left in the group is killed once the job's leader is gone.
The timeout is enforced here too, by the parent, never by a signal inside the job.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobctl import fsutil
from jobctl.model import Job, Progress, State, Usage, format_duration, format_size, now, transition
from jobctl.scheduler import retry_delay, should_retry
from jobctl.store import wake

RUN_FILE = "run.json"
RESULT_FILE = "result.json"
STOP_SIGNALS = {signal.SIGTERM: "cancel", signal.SIGUSR2: "requeue"}


@dataclass(frozen=True)
class Launch:
    job: Job
    env: dict[str, str]
    job_dir: Path
    grace_s: float
    store: str
    hide_gpus: bool = False
    """The worker hands out GPUs: a job that asked for none must not see any."""


LIFE_LOCK = "supervisor.lock"


def prepare() -> None:
    """What every supervisor needs, done once in the process that forks them (the launcher),
    not in each forked child: importing psutil and ctypes took 15 ms of a job's start (submit
    to start, SPEC < 20 ms), looking up prctl and reading the boot id most of a millisecond."""
    import psutil  # noqa: F401

    global _prctl
    if _prctl is None:
        import ctypes

        try:
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = False  # not Linux: the job's process group is all a stop reaches
    boot_id()


def start(launch: Launch, fd_limit: int | None = None) -> int:
    """Fork the supervisor of one job and return its pid. Call without holding the store lock.

    The supervisor's life lock (`<job dir>/supervisor.lock`) is taken here, before the fork,
    and only the child keeps it: from before the job can start until the supervisor has
    written result.json and exited, it is held; a worker that died before forking released it
    with its own death. So "not held" always means "no supervisor", with no race and no clock.

    The child closes every descriptor of the caller's but the life lock; `fd_limit` says that
    the caller holds none at or above it (apart from the lock), which spares listing them.
    """
    prepare()
    sys.stdout.flush()
    sys.stderr.flush()
    life = os.open(launch.job_dir / LIFE_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(life, fcntl.LOCK_EX)
    pid = os.fork()
    if pid:
        os.close(life)  # the child's copy of the open file keeps the lock
        return pid
    code = 0
    try:
        os.setsid()
        if _prctl:
            # Orphans of the job (a daemon that double-forked and left the job's session) are
            # re-parented to this supervisor instead of init, so a stop finds and kills them.
            _prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        fsutil.detach(keep=[life], limit=fd_limit)  # the life lock is ours; nothing else of the caller's
        _supervise(launch)
    except BaseException:
        code = 70
        try:
            with open(launch.job_dir / "supervisor.log", "a") as f:
                traceback.print_exc(file=f)
        except OSError:
            pass
    finally:
        os._exit(code)


PR_SET_CHILD_SUBREAPER = 36
_prctl: Any = None
"""libc's prctl (looked up by `prepare`), or False where there is none."""


def _stop_tree(pgid: int, sig: int) -> None:
    """Signal the job's process group and every process below this supervisor (including
    daemons that left the group and were re-parented here)."""
    import psutil

    _killpg(pgid, sig)
    try:
        below = psutil.Process().children(recursive=True)
    except psutil.Error:
        below = []
    for proc in below:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def _supervise(launch: Launch) -> None:
    jd = launch.job_dir
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    requested: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        requested.append(STOP_SIGNALS[signal.Signals(signum)])

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)

    (jd / "out").mkdir(mode=0o700, exist_ok=True)
    job = launch.job
    env = {**launch.env, **job_variables(job, jd, launch.store)}
    if job.gpus or launch.hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in job.gpu_ids)
    _keep_earlier_logs(jd, job.attempt)
    me = _ident(os.getpid())
    _record_run(jd, me, None, job.attempt)
    started = now()
    result: dict[str, Any] = {
        "attempt": job.attempt, "started_at": started, "exit_code": None, "signal": None,
        "error": None, "reason": None,
    }
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    with open(os.open(jd / "stdout.log", flags, 0o600), "wb") as out, open(
        os.open(jd / "stderr.log", flags, 0o600), "wb"
    ) as err:
        try:
            proc = subprocess.Popen(
                job.command, cwd=job.cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True, close_fds=True,
            )
        except OSError as e:
            result.update(_start_failure(e, job))
            proc = None
    if proc is not None:
        _record_run(jd, me, proc.pid, job.attempt)
        result.update(_watch(proc, launch, wake_r, requested))
    result["finished_at"] = now()
    from jobctl.jobdir import read_progress

    last = read_progress(jd, job.attempt)
    if last is not None:
        result["progress"] = {"percent": last.percent, "message": last.message}
    if "usage" in result:
        result["usage"]["wall_s"] = round(result["finished_at"] - started, 3)
    if job.zip and proc is not None and result["reason"] != "requeue":
        from jobctl.jobdir import package

        try:
            result["zip_path"] = str(package(outcome(job, result, result["finished_at"]), jd))
        except Exception as e:  # the job's outcome stands; the worker logs why there is no zip
            result["zip_error"] = f"packaging output.zip failed: {e}"
    fsutil.atomic_write(jd / RESULT_FILE, json.dumps(result).encode(), durable=False)


def job_variables(job: Job, jd: Path, store: str) -> dict[str, str]:
    """The `JOBCTL_*` variables a job runs with (its hooks get them too)."""
    return {
        "JOBCTL_JOB_ID": str(job.id),
        "JOBCTL_ATTEMPT": str(job.attempt),
        "JOBCTL_OUTPUT_DIR": str(jd / "out"),
        "JOBCTL_STORE": store,
    }


def never_started(job: Job, at: float) -> Job:
    """A claimed attempt whose supervisor never recorded itself (its worker died between the
    claim and the fork): the job never ran, so it goes back to the queue uncharged."""
    return transition(job, State.QUEUED, at=at, attempt=job.attempt - 1)


def lost(job: Job, at: float, max_lost: int) -> Job:
    """A running job whose processes are gone without a result (host crash, reboot, killed
    together with its worker): again if it has retries left and has not been lost `max_lost`
    times, else failed with `worker lost`."""
    count = job.lost + 1
    if count < max_lost and job.attempt <= job.max_retries:
        return transition(job, State.QUEUED, at=at, lost=count)
    return transition(job, State.FAILED, at=at, lost=count, reason="lost", error="worker lost")


def _keep_earlier_logs(jd: Path, attempt: int) -> None:
    """Attempt N writes stdout.log/stderr.log; those of attempt N-1 become stdout.N-1.log.

    If stdout.N-1.log exists already, stdout.log is from an interrupted run of attempt N
    itself (a worker handed it back uncharged): that one is replaced, the real N-1 kept.
    """
    if attempt > 1:
        for stream in ("stdout", "stderr"):
            earlier = jd / f"{stream}.{attempt - 1}.log"
            if earlier.exists():
                continue
            try:
                os.replace(jd / f"{stream}.log", earlier)
            except FileNotFoundError:
                pass


def outcome(job: Job, result: dict[str, Any] | None, at: float, *, retry_max_delay_s: float | None = None) -> Job:
    """The job's next record, from the supervisor's result.json (None: it left none).

    With `retry_max_delay_s`, a failed attempt that may be retried goes back to `waiting`
    for its back-off instead (scheduler.should_retry, scheduler.retry_delay).
    """
    if result is None:
        return transition(job, State.FAILED, at=at, reason="lost", error="supervisor died without a result")
    usage = None if result.get("usage") is None else Usage(**result["usage"])
    common: dict[str, Any] = {
        "exit_code": result["exit_code"], "signal": result["signal"], "error": result["error"],
        "reason": result["reason"], "usage": usage, "started_at": result["started_at"],
        "finished_at": result["finished_at"],
    }
    if result.get("zip_path"):
        common["zip_path"] = result["zip_path"]
    if result.get("progress"):
        common["progress"] = Progress(result["progress"]["percent"], result["progress"]["message"])
    if result["reason"] == "requeue":
        return transition(job, State.QUEUED, at=at, attempt=job.attempt - 1, started_at=None)
    if result["reason"] == "cancelled":
        return transition(job, State.CANCELLED, at=at, **common)
    if result["reason"] == "exit" and result["exit_code"] == 0:
        return transition(job, State.COMPLETED, at=at, **common)
    if retry_max_delay_s is not None and should_retry(job, result["exit_code"], result["reason"]):
        return transition(
            job, State.WAITING, at=at, not_before=at + retry_delay(job, retry_max_delay_s),
            waiting_for="retry back-off", gpu_ids=(),
        )
    return transition(job, State.FAILED, at=at, **common)


def _start_failure(e: OSError, job: Job) -> dict[str, Any]:
    name = job.command[0]
    if isinstance(e, FileNotFoundError) and e.filename == job.cwd:
        return {"reason": "start_failed", "error": f"working directory not found: {job.cwd}"}
    if isinstance(e, FileNotFoundError):
        return {"exit_code": 127, "reason": "not_found", "error": f"command not found: {name}"}
    if isinstance(e, PermissionError):
        return {"exit_code": 126, "reason": "start_failed", "error": f"permission denied: {name}"}
    return {"reason": "start_failed", "error": f"cannot start {name}: {e.strerror}"}


def reap_exited() -> None:
    """Collect the exit status of every child (or re-parented orphan) that has died, so none
    stays a zombie."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _record_run(jd: Path, me: dict[str, Any], job_pid: int | None, attempt: int) -> None:
    """Who to signal for this job: pids with their start times and the boot id, so that a
    recycled pid (or one from before a reboot) is never taken for ours."""
    info = {
        "attempt": attempt, "boot_id": boot_id(), "supervisor": me,
        "job": None if job_pid is None else _ident(job_pid),
    }
    fsutil.atomic_write(jd / RUN_FILE, json.dumps(info).encode(), durable=False)


_boot_id: str | None = None


def boot_id() -> str:
    """This boot's id (Linux), read once per process: a process never outlives its boot."""
    global _boot_id
    if _boot_id is None:
        try:
            _boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            _boot_id = ""
    return _boot_id


def supervisor_alive(jd: Path) -> bool:
    """Whether a supervisor still holds the job directory's life lock (see `start`)."""
    try:
        fd = os.open(jd / LIFE_LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def read_run(jd: Path, attempt: int, *, any_boot: bool = False) -> dict[str, Any] | None:
    """run.json of this attempt, if it is there and from this boot (or any, if asked)."""
    try:
        info: dict[str, Any] = json.loads((jd / RUN_FILE).read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    if info.get("attempt") != attempt or (not any_boot and info.get("boot_id") != boot_id()):
        return None
    return info


def _ident(pid: int) -> dict[str, Any]:
    return {"pid": pid, "start_ticks": start_ticks(pid)}


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (/proc/PID/stat, field 22): with the boot
    id, what tells a process from a later one that got its pid. Not the wall clock, so a clock
    step never makes our own process look like a stranger; None if it is gone (or not Linux)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The name (field 2) is in parentheses and may hold anything; fields 3… follow the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _watch(proc: subprocess.Popen[bytes], launch: Launch, wake_r: int, requested: list[str]) -> dict[str, Any]:
    pidfd = os.pidfd_open(proc.pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    timeout_s = launch.job.timeout_s
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    kill_at: float | None = None  # when SIGTERM's grace runs out
    killed = False
    reason: str | None = None
    memory = _TreeMemory(proc.pid)
    limit = launch.job.mem_bytes
    next_sample = time.monotonic()
    while True:
        wake_times = [t for t in (deadline if reason is None else None, kill_at, next_sample) if t is not None]
        timeout_ms = None if not wake_times else max(0, int((min(wake_times) - time.monotonic()) * 1000) + 1)
        ready = {fd for fd, _ in poller.poll(timeout_ms)}
        if pidfd in ready:
            break
        if wake_r in ready:
            wake.drain(wake_r)
        if time.monotonic() >= next_sample:
            current = memory.sample()
            next_sample = time.monotonic() + (SAMPLE_LIMITED_S if limit else SAMPLE_S)
            if reason is None and limit is not None and current > limit:
                reason = "memory"
        if reason is None and requested:
            reason = requested[0]
        elif reason is None and deadline is not None and time.monotonic() >= deadline:
            reason = "timeout"
        if reason is not None and kill_at is None and not killed:
            _stop_tree(proc.pid, signal.SIGTERM)
            kill_at = time.monotonic() + launch.grace_s
        elif kill_at is not None and time.monotonic() >= kill_at:
            _stop_tree(proc.pid, signal.SIGKILL)
            kill_at, killed = None, True
    _, status, ru = os.wait4(proc.pid, 0)
    os.close(pidfd)
    proc.returncode = 0  # reaped here; keep Popen from waiting again
    if reason is not None:
        _stop_tree(proc.pid, signal.SIGKILL)  # stragglers: background children, daemons
        reap_exited()
    usage = {
        "cpu_user_s": round(ru.ru_utime, 3),
        "cpu_sys_s": round(ru.ru_stime, 3),
        # The sampled peak of the whole tree; wait4's figure starts at the supervisor's own
        # size (Linux carries a forking parent's peak over), so it is only the fallback for a
        # job too short to be sampled.
        "max_rss_kb": memory.peak // 1024 if memory.peak else ru.ru_maxrss,
    }
    out: dict[str, Any] = {"usage": usage, "exit_code": None, "signal": None}
    if os.WIFSIGNALED(status):
        out["signal"] = os.WTERMSIG(status)
    else:
        out["exit_code"] = os.WEXITSTATUS(status)
    if reason == "timeout":
        assert timeout_s is not None
        out.update(reason="timeout", error=f"timed out after {format_duration(timeout_s)}")
    elif reason == "memory":
        assert limit is not None
        out.update(reason="memory", error=f"memory limit exceeded ({format_size(limit)})")
    elif reason == "cancel":
        out.update(reason="cancelled", error="cancelled")
    elif reason == "requeue":
        out.update(reason="requeue", error="stopped by worker")
    elif out["signal"] is not None:
        out.update(reason="signal", error=f"killed by signal {out['signal']}")
    elif out["exit_code"] != 0:
        out.update(reason="exit", error=f"exit code {out['exit_code']}")
    else:
        out.update(reason="exit", error=None)
    return out


SAMPLE_S = 1.0
SAMPLE_LIMITED_S = 0.2


class _TreeMemory:
    """Resident memory of a job's whole process tree, sampled (psutil), and its peak."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.psutil = psutil
        self.pid = pid
        self.peak = 0
        self.procs: dict[int, Any] = {}

    def sample(self) -> int:
        psutil = self.psutil
        try:
            root = self.procs.get(self.pid) or psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        # Keep the Process objects of the current tree (cheaper re-reads), forget the gone ones.
        self.procs = {p.pid: self.procs.get(p.pid, p) for p in tree}
        total = 0
        for proc in self.procs.values():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        self.peak = max(self.peak, total)
        return total


def signal_running(jd: Path, attempt: int, sig: int) -> bool:
    """Send `sig` to the supervisor of attempt `attempt`, if it is still that very process.

    The pid comes from run.json with its start time; a pid that now belongs to another process
    (recycled) is never signalled: the pid is pinned by a pidfd first, then its start time is
    compared, then the signal goes through the pidfd. False if there is nothing to signal.
    """
    info = read_run(jd, attempt)
    sup = {} if info is None else info.get("supervisor", {})
    if sup.get("start_ticks") is None:
        return False
    try:
        pidfd = os.pidfd_open(sup["pid"])
    except OSError:
        return False
    try:
        if start_ticks(sup["pid"]) != sup["start_ticks"]:
            return False
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)
    return True
