"""The storage contract (jobctl/store/base.py), run against every store backend."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobctl.errors import Conflict, NotFound, StoreDamaged, StoreError, UsageError
from jobctl.jobdir import jobs_prefix
from jobctl.model import FINISHED, Job, JobHead, State, WorkerRef, public_dict, transition
from jobctl.scheduler import Capacity
from jobctl.store.base import Guarded, JobSpec, Store
from jobctl.store.jsonfile import FLUSH_AT, JsonStore

WORKER = WorkerRef("host", 1)


@pytest.fixture(params=["json", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Every backend: the same tests, the same promises."""
    if request.param == "json":
        yield JsonStore(tmp_path / "s")
        return
    import psycopg

    from jobctl.store.postgres import PostgresStore

    url = request.getfixturevalue("postgres_url")
    with psycopg.connect(url, autocommit=True) as admin:  # a fresh database per test
        name = f"t_{abs(hash(request.node.nodeid)) % 10**12}"
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    pg = PostgresStore(url.rsplit("/", 1)[0] + "/" + name, output_root=tmp_path / "out")
    yield pg
    pg.close()


json_only = pytest.mark.parametrize("store", ["json"], indirect=True)


def spec(*command: str, **kw: object) -> JobSpec:
    return JobSpec(Job(id=0, command=command or ("true",), cwd="/", created_at=0.0, **kw), {"A": "1"})  # type: ignore[arg-type]


def claim(store: Store, slots: int = 1, queues: list[str] | None = None) -> list[Job]:
    cap = Capacity(free_slots=slots, total_slots=slots, queues=None if queues is None else frozenset(queues))
    return store.claim(WORKER, cap, at=100.0)


def finish(store: Store, job: Job, to: State = State.COMPLETED) -> Job:
    [done] = store.update([Guarded(transition(job, to, at=101.0, exit_code=0), job.state, job.attempt)])
    return done


def test_submit_allocates_increasing_ids_and_get_returns_the_job(store: Store) -> None:
    a, b = store.submit([spec("echo", "a"), spec("echo", "b")], at=1.0)
    [c] = store.submit([spec("echo", "c")], at=2.0)
    assert (a.id, b.id, c.id) == (1, 2, 3)
    got = store.get(2)
    assert got.command == ("echo", "b") and got.state is State.QUEUED and got.attempt == 0
    assert store.env(got) == {"A": "1"}
    with pytest.raises(NotFound):
        store.get(4)


def test_query_filters_by_state_and_queue(store: Store) -> None:
    store.submit([spec(queue="a"), spec(queue="b"), spec(queue="a")], at=1.0)
    [first] = claim(store)
    finish(store, first)
    assert [j.id for j in store.query()] == [1, 2, 3]
    assert [j.id for j in store.query(queues=["a"])] == [1, 3]
    assert [j.id for j in store.query(states=[State.QUEUED])] == [2, 3]
    assert [j.id for j in store.query(states=FINISHED, queues=["a"])] == [1]


def test_claim_takes_highest_priority_first_then_oldest(store: Store) -> None:
    store.submit([spec(priority=0), spec(priority=10), spec(priority=0), spec(priority=10)], at=1.0)
    order = []
    while jobs := claim(store):
        order += [j.id for j in jobs]
    assert order == [2, 4, 1, 3]


def test_claim_counts_the_attempt_and_never_hands_out_a_job_twice(store: Store) -> None:
    store.submit([spec(), spec(), spec()], at=1.0)
    first = claim(store, slots=2)
    second = claim(store, slots=2)
    assert [j.id for j in first] == [1, 2] and [j.id for j in second] == [3]
    assert all(j.state is State.RUNNING and j.attempt == 1 and j.worker == WORKER for j in first + second)
    assert claim(store, slots=2) == []


