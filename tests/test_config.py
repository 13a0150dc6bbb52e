"""`jobctl config` and how the config file steers the other commands."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from tests.helpers import cli, job, jobs, run, submit, wait_until


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return Path(os.environ["JOBCTL_CONFIG"])


def test_path_honours_jobctl_config(config_file, tmp_path):
    assert cli("config", "path").stdout == f"{config_file}\n"
    other = tmp_path / "elsewhere" / "jobctl.toml"
    assert cli("config", "path", env={"JOBCTL_CONFIG": str(other)}).stdout == f"{other}\n"
    assert not config_file.exists() and not other.exists()  # `path` creates nothing


def test_set_then_get_writes_valid_toml(config_file):
    r = cli("config", "set", "cleanup.older_than", "3d")
    assert (r.stdout, r.stderr) == ("", "")
    assert cli("config", "get", "cleanup.older_than").stdout == "3d\n"
    assert tomllib.loads(config_file.read_text()) == {"cleanup": {"older_than": "3d"}}
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600

    cli("config", "set", "defaults.concurrency", "3")
    cli("config", "set", "defaults.zip", "true")
    cli("config", "set", "queues.gpu.rate", "30/m")
    cli("config", "set", "kill_grace", "1m30s")
    cli("config", "set", "cleanup.older_than", "12h")  # replaces, keeps the rest
    assert tomllib.loads(config_file.read_text()) == {
        "cleanup": {"older_than": "12h"},
        "defaults": {"concurrency": 3, "zip": True},
        "queues": {"gpu": {"rate": "30/m"}},
        "kill_grace": "1m30s",
    }
    assert [cli("config", "get", k).stdout for k in ("defaults.concurrency", "defaults.zip", "queues.gpu.rate", "kill_grace")] == [
        "3\n", "true\n", "30/m\n", "1m30s\n"
    ]


def test_show(config_file):
    assert cli("config", "show").stdout == ""  # no file: nothing to show
    cli("config", "set", "cleanup.older_than", "3d")
    cli("config", "set", "max_queued", "100")
    shown = cli("config", "show").stdout
    assert tomllib.loads(shown) == {"max_queued": 100, "cleanup": {"older_than": "3d"}}
    assert shown == config_file.read_text()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("kill_grace", "10s"),
        ("cleanup.older_than", "7d"),
        ("retry_max_delay", "1h"),
        ("defaults.concurrency", "2"),
        ("defaults.retries", "0"),
        ("defaults.zip", "false"),
        ("cleanup.keep_failed", "false"),
        ("max_queued", "0"),
        ("worker_poll", "2s"),
        ("worker_timeout", "30s"),
        ("defaults.timeout", ""),  # no default: unset
        ("queues.gpu.concurrency", ""),
    ],
)
def test_get_prints_the_default_of_an_unset_key(config_file, key, value):
    r = cli("config", "get", key)
    assert (r.stdout, r.stderr) == (f"{value}\n", "")
    assert not config_file.exists()


@pytest.mark.parametrize("key", ["bogus", "cleanup.bogus", "queues.gpu.bogus", "defaults", "cleanup.older_than.x", "queues.a b.rate", ""])
def test_unknown_key_is_refused(config_file, key):
    run("config", "set", "kill_grace", "5s")
    before = config_file.read_bytes()
    r = cli("config", "set", key, "1", ok=False)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"jobctl: error: unknown config key {key!r}\n"
    assert config_file.read_bytes() == before
    r = cli("config", "get", key, ok=False)
    assert (r.returncode, r.stderr) == (2, f"jobctl: error: unknown config key {key!r}\n")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("kill_grace", "soon"),
        ("defaults.concurrency", "0"),
        ("defaults.concurrency", "two"),
        ("defaults.concurrency", "1.5"),
        ("defaults.zip", "yes"),
        ("cleanup.max_total", "lots"),
        ("max_queued", "-1"),
        ("queues.gpu.rate", "fast"),
        ("worker_poll", "0s"),
        ("worker_timeout", "0"),
        ("store", ""),
    ],
)
def test_bad_value_is_refused(config_file, key, value):
    run("config", "set", "kill_grace", "5s")
    before = config_file.read_bytes()
    r = cli("config", "set", key, value, ok=False)
    assert (r.returncode, r.stdout) == (2, "")
    [line] = r.stderr.splitlines()
    assert line.startswith(f"jobctl: error: {key}: "), line
    assert config_file.read_bytes() == before


def test_refused_without_a_file_creates_none(config_file):
    r = cli("config", "set", "kill_grace", "soon", ok=False)
    assert r.returncode == 2
    assert not config_file.exists()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"garbage = = \n", "not valid TOML"),
        (b'kill_grace = "soon"\n', "kill_grace: invalid duration 'soon'"),
        (b"[defaults]\nconcurrency = 0\n", "defaults.concurrency: expected a whole number of at least 1"),
        (b"foo = 1\n", "unknown config key 'foo'"),
        (b"[[queues]]\nname = 'x'\n", "unknown config key 'queues'"),
        (b'kill_grace = "\xff"\n', "not valid TOML"),
    ],
)
def test_bad_config_file_gives_one_clear_line(config_file, content, why):
    config_file.write_bytes(content)
    for args in (("status",), ("submit", "--", "true"), ("config", "set", "max_lost", "2")):
        r = cli(*args, ok=False)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stdout == ""
        [line] = r.stderr.splitlines()
        assert line.startswith(f"jobctl: error: {config_file}: "), line
        assert why in line
    for args in (("config", "show"), ("config", "get", "kill_grace")):  # the same, in-process
        r = run(*args, ok=False)
        assert (r.exit_code, r.stdout) == (2, "")
        assert r.stderr.startswith(f"jobctl: error: {config_file}: ") and r.stderr.count("\n") == 1
    assert config_file.read_bytes() == content  # never rewritten behind the user's back
    assert not Path(os.environ["JOBCTL_STORE"]).exists()  # the submit changed nothing


def test_config_that_is_a_directory(config_file):
    config_file.mkdir()
    r = cli("status", ok=False)
    assert r.returncode == 2
    assert r.stderr == f"jobctl: error: cannot read config {config_file}: Is a directory\n"


def test_worker_uses_defaults_concurrency(workers, tmp_path):
    cli("config", "set", "defaults.concurrency", "3")
    commands = tmp_path / "commands"
    commands.write_text("sleep 30\n" * 4)
    ids = [int(x) for x in cli("submit", "--from", str(commands)).stdout.split()]
    proc = workers.start()
    assert proc.stderr is not None
    assert "started: 3 slots, all queues" in proc.stderr.readline()
    wait_until(lambda: sum(r["state"] == "running" for r in jobs()) >= 3, what="three jobs running")
    assert [r["state"] for r in jobs()] == ["running", "running", "running", "queued"]
    # Stop them now (their supervisors hold the worker's stderr pipe, which the fixture drains).
    cli("cancel", "--all")
    assert {r["state"] for r in jobs()} == {"cancelled"}
    assert len(ids) == 4


def test_command_line_beats_config(workers):
    cli("config", "set", "defaults.concurrency", "3")
    proc = workers.start("--exit-when-idle", "--concurrency", "1")
    assert proc.stderr is not None
    assert "started: 1 slots, all queues" in proc.stderr.readline()


def test_config_store_is_used_without_jobctl_store(tmp_path, monkeypatch):
    monkeypatch.delenv("JOBCTL_STORE")
    store = tmp_path / "configured-store"
    cli("config", "set", "store", str(store))
    i = submit("true")
    assert (store / "store.json").is_file()
    assert job(i)["job_dir"] == str(store / "jobs" / str(i))


def test_defaults_zip_is_used_by_submit(workers, jobctl_env):
    cli("config", "set", "defaults.zip", "true")
    i = submit("/bin/sh", "-c", 'echo x > "$JOBCTL_OUTPUT_DIR/x"')
    j = submit("true", opts=("--no-zip",))
    proc = workers.start("--exit-when-idle")
    wait_until(lambda: proc.poll() is not None, what="the worker to run the queue")
    assert job(i)["zip_path"] == str(jobctl_env / "jobs" / str(i) / "output.zip")
    assert (jobctl_env / "jobs" / str(i) / "output.zip").is_file()
    assert job(j)["zip_path"] is None
