"""Reading the JSON store's shards without decoding records (jobctl/store/jsonscan.py): what
`status --json`, cleanup, `prune` and `prune_history` get that way is exactly what decoding
every record would give, and damage is still reported, never read as data."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jobctl.errors import StoreDamaged
from jobctl.jobdir import jobs_prefix
from jobctl.model import FINISHED, Job, JobHead, State, iso, public_dict
from jobctl.store import jsonfile, jsonscan
from jobctl.store.jsonfile import SHARD_SIZE, JsonStore, decode_line, encode_line
from tests.test_model import jobs_strategy, texts

AT = 1_800_000_000.0


def slow(store: JsonStore) -> Any:
    """What `status --json` printed before: public_dict of every Job from `query()`."""
    def render(job: Job) -> bytes:
        return json.dumps(public_dict(job, jobs_prefix(store.root) + str(job.id), AT), separators=(",", ":")).encode()
    return render


def put_in_shards(store: JsonStore, records: list[dict[str, Any]]) -> None:
    """Append records to their done/ shards as the store's flush does (bench_history.build too)."""
    for rec in records:
        with open(store.root / "done" / f"{rec['id'] // SHARD_SIZE}.jsonl", "ab") as f:
            f.write(encode_line(rec))


def record(job: Job, version: int = 3) -> dict[str, Any]:
    return {**job.to_record(), "_v": version}


def test_the_layouts_follow_to_record_and_public_dict() -> None:
    job = Job(id=1, command=("true",), cwd="/", created_at=1.0, state=State.COMPLETED)
    assert [k for k, _ in jsonscan.RECORD] == [*job.to_record(), "_v"]
    assert [k for k, _ in jsonscan.PUBLIC] == list(public_dict(job, "/x", AT))


# Strings that look like the record's own syntax, bytes that are not UTF-8, timestamps the fast
# ISO conversion must leave to the slow path (microseconds rounding into the milliseconds;
# before 1970; after 2096; in exponent form), numbers in exponent form.
tricky = st.one_of(texts, st.sampled_from(['","cwd":"x', '\\', '"', "\udcff\udc80", "a\tb\nc", '{"id":1,', "%s%%"]))
times = st.one_of(st.none(), st.floats(0, 4e9), st.sampled_from(
    [1795137343.9995, 1795137343.9999999, 1795137343.1239996, 0.0, -5.5, 5e9, 1.5e-7, 1795137343.0]))
finished_jobs = st.builds(
    lambda job, extra: job._replace(**extra),
    jobs_strategy,
    st.fixed_dictionaries({
        "state": st.sampled_from(sorted(FINISHED)),
        "name": st.one_of(st.none(), tricky), "cwd": tricky, "queue": tricky,
        "command": st.lists(tricky, min_size=1, max_size=3).map(tuple),
        "created_at": times.filter(lambda t: t is not None), "started_at": times, "finished_at": times,
        "not_before": times, "timeout_s": st.one_of(st.none(), st.floats(0, 1e20)),
        "submitter": st.one_of(st.none(), st.dictionaries(st.sampled_from(["cwd", "_v", "lost", "user", "id"]),
                                                          st.one_of(tricky, st.integers()), max_size=3)),
        "depends_any": st.lists(st.integers(1, 10**6), max_size=3).map(tuple),
        "retry_on": st.lists(st.integers(0, 255), max_size=3).map(tuple),
        "held": st.booleans(), "unique_key": st.one_of(st.none(), tricky),
        "mem_bytes": st.one_of(st.none(), st.integers(0, 2**40)), "gpus": st.integers(0, 8),
        "gpu_ids": st.lists(st.integers(0, 8), max_size=3).map(tuple), "waiting_for": st.one_of(st.none(), tricky),
        "lost": st.integers(0, 5),
    }),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(finished_jobs, min_size=1, max_size=8), st.data())
