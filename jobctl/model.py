"""Jobs, their states, and the parsing of the values users type (durations, sizes, priorities).

A `Job` is immutable. Its state changes only through `transition`, which checks the move
against `TRANSITIONS`; every other field changes with `job._replace(...)`.

The value types are `typing.NamedTuple`s, not dataclasses: every command imports this
module, and building a dataclass compiles its generated methods on each start (1.7 ms for
`Job` alone, ten times a NamedTuple's), while a NamedTuple is also faster to create, which
reading 100,000 records does.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from jobctl.errors import InvalidTransition, UsageError


class State(StrEnum):
    QUEUED = "queued"
    WAITING = "waiting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({State.COMPLETED, State.FAILED, State.CANCELLED})
UNFINISHED = frozenset(State) - FINISHED

TRANSITIONS: dict[State, frozenset[State]] = {
    State.WAITING: frozenset({State.QUEUED, State.FAILED, State.CANCELLED}),
    State.QUEUED: frozenset({State.RUNNING, State.WAITING, State.FAILED, State.CANCELLED}),
    # running -> queued/waiting: a stopped worker hands the job back, or a retry is due.
    State.RUNNING: frozenset(
        {State.COMPLETED, State.FAILED, State.CANCELLED, State.QUEUED, State.WAITING}
    ),
    State.COMPLETED: frozenset(),
    # `jobctl retry` is the one way back from a finished state.
    State.FAILED: frozenset({State.QUEUED, State.WAITING}),
    State.CANCELLED: frozenset({State.QUEUED, State.WAITING}),
}


def now() -> float:
    """The one clock of jobctl: seconds since the epoch, UTC."""
    return time.time()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


class Progress(NamedTuple):
    percent: float | None = None
    message: str | None = None


class Usage(NamedTuple):
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    max_rss_kb: int


class WorkerRef(NamedTuple):
    host: str
    pid: int


class Job(NamedTuple):
    id: int
    command: tuple[str, ...]
    cwd: str
    created_at: float
    env_ref: str = ""
    name: str | None = None
    queue: str = "default"
    priority: int = 0
    state: State = State.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    attempt: int = 0
    max_retries: int = 0
    timeout_s: float | None = None
    depends_on: tuple[int, ...] = ()
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    reason: str | None = None
    progress: Progress = Progress()
    worker: WorkerRef | None = None
    usage: Usage | None = None
    labels: tuple[str, ...] = ()
    cpus: int = 1
    zip: bool = False
    zip_path: str | None = None
    cancel_requested: bool = False
    submitter: dict[str, Any] | None = None
    depends_any: tuple[int, ...] = ()
    retry_delay_s: float = 10.0
    retry_on: tuple[int, ...] = ()
    not_before: float | None = None
    held: bool = False
    unique_key: str | None = None
    mem_bytes: int | None = None
    gpus: int = 0
    gpu_ids: tuple[int, ...] = ()
    waiting_for: str | None = None
    lost: int = 0
    """Attempts whose processes vanished without a result (capped by config max_lost)."""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def to_record(self) -> dict[str, Any]:
        """The stored form: every field, JSON types only. Inverse of `from_record`."""
        return {
            "id": self.id,
            "command": list(self.command),
            "cwd": self.cwd,
            "created_at": self.created_at,
            "env_ref": self.env_ref,
            "name": self.name,
            "queue": self.queue,
            "priority": self.priority,
            "state": self.state.value,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempt": self.attempt,
            "max_retries": self.max_retries,
            "timeout_s": self.timeout_s,
            "depends_on": list(self.depends_on),
            "exit_code": self.exit_code,
            "signal": self.signal,
            "error": self.error,
            "reason": self.reason,
            "progress": {"percent": self.progress.percent, "message": self.progress.message},
            "worker": None if self.worker is None else {"host": self.worker.host, "pid": self.worker.pid},
            "usage": None if self.usage is None else _usage_dict(self.usage),
            "labels": list(self.labels),
            "cpus": self.cpus,
            "zip": self.zip,
            "zip_path": self.zip_path,
            "cancel_requested": self.cancel_requested,
            "submitter": self.submitter,
            "depends_any": list(self.depends_any),
            "retry_delay_s": self.retry_delay_s,
            "retry_on": list(self.retry_on),
            "not_before": self.not_before,
            "held": self.held,
            "unique_key": self.unique_key,
            "mem_bytes": self.mem_bytes,
            "gpus": self.gpus,
            "gpu_ids": list(self.gpu_ids),
            "waiting_for": self.waiting_for,
            "lost": self.lost,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Job:
        worker = r.get("worker")
        usage = r.get("usage")
        progress = r.get("progress") or {}
        return cls(
            id=r["id"],
            command=tuple(r["command"]),
            cwd=r["cwd"],
            created_at=r["created_at"],
            env_ref=r.get("env_ref", ""),
            name=r.get("name"),
            queue=r.get("queue", "default"),
            priority=r.get("priority", 0),
            state=State(r["state"]),
            started_at=r.get("started_at"),
            finished_at=r.get("finished_at"),
            attempt=r.get("attempt", 0),
            max_retries=r.get("max_retries", 0),
            timeout_s=r.get("timeout_s"),
            depends_on=tuple(r.get("depends_on", ())),
            exit_code=r.get("exit_code"),
            signal=r.get("signal"),
            error=r.get("error"),
            reason=r.get("reason"),
            progress=Progress(progress.get("percent"), progress.get("message")),
            worker=None if worker is None else WorkerRef(worker["host"], worker["pid"]),
            usage=None if usage is None else Usage(**usage),
            labels=tuple(r.get("labels", ())),
            cpus=r.get("cpus", 1),
            zip=r.get("zip", False),
            zip_path=r.get("zip_path"),
            cancel_requested=r.get("cancel_requested", False),
            submitter=r.get("submitter"),
            depends_any=tuple(r.get("depends_any", ())),
            retry_delay_s=r.get("retry_delay_s", 10.0),
            retry_on=tuple(r.get("retry_on", ())),
            not_before=r.get("not_before"),
            held=r.get("held", False),
            unique_key=r.get("unique_key"),
            mem_bytes=r.get("mem_bytes"),
            gpus=r.get("gpus", 0),
            gpu_ids=tuple(r.get("gpu_ids", ())),
            waiting_for=r.get("waiting_for"),
            lost=r.get("lost", 0),
        )


class JobHead(NamedTuple):
    """The few fields of a stored job that choosing and removing it needs (cleanup): a store
    can list these for 100,000 jobs without decoding whole records."""

    id: int
    state: State
    attempt: int
    finished_at: float | None


def _usage_dict(u: Usage) -> dict[str, Any]:
    return {"wall_s": u.wall_s, "cpu_user_s": u.cpu_user_s, "cpu_sys_s": u.cpu_sys_s, "max_rss_kb": u.max_rss_kb}


def command_line(command: tuple[str, ...]) -> str:
    """How to show a command: a `--from` line as it was written, an argv as a shell would quote it."""
    if len(command) == 3 and command[:2] == ("/bin/sh", "-c"):
        return command[2]
    return shlex.join(command)


def transition(job: Job, to: State, *, at: float, **changes: Any) -> Job:
    """The only way to change a job's state; raises InvalidTransition for a move not in the table.

    Entering `running` stamps `started_at`; entering a finished state stamps `finished_at`;
    going back to `queued` (a retry) clears the previous attempt's outcome.
    """
    if to not in TRANSITIONS[job.state]:
        raise InvalidTransition(f"job {job.id} is {job.state}, it cannot become {to}")
    if to is not State.WAITING:
        changes.setdefault("waiting_for", None)
    if to is State.RUNNING:
        changes.setdefault("started_at", at)
    elif to in FINISHED:
        changes.setdefault("finished_at", at)
    elif job.state in FINISHED or job.state is State.RUNNING:
        changes = {
            "exit_code": None, "signal": None, "error": None, "reason": None, "finished_at": None,
            "started_at": None, "usage": None, "zip_path": None, "gpu_ids": (),
            "worker": None, "cancel_requested": False, "progress": Progress(), **changes,
        }
    return job._replace(state=to, **changes)


# Why a job ended -> the exit code of `jobctl wait` (SPEC "Exit codes").
_WAIT_CODES = {"timeout": 124, "not_found": 127}


def wait_code(job: Job) -> int:
    """0 for completed; the job's own exit code; 128+N for signal N; 124 timed out;
    127 command not found; 125 cancelled, lost or failed for another reason."""
    if job.state is State.COMPLETED:
        return 0
    if job.state is State.FAILED:
        if job.reason in _WAIT_CODES:
            return _WAIT_CODES[job.reason]
        if job.reason == "exit" and job.exit_code:
            return job.exit_code
        if job.reason == "signal" and job.signal:
            return 128 + job.signal
    return 125


def poll_after(job: Job, at: float) -> float | None:
    """How long a polling script should wait before asking about `job` again.

    A tenth of the job's age, at least 0.5 s and at most 30 s; None once it has finished.
    """
    if job.finished:
        return None
    return round(min(30.0, max(0.5, (at - job.created_at) / 10)), 1)


def worker_alive(job: Job, live: Collection[tuple[str, int]] | None) -> bool | None:
    """For a running job: whether its worker is among the live ones (None if not known)."""
    if job.state is not State.RUNNING or job.worker is None or live is None:
        return None
    return (job.worker.host, job.worker.pid) in live


def public_dict(job: Job, job_dir: str, at: float, live: Collection[tuple[str, int]] | None = None) -> dict[str, Any]:
    """The SPEC's JSON object for one job (never the captured environment). `live`: the
    (host, pid) of the live workers, to say whether a running job's worker still is."""
    return {
        "id": job.id,
        "name": job.name,
        "command": list(job.command),
        "cwd": job.cwd,
        "queue": job.queue,
        "priority": job.priority,
        "state": job.state.value,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "attempt": job.attempt,
        "max_retries": job.max_retries,
        "timeout_s": job.timeout_s,
        "depends_on": list(job.depends_on),
        "exit_code": job.exit_code,
        "signal": job.signal,
        "error": job.error,
        "reason": job.reason,
        "progress": {"percent": job.progress.percent, "message": job.progress.message},
        "waiting_for": job.waiting_for,
        "poll_after_s": poll_after(job, at),
        "job_dir": job_dir,
        "zip_path": job.zip_path,
        "worker": None if job.worker is None else {"host": job.worker.host, "pid": job.worker.pid},
        "worker_alive": worker_alive(job, live),
        "usage": None if job.usage is None else _usage_dict(job.usage),
        "labels": list(job.labels),
        "cpus": job.cpus,
        "mem_bytes": job.mem_bytes,
        "gpus": job.gpus,
        "gpu_ids": list(job.gpu_ids),
        "depends_on_any": list(job.depends_any),
        "retry_delay_s": job.retry_delay_s,
        "retry_on": list(job.retry_on),
        "not_before": iso(job.not_before),
        "held": job.held,
        "unique_key": job.unique_key,
        "lost_attempts": job.lost,
        "cancel_requested": job.cancel_requested,
    }


