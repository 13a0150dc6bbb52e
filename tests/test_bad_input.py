"""Bad input gets one `jobctl: error:` line on stderr, a non-zero exit, and changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import JOBCTL, cli, run

USAGE, FAILED = 2, 1
COMMANDS_TAKING_IDS = ("status", "cancel", "logs", "wait", "package")


def snapshot(root: Path) -> dict[str, Any]:
    """Every path below root with its mode, and the bytes of every regular file."""
    found: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = os.lstat(p)
            content = p.read_bytes() if p.is_file() and not p.is_symlink() else None
            found[str(p.relative_to(root))] = (st.st_mode, content)
    return found


def records() -> list[dict[str, Any]]:
    """status --json without the one field that changes by itself (the polling hint ages)."""
    out = json.loads(run("status", "--json").stdout)
    for r in out:
        r.pop("poll_after_s")
    return out


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the whole module (every case leaves it as it was, and checks that it did):
    job 1 completed with a job directory, job 2 queued."""
    root = tmp_path_factory.mktemp("bad-input") / "store"
    env = {**os.environ, "JOBCTL_STORE": str(root), "JOBCTL_CONFIG": str(root.parent / "config.toml")}

    def jobctl(*args: str) -> str:
        return subprocess.run([JOBCTL, *args], env=env, capture_output=True, text=True, check=True, timeout=30).stdout

    assert jobctl("submit", "--", "echo", "hi") == "1\n"
    jobctl("worker", "--exit-when-idle")  # returns once job 1 has run
    assert jobctl("submit", "--", "true") == "2\n"
    return root


@pytest.fixture
def store(shared_store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("JOBCTL_STORE", str(shared_store))
    assert [(r["id"], r["state"]) for r in records()] == [(1, "completed"), (2, "queued")]
    return shared_store


def check_refused(args: tuple[str, ...], code: int, root: Path, **kw: Any) -> str:
    before_files, before_records = snapshot(root), records()
    r = cli(*args, ok=False, **kw)
    assert r.returncode == code, (args, r.returncode, r.stderr)
    assert r.stdout == "", (args, r.stdout)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jobctl: error: "), (args, r.stderr)
    assert snapshot(root) == before_files, args
    assert records() == before_records, args
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "99"), "no job 99"),
        (("status", "1", "99"), "no job 99"),
        (("cancel", "99"), "no job 99"),
        (("cancel", "2", "99"), "no job 99"),  # the queued job 2 is not cancelled either
        (("logs", "99"), "no job 99"),
        (("logs", "99", "--stderr"), "no job 99"),
        (("wait", "99"), "no job 99"),
        (("wait", "1", "99"), "no job 99"),
        (("package", "99"), "no job 99"),
        (("package", "2"), "job 2 has no job directory yet (it has not started)"),
        (("cancel", "1"), "job(s) already finished: 1 (completed)"),
    ],
)
def test_unknown_or_unsuitable_job(store, args, message):
    assert check_refused(args, FAILED, store) == f"jobctl: error: {message}"


@pytest.mark.parametrize("command", COMMANDS_TAKING_IDS)
@pytest.mark.parametrize("bad_id", ["../x", "-1", "1/../..", "abc"])
def test_ids_that_are_not_positive_integers(store, command, bad_id):
    line = check_refused((command, bad_id), USAGE, store)
    if bad_id != "-1":
        assert line == f"jobctl: error: invalid job id {bad_id!r}"


@pytest.mark.parametrize("bad_id", ["0", "1.5", "", "1 2", "99999999999999999999", "１"])
def test_more_ids_that_are_not_job_ids(store, bad_id):
    assert check_refused(("status", bad_id), USAGE, store) == f"jobctl: error: invalid job id {bad_id!r}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("submit", "--timeout", "soon", "--", "true"), "invalid duration 'soon'"),
        (("submit", "--timeout", "1m1h", "--", "true"), "invalid duration '1m1h'"),
        (("submit", "--priority", "urgent", "--", "true"), "invalid priority 'urgent'"),
        (("submit", "--priority", "1.5", "--", "true"), "invalid priority '1.5'"),
        (("submit",), "missing command"),
        (("submit", "--"), "missing command"),
        (("submit", "--", ""), "missing command"),
        (("submit", "--name", "x"), "missing command"),
        (("submit", "--cwd", "/nonexistent/dir", "--", "true"), "--cwd /nonexistent/dir: no such directory"),
        (("submit", "--env", "NOVALUE", "--", "true"), "invalid --env 'NOVALUE' (expected NAME=VALUE)"),
        (("submit", "--env", "=x", "--", "true"), "invalid --env '=x' (expected NAME=VALUE)"),
        (("submit", "--env", "1X=y", "--", "true"), "invalid --env '1X=y' (expected NAME=VALUE)"),
        (("submit", "--from", "/nonexistent/file"), "--from /nonexistent/file: No such file or directory"),
        (("submit", "--from", "/nonexistent/file", "--", "true"), "give either a command or --from, not both"),
        (("submit", "--bogus", "--", "true"), "No such option: --bogus"),
        (("wait", "--timeout", "soon", "1"), "invalid duration 'soon'"),
        (("logs", "1", "--tail", "-1"), "-1"),
        (("cancel",), "give job ids or --all"),
        (("cancel", "--queue", "q", "2"), "--queue goes with --all"),
        (("status", "--state", "bogus"), "invalid --state"),
        (("cleanup", "--older-than", "soon"), "invalid duration 'soon'"),
        (("nosuchcommand",), "No such command 'nosuchcommand'"),
    ],
)
def test_usage_errors(store, args, message):
    assert message in check_refused(args, USAGE, store)


def test_submit_from_an_empty_file(store, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    assert check_refused(("submit", "--from", str(empty)), USAGE, store) == (
        f"jobctl: error: --from {empty}: no commands in it"
    )


def test_cwd_that_is_a_file(store, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert check_refused(("submit", "--cwd", str(f), "--", "true"), USAGE, store) == (
        f"jobctl: error: --cwd {f}: no such directory"
    )


def test_store_that_is_a_non_empty_directory_but_no_store(store, tmp_path):
    other = tmp_path / "not-a-store"
    other.mkdir(mode=0o755)
    (other / "notes.txt").write_text("mine\n")
    before = snapshot(other), os.stat(other).st_mode
    for args in (("status",), ("submit", "--", "true"), ("cleanup", "--older-than", "0"), ("cancel", "--all")):
        line = check_refused(("--store", str(other), *args), FAILED, store)
        assert line == f"jobctl: error: {other} is not a jobctl store (no store.json) and is not empty"
    assert (snapshot(other), os.stat(other).st_mode) == before


def test_store_that_is_a_regular_file(store, tmp_path):
    f = tmp_path / "a-file"
    f.write_bytes(b"not a store\n")
    for args in (("status",), ("submit", "--", "true"), ("cleanup", "--older-than", "0")):
        line = check_refused(("--store", str(f), *args), FAILED, store)
        assert line == f"jobctl: error: {f} is not a jobctl store (not a directory)"
        assert str(f) in check_refused(("--store", str(f / "below"), *args), FAILED, store)
    assert f.read_bytes() == b"not a store\n"
    assert os.listdir(tmp_path) == ["a-file"]


def test_store_from_the_environment_that_is_a_file(store, tmp_path):
    f = tmp_path / "a-file"
    f.write_bytes(b"x")
    line = check_refused(("status",), FAILED, store, env={"JOBCTL_STORE": str(f)})
    assert line == f"jobctl: error: {f} is not a jobctl store (not a directory)"