def test_status_json_and_heads_equal_what_decoding_every_record_gives(jobs: list[Job], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = JsonStore(Path(tmp) / "s")
        ids = data.draw(st.lists(st.integers(1, 3 * SHARD_SIZE), min_size=len(jobs), max_size=len(jobs), unique=True))
        jobs = [j._replace(id=i) for j, i in zip(jobs, ids, strict=True)]
        records = [record(j) for j in jobs]
        # an older copy of a job before its newer one, and a record of an old version's layout
        records.insert(0, record(jobs[0]._replace(attempt=jobs[0].attempt + 7), version=2))
        records.append({k: v for k, v in record(jobs[-1]).items() if k not in ("gpus", "lost")})
        put_in_shards(store, records)
        expected = [slow(store)(j) for j in store.query()]
        assert store.public_json(render=slow(store)) == expected
        assert store.heads() == [JobHead(j.id, j.state, j.attempt, j.finished_at) for j in store.query()]
        for states in ([State.FAILED], [State.COMPLETED, State.CANCELLED]):
            queues = [jobs[0].queue]
            assert store.public_json(states=states, queues=queues, render=slow(store)) == [
                slow(store)(j) for j in store.query(states=states, queues=queues)]


@settings(max_examples=500)
@given(st.floats(0, 2**32, allow_nan=False))
@example(1795137343.9995)
@example(1795137343.0)
@example(1795137343.1)
@example(0.0)
@example(1795137343.999)
@example(1795137343.0009999)
@example(1795137343.1239999)
def test_iso_json_is_iso_wherever_the_layout_lets_it_be_used(ts: float) -> None:
    text = json.dumps(ts).encode()
    if re.fullmatch(jsonscan._TIME, text):
        assert jsonscan.iso_json(text) == json.dumps(iso(ts)).encode()


def finished_store(tmp_path: Path, n: int = 5, first: int = 1) -> JsonStore:
    store = JsonStore(tmp_path / "s")
    put_in_shards(store, [record(Job(id=i, command=("true",), cwd="/", created_at=AT, state=State.COMPLETED,
                                     attempt=1, started_at=AT + 1, finished_at=AT + 2)) for i in range(first, first + n)])
    return store


def test_hot_records_win_over_their_stale_shard_lines_and_merge_in_id_order(tmp_path: Path) -> None:
    store = finished_store(tmp_path, n=5)
    [new] = store.submit([jsonfile.JobSpec(Job(id=0, command=("echo",), cwd="/", created_at=AT), {})], at=AT)
    assert new.id == 1  # the store's own counter knows nothing of the records put in directly
    with store._transaction() as hot:  # job 3 retried: back in state.json with a newer record
        hot.records[3] = {**record(store.get(3)._replace(state=State.QUEUED), version=4)}
        hot.dirty = True
    assert store.public_json(render=slow(store)) == [slow(store)(j) for j in store.query()]
    assert [h.state for h in store.heads()] == [State.QUEUED, State.COMPLETED, State.QUEUED, State.COMPLETED,
                                               State.COMPLETED]


@pytest.mark.parametrize("where", ["inside a value", "in the checksum", "a broken line"])
def test_damage_is_reported_as_query_reports_it(tmp_path: Path, where: str) -> None:
    store = finished_store(tmp_path)
    shard = store.root / "done" / "0.jsonl"
    lines = shard.read_bytes().split(b"\n")
    line = lines[2]
    lines[2] = {"inside a value": line.replace(b'"cwd":"/"', b'"cwd":"X"'),
                "in the checksum": line[:-1] + (b"0" if line[-1:] != b"0" else b"1"),
                "a broken line": line[:40]}[where]
    shard.write_bytes(b"\n".join(lines))
    with pytest.raises(StoreDamaged) as expected:
        store.query()
    assert "line 3" in str(expected.value)
    for read in (lambda: store.public_json(render=slow(store)), store.heads, store.prune):
        with pytest.raises(StoreDamaged) as got:
            read()
        assert str(got.value) == str(expected.value)
    assert shard.read_bytes() == b"\n".join(lines)


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    store = finished_store(tmp_path)
    with open(store.root / "done" / "0.jsonl", "ab") as f:
        f.write(b'{"id":999,"comm')
    assert len(store.public_json(render=slow(store))) == len(store.heads()) == len(store.query()) == 5


def test_a_second_process_reads_half_the_shards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = finished_store(tmp_path, n=3)
    for n in (1, 2, 3):
        put_in_shards(store, [record(Job(id=n * SHARD_SIZE + i, command=("x",), cwd="/", created_at=AT,
                                         state=State.FAILED)) for i in range(3)])
    expected = store.public_json(render=slow(store))
    monkeypatch.setattr(jsonfile, "PARALLEL_AT", 0)
    children: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            children.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", fork)
    assert store.public_json(render=slow(store)) == expected
    assert children
    last = store.root / "done" / "3.jsonl"  # read by the child: its damage is raised here all the same
    good = last.read_bytes()
    last.write_bytes(good.replace(b'"cwd":"/"', b'"cwd":"?"', 1))
    with pytest.raises(StoreDamaged, match=rf"{last} is damaged \(line 1: checksum mismatch\)"):
        store.public_json(render=slow(store))
    last.write_bytes(good)
    first = store.root / "done" / "0.jsonl"  # read here: the child is stopped, not left behind
    first.write_bytes(first.read_bytes().replace(b'"cwd":"/"', b'"cwd":"?"', 1))
    with pytest.raises(StoreDamaged, match=rf"{first} is damaged"):
        store.public_json(render=slow(store))
    for pid in children:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # every child was reaped


def test_a_child_that_fails_leaves_the_work_to_the_caller() -> None:
    assert jsonscan.InChild(lambda: [(2, b'{"id":2}'), (1, b"[]")]).result() == [(2, b'{"id":2}'), (1, b"[]")]
    assert jsonscan.InChild(lambda: []).result() == []
    assert jsonscan.InChild(lambda: [(1, 1 / 0)]).result() is None  # type: ignore[list-item]

    def damaged() -> jsonscan.Pairs:
        raise StoreDamaged("/x/done/3.jsonl is damaged (line 7: checksum mismatch)")

    with pytest.raises(StoreDamaged, match=r"^/x/done/3.jsonl is damaged \(line 7: checksum mismatch\)$"):
        jsonscan.InChild(damaged).result()


def test_pruning_the_history_keeps_order_and_drops_what_does_not_decode(tmp_path: Path) -> None:
    events = [{"at": "2026-11-22T10:00:00.000Z", "job": i % 4, "event": "x", "n": i} for i in range(12)]
    lines = [encode_line(e) for e in events]
    lines[3] = encode_line({"job": 2, "at": "b", "event": "key order of another writer"})
    lines[5] = encode_line({"at": 'with "quotes"', "job": 1})
    lines[7] = lines[7][:20] + b"\n"  # damaged
    lines.append(b'{"at":"2026-11-22T10:00:00.000Z","job":3,"ev')  # torn
    data = b"".join(lines)

    def reference(removed: set[int]) -> list[bytes]:
        out = []
        for line in data.split(b"\n"):
            try:
                event = decode_line(line)
            except ValueError:
                continue
            if event.get("job") not in removed:
                out.append(line + b"\n")
        return out

    for removed in ({1, 3}, {2}, set(), {0, 1, 2, 3}):
        assert jsonscan.events_without(data, removed, decode_line) == reference(removed)
