"""What the commands do, apart from parsing and printing: the library under the CLI.

Every function takes the store and plain values and returns data; none prints. Validation
happens before the first change, so bad input changes nothing.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from jobctl import fsutil, jobdir
from jobctl.errors import Conflict, JobctlError, QueueFull, UsageError
from jobctl.model import (
    FINISHED,
    UNFINISHED,
    Job,
    JobHead,
    State,
    iso,
    now,
    parse_job_id,
    poll_after,
    public_dict,
    transition,
    wait_code,
)
from jobctl.store.base import Guarded, JobSpec, Store, Waker
from jobctl.store.wake import drain_and_rewatch

# Variables that describe the job jobctl is running in; a job submitted from inside a job
# must not inherit them (the worker sets its own).
_JOB_VARS = ("JOBCTL_JOB_ID", "JOBCTL_ATTEMPT", "JOBCTL_OUTPUT_DIR")


def capture_env(extra: Sequence[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _JOB_VARS}
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key or not (key[0].isalpha() or key[0] == "_") or not key.replace("_", "").isalnum():
            raise UsageError(f"invalid --env {item!r} (expected NAME=VALUE)")
        env[key] = value
    return env


@cache  # the same for every job a command touches (a user lookup each time otherwise)
def _who() -> str:
    s = submitter()
    return f"{s['user']}@{s['host']} pid {s['pid']}"


def _ranges(ids: Sequence[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> "1-3,7,9-10" (what cleanup removed, in a bounded line)."""
    parts: list[str] = []
    for i in ids:
        if parts and parts[-1].split("-")[-1] == str(i - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{i}"
        else:
            parts.append(str(i))
    return ",".join(parts)


def submitter() -> dict[str, Any]:
    try:
        import pwd  # the account, not $USER: this goes into the audit trail

        user = pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"user": user, "host": fsutil.hostname(), "pid": os.getpid()}


def resolve_cwd(cwd: str | None) -> str:
    path = Path(cwd).expanduser() if cwd else Path.cwd()
    if not path.is_dir():
        raise UsageError(f"--cwd {cwd}: no such directory")
    return str(path.absolute())


def commands_from(lines: Iterable[str]) -> list[tuple[str, ...]]:
    """One job per non-blank line that is not a # comment, run by /bin/sh -c."""
    out: list[tuple[str, ...]] = []
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            out.append(("/bin/sh", "-c", text))
    return out


def validate_command(command: Sequence[str]) -> tuple[str, ...]:
    if not command or not command[0]:
        raise UsageError("missing command (usage: jobctl submit [OPTIONS] -- COMMAND [ARGS]...)")
    return tuple(command)


def submit(
    store: Store,
    specs: Sequence[JobSpec],
    *,
    max_queued: Mapping[str, int] | None = None,
    block: bool = False,
    on_full: Callable[[QueueFull], None] | None = None,
) -> list[Job]:
    """Store the jobs, all or none. A full queue (`max_queued`) refuses the whole batch
    (QueueFull), or with `block` waits for room: woken by the store's notifications (a job
    starting or finishing), with a fallback poll of a second, then tries again."""
    if not specs:
        raise UsageError("nothing to submit")
    limits = {q: n for q, n in (max_queued or {}).items() if n}
    told = False
    with _Listening(store) as listening:
        while True:
            try:
                return store.submit(specs, at=now(), max_queued=limits)
            except QueueFull as e:
                if not block:
                    raise
                if on_full is not None and not told:
                    on_full(e)
                    told = True
                listening.wait(1.0)


