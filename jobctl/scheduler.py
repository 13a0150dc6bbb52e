"""Which queued jobs a worker starts next: a pure function, shared by every store.

Order: highest priority first, then oldest (lowest id) first. A job that needs more slots
than are free blocks the jobs behind it (no backfilling), so a big job is never starved by
a stream of small ones; the worker simply waits for running jobs to free their slots. A job
that needs more slots than the worker has at all can never start there and is passed over.
"""

from __future__ import annotations

from collections.abc import Iterable

from jobctl.model import Job


def pick(candidates: Iterable[Job], *, free_slots: int, total_slots: int) -> list[Job]:
    chosen: list[Job] = []
    for job in sorted(candidates, key=lambda j: (-j.priority, j.id)):
        if job.cpus > total_slots:
            continue
        if job.cpus > free_slots:
            break
        chosen.append(job)
        free_slots -= job.cpus
    return chosen
