"""`jobctl cleanup`: removes old finished jobs (record and directory) and nothing else."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jobctl.model import format_size
from tests.helpers import cli, cli_report, finish, job, jobs, submit, wait_until


def du(path: Path) -> int:
    """Bytes below `path`, each entry counted as itself (a symlink is not followed)."""
    if path.is_symlink() or not path.is_dir():
        return os.lstat(path).st_size
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        total += sum(os.lstat(os.path.join(dirpath, n)).st_size for n in dirnames + filenames)
    return total


def cleanup_json(*args: str) -> dict[str, Any]:
    return cli_report("cleanup", *args)


def removed_ids(report: dict[str, Any]) -> list[int]:
    return [r["id"] for r in report["removed"]]


def tree(root: Path) -> dict[str, bytes | str]:
    """Every path below root: the bytes of regular files, the kind of anything else."""
    found: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                found[rel] = f"link -> {os.readlink(p)}"
            elif p.is_dir():
                found[rel] = "dir"
            elif p.is_file():
                found[rel] = p.read_bytes()
            else:
                found[rel] = "special"
    return found


def test_dry_run_lists_but_removes_nothing(workers, jobctl_env):
    a = submit("true")
    b = submit("false")
    finish(workers, a, b, concurrency="1")  # one at a time: finish times differ visibly
    records = jobs()
    before = tree(jobctl_env)
    by_id = {r["id"]: r for r in records}
    sizes = {i: du(jobctl_env / "jobs" / str(i)) for i in (a, b)}
    oldest_first = sorted((a, b), key=lambda i: (by_id[i]["finished_at"], i))

    report = cleanup_json("--dry-run", "--older-than", "0")
    assert report == {
        "dry_run": True,
        "leftover_dirs": [],
        "removed": [
            {"id": i, "state": by_id[i]["state"], "finished_at": by_id[i]["finished_at"], "bytes": sizes[i]}
            for i in oldest_first
        ],
        "count": 2,
        "bytes_freed": sizes[a] + sizes[b],
    }
    assert {by_id[a]["state"], by_id[b]["state"]} == {"completed", "failed"}
    text = cli("cleanup", "--dry-run", "--older-than", "0").stdout
    assert text.splitlines() == [
        f"would remove job {i} ({by_id[i]['state']}, finished {by_id[i]['finished_at']}, {format_size(sizes[i])})"
        for i in oldest_first
    ] + [f"would remove 2 job(s), {format_size(sizes[a] + sizes[b])}"]
    assert jobs() == records
    assert tree(jobctl_env) == before


def test_removes_finished_jobs_older_than_the_threshold(workers, jobctl_env):
    a = submit("/bin/sh", "-c", 'head -c 10000 /dev/zero > "$JOBCTL_OUTPUT_DIR/zeros"')
    b = submit("false")
    finish(workers, a, b, concurrency="1")  # one at a time: finish times differ visibly
    records = {r["id"]: r for r in jobs()}
    sizes = {i: du(jobctl_env / "jobs" / str(i)) for i in (a, b)}
    assert sizes[a] > 10000

    # Just finished: younger than the default 7d and than 1h, so nothing goes.
    assert cli("cleanup").stdout == "removed 0 job(s), 0 B\n"
    assert cli("cleanup", "--older-than", "1h").stdout == "removed 0 job(s), 0 B\n"
    assert {r["id"] for r in jobs()} == {a, b}

    out = cli("cleanup", "--older-than", "0")
    assert out.stderr == ""
    oldest_first = sorted((a, b), key=lambda i: (records[i]["finished_at"], i))
    assert out.stdout.splitlines() == [
        f"removed job {i} ({records[i]['state']}, finished {records[i]['finished_at']}, {format_size(sizes[i])})"
        for i in oldest_first
    ] + [f"removed 2 job(s), {format_size(sizes[a] + sizes[b])}"]
    assert jobs() == []
    assert os.listdir(jobctl_env / "jobs") == []
    for i in (a, b):
        r = cli("status", str(i), ok=False)
        assert (r.returncode, r.stderr) == (1, f"jobctl: error: no job {i}\n")
    assert os.listdir(jobctl_env / "env") == []  # captured environments go with their jobs
    assert cli("cleanup", "--older-than", "0").stdout == "removed 0 job(s), 0 B\n"


def test_never_touches_queued_or_running_jobs(workers, jobctl_env):
    done = submit("true")
    finish(workers, done)
    running = submit("sleep", "30")
    queued = submit("true")
    workers.start("--concurrency", "1")
    wait_until(lambda: job(running)["state"] == "running", what="sleep 30 to start")
    assert job(queued)["state"] == "queued"

    assert removed_ids(cleanup_json("--older-than", "0")) == [done]
    assert removed_ids(cleanup_json("--older-than", "0", "--max-total", "0")) == []
    assert [(r["id"], r["state"]) for r in jobs()] == [(running, "running"), (queued, "queued")]
    assert (jobctl_env / "jobs" / str(running) / "stdout.log").is_file()
    assert not (jobctl_env / "jobs" / str(done)).exists()
    # Stop the sleep now: its supervisor holds the worker's stderr pipe, which the fixture drains.
    assert cli("cancel", str(running), str(queued)).stdout.splitlines() == [
        f"cancelled job {queued}", f"cancelled job {running} (stopped its processes)"
    ]


def test_state_and_keep_failed(workers):
    ok = submit("true")
    bad1 = submit("false")
    gone = submit("true")
    bad2 = submit("sh", "-c", "exit 4")
    assert cli("cancel", str(gone)).stdout == f"cancelled job {gone}\n"
    finish(workers, ok, bad1, bad2)
    assert [(r["id"], r["state"]) for r in jobs()] == [
        (ok, "completed"), (bad1, "failed"), (gone, "cancelled"), (bad2, "failed")
    ]
    assert removed_ids(cleanup_json("--older-than", "0", "--state", "cancelled")) == [gone]
    assert removed_ids(cleanup_json("--older-than", "0", "--keep-failed")) == [ok]
    assert [r["id"] for r in jobs()] == [bad1, bad2]
    assert removed_ids(cleanup_json("--older-than", "0", "--state", "completed")) == []
    assert sorted(removed_ids(cleanup_json("--older-than", "0", "--state", "failed"))) == [bad1, bad2]
    assert jobs() == []


def test_state_must_be_a_finished_state(workers):
    i = submit("true")
    finish(workers, i)
    for bad in ("running", "queued", "bogus"):
        r = cli("cleanup", "--older-than", "0", "--state", bad, ok=False)
        assert (r.returncode, r.stdout) == (2, "")
        assert r.stderr == "jobctl: error: --state takes completed, failed or cancelled\n"
    assert [r["id"] for r in jobs()] == [i]


def test_max_total_removes_oldest_finished_until_the_rest_fit(workers, jobctl_env):
    ids = [submit("/bin/sh", "-c", 'head -c 200000 /dev/zero > "$JOBCTL_OUTPUT_DIR/blob"') for _ in range(3)]
    finish(workers, *ids, concurrency="1")  # one at a time: they finish in id order
    finished_at = [job(i)["finished_at"] for i in ids]
    assert finished_at == sorted(finished_at)
    sizes = {i: du(jobctl_env / "jobs" / str(i)) for i in ids}
    limit = 300 * 1024
    assert sizes[ids[2]] <= limit < sizes[ids[1]] + sizes[ids[2]]

    dry = cleanup_json("--max-total", "300K", "--dry-run")
    assert removed_ids(dry) == ids[:2]
    assert [r["id"] for r in jobs()] == ids
    report = cleanup_json("--max-total", "300K")
    assert removed_ids(report) == ids[:2]
    assert report["bytes_freed"] == sizes[ids[0]] + sizes[ids[1]]
    assert [r["id"] for r in jobs()] == [ids[2]]
    assert sorted(os.listdir(jobctl_env / "jobs")) == [str(ids[2])]
    assert removed_ids(cleanup_json("--max-total", "300K")) == []  # it fits now


def test_json_and_quiet(workers, jobctl_env):
    a, b = submit("true"), submit("true")
    finish(workers, a, b)
    r = cli("cleanup", "--older-than", "0", "--quiet", "--state", "completed", "--max-total", "1T")
    assert (r.stdout, r.stderr) == ("", "")
    assert jobs() == []
    assert removed_ids(cleanup_json("--older-than", "0")) == []
    assert cleanup_json("--older-than", "0") == {
        "dry_run": False, "leftover_dirs": [], "removed": [], "count": 0, "bytes_freed": 0,
    }


def test_leftover_directories_of_an_interrupted_cleanup_are_removed(workers, jobctl_env):
    a, b = submit("true"), submit("true")
    finish(workers, a, b)
    cli("cleanup", "--older-than", "0", "--quiet")
    # as if a crash had struck between removing a's record and its directory
    leftover = jobctl_env / "jobs" / str(a)
    (leftover / "out").mkdir(parents=True)
    (leftover / "stdout.log").write_text("x" * 100)
    future = jobctl_env / "jobs" / "999"  # not an id the store has handed out: not ours to judge
    future.mkdir()
    assert cli("cleanup", "--older-than", "0", "--dry-run").stdout.splitlines()[0] == (
        f"would remove leftover directory of job {a} (no record, {format_size(du(leftover))})"
    )
    assert leftover.exists()
    report = cleanup_json("--older-than", "0")
    assert (report["leftover_dirs"], report["removed"]) == ([a], [])
    assert not leftover.exists() and future.exists()


def test_ids_are_never_reused(workers):
    first = [submit("true") for _ in range(3)]
    finish(workers, *first)
    cli("cleanup", "--older-than", "0", "--quiet")
    assert jobs() == []
    again = submit("true")
    assert again == max(first) + 1
    cli("cancel", str(again))
    cli("cleanup", "--older-than", "0", "--quiet")
    assert submit("true") == again + 1


def test_symlinked_job_directory_is_removed_as_a_link(workers, jobctl_env, tmp_path):
    i = submit("true")
    finish(workers, i)
    target = tmp_path / "precious"
    (target / "sub").mkdir(parents=True)
    (target / "keep.txt").write_bytes(b"k" * 100_000)
    (target / "sub" / "also.txt").write_text("also\n")
    before = tree(target)
    jd = jobctl_env / "jobs" / str(i)
    os.rename(jd, tmp_path / "real-job-dir")
    jd.symlink_to(target)

    dry = cleanup_json("--older-than", "0", "--dry-run")
    assert removed_ids(dry) == [i]
    assert dry["bytes_freed"] == os.lstat(jd).st_size < 100_000  # the link, not its target

    assert removed_ids(cleanup_json("--older-than", "0")) == [i]
    assert not os.path.lexists(jd)
    assert tree(target) == before


def test_symlink_inside_a_job_directory_is_not_followed(workers, jobctl_env, tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("keep me\n")
    i = submit("/bin/sh", "-c", f'ln -s {target} "$JOBCTL_OUTPUT_DIR/escape" && ln -s {target}/keep.txt "$JOBCTL_OUTPUT_DIR/f"')
    finish(workers, i)
    assert removed_ids(cleanup_json("--older-than", "0")) == [i]
    assert not (jobctl_env / "jobs" / str(i)).exists()
    assert tree(target) == {"keep.txt": b"keep me\n"}


def test_many_jobs_including_flushed_ones(workers, jobctl_env, tmp_path):
    """More finished jobs than the store keeps in its hot state (they move to done/ shards)."""
    commands = tmp_path / "commands"
    commands.write_text("".join("true\n" if n % 2 else "false\n" for n in range(80)))
    ids = [int(x) for x in cli("submit", "--from", str(commands)).stdout.split()]
    assert len(ids) == 80
    finish(workers, *ids, concurrency="4")
    failed = [r["id"] for r in jobs() if r["state"] == "failed"]
    assert len(failed) == 40

    assert sorted(removed_ids(cleanup_json("--older-than", "0", "--state", "failed"))) == failed
    left = jobs()
    assert len(left) == 40 and {r["state"] for r in left} == {"completed"}
    assert removed_ids(cleanup_json("--older-than", "0", "--state", "failed")) == []
    assert len(removed_ids(cleanup_json("--older-than", "0"))) == 40
    assert jobs() == []
    assert os.listdir(jobctl_env / "jobs") == []
    assert submit("true") == 81


def test_bad_values_change_nothing(workers, jobctl_env):
    i = submit("true")
    finish(workers, i)
    before = tree(jobctl_env)
    for args in (("--older-than", "soon"), ("--max-total", "lots"), ("--older-than", "-1d")):
        r = cli("cleanup", *args, ok=False)
        assert (r.returncode, r.stdout) == (2, "")
        [line] = r.stderr.splitlines()
        assert line.startswith("jobctl: error: invalid ") and repr(args[1]) in line
    assert tree(jobctl_env) == before


def test_a_trash_left_by_an_interrupted_cleanup_is_removed_by_the_next_one(workers, jobctl_env):
    i = submit("true")
    finish(workers, i)
    # as if a cleanup had died after renaming job 7's directory into its batch in the trash
    left = jobctl_env / "jobs" / ".trash" / "12345-1" / "7"
    (left / "out").mkdir(parents=True)
    (left / "stdout.log").write_text("x" * 100)
    assert "leftover" not in cli("doctor").stdout  # a batch in the trash is no job directory
    assert removed_ids(cleanup_json("--older-than", "0")) == [i]
    assert os.listdir(jobctl_env / "jobs") == []


def test_a_trash_batch_being_deleted_by_another_process_is_left_to_it(workers, jobctl_env):
    import fcntl

    cli("submit", "--", "true")  # the store exists
    batch = jobctl_env / "jobs" / ".trash" / "12345-1"
    (batch / "7").mkdir(parents=True)
    fd = os.open(batch, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        cli("cleanup", "--older-than", "0", "--quiet")
        assert (batch / "7").is_dir()
    finally:
        os.close(fd)  # as when that process ends
    cli("cleanup", "--older-than", "0", "--quiet")
    assert os.listdir(jobctl_env / "jobs") == []


def test_many_directories_leave_jobs_at_once_and_are_deleted_in_the_background(jobctl_env, tmp_path):
    """Over BACKGROUND_AT directories: renamed into the trash, then a detached process deletes
    them; the cleanup's own output and exit do not wait for it."""
    from jobctl.jobdir import BACKGROUND_AT
    from jobctl.model import Job, State
    from jobctl.store.base import JobSpec
    from jobctl.store.jsonfile import SHARD_SIZE, JsonStore, encode_line

    store = JsonStore(jobctl_env)
    n = BACKGROUND_AT + 5
    submitted = store.submit([JobSpec(Job(id=0, command=("true",), cwd="/", created_at=0.0), {})] * n, at=1.0)
    with open(jobctl_env / "done" / "0.jsonl", "ab") as f:  # all finished long ago, as bench_history builds them
        f.write(b"".join(encode_line({**j._replace(state=State.COMPLETED, finished_at=2.0).to_record(), "_v": 2})
                         for j in submitted))
    with store._transaction() as hot:
        hot.records.clear()
        hot.dirty = True
    assert n < SHARD_SIZE
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep me\n")
    for j in submitted:
        (jobctl_env / "jobs" / str(j.id) / "out").mkdir(parents=True)
        (jobctl_env / "jobs" / str(j.id) / "stdout.log").write_text("hello\n")
    (jobctl_env / "jobs" / "3" / "out" / "escape").symlink_to(precious)

    report = cleanup_json("--older-than", "0")
    assert report["count"] == n and report["bytes_freed"] == sum(r["bytes"] for r in report["removed"]) > 0
    assert [name for name in os.listdir(jobctl_env / "jobs") if not name.startswith(".")] == []
    wait_until(lambda: not (jobctl_env / "jobs" / ".trash").exists(), timeout=60, what="the trash to be emptied")
    assert os.listdir(precious) == ["keep.txt"]
    assert jobs() == []