def test_claim_respects_free_slots_and_queues(store: Store) -> None:
    store.submit([spec(cpus=2, queue="gpu"), spec(queue="cpu"), spec(cpus=3)], at=1.0)
    assert [j.id for j in claim(store, slots=1, queues=["gpu"])] == []
    assert [j.id for j in claim(store, slots=2, queues=["gpu"])] == [1]
    # job 3 needs more slots than a 2-slot worker has at all: passed over, not blocking job 2
    assert [j.id for j in store.claim(WORKER, Capacity(free_slots=2, total_slots=2), at=1.0)] == [2]


def test_update_is_guarded_by_state_and_attempt_and_all_or_none(store: Store) -> None:
    store.submit([spec(), spec()], at=1.0)
    [one] = claim(store)
    two = store.get(2)
    stale = Guarded(transition(two, State.CANCELLED, at=2.0), State.RUNNING, 1)  # 2 is queued
    good = Guarded(transition(one, State.COMPLETED, at=2.0), State.RUNNING, 1)
    with pytest.raises(Conflict):
        store.update([good, stale])
    assert store.get(1).state is State.RUNNING  # nothing written
    with pytest.raises(Conflict):
        store.update([Guarded(transition(one, State.COMPLETED, at=2.0), State.RUNNING, 2)])
    store.update([good])
    assert store.get(1).state is State.COMPLETED


def test_delete_removes_only_finished_jobs_that_did_not_change(store: Store) -> None:
    store.submit([spec(), spec(), spec()], at=1.0)
    a, b = claim(store, slots=2)
    done_a, done_b = finish(store, a), finish(store, b, State.FAILED)
    retried = transition(done_b, State.QUEUED, at=3.0)
    store.update([Guarded(retried, State.FAILED, 1)])
    removed = store.delete([done_a, done_b, store.get(3)])
    assert [j.id for j in removed] == [1]
    assert [j.id for j in store.query()] == [2, 3]
    [new] = store.submit([spec()], at=4.0)
    assert new.id == 4  # ids are never reused


def finish_all(store: Store, jobs: list[Job], states: dict[int, State] | None = None) -> list[Job]:
    """Finish running `jobs` in one write, job i at 1000 + i + 0.123456789 (a time no short
    float format keeps), as `states` says (default completed)."""
    states = states or {}
    return store.update([Guarded(transition(j, states.get(j.id, State.COMPLETED), at=1000 + j.id + 0.123456789,
                                            exit_code=0), j.state, j.attempt) for j in jobs])


def test_heads_list_every_job_in_id_order(store: Store) -> None:
    n = FLUSH_AT + 6  # enough finished jobs for the JSON store to move some to its shards
    store.submit([spec() for _ in range(n)], at=1.0)
    running = claim(store, slots=n - 2)
    assert [j.id for j in running] == list(range(1, n - 1))
    finish_all(store, running[:-1], {5: State.FAILED, 7: State.CANCELLED})
    [five] = store.update([Guarded(transition(store.get(5), State.QUEUED, at=2000.0), State.FAILED, 1)])  # a retry
    expected = [JobHead(i, {7: State.CANCELLED}.get(i, State.COMPLETED), 1, 1000 + i + 0.123456789)
                for i in range(1, n - 2)]
    expected[4] = JobHead(5, State.QUEUED, 1, None)
    expected += [JobHead(n - 2, State.RUNNING, 1, None), JobHead(n - 1, State.QUEUED, 0, None),
                 JobHead(n, State.QUEUED, 0, None)]
    assert store.heads() == expected
    assert store.heads() == [JobHead(j.id, j.state, j.attempt, j.finished_at) for j in store.query()]
    [again] = claim(store, queues=[five.queue])  # job 5 is the oldest queued one
    assert again.id == 5 and again.attempt == 2
    assert store.heads()[4] == JobHead(5, State.RUNNING, 2, None)


