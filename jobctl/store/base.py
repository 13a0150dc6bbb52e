"""The storage contract every backend implements (JSON files now, PostgreSQL later).

The service layer and the worker only ever talk to a `Store`. Every method is atomic as its
docstring says; a method that raises has changed nothing. Guarded updates (`update`, `delete`)
carry the state and attempt the caller last saw, so a caller that lost a race gets `Conflict`
instead of overwriting somebody else's change.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from jobctl.errors import Conflict, NotFound
from jobctl.model import FINISHED, Job, JobHead, State, WorkerRef, iso, now
from jobctl.scheduler import Capacity

Doomed = TypeVar("Doomed", Job, JobHead)
"""What `delete` takes and gives back: Jobs, or the JobHeads `heads` listed (cleanup)."""


class JobSpec(NamedTuple):
    """A job as `submit` describes it, and the environment captured for it.

    The store fills in what is its to give: the id, `created_at`, `env_ref`, and the first
    state (`waiting` when the job has anything to wait for, else `queued`).
    """

    job: Job
    env: dict[str, str]
    reuse: bool = False
    """With a unique key: a completed job with that key, still stored, is returned too."""

    def new_job(self, job_id: int, env_ref: str, at: float) -> Job:
        j = self.job
        waits = bool(j.depends_on or j.depends_any or j.held or j.not_before)
        return j._replace(
            id=job_id, env_ref=env_ref, created_at=at, state=State.WAITING if waits else State.QUEUED
        )


class Guarded(NamedTuple):
    """A new version of a job, written only if the stored one still has this state and attempt."""

    job: Job
    expect_state: State
    expect_attempt: int
    expect_worker: WorkerRef | None = None
    """If given, the stored job must also still belong to this worker (adoption)."""
    event: dict[str, Any] | None = None
    """What to write in the audit trail (e.g. {"event": "cancel requested", "by": …}); by
    default a change of state is recorded as the new state, other changes not at all."""

    def check(self, current: dict[str, Any] | None) -> None:
        """Raise NotFound or Conflict unless the stored record `current` is as expected."""
        job_id = self.job.id
        if current is None:
            raise NotFound(f"no job {job_id}")
        worker = current.get("worker")
        if (
            current["state"] != self.expect_state.value
            or current["attempt"] != self.expect_attempt
            or (self.expect_worker is not None and (worker is None or WorkerRef(**worker) != self.expect_worker))
        ):
            raise Conflict(
                f"job {job_id} is {current['state']} (attempt {current['attempt']}), "
                f"not {self.expect_state.value} (attempt {self.expect_attempt})"
            )

    def audit_event(self, old: dict[str, Any]) -> dict[str, Any] | None:
        """The audit event this update writes over the stored record `old`, if any."""
        new = self.job
        if self.event is None and old["state"] == new.state.value:
            return None
        event: dict[str, Any] = {"at": iso(now()), "job": new.id, "event": new.state.value, "attempt": new.attempt}
        if new.state in FINISHED:
            event.update(exit_code=new.exit_code, error=new.error)
        if new.worker is not None:
            event["worker"] = f"{new.worker.host}:{new.worker.pid}"
        event.update(self.event or {})
        return event


class Waker(Protocol):
    def fileno(self) -> int: ...

    def drain(self) -> None:
        """Consume pending wake-ups so the descriptor is not readable until the next one."""

    def close(self) -> None: ...


class Store(Protocol):
    root: Path
    """The directory holding `jobs/<id>/` job directories."""

    location: str
    """What the user passes as --store to reach this store (a path or a URL)."""

    warnings: list[str]
    """Things the user must know about this store (e.g. it is on a network filesystem)."""

    def submit(self, specs: Sequence[JobSpec], *, at: float, max_queued: Mapping[str, int] | None = None) -> list[Job]:
        """Allocate ids and store the jobs, all or none, durably before returning.

        A spec whose `unique_key` an unfinished job already has adds nothing: that job is
        returned in its place (with `reuse`, also the newest completed job with that key).
        Refuses (UsageError, nothing stored) a dependency on an id the store does not have,
        and (QueueFull, nothing stored) a batch that would take a queue's queued and waiting
        jobs past `max_queued[queue]` (`scheduler.queue_room`).
        """

    def get(self, job_id: int) -> Job:
        """The job's current record; raises NotFound."""

    def query(
        self,
        *,
        states: Collection[State] | None = None,
        queues: Collection[str] | None = None,
    ) -> list[Job]:
        """Jobs matching the filters, in id order: a consistent snapshot, never a torn mix."""

    def public_json(
        self,
        *,
        states: Collection[State] | None = None,
        queues: Collection[str] | None = None,
        render: Callable[[Job], bytes],
    ) -> list[bytes]:
        """`status --json`: what `[render(j) for j in query(states=…, queues=…)]` returns.

        A store may write finished jobs straight from their stored text instead of calling
        `render` (the JSON store does, from its shards); the bytes must be the same.
        """

    def heads(self) -> list[JobHead]:
        """Every stored job's id, state, attempt and finished_at, in id order, as `query()`
        would give them (cleanup): read without a whole Job for each."""

    def env(self, job: Job) -> dict[str, str]:
        """The environment captured when `job` was submitted."""

    def claim(self, worker: WorkerRef, capacity: Capacity, *, at: float,
              results: Sequence[Guarded] = ()) -> list[Job]:
        """Atomically move the next runnable jobs that fit `capacity` to `running` for `worker`
        (`scheduler.pick`, with the store's paused queues, running counts and, for the queues
        in `capacity.rates`, the room their recent starts leave filled in; it records the
        starts of rated queues for the next claim, whoever makes it).

        Each returned job has its attempt counted. No two callers ever get the same job attempt.
        `results` (guarded changes, as `update` takes them) are written first, in the same
        transaction: a worker records how its jobs ended and takes the next ones with one
        durable write. A Conflict there changes nothing and claims nothing.
        """

    def register_worker(self, worker: WorkerRef, capacity: Capacity) -> Callable[[], None]:
        """Announce a live worker and what it can run, until the returned function is called
        (or the process dies: liveness must not depend on the worker cleaning up)."""

    def heartbeat(self) -> None:
        """Say this process's registered worker is alive (stores that judge liveness by time)."""

    def workers(self) -> list[dict[str, Any]]:
        """The live workers: host, pid, slots, gpus, queues (None: all)."""

    def set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume starting jobs of `queue` (scheduler.ALL_QUEUES: every queue)."""

    def paused(self) -> frozenset[str]:
        """The paused queues."""

    def update(self, changes: Sequence[Guarded]) -> list[Job]:
        """Write each new version if the stored job still has the expected state and attempt.

        All or none: if any guard fails, raises Conflict and writes nothing. Waiting jobs whose
        dependencies this settles move on in the same write (`scheduler.settle_all`).
        """

    def delete(self, jobs: Sequence[Doomed]) -> list[Doomed]:
        """Remove the records of finished jobs that are still as given (same state, attempt).
        Jobs or the heads `heads` listed: only id, state and attempt are looked at.

        Returns the ones removed; a job that changed meanwhile (a retry) is skipped. Atomic per
        job; the job directories are the caller's to remove afterwards.
        """

    def next_id(self) -> int:
        """Every id ever allocated is below this one."""

    def prune(self) -> int:
        """Drop data no stored job refers to any more (captured environments); returns how many."""

    def check(self) -> list[tuple[str, str]]:
        """Read everything, change nothing: (level, text) findings, level `ok`, `note`
        (harmless, repaired or explained) or `damage` (needs a person)."""

    def append_history(self, events: Sequence[dict[str, Any]]) -> None:
        """Add events to the audit trail (append-only)."""

    def prune_history(self, removed: Collection[int], summary: dict[str, Any]) -> None:
        """Drop the events of removed jobs and add `summary` (cleanup keeps the trail bounded)."""

    def history(self, *, job_id: int | None = None, since: float | None = None,
                offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Audit events after `offset` (0: from the start), oldest first, and the offset to
        pass next time to get only newer ones (`history --follow`)."""

    def notify_workers(self) -> None:
        """Wake idle workers now (a hint: workers also poll slowly)."""

    def listen(self, name: str) -> Waker:
        """A descriptor that becomes readable when `notify_workers` is called."""