class _Listening:
    """Wake-ups from the store (store.listen), opened on first use and closed at the end."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.waker: Waker | None = None
        self.sel: selectors.BaseSelector | None = None

    def __enter__(self) -> _Listening:
        return self

    def wait(self, timeout: float) -> None:
        """Until a notification or `timeout` seconds; the first call only starts listening
        (and returns at once: what happened before it would be missed otherwise)."""
        if self.waker is None or self.sel is None:
            self.waker = self.store.listen(f"wait-{os.getpid()}")
            self.sel = selectors.DefaultSelector()
            self.sel.register(self.waker.fileno(), selectors.EVENT_READ)
            return
        if self.sel.select(timeout):
            drain_and_rewatch(self.sel, self.waker)

    def __exit__(self, *exc: object) -> None:
        if self.sel is not None:
            self.sel.close()
        if self.waker is not None:
            self.waker.close()


# --- cancel ---------------------------------------------------------------------------------


class CancelOutcome:
    """What `cancel` did to each job. (Plain classes here and for CleanupReport: this module
    is on every command's start-up path, and a dataclass compiles its methods at import.)"""

    def __init__(self) -> None:
        self.cancelled: list[int] = []
        self.stopped: list[int] = []
        self.still_stopping: list[int] = []
        self.finished: list[Job] = []


def cancel(
    store: Store,
    ids: Sequence[int],
    *,
    all_jobs: bool = False,
    queue: str | None = None,
    grace_s: float = 10.0,
) -> CancelOutcome:
    """Cancel queued and waiting jobs at once; ask running ones to stop and wait until they have.

    A running job's supervisor gets SIGTERM (it stops the job's process group, SIGKILL after
    the grace period); its worker records `cancelled`. Returns once every job is finished or
    the grace period plus two seconds have passed.
    """
    from jobctl import supervisor

    if all_jobs:
        targets = store.query(states=UNFINISHED, queues=None if queue is None else [queue])
    else:
        targets = [store.get(i) for i in ids]  # NotFound before any change
    out = CancelOutcome()
    stopping: list[Job] = []
    for job in targets:
        for _ in range(10):
            try:
                if job.finished:
                    out.finished.append(job)
                elif job.state is State.RUNNING:
                    if not job.cancel_requested:
                        [job] = store.update([Guarded(_with(job, cancel_requested=True), State.RUNNING, job.attempt,
                                                      event={"event": "cancel requested", "by": _who()})])
                    supervisor.signal_running(jobdir.job_dir(store.root, job.id), job.attempt, signal.SIGTERM)
                    stopping.append(job)
                else:
                    new = transition(job, State.CANCELLED, at=now(), reason="cancelled", error="cancelled")
                    store.update([Guarded(new, job.state, job.attempt, event={"by": _who()})])
                    out.cancelled.append(job.id)
                break
            except Conflict:
                job = store.get(job.id)
    if stopping:
        store.notify_workers()
        deadline = time.monotonic() + grace_s + 2
        pending = {j.id for j in stopping}
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                job = store.get(job_id)
                if job.finished:
                    pending.discard(job_id)
                    if job.state is State.CANCELLED:
                        out.stopped.append(job_id)
                    else:
                        out.finished.append(job)
            if pending:
                time.sleep(0.05)
        out.still_stopping = sorted(pending)
    return out


def _with(job: Job, **changes: Any) -> Job:
    return job._replace(**changes)


# --- retry and release ---------------------------------------------------------------------


def retry(store: Store, ids: Sequence[int]) -> list[Job]:
    """Put failed or cancelled jobs back for a new attempt (same id; earlier logs are kept).

    They go through `waiting`, so a job whose dependency still failed fails again at once.
    """
    jobs = [store.get(i) for i in ids]
    wrong = [j for j in jobs if j.state not in (State.FAILED, State.CANCELLED)]
    if wrong:
        listed = ", ".join(f"{j.id} ({j.state.value})" for j in wrong)
        raise JobctlError(f"only failed or cancelled jobs can be retried: {listed}")
    changes = [Guarded(transition(j, State.WAITING, at=now(), not_before=None, held=False), j.state, j.attempt,
                       event={"event": "retried", "by": _who()}) for j in jobs]
    store.update(changes)
    store.notify_workers()
    return [store.get(i) for i in ids]


def release(store: Store, ids: Sequence[int]) -> list[Job]:
    """Let held jobs go: they run as soon as nothing else holds them back."""
    jobs = [store.get(i) for i in ids]
    wrong = [j for j in jobs if not (j.held and j.state is State.WAITING)]
    if wrong:
        raise JobctlError(f"not held: {', '.join(f'{j.id} ({j.state.value})' for j in wrong)}")
    store.update([Guarded(j._replace(held=False), State.WAITING, j.attempt, event={"event": "released", "by": _who()})
                  for j in jobs])
    store.notify_workers()
    return [store.get(i) for i in ids]


# --- progress ------------------------------------------------------------------------------

MILESTONES = (25.0, 50.0, 75.0, 100.0)


def report_progress(store: Store, job_id: int, attempt: int, percent: float | None, message: str | None) -> None:
    """`jobctl progress`, from inside a running job. Crossing 25/50/75/100 % is also
    written to the audit trail."""
    job = store.get(job_id)
    if job.state is not State.RUNNING or job.attempt != attempt:
        raise JobctlError(f"job {job_id} attempt {attempt} is not running")
    if percent is not None and not 0 <= percent <= 100:
        raise UsageError(f"invalid percent {percent:g} (0 to 100)")
    at = now()
    before = jobdir.write_progress(jobdir.job_dir(store.root, job_id), attempt, percent, message, at)
    if percent is not None:
        crossed = [m for m in MILESTONES if (before or 0) < m <= percent]
        if crossed:
            store.append_history([{"at": iso(at), "job": job_id, "event": "progress", "attempt": attempt,
                                   "percent": crossed[-1], "message": message}])


def with_live_progress(store: Store, jobs: Sequence[Job]) -> list[Job]:
    """Running jobs with the progress they reported last (kept in their job directory)."""
    out = []
    for job in jobs:
        if job.state is State.RUNNING:
            live = jobdir.read_progress(jobdir.job_dir(store.root, job.id), job.attempt)
            if live is not None:
                job = job._replace(progress=live)
        out.append(job)
    return out


# --- wait -----------------------------------------------------------------------------------


def wait(store: Store, ids: Sequence[int], *, timeout_s: float | None = None) -> tuple[int, list[Job]]:
    """Block until every job is finished; returns (exit code of the SPEC, the jobs).

    Wakes when a worker records a result (the store's notification), with a fallback poll
    that backs off as `poll_after_s` says (the youngest unfinished job's).
    """
    jobs = {i: store.get(i) for i in ids}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with _Listening(store) as listening:
        while True:
            jobs = {i: (j if j.finished else store.get(i)) for i, j in jobs.items()}
            if all(j.finished for j in jobs.values()):
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise JobctlError(f"timed out waiting for job(s) {', '.join(str(i) for i, j in jobs.items() if not j.finished)}")
            at = now()
            pause = min(poll_after(j, at) or 0.5 for j in jobs.values() if not j.finished)
            listening.wait(pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic())))
    codes = [wait_code(jobs[i]) for i in ids]
    return next((c for c in codes if c), 0), [jobs[i] for i in ids]