def test_delete_of_heads_removes_only_finished_jobs_still_as_listed(store: Store) -> None:
    n = FLUSH_AT + 6
    store.submit([spec(queue="b" if i == 3 else "a") for i in range(1, n + 1)], at=1.0)
    running = claim(store, slots=n - 1)
    finish_all(store, running[:-1], {2: State.FAILED, 3: State.FAILED})
    before = store.heads()
    assert [(h.id, h.state) for h in before[:3]] == [(1, State.COMPLETED), (2, State.FAILED), (3, State.FAILED)]
    assert before[-2:] == [JobHead(n - 1, State.RUNNING, 1, None), JobHead(n, State.QUEUED, 0, None)]
    # meanwhile job 2 is retried (its state changes) and job 3 retried and failed again (its attempt changes)
    store.update([Guarded(transition(store.get(2), State.QUEUED, at=2000.0), State.FAILED, 1),
                  Guarded(transition(store.get(3), State.QUEUED, at=2000.0), State.FAILED, 1)])
    [three] = claim(store, queues=["b"])
    assert three.id == 3 and three.attempt == 2
    finish_all(store, [three], {3: State.FAILED})
    forged = [JobHead(n, State.COMPLETED, 0, None), JobHead(n - 1, State.COMPLETED, 1, None)]  # unfinished jobs
    removed = store.delete([*before, *forged])
    assert [h.id for h in removed] == [1, *range(4, n - 1)]
    assert removed == [h for h in before if h.id in {1, *range(4, n - 1)}]
    assert store.heads() == [JobHead(2, State.QUEUED, 1, None), JobHead(3, State.FAILED, 2, 1003.123456789),
                             JobHead(n - 1, State.RUNNING, 1, None), JobHead(n, State.QUEUED, 0, None)]
    with pytest.raises(NotFound):
        store.get(1)
    assert [j.id for j in store.query()] == [2, 3, n - 1, n]
    current_three = store.heads()[1]
    assert store.delete([current_three]) == [current_three]
    assert store.delete([current_three]) == []  # already gone
    assert store.delete([]) == []
    assert [h.id for h in store.heads()] == [2, n - 1, n]


def test_public_json_is_render_of_query_with_the_same_filters(store: Store) -> None:
    n = FLUSH_AT + 6
    store.submit([spec("echo", str(i), queue="a" if i % 2 else "b") for i in range(1, n + 1)], at=1.0)
    running = claim(store, slots=n - 2)
    finish_all(store, running[:-1], {2: State.FAILED, 9: State.FAILED})
    prefix = jobs_prefix(store.root)

    def render(job: Job) -> bytes:
        return json.dumps(public_dict(job, prefix + str(job.id), 5000.0), separators=(",", ":")).encode()

    def state(i: int) -> State:
        if i <= n - 3:
            return State.FAILED if i in (2, 9) else State.COMPLETED
        return State.RUNNING if i == n - 2 else State.QUEUED

    for states, queues in [(None, None), (FINISHED, None), (None, ["a"]), ([State.FAILED], None),
                           ([State.QUEUED, State.RUNNING], ["b"]), (FINISHED, ["b"]), (None, ["none"]), ([], None)]:
        got = store.public_json(states=states, queues=queues, render=render)
        assert got == [render(j) for j in store.query(states=states, queues=queues)]
        ids = [i for i in range(1, n + 1)
               if (states is None or state(i) in states) and (queues is None or ("a" if i % 2 else "b") in queues)]
        assert [json.loads(text)["id"] for text in got] == ids, (states, queues)
        assert [json.loads(text)["state"] for text in got] == [state(i).value for i in ids]
        assert [json.loads(text)["command"] for text in got] == [["echo", str(i)] for i in ids]
    assert len(store.public_json(render=render)) == n


@json_only
def test_finished_jobs_move_to_shards_and_stay_readable(store: Store, tmp_path: Path) -> None:
    n = FLUSH_AT + 5
    store.submit([spec() for _ in range(n)], at=1.0)
    for job in claim(store, slots=n):
        finish(store, job, State.FAILED if job.id == 7 else State.COMPLETED)
    assert isinstance(store, JsonStore)
    shard = store.root / "done" / "0.jsonl"
    # flushed once more than FLUSH_AT had finished; the rest wait in state.json for the next batch
    assert shard.exists() and len(shard.read_bytes().splitlines()) == FLUSH_AT + 1
    assert len(store.query(states=FINISHED)) == n
    assert store.get(7).state is State.FAILED
    # a retried job's new record wins over its old line in the shard
    store.update([Guarded(transition(store.get(7), State.QUEUED, at=5.0), State.FAILED, 1)])
    assert store.get(7).state is State.QUEUED
    assert [j.id for j in store.query(states=[State.QUEUED])] == [7]
    assert store.delete([j for j in store.query() if j.finished])
    assert not shard.exists() and [j.id for j in store.query()] == [7]


