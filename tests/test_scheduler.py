"""Property tests of the pure scheduling rules in jobctl.scheduler: pick, settle, back-off, retry."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jobctl.model import FINISHED, Job, State, iso
from jobctl.scheduler import ALL_QUEUES, Capacity, fits_ever, pick, retry_delay, settle, settle_all, should_retry

QUEUES = ("a", "b", "c")
AT = 1_800_000_000.0


def make_job(job_id: int, **fields: object) -> Job:
    return Job(id=job_id, command=("true",), cwd="/", created_at=AT - 100, **fields)  # type: ignore[arg-type]


# --- pick ------------------------------------------------------------------------------------


@st.composite
def candidates(draw: st.DrawFn) -> list[Job]:
    """Jobs with distinct ids, mostly queued, in a random order (pick must not rely on it)."""
    n = draw(st.integers(0, 12))
    ids = draw(st.lists(st.integers(1, 60), min_size=n, max_size=n, unique=True))
    jobs = [
        make_job(
            i,
            priority=draw(st.integers(-2, 2)),
            queue=draw(st.sampled_from(QUEUES)),
            cpus=draw(st.integers(1, 4)),
            gpus=draw(st.sampled_from([0, 0, 0, 1, 2, 3])),
            state=draw(st.sampled_from([State.QUEUED] * 6 + [State.WAITING, State.RUNNING, State.COMPLETED])),
        )
        for i in ids
    ]
    return draw(st.permutations(jobs))


@st.composite
def capacities(draw: st.DrawFn) -> Capacity:
    total_slots = draw(st.integers(1, 6))
    total_gpus = draw(st.integers(0, 4))
    free_gpus = draw(st.lists(st.sampled_from(range(total_gpus)), unique=True)) if total_gpus else []
    limited = draw(st.lists(st.sampled_from(QUEUES), unique=True))
    return Capacity(
        free_slots=draw(st.integers(0, total_slots)),
        total_slots=total_slots,
        free_gpu_ids=tuple(sorted(free_gpus)),
        total_gpus=total_gpus,
        queues=draw(st.one_of(st.none(), st.frozensets(st.sampled_from(QUEUES), min_size=1))),
        paused=draw(st.frozensets(st.sampled_from((*QUEUES, ALL_QUEUES)), max_size=2)),
        queue_limits={q: draw(st.integers(1, 3)) for q in limited},
        running_per_queue={q: draw(st.integers(0, 3)) for q in QUEUES},
    )


def eligible(job: Job, cap: Capacity) -> bool:
    """Runnable on this worker at all: queued, in a served queue that is not paused, and no
    bigger than the worker (whatever is running now)."""
    return (
        job.state is State.QUEUED
        and (cap.queues is None or job.queue in cap.queues)
        and ALL_QUEUES not in cap.paused
        and job.queue not in cap.paused
        and fits_ever(job, cap)
    )


def order(job: Job) -> tuple[int, int]:
    return (-job.priority, job.id)


@settings(max_examples=150, deadline=None)
@given(candidates(), capacities())
def test_pick_never_exceeds_free_slots_gpus_or_queue_limits(jobs: list[Job], cap: Capacity) -> None:
    chosen = pick(jobs, cap)
    assert sum(j.cpus for j in chosen) <= cap.free_slots
    assert sum(j.gpus for j in chosen) <= len(cap.free_gpu_ids)
    assert len({j.id for j in chosen}) == len(chosen)
    for q, limit in cap.queue_limits.items():
        already, more = cap.running_per_queue.get(q, 0), sum(1 for j in chosen if j.queue == q)
        assert more == 0 if already >= limit else already + more <= limit


@settings(max_examples=150, deadline=None)
@given(candidates(), capacities())
def test_pick_only_takes_runnable_jobs_of_served_unpaused_queues(jobs: list[Job], cap: Capacity) -> None:
    for job in pick(jobs, cap):
        assert job.state is State.QUEUED
        assert cap.queues is None or job.queue in cap.queues
        assert ALL_QUEUES not in cap.paused and job.queue not in cap.paused


@settings(max_examples=150, deadline=None)
@given(candidates(), capacities())
def test_pick_follows_priority_then_fifo_and_skips_a_job_only_for_a_reason(jobs: list[Job], cap: Capacity) -> None:
    """Walk the eligible jobs in priority-then-id order: each one is chosen, or its queue is at
    its limit, or it does not fit what is left, and then nothing behind it is chosen (no job
    overtakes a bigger one: the documented rule against starving big jobs)."""
    chosen = pick(jobs, cap)
    assert chosen == sorted(chosen, key=order)
    chosen_ids = {j.id for j in chosen}
    slots, gpus = cap.free_slots, len(cap.free_gpu_ids)
    running = dict(cap.running_per_queue)
    blocked_by: Job | None = None
    for job in sorted((j for j in jobs if eligible(j, cap)), key=order):
        limit = cap.queue_limits.get(job.queue)
        at_limit = limit is not None and running.get(job.queue, 0) >= limit
        if blocked_by is not None:
            assert job.id not in chosen_ids, f"job {job.id} overtook job {blocked_by.id}"
            continue
        if job.id in chosen_ids:
            assert not at_limit
            slots -= job.cpus
            gpus -= job.gpus
            running[job.queue] = running.get(job.queue, 0) + 1
        elif not at_limit:
            assert job.cpus > slots or job.gpus > gpus, f"job {job.id} fits but was skipped"
            blocked_by = job


@settings(max_examples=120, deadline=None)
@given(candidates(), capacities())
def test_the_first_runnable_job_that_fits_is_chosen(jobs: list[Job], cap: Capacity) -> None:
    runnable = sorted(
        (j for j in jobs if eligible(j, cap)
         and cap.running_per_queue.get(j.queue, 0) < cap.queue_limits.get(j.queue, 10**6)),
        key=order,
    )
    assume(runnable)
    first = runnable[0]
    chosen = pick(jobs, cap)
    if first.cpus <= cap.free_slots and first.gpus <= len(cap.free_gpu_ids):
        assert chosen[:1] == [first]
    else:
        assert chosen == []


def test_pick_examples() -> None:
    jobs = [
        make_job(1, priority=0),
        make_job(2, priority=10, queue="b"),
        make_job(3, priority=10),
        make_job(4, priority=0, cpus=2),
        make_job(5, priority=0),
    ]
    cap = Capacity(free_slots=3, total_slots=4)
    assert [j.id for j in pick(jobs, cap)] == [2, 3, 1]  # job 4 needs 2 slots, 1 left: 5 waits behind it
    assert [j.id for j in pick(jobs, Capacity(free_slots=4, total_slots=4, paused=frozenset({"b"})))] == [3, 1, 4]
    limited = Capacity(free_slots=4, total_slots=4, queue_limits={"default": 1}, running_per_queue={"default": 0})
    assert [j.id for j in pick(jobs, limited)] == [2, 3]
    assert pick(jobs, Capacity(free_slots=4, total_slots=4, paused=frozenset({ALL_QUEUES}))) == []
    assert [j.id for j in pick(jobs, Capacity(free_slots=4, total_slots=4, queues=frozenset({"b"})))] == [2]
    gpu = [make_job(1, gpus=2), make_job(2, gpus=1), make_job(3, gpus=3)]  # 3 can never fit: passed over
    assert [j.id for j in pick(gpu, Capacity(free_slots=4, total_slots=4, free_gpu_ids=(1,), total_gpus=2))] == []
    assert [j.id for j in pick(gpu, Capacity(free_slots=4, total_slots=4, free_gpu_ids=(0, 1), total_gpus=2))] == [1]


@settings(max_examples=120, deadline=None)
@given(candidates(), capacities(), st.randoms(use_true_random=False))
def test_every_runnable_job_that_fits_is_eventually_picked(jobs: list[Job], cap: Capacity, rnd: random.Random) -> None:
    """Simulate one worker: each round it claims what `pick` gives it, then one running job
    (chosen at random) finishes. Every job that could ever run here gets its turn."""
    waiting = {j.id: j for j in jobs if j.state is State.QUEUED}
    runnable = {j.id for j in waiting.values() if eligible(j, cap)}
    running: list[Job] = []
    picked: list[int] = []
    gpu_ids = tuple(range(cap.total_gpus))
    for _ in range(3 * len(jobs) + 2):
        used_gpus = sum(j.gpus for j in running)
        per_queue: dict[str, int] = {}
        for j in running:
            per_queue[j.queue] = per_queue.get(j.queue, 0) + 1
        now_cap = Capacity(
            free_slots=cap.total_slots - sum(j.cpus for j in running),
            total_slots=cap.total_slots,
            free_gpu_ids=gpu_ids[used_gpus:],
            total_gpus=cap.total_gpus,
            queues=cap.queues,
            paused=cap.paused,
            queue_limits=cap.queue_limits,
            running_per_queue=per_queue,
        )
        for job in pick(waiting.values(), now_cap):
            del waiting[job.id]
            running.append(job)
            picked.append(job.id)
        if running:
            running.pop(rnd.randrange(len(running)))
        if runnable <= set(picked):
            break
    assert runnable <= set(picked), f"never picked: {sorted(runnable - set(picked))}"
    assert set(picked) <= runnable


# --- settle and settle_all -------------------------------------------------------------------


def states_from(mapping: Mapping[int, State]):  # type: ignore[no-untyped-def]
    return lambda job_id: mapping.get(job_id)


@given(st.integers(1, 8), st.sampled_from([State.FAILED, State.CANCELLED]), st.booleans())
def test_a_failure_runs_down_a_whole_chain_in_one_call(length: int, root_state: State, reverse: bool) -> None:
    """Job 1 (finished, outside the waiting set) failed or was cancelled; 2 waits on 1, 3 on
    2, ...: one settle_all fails them all, each naming its own dependency."""
    chain = {i: make_job(i, state=State.WAITING, depends_on=(i - 1,)) for i in range(2, length + 2)}
    if reverse:  # the order jobs are visited in must not matter
        chain = dict(reversed(list(chain.items())))
    changed = settle_all(chain, lambda ids: {i: root_state for i in ids if i == 1}, AT)
    assert set(changed) == set(chain)
    for i, job in changed.items():
        assert (job.state, job.error, job.reason, job.finished_at) == (
            State.FAILED, f"dependency {i - 1} failed", "dependency", AT,
        )


@st.composite
def dependency_graphs(draw: st.DrawFn) -> tuple[dict[int, Job], dict[int, State]]:
    """Finished jobs 1..k (outside), and waiting jobs k+1..n depending on lower ids."""
    k = draw(st.integers(0, 4))
    outside = {i: draw(st.sampled_from(sorted(FINISHED))) for i in range(1, k + 1)}
    n = draw(st.integers(1, 8))
    jobs: dict[int, Job] = {}
    for i in range(k + 1, k + n + 1):
        earlier = list(range(1, i))
        after = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        after_any = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=2)) if earlier else []
        jobs[i] = make_job(
            i,
            state=draw(st.sampled_from([State.WAITING] * 4 + [State.QUEUED, State.RUNNING])),
            depends_on=tuple(after),
            depends_any=tuple(after_any),
            held=draw(st.booleans()) and draw(st.booleans()),
            not_before=draw(st.sampled_from([None, None, AT - 5, AT + 5])),
            attempt=draw(st.sampled_from([0, 0, 1])),
        )
    return jobs, outside


@settings(max_examples=150, deadline=None)
@given(dependency_graphs())
def test_settle_all_reaches_a_fixed_point_that_obeys_the_rules(graph: tuple[dict[int, Job], dict[int, State]]) -> None:
    jobs, outside = graph
    waiting = {i: j for i, j in jobs.items() if j.state is State.WAITING}
    changed = settle_all(waiting, lambda ids: {i: outside[i] for i in ids if i in outside} | {
        i: jobs[i].state for i in ids if i in jobs and i not in waiting}, AT)
    assert set(changed) <= set(waiting)
    final = {**jobs, **changed}
    state = {**outside, **{i: j.state for i, j in final.items()}}
    for i, job in final.items():
        if i not in waiting:
            assert job == jobs[i]  # only waiting jobs move
            continue
        failed_deps = [d for d in job.depends_on if state[d] in (State.FAILED, State.CANCELLED)]
        if failed_deps:
            assert (job.state, job.error) == (State.FAILED, f"dependency {failed_deps[0]} failed")
            continue
        assert job.state in (State.WAITING, State.QUEUED)
        blocked = [d for d in (*job.depends_on, *job.depends_any) if state[d] not in FINISHED]
        due = job.not_before is None or job.not_before <= AT
        if job.state is State.QUEUED:
            assert not job.held and not blocked and due and job.waiting_for is None and job.not_before is None
        elif job.held:
            assert job.waiting_for == "held"
        elif blocked:
            assert job.waiting_for == f"dependency {blocked[0]}"
        else:
            assert not due
            assert job.waiting_for == ("retry back-off" if job.attempt else f"until {iso(job.not_before)}")
        if job.state is State.WAITING:  # a fixed point: settling again changes nothing
            assert settle(job, lambda d: state.get(d), AT) == job


@given(st.lists(st.sampled_from([State.COMPLETED]), max_size=3), st.lists(st.sampled_from(sorted(FINISHED)), max_size=3),
       st.sampled_from([None, AT, AT - 60]))
def test_a_job_whose_dependencies_completed_and_delay_passed_is_queued(
    after: list[State], after_any: list[State], not_before: float | None
) -> None:
    states = {i + 1: s for i, s in enumerate(after)} | {i + 10: s for i, s in enumerate(after_any)}
    job = make_job(20, state=State.WAITING, depends_on=tuple(range(1, len(after) + 1)),
                   depends_any=tuple(range(10, 10 + len(after_any))), not_before=not_before, waiting_for="x")
    new = settle(job, states_from(states), AT)
    assert (new.state, new.waiting_for, new.not_before, new.error) == (State.QUEUED, None, None, None)


def test_settle_says_what_a_job_waits_for() -> None:
    states = states_from({1: State.RUNNING, 2: State.COMPLETED, 3: State.FAILED, 4: State.QUEUED})
    wait = State.WAITING
    assert settle(make_job(9, state=wait, depends_on=(2, 1)), states, AT).waiting_for == "dependency 1"
    assert settle(make_job(9, state=wait, depends_any=(3, 4)), states, AT).waiting_for == "dependency 4"
    assert settle(make_job(9, state=wait, depends_any=(3,)), states, AT).state is State.QUEUED
    assert settle(make_job(9, state=wait, held=True, depends_on=(1,)), states, AT).waiting_for == "held"
    held_but_doomed = settle(make_job(9, state=wait, held=True, depends_on=(3,)), states, AT)
    assert (held_but_doomed.state, held_but_doomed.error) == (State.FAILED, "dependency 3 failed")
    assert settle(make_job(9, state=wait, not_before=AT + 1), states, AT).waiting_for == f"until {iso(AT + 1)}"
    assert settle(make_job(9, state=wait, not_before=AT + 1, attempt=2), states, AT).waiting_for == "retry back-off"
    # a dependency that no longer exists (cleaned up) was finished
    assert settle(make_job(9, state=wait, depends_on=(77,)), states, AT).state is State.QUEUED


# --- retry_delay and should_retry ------------------------------------------------------------


@given(
    st.integers(1, 40),
    st.floats(0.01, 1000, allow_nan=False),
    st.floats(1, 10_000, allow_nan=False),
    st.integers(0, 2**32),
)
def test_retry_delay_doubles_per_attempt_with_jitter_under_the_cap(
    attempt: int, delay: float, cap: float, seed: int
) -> None:
    got = retry_delay(make_job(1, attempt=attempt, retry_delay_s=delay), cap, random.Random(seed))
    base = delay * 2 ** (attempt - 1)
    assert got <= cap
    assert min(cap, base * 0.9) * (1 - 1e-9) <= got <= min(cap, base * 1.1) * (1 + 1e-9)


@given(st.integers(1, 20), st.floats(0.01, 100, allow_nan=False), st.integers(0, 2**32))
def test_retry_delay_of_the_next_attempt_is_about_twice_as_long(attempt: int, delay: float, seed: int) -> None:
    cap = float("inf")
    first = retry_delay(make_job(1, attempt=attempt, retry_delay_s=delay), cap, random.Random(seed))
    second = retry_delay(make_job(1, attempt=attempt + 1, retry_delay_s=delay), cap, random.Random(seed))
    assert second == pytest.approx(2 * first)  # same jitter draw: exactly double


@given(st.integers(1, 5000), st.floats(0, 100, allow_nan=False))
def test_retry_delay_is_capped_for_any_attempt(attempt: int, delay: float) -> None:
    assert 0 <= retry_delay(make_job(1, attempt=attempt, retry_delay_s=delay), 3600.0) <= 3600.0


REASONS = ["exit", "signal", "timeout", "memory", "not_found", "start_failed", "cancelled", "requeue"]


@given(
    st.integers(1, 6), st.integers(0, 6), st.lists(st.integers(0, 255), max_size=3),
    st.one_of(st.none(), st.integers(0, 255)), st.sampled_from(REASONS),
)
def test_should_retry_never_after_a_cancel_and_honours_retry_on_and_max_retries(
    attempt: int, max_retries: int, retry_on: list[int], exit_code: int | None, reason: str
) -> None:
    job = make_job(1, attempt=attempt, max_retries=max_retries, retry_on=tuple(retry_on))
    expected = (
        reason not in ("cancelled", "requeue")
        and attempt <= max_retries
        and (not retry_on or exit_code in retry_on)
    )
    assert should_retry(job, exit_code, reason) is expected


def test_should_retry_examples() -> None:
    job = make_job(1, attempt=1, max_retries=2, retry_on=(75,))
    assert should_retry(job, 75, "exit")
    assert not should_retry(job, 3, "exit")
    assert not should_retry(job, None, "cancelled")
    assert not should_retry(make_job(1, attempt=3, max_retries=2), 1, "exit")  # attempts 1, 2, 3 were made
    assert should_retry(make_job(1, attempt=2, max_retries=2), None, "timeout")
    assert not should_retry(make_job(1, attempt=1, max_retries=0), 1, "exit")
