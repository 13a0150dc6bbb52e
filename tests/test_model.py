"""The pure core: durations, sizes, priorities, job ids, the Job record and the state machine."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobctl.errors import ExitCode, InvalidTransition, UsageError
from jobctl.model import (
    FINISHED,
    TRANSITIONS,
    UNFINISHED,
    Job,
    Progress,
    State,
    Usage,
    WorkerRef,
    format_duration,
    parse_duration,
    parse_job_id,
    parse_priority,
    parse_size,
    poll_after,
    transition,
)

# --- durations -------------------------------------------------------------------------------

SPEC_FORM = re.compile(r"(\d+d)?(\d+h)?(\d+m)?(\d+s)?")


@given(st.integers(min_value=0, max_value=10**8))
def test_duration_round_trips_whole_seconds(seconds: int) -> None:
    text = format_duration(seconds)
    assert SPEC_FORM.fullmatch(text) and text, text
    assert parse_duration(text) == seconds


@given(
    st.one_of(st.none(), st.integers(0, 400)),
    st.one_of(st.none(), st.integers(0, 23)),
    st.one_of(st.none(), st.integers(0, 59)),
    st.one_of(st.none(), st.integers(0, 59)),
)
def test_duration_units_compose_largest_first(d: int | None, h: int | None, m: int | None, s: int | None) -> None:
    parts = [(n, u) for n, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if n is not None]
    text = "".join(f"{n}{u}" for n, u in parts)
    expected = (d or 0) * 86400 + (h or 0) * 3600 + (m or 0) * 60 + (s or 0)
    if not text:
        with pytest.raises(UsageError):
            parse_duration(text)
    else:
        assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("5m", 300), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), ("0", 0),
     ("1d2h3m4s", 93784), ("1.5s", 1.5)],
)
def test_duration_accepted_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", " ", "5x", "m5", "1m1h", "5m5m", "s", "h30m", "1h 30m", "-5", "-5m", "5 m", "1hh", "1h30"])
def test_duration_rejected_forms(text: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_duration(text)
    assert e.value.exit_code == ExitCode.USAGE
    assert repr(text) in str(e.value)


def test_format_duration_examples() -> None:
    assert [format_duration(s) for s in (0, 59, 60, 300, 5400, 86400, 90061)] == [
        "0s", "59s", "1m", "5m", "1h30m", "1d", "1d1h1m1s"
    ]


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("512M", 512 * 2**20), ("2G", 2 * 2**30), ("100", 100), ("10K", 10240), ("1T", 2**40), ("2g", 2 * 2**30),
     ("1.5GiB", 3 * 2**29), ("512MB", 512 * 2**20), ("0", 0)],
)
def test_parse_size_accepted(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "5X", "-1", "1.2.3", "M512", "five", "5 G G"])
def test_parse_size_rejected(text: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_size(text)
    assert e.value.exit_code == ExitCode.USAGE


@given(st.integers(0, 2**30), st.sampled_from(["", "K", "M", "G", "T"]))
def test_parse_size_units_are_powers_of_1024(n: int, unit: str) -> None:
    assert parse_size(f"{n}{unit}") == n * 1024 ** ["", "K", "M", "G", "T"].index(unit)


# --- priorities and ids ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("low", -10), ("normal", 0), ("high", 10), ("critical", 20), ("HIGH", 10), (" Low ", -10), ("7", 7), ("-3", -3), ("0", 0)],
)
def test_parse_priority_names_and_integers(text: str, value: int) -> None:
    assert parse_priority(text) == value


@given(st.integers(-(10**9), 10**9))
def test_parse_priority_any_integer(n: int) -> None:
    assert parse_priority(str(n)) == n


@pytest.mark.parametrize("text", ["urgent", "", "1.5", "high!", "10 0", "hi gh"])
def test_parse_priority_rejected(text: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_priority(text)
    assert e.value.exit_code == ExitCode.USAGE


@given(st.integers(1, 10**17))
def test_parse_job_id_accepts_positive_integers(n: int) -> None:
    assert parse_job_id(str(n)) == n


@given(st.text().filter(lambda t: not t.strip().isascii() or not t.strip().isdigit()))
def test_parse_job_id_refuses_anything_but_digits(text: str) -> None:
    with pytest.raises(UsageError):
        parse_job_id(text)


@pytest.mark.parametrize("text", ["../x", "-1", "1/../..", "abc", "0", "", "1.0", "1e3", "00"])
def test_parse_job_id_rejected(text: str) -> None:
    with pytest.raises(UsageError):
        parse_job_id(text)


# --- the Job record --------------------------------------------------------------------------

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
finite = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)
maybe_time = st.one_of(st.none(), finite)

jobs_strategy = st.builds(
    Job,
    id=st.integers(1, 10**12),
    command=st.lists(texts, min_size=1, max_size=5).map(tuple),
    cwd=texts,
    created_at=finite,
    env_ref=st.text(alphabet="0123456789abcdef", max_size=32),
    name=st.one_of(st.none(), texts),
    queue=texts,
    priority=st.integers(-(10**6), 10**6),
    state=st.sampled_from(State),
    started_at=maybe_time,
    finished_at=maybe_time,
    attempt=st.integers(0, 100),
    max_retries=st.integers(0, 100),
    timeout_s=maybe_time,
    depends_on=st.lists(st.integers(1, 10**6), max_size=4).map(tuple),
    exit_code=st.one_of(st.none(), st.integers(0, 255)),
    signal=st.one_of(st.none(), st.integers(1, 64)),
    error=st.one_of(st.none(), texts),
    reason=st.one_of(st.none(), texts),
    progress=st.builds(Progress, st.one_of(st.none(), st.floats(0, 100)), st.one_of(st.none(), texts)),
    worker=st.one_of(st.none(), st.builds(WorkerRef, texts, st.integers(1, 2**22))),
    usage=st.one_of(st.none(), st.builds(Usage, finite, finite, finite, st.integers(0, 2**40))),
    labels=st.lists(texts, max_size=3).map(tuple),
    cpus=st.integers(1, 64),
    zip=st.booleans(),
    zip_path=st.one_of(st.none(), texts),
    cancel_requested=st.booleans(),
    submitter=st.one_of(st.none(), st.dictionaries(texts, st.one_of(texts, st.integers(0, 2**31)), max_size=3)),
    # Every field, spelled out: a NamedTuple's defaulted fields are generated too, and a NaN
    # is never equal to itself.
    depends_any=st.lists(st.integers(1, 10**6), max_size=4).map(tuple),
    retry_delay_s=finite,
    retry_on=st.lists(st.integers(0, 255), max_size=4).map(tuple),
    not_before=maybe_time,
    held=st.booleans(),
    unique_key=st.one_of(st.none(), texts),
    mem_bytes=st.one_of(st.none(), st.integers(1, 2**40)),
    gpus=st.integers(0, 8),
    gpu_ids=st.lists(st.integers(0, 15), max_size=4).map(tuple),
    waiting_for=st.one_of(st.none(), texts),
    lost=st.integers(0, 10),
)


@given(jobs_strategy)
def test_job_record_round_trip(job: Job) -> None:
    record = job.to_record()
    assert Job.from_record(record) == job
    # The stored form is plain JSON: it survives a dump and a load unchanged.
    assert Job.from_record(json.loads(json.dumps(record))) == job


@given(jobs_strategy)
def test_job_record_never_holds_the_environment_itself(job: Job) -> None:
    assert "env" not in job.to_record()


def test_from_record_fills_defaults_for_old_records() -> None:
    job = Job.from_record({"id": 3, "command": ["true"], "cwd": "/", "created_at": 1.0, "state": "queued"})
    assert job == Job(id=3, command=("true",), cwd="/", created_at=1.0)


# --- the state machine -----------------------------------------------------------------------


def test_transition_table_matches_the_spec() -> None:
    assert TRANSITIONS[State.COMPLETED] == frozenset()
    # `jobctl retry` is the only way out of a finished state: back to queued, or through
    # waiting so that the job's dependencies are checked again
    assert TRANSITIONS[State.FAILED] == {State.QUEUED, State.WAITING}
    assert TRANSITIONS[State.CANCELLED] == {State.QUEUED, State.WAITING}
    assert set(TRANSITIONS) == set(State)
    assert FINISHED | UNFINISHED == set(State) and not FINISHED & UNFINISHED


def _job_in(state: State) -> Job:
    return Job(id=7, command=("true",), cwd="/", created_at=100.0, state=state)


@given(st.sampled_from(State), st.sampled_from(State), st.floats(200, 1e9))
def test_transition_allows_only_the_table(source: State, target: State, at: float) -> None:
    job = _job_in(source)
    if target not in TRANSITIONS[source]:
        with pytest.raises(InvalidTransition) as e:
            transition(job, target, at=at)
        assert e.value.exit_code == ExitCode.FAILED
        return
    new = transition(job, target, at=at)
    assert new.state is target
    assert new.id == job.id and new.command == job.command
    if target is State.RUNNING:
        assert new.started_at == at
    if target in FINISHED:
        assert new.finished_at == at
    else:
        assert new.finished_at is None


def test_transition_keeps_explicit_stamps() -> None:
    new = transition(_job_in(State.QUEUED), State.RUNNING, at=500.0, started_at=450.0)
    assert new.started_at == 450.0
    done = transition(new, State.COMPLETED, at=600.0, finished_at=590.0, exit_code=0)
    assert (done.started_at, done.finished_at, done.exit_code) == (450.0, 590.0, 0)


def test_retry_clears_the_previous_outcome() -> None:
    failed = _job_in(State.FAILED)._replace(
        started_at=110.0, finished_at=120.0, exit_code=3, signal=None,
        error="exit code 3", reason="exit", worker=WorkerRef("h", 1), cancel_requested=True,
        progress=Progress(50.0, "half"), attempt=1,
    )
    queued = transition(failed, State.QUEUED, at=130.0)
    assert queued.state is State.QUEUED
    assert (queued.exit_code, queued.signal, queued.error, queued.reason, queued.finished_at) == (None,) * 5
    assert queued.worker is None and queued.cancel_requested is False and queued.progress == Progress()
    assert queued.attempt == 1  # the attempt is counted when a worker claims it


def test_finished_jobs_never_change_state_again() -> None:
    for target in State:
        with pytest.raises(InvalidTransition):
            transition(_job_in(State.COMPLETED), target, at=1.0)


# --- polling hint ----------------------------------------------------------------------------


@given(st.floats(0, 10**6), st.floats(0, 10**6))
def test_poll_after_grows_with_age_up_to_30s(age1: float, age2: float) -> None:
    job = _job_in(State.QUEUED)
    young, old = sorted((age1, age2))
    a, b = poll_after(job, job.created_at + young), poll_after(job, job.created_at + old)
    assert a is not None and b is not None
    assert 0.5 <= a <= b <= 30.0
    assert poll_after(_job_in(State.COMPLETED), job.created_at + old) is None
