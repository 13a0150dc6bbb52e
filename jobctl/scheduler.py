"""Scheduling rules shared by every store: pure functions of jobs, states and time.

`settle` decides what a waiting job waits for, and moves it on when nothing is left: to
`queued`, or to `failed` when a dependency it needed to complete did not. Stores call it in
every transaction that changes jobs, so a failure propagates through chains of dependents at
once, in the same write.

`pick` decides which queued jobs a worker starts next. Order: highest priority first, then
oldest (lowest id) first. A job that needs more CPU slots or GPUs than are free blocks the
jobs behind it in its queue order (no backfilling), so a big job is never starved by a
stream of small ones: the worker waits for running jobs to free what it needs. Jobs that
cannot start for reasons that free slots do not change (a paused queue, a queue at its
concurrency limit or start rate, more than the worker has at all) are passed over and
block nobody.

`rate_room` turns a queue's start rate (`rate = "30/m"`: at most 30 starts in any 60 s) and
the recent starts a store keeps for it into how many more may start now; `queue_room`
applies `max_queued` to a submit. Both stores call them inside the transaction that claims
or submits, so the limits hold across every worker and submitter of the store.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from jobctl.errors import QueueFull
from jobctl.model import FINISHED, Job, State, iso, transition

if TYPE_CHECKING:
    import random

ALL_QUEUES = "*"


def settle(job: Job, state_of: Callable[[int], State | None], at: float) -> Job:
    """The waiting job's next version: still waiting (with `waiting_for` saying why), queued,
    or failed because a dependency failed. `state_of(id)` is None for a job that no longer
    exists (cleaned up): only finished jobs are ever removed, so it counts as finished."""
    assert job.state is State.WAITING
    for dep in job.depends_on:
        state = state_of(dep)
        if state in (State.FAILED, State.CANCELLED):
            return transition(job, State.FAILED, at=at, reason="dependency", error=f"dependency {dep} failed")
    if job.held:
        return _waiting(job, "held")
    for dep in (*job.depends_on, *job.depends_any):
        state = state_of(dep)
        if state is not None and state not in FINISHED:
            return _waiting(job, f"dependency {dep}")
    if job.not_before is not None and job.not_before > at:
        return _waiting(job, "retry back-off" if job.attempt else f"until {iso(job.not_before)}")
    return transition(job, State.QUEUED, at=at, not_before=None)


def _waiting(job: Job, why: str) -> Job:
    return job if job.waiting_for == why else job._replace(waiting_for=why)


def settle_all(
    jobs: Mapping[int, Job], lookup: Callable[[Collection[int]], Mapping[int, State]], at: float
) -> dict[int, Job]:
    """Settle every waiting job in `jobs` (the unfinished ones), repeating until nothing moves,
    so that a failure runs down a chain of dependents. `lookup` gives the states of jobs that
    are not in `jobs` (finished ones). Returns the jobs that changed."""
    changed: dict[int, Job] = {}
    current = dict(jobs)
    outside = {d for j in jobs.values() if j.state is State.WAITING for d in (*j.depends_on, *j.depends_any)}
    known = dict(lookup([d for d in outside if d not in current]))
    while True:
        moved = False
        for job_id, job in list(current.items()):
            if job.state is not State.WAITING:
                continue
            new = settle(job, lambda d: current[d].state if d in current else known.get(d), at)
            if new != job:
                current[job_id] = changed[job_id] = new
                moved = moved or new.state is not State.WAITING
        if not moved:
            return changed


def retry_delay(job: Job, max_delay_s: float, rng: random.Random | None = None) -> float:
    """Back-off before attempt `job.attempt + 1`: retry_delay doubled per attempt made, with
    ±10 % jitter (so many failing jobs do not retry in lockstep), capped at max_delay_s."""
    base = job.retry_delay_s * 2.0 ** min(max(0, job.attempt - 1), 64)  # 2**64 s: past any cap
    if rng is None:
        import random  # here, not at import: only a worker recording a failure needs it

        rng = random.Random()
    jitter = float(rng.uniform(0.9, 1.1))
    return float(min(max_delay_s, base * jitter))


def should_retry(job: Job, exit_code: int | None, reason: str | None) -> bool:
    """A failed attempt is retried while attempts remain, never after a cancel, and with
    --retry-on only for those exit codes."""
    if reason in ("cancelled", "requeue") or job.attempt > job.max_retries:
        return False
    return not job.retry_on or exit_code in job.retry_on


_NONE: Mapping[str, Any] = MappingProxyType({})


class Capacity(NamedTuple):
    """What one worker can give right now, and the limits it must respect."""

    free_slots: int
    total_slots: int
    free_gpu_ids: tuple[int, ...] = ()
    """GPU ids not in use on this worker; a claimed job gets the first ones it needs."""
    total_gpus: int = 0
    queues: frozenset[str] | None = None
    """Queues this worker serves; None for all."""
    paused: frozenset[str] = frozenset()
    """Paused queue names; ALL_QUEUES pauses every queue."""
    queue_limits: Mapping[str, int] = _NONE
    """Most jobs of a queue running at once, across all workers."""
    running_per_queue: Mapping[str, int] = _NONE
    rates: Mapping[str, tuple[int, float]] = _NONE
    """Start rates from config: queue -> (most starts, per window in seconds)."""
    rate_room: Mapping[str, int] = _NONE
    """Filled in by the store (`rate_room`): how many more jobs of a rated queue may start now."""


RATE_HORIZON_S = 3600.0
"""The longest rate window (`N/h`): older starts never matter and are dropped."""


def rate_room(rates: Mapping[str, tuple[int, float]], starts: Mapping[str, Sequence[float]], at: float) -> dict[str, int]:
    """How many more jobs of each rated queue may start at `at`: the limit minus the starts
    within the window that ends now (a sliding window, so no burst at a window's edge)."""
    return {q: max(0, n - sum(1 for t in starts.get(q, ()) if t > at - window)) for q, (n, window) in rates.items()}


def queue_room(pending: Mapping[str, int], adding: Mapping[str, int], limits: Mapping[str, int]) -> None:
    """Refuse (QueueFull) a submit that would take a queue past its `max_queued`: `pending`
    counts the queue's queued and waiting jobs, `adding` the new ones of this submit."""
    for queue, n in sorted(adding.items()):
        limit = limits.get(queue, 0)
        if limit and pending.get(queue, 0) + n > limit:
            raise QueueFull(f"queue {queue} is full ({pending.get(queue, 0)} jobs)")


def unfit_reason(job: Job, workers: Sequence[Mapping[str, Any]]) -> str | None:
    """Why no live worker could ever run `job`, or None (also when no worker serves its queue:
    then it simply waits for one)."""
    serving = [w for w in workers if w.get("queues") is None or job.queue in w["queues"]]
    if not serving:
        return None
    slots = max(w["slots"] for w in serving)
    gpus = max(w["gpus"] for w in serving)
    if job.cpus > slots:
        return f"needs {_count(job.cpus, 'slot')}; the largest worker has {slots}"
    if job.gpus > gpus:
        return f"needs {_count(job.gpus, 'GPU')}; the largest worker has {gpus}"
    return None


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def fits_ever(job: Job, cap: Capacity) -> bool:
    return job.cpus <= cap.total_slots and job.gpus <= cap.total_gpus


def pick(candidates: Iterable[Job], cap: Capacity, *, in_order: bool = False) -> list[Job]:
    """The queued jobs to start now, in the order they start. With `in_order`, `candidates`
    already come highest priority, then lowest id, first (and may be a lazy iterable: pick
    stops looking once nothing more fits)."""
    chosen: list[Job] = []
    free_slots, free_gpus = cap.free_slots, len(cap.free_gpu_ids)
    running = dict(cap.running_per_queue)
    room = dict(cap.rate_room)
    for job in candidates if in_order else sorted(candidates, key=lambda j: (-j.priority, j.id)):
        if job.state is not State.QUEUED or not fits_ever(job, cap):
            continue
        if cap.queues is not None and job.queue not in cap.queues:
            continue
        if ALL_QUEUES in cap.paused or job.queue in cap.paused:
            continue
        limit = cap.queue_limits.get(job.queue)
        if limit is not None and running.get(job.queue, 0) >= limit:
            continue
        if room.get(job.queue, 1) <= 0:
            continue
        if job.cpus > free_slots or job.gpus > free_gpus:
            break
        if job.queue in room:
            room[job.queue] -= 1
        chosen.append(job)
        free_slots -= job.cpus
        free_gpus -= job.gpus
        running[job.queue] = running.get(job.queue, 0) + 1
    return chosen