@json_only
def test_a_torn_last_line_is_recovered(store: Store) -> None:
    assert isinstance(store, JsonStore)
    store.submit([spec() for _ in range(FLUSH_AT + 1)], at=1.0)
    for job in claim(store, slots=FLUSH_AT + 1):
        finish(store, job)
    shard = store.root / "done" / "0.jsonl"
    with open(shard, "ab") as f:
        f.write(b'{"id":999,"comm')  # a crash in the middle of an append
    assert len(store.query()) == FLUSH_AT + 1
    store.submit([spec() for _ in range(FLUSH_AT + 1)], at=1.0)
    for job in claim(store, slots=FLUSH_AT + 1):
        finish(store, job)
    assert b'{"id":999' not in shard.read_bytes()
    assert len(store.query(states=[State.COMPLETED])) == 2 * (FLUSH_AT + 1)


@json_only
@pytest.mark.parametrize("target", ["state.json", "done/0.jsonl"])
def test_damage_is_reported_naming_the_file_and_never_rewritten(store: Store, target: str) -> None:
    assert isinstance(store, JsonStore)
    store.submit([spec() for _ in range(FLUSH_AT + 3)], at=1.0)
    for job in claim(store, slots=FLUSH_AT + 3):
        finish(store, job)
    store.submit([spec()], at=2.0)
    path = store.root / target
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = b"XXXXXXXX"
    path.write_bytes(bytes(data))
    with pytest.raises(StoreDamaged, match=str(path)):
        store.query()
    with pytest.raises(StoreDamaged, match=str(path)):  # a change that would write into it
        if target == "state.json":
            store.submit([spec()], at=3.0)
        else:
            store.submit([spec() for _ in range(FLUSH_AT)], at=3.0)
            for job in claim(store, slots=FLUSH_AT):
                finish(store, job)
    assert path.read_bytes() == bytes(data)


def test_a_directory_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a jobctl store"):
        JsonStore(tmp_path)
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_store_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = JsonStore(tmp_path / "s")
        store.submit([spec() for _ in range(FLUSH_AT + 1)], at=1.0)
        for job in claim(store, slots=FLUSH_AT + 1):
            finish(store, job)
    finally:
        os.umask(old)
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700
    for dirpath, dirnames, filenames in os.walk(tmp_path / "s"):
        for name in dirnames:
            assert Path(dirpath, name).stat().st_mode & 0o077 == 0, name
        for name in filenames:
            assert Path(dirpath, name).stat().st_mode & 0o077 == 0, name


def test_job_records_round_trip_through_the_store(store: Store) -> None:
    [job] = store.submit([spec("a b", "c", name="n", labels=("x", "y"), priority=-3, timeout_s=5.0)], at=1.5)
    assert store.get(job.id) == job
    [running] = claim(store)
    assert store.get(job.id) == running == job._replace(state=State.RUNNING, attempt=1, started_at=100.0, worker=WORKER)


def test_a_failed_dependency_fails_the_whole_chain_in_the_same_write(store: Store) -> None:
    [a] = store.submit([spec()], at=1.0)
    [b] = store.submit([spec(depends_on=(a.id,))], at=1.0)
    [c] = store.submit([spec(depends_on=(b.id,))], at=1.0)
    assert (store.get(b.id).state, store.get(b.id).waiting_for) == (State.WAITING, f"dependency {a.id}")
    [running] = claim(store)
    finish(store, running, State.FAILED)
    assert [(j.state, j.error) for j in (store.get(b.id), store.get(c.id))] == [
        (State.FAILED, f"dependency {a.id} failed"), (State.FAILED, f"dependency {b.id} failed")]
    with pytest.raises(UsageError, match="unknown dependency 99"):
        store.submit([spec(depends_on=(99,))], at=2.0)
    assert store.next_id() == c.id + 1  # nothing was added