# --- logs -----------------------------------------------------------------------------------


def _output_reachable(store: Store, job: Job) -> Path:
    """The job's directory; an error saying where the output is when a job that ran on
    another host has no directory here (output_root not shared, or not mounted here)."""
    jd = jobdir.job_dir(store.root, job.id)
    # A job claimed a moment ago may not have its directory yet: give its worker time.
    settling = job.state is State.RUNNING and now() - (job.started_at or 0) < 10
    if job.attempt and job.worker is not None and job.worker.host != fsutil.hostname() and not settling \
            and not jd.is_dir():
        raise JobctlError(
            f"job {job.id} ran on {job.worker.host}: its output ({jd}) is not reachable from this host "
            f"({fsutil.hostname()}); output_root must be a directory every host shares"
        )
    return jd


def follow_log(store: Store, job_id: int, stream: str, emit: Callable[[bytes], None], *, tail: int | None) -> None:
    """Write the log to `emit`, then keep writing what the job adds until it finishes."""
    job = store.get(job_id)
    _output_reachable(store, job)
    path = jobdir.log_path(store.root, job_id, stream)
    f = None
    try:
        while True:
            if f is None:
                try:
                    f = open(path, "rb")
                    if tail is not None:
                        emit(last_lines(f, tail))
                except FileNotFoundError:
                    pass
            if f is not None:
                while chunk := f.read(1 << 16):
                    emit(chunk)
            if f is None:
                _output_reachable(store, job)  # it may have started elsewhere since
            if job.finished:
                return
            time.sleep(0.1)
            job = store.get(job_id)
    finally:
        if f is not None:
            f.close()


def read_log(store: Store, job_id: int, stream: str, *, tail: int | None) -> bytes:
    _output_reachable(store, store.get(job_id))
    path = jobdir.log_path(store.root, job_id, stream)
    try:
        with open(path, "rb") as f:
            return last_lines(f, tail) if tail is not None else f.read()
    except FileNotFoundError:
        return b""


def last_lines(f: Any, n: int) -> bytes:
    """The last n lines of an open binary file, reading from the end in blocks."""
    end = f.seek(0, os.SEEK_END)
    pos, data = end, b""
    while pos > 0 and data.count(b"\n") <= n:
        step = min(pos, 1 << 16)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    lines = data.splitlines(keepends=True)[-n:] if n else []
    f.seek(end)
    return b"".join(lines)


# --- package --------------------------------------------------------------------------------


def package(
    store: Store, job_id: int, *, include: Sequence[str], exclude: Sequence[str], logs: bool, dest: Path | None
) -> Path:
    job = store.get(job_id)
    jd = _output_reachable(store, job)
    if not jd.is_dir() or jd.is_symlink():
        raise JobctlError(f"job {job_id} has no job directory yet (it has not started)")
    path = jobdir.package(job, jd, include=include, exclude=exclude, logs=logs, dest=dest)
    if dest is None and job.zip_path != str(path):
        try:
            store.update([Guarded(_with(job, zip_path=str(path)), job.state, job.attempt)])
        except Conflict:
            pass  # the job moved on meanwhile; the zip is there all the same
    return path