# --- values users type -------------------------------------------------------------------

_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([dhms])")


def parse_duration(text: str) -> float:
    """`90`, `90s`, `5m`, `2h`, `7d`, `1h30m` -> seconds. Raises UsageError."""
    s = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return float(s)
    parts = _DURATION_RE.findall(s)
    if not s or "".join(n + u for n, u in parts) != s:
        raise UsageError(f"invalid duration {text!r} (examples: 90, 90s, 5m, 2h, 7d, 1h30m)")
    units = [u for _, u in parts]
    if len(set(units)) != len(units) or units != sorted(units, key="dhms".index):
        raise UsageError(f"invalid duration {text!r} (units go from largest to smallest, once each)")
    return float(sum(float(n) * _DURATION_UNITS[u] for n, u in parts))


def format_duration(seconds: float) -> str:
    """Shortest exact-ish form: 300 -> `5m`, 5400 -> `1h30m`, 1.5 -> `1.5s`. Round-trips whole seconds."""
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    rest = int(round(seconds))
    if rest == 0:
        return "0s"
    out = []
    for unit in "dhms":
        n, rest = divmod(rest, _DURATION_UNITS[unit])
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`512M`, `2G`, `1.5GiB`, `100` (bytes) -> bytes. Raises UsageError."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise UsageError(f"invalid size {text!r} (examples: 512M, 2G)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_time(text: str, at: float) -> float:
    """`--at`: ISO 8601 (`2026-11-23T14:00`, with or without a zone; local if none) or `HH:MM`
    local time, the next such moment after `at`. Returns seconds since the epoch."""
    s = text.strip()
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", s)
    if m:
        base = datetime.fromtimestamp(at).astimezone()
        when = base.replace(hour=int(m.group(1)), minute=int(m.group(2)), second=0, microsecond=0)
        if when.timestamp() <= at:
            when = (when + timedelta(days=1)).replace(hour=int(m.group(1)), minute=int(m.group(2)))
        return when.timestamp()
    try:
        parsed = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"invalid time {text!r} (examples: 14:30, 2026-11-23T14:00, 2026-11-23T14:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    return parsed.timestamp()


def parse_codes(text: str) -> tuple[int, ...]:
    """`--retry-on 75,137` -> (75, 137)."""
    try:
        codes = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise UsageError(f"invalid exit codes {text!r} (example: 75,137)") from None
    if not codes or any(not 0 <= c <= 255 for c in codes):
        raise UsageError(f"invalid exit codes {text!r} (each from 0 to 255)")
    return codes


PRIORITY_NAMES = {"low": -10, "normal": 0, "high": 10, "critical": 20}


def parse_priority(text: str) -> int:
    name = text.strip().lower()
    if name in PRIORITY_NAMES:
        return PRIORITY_NAMES[name]
    try:
        return int(name)
    except ValueError:
        raise UsageError(
            f"invalid priority {text!r} (an integer, or one of {', '.join(PRIORITY_NAMES)})"
        ) from None


def parse_job_id(text: str) -> int:
    """Job ids are positive integers; anything else is refused before a path is built from it."""
    if not re.fullmatch(r"[0-9]{1,18}", text.strip()) or int(text) < 1:
        raise UsageError(f"invalid job id {text!r}")
    return int(text)