def test_unique_keys_and_paused_queues(store: Store) -> None:
    [first] = store.submit([spec(unique_key="k", queue="q")], at=1.0)
    [again] = store.submit([spec(unique_key="k", queue="q")], at=1.0)
    assert again.id == first.id and len(store.query()) == 1
    store.set_paused("q", True)
    assert store.paused() == {"q"} and claim(store) == []
    store.set_paused("q", False)
    [running] = claim(store)
    finish(store, running)
    [new] = store.submit([spec(unique_key="k", queue="q")], at=2.0)
    assert new.id != first.id  # a finished job no longer holds its key


def test_concurrent_claimers_never_get_the_same_job(store: Store, tmp_path: Path) -> None:
    import threading

    store.submit([spec() for _ in range(120)], at=1.0)
    if isinstance(store, JsonStore):
        others = [JsonStore(store.root) for _ in range(4)]
    else:
        from jobctl.store.postgres import PostgresStore

        others = [PostgresStore(store.location, output_root=tmp_path) for _ in range(4)]
    got: list[list[int]] = [[] for _ in others]
    start = threading.Barrier(len(others))

    def drain(n: int) -> None:
        start.wait()
        while jobs := others[n].claim(WorkerRef("host", n), Capacity(free_slots=1, total_slots=1), at=1.0):
            got[n] += [j.id for j in jobs]

    threads = [threading.Thread(target=drain, args=(n,)) for n in range(len(others))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    claimed = [i for ids in got for i in ids]
    assert sorted(claimed) == list(range(1, 121))  # every job once, none twice
    if not isinstance(store, JsonStore):
        # Separate connections really claim at once. (JSON stores in one process take turns on
        # the flock; across processes, tests/test_reliability.py shows the same property.)
        assert sum(1 for ids in got if ids) >= 2
    for other in others:
        getattr(other, "close", lambda: None)()


# --- limits and reuse (issue 7) ----------------------------------------------------------------


def test_max_queued_refuses_a_whole_batch_that_would_overflow_and_adds_nothing(store: Store) -> None:
    from jobctl.errors import QueueFull

    store.submit([spec(queue="q"), spec(queue="q", held=True)], at=1.0, max_queued={"q": 3})  # queued + waiting
    with pytest.raises(QueueFull, match=r"^queue q is full \(2 jobs\)$"):
        store.submit([spec(queue="other"), spec(queue="q"), spec(queue="q")], at=2.0, max_queued={"q": 3})
    assert [j.id for j in store.query()] == [1, 2]  # nothing of the batch, not even the other queue's
    [third] = store.submit([spec(queue="q")], at=3.0, max_queued={"q": 3})
    [running] = claim(store)  # a started job leaves room: only queued and waiting ones count
    store.submit([spec(queue="q")], at=4.0, max_queued={"q": 3, "other": 0})
    with pytest.raises(QueueFull):
        store.submit([spec(queue="q")], at=5.0, max_queued={"q": 3})
    assert running.id == 1 and store.submit([spec(queue="q")], at=6.0) != []  # no limit given: no limit


def test_a_unique_submit_into_a_full_queue_that_adds_nothing_is_not_refused(store: Store) -> None:
    [a] = store.submit([spec(unique_key="k")], at=1.0, max_queued={"default": 1})
    [again] = store.submit([spec(unique_key="k")], at=2.0, max_queued={"default": 1})
    assert again.id == a.id


def test_reuse_returns_the_newest_completed_job_with_the_key_while_it_is_stored(store: Store) -> None:
    [a] = store.submit([spec(unique_key="k")], at=1.0)
    finish(store, claim(store)[0])
    [b] = store.submit([spec(unique_key="k")], at=2.0)  # without reuse, finished jobs do not count
    assert b.id == a.id + 1
    done_b = finish(store, claim(store)[0])
    for _ in range(FLUSH_AT + 2):  # push both out of the JSON store's hot state into its shards
        store.submit([spec()], at=3.0)
        finish(store, claim(store)[0])
    [reused] = store.submit([JobSpec(spec().job._replace(unique_key="k"), {}, reuse=True)], at=4.0)
    assert reused.id == b.id and reused.state is State.COMPLETED
    [failed] = store.submit([spec(unique_key="f")], at=5.0)
    finish(store, claim(store)[0], State.FAILED)
    [fresh] = store.submit([JobSpec(spec().job._replace(unique_key="f"), {}, reuse=True)], at=6.0)
    assert fresh.id != failed.id and fresh.state is State.QUEUED  # only completed jobs are reused
    store.delete([done_b])
    [after_cleanup] = store.submit([JobSpec(spec().job._replace(unique_key="k"), {}, reuse=True)], at=7.0)
    assert after_cleanup.id == a.id  # b is gone; a, older, is still stored


def test_claims_keep_to_a_queue_start_rate_across_workers(store: Store) -> None:
    store.submit([spec(queue="r") for _ in range(5)] + [spec(queue="free")], at=1.0)
    rates = {"r": (2, 10.0)}

    def claim_at(worker: int, at: float) -> list[int]:
        cap = Capacity(free_slots=4, total_slots=4, rates=rates)
        return [j.id for j in store.claim(WorkerRef("host", worker), cap, at=at)]

    assert claim_at(1, 100.0) == [1, 2, 6]  # two of the rated queue; the other queue is not held back
    assert claim_at(2, 105.0) == []  # another worker: the same window
    assert claim_at(2, 110.5) == [3, 4]  # the window slid past both starts
    assert claim_at(1, 115.0) == []
    assert claim_at(1, 120.6) == [5]


@json_only
def test_reuse_in_a_store_written_before_the_reuse_index_builds_it_from_the_shards(store: Store) -> None:
    assert isinstance(store, JsonStore)
    [a] = store.submit([spec(unique_key="k")], at=1.0)
    finish(store, claim(store)[0])
    for _ in range(FLUSH_AT + 1):
        store.submit([spec()], at=2.0)
        finish(store, claim(store)[0])
    with store._transaction() as hot:  # as an older jobctl left it: no index in state.json
        hot.reuse, hot.dirty = None, True
    assert b'"reuse"' not in (store.root / "state.json").read_bytes()
    [reused] = store.submit([JobSpec(spec().job._replace(unique_key="k"), {}, reuse=True)], at=3.0)
    assert reused.id == a.id and b'"reuse"' in (store.root / "state.json").read_bytes()  # kept from now on


def test_history_filters_by_job_and_time_and_follows_by_offset(store: Store) -> None:
    from jobctl.model import iso

    base = 1_900_000_000.0
    store.append_history([{"at": iso(base + k), "job": j, "event": f"e{k}"} for k, j in enumerate([1, 2, 1, None, 2])])
    everything, offset = store.history()
    assert [e["event"] for e in everything] == ["e0", "e1", "e2", "e3", "e4"]
    assert [e["event"] for e in store.history(job_id=1)[0]] == ["e0", "e2"]
    assert [e["event"] for e in store.history(since=base + 2)[0]] == ["e2", "e3", "e4"]
    assert [e["event"] for e in store.history(job_id=2, since=base + 2)[0]] == ["e4"]
    # Following: only what came after the offset, and the offset moves past events that do
    # not match, so they are not looked at again.
    assert store.history(offset=offset) == ([], offset)
    store.append_history([{"at": iso(base + 10), "job": 2, "event": "e5"}, {"at": iso(base + 11), "job": 1, "event": "e6"}])
    newer, offset2 = store.history(job_id=1, offset=offset)
    assert [e["event"] for e in newer] == ["e6"] and offset2 != offset
    assert store.history(job_id=2, offset=offset2) == ([], offset2)
    assert [e["event"] for e in store.history(job_id=2, offset=offset)[0]] == ["e5"]