# --- cleanup --------------------------------------------------------------------------------


class CleanupReport(NamedTuple):
    removed: list[JobHead]
    bytes_freed: int
    dry_run: bool
    sizes: dict[int, int]
    leftovers: list[int]
    """Job directories without a record (left by an interrupted cleanup), removed too."""


def cleanup(
    store: Store,
    *,
    older_than_s: float,
    states: Sequence[State] | None = None,
    keep_failed: bool = False,
    max_total: int | None = None,
    dry_run: bool = False,
) -> CleanupReport:
    """Remove finished jobs older than the threshold (and the oldest finished beyond
    `max_total`): records first, then their directories (`jobdir.discard`: large batches are
    deleted in the background). Never an unfinished job.

    A crash between the two leaves directories without a record; they are found again here
    (an id below the store's next id, no record) and removed as leftovers.
    """
    wanted = FINISHED if not states else FINISHED & set(states)
    if keep_failed:
        wanted = wanted - {State.FAILED}
    at = now()
    ceiling = store.next_id()  # before the query: a job submitted after it has a larger id
    heads = store.heads()
    known = {h.id for h in heads}
    on_disk = jobdir.job_dir_ids(store.root)
    leftovers = sorted(i for i in on_disk if i < ceiling and i not in known)
    finished = sorted((h for h in heads if h.state in wanted), key=lambda h: (h.finished_at or 0, h.id))
    victims = [h for h in finished if (h.finished_at or 0) <= at - older_than_s]
    measured = finished if max_total is not None else victims
    prefix = jobdir.jobs_prefix(store.root)
    sizes = {i: jobdir.size(prefix + str(i)) for i in [h.id for h in measured] + leftovers}
    if max_total is not None:
        chosen = {h.id for h in victims}
        kept = sum(sizes[i] if i in sizes else jobdir.size(prefix + str(i)) for i in on_disk)  # each measured once
        kept -= sum(sizes[i] for i in chosen) + sum(sizes[i] for i in leftovers)
        for head in finished:
            if kept <= max_total:
                break
            if head.id not in chosen:
                victims.append(head)
                chosen.add(head.id)
                kept -= sizes[head.id]
    freed = sum(sizes[i] for i in leftovers)
    if dry_run:
        return CleanupReport(victims, freed + sum(sizes[h.id] for h in victims), True, sizes, leftovers)
    removed = store.delete(victims)
    jobdir.discard(store.root, [h.id for h in removed] + leftovers)
    if removed:
        store.prune()
        ids = sorted(h.id for h in removed)
        store.prune_history(ids, {"at": iso(at), "job": None, "event": "cleaned up", "count": len(ids),
                                  "ids": _ranges(ids), "bytes": sum(sizes[i] for i in ids), "by": _who()})
    return CleanupReport(removed, freed + sum(sizes[h.id] for h in removed), False, sizes, leftovers)


# --- status ---------------------------------------------------------------------------------


def jobs_json(
    store: Store,
    jobs: Sequence[Job] | None = None,
    *,
    states: Sequence[State] | None = None,
    queues: Sequence[str] | None = None,
    live: Collection[tuple[str, int]] | None = None,
) -> list[bytes]:
    """`status --json`: the SPEC's object (`model.public_dict`) of each of `jobs`, or of every
    job matching the filters in id order, as compact JSON, running jobs with their live
    progress. A store may write those of its finished jobs straight from their stored text
    (`Store.public_json`; the JSON store does: 100,000 jobs in well under a second)."""
    import json

    at = now()
    prefix = jobdir.jobs_prefix(store.root)

    def render(job: Job) -> bytes:
        if job.state is State.RUNNING:
            [job] = with_live_progress(store, [job])
        return json.dumps(public_dict(job, prefix + str(job.id), at, live), separators=(",", ":")).encode()

    if jobs is not None:
        return [render(j) for j in jobs]
    return store.public_json(states=states or None, queues=queues or None, render=render)


def parse_ids(texts: Sequence[str]) -> list[int]:
    return [parse_job_id(t) for t in texts]


def migrate(source: Store, target: Store) -> int:
    """Copy every job of a JSON store (ids, states, attempts, environments, history, pauses)
    into an empty PostgreSQL store; returns how many. Stop the workers of both first: running
    jobs are copied as running and adopted only by a worker of the host that ran them."""
    from jobctl.store.postgres import PostgresStore

    if not isinstance(target, PostgresStore):
        raise UsageError("--to must be a PostgreSQL store (postgresql://...)")
    jobs = source.query()
    envs = {job.env_ref: source.env(job) for job in jobs}
    events, _ = source.history()
    target.import_jobs(jobs, envs, events, source.next_id(), source.paused())
    return len(jobs)
