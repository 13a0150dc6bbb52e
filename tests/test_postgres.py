"""The PostgreSQL store end to end, through the real CLI and workers."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Workers
from tests.helpers import JOBCTL, stderr_so_far, swarm, wait_until


@pytest.fixture
def pg_store(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database as this test's store (JOBCTL_STORE), job directories under tmp/out."""
    import psycopg

    name = f"e2e_{abs(hash(request.node.nodeid)) % 10**12}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.execute(f"CREATE DATABASE {name}")
    url = postgres_url.rsplit("/", 1)[0] + "/" + name
    monkeypatch.setenv("JOBCTL_STORE", url)
    subprocess.run([JOBCTL, "config", "set", "output_root", str(tmp_path / "out")], check=True)
    yield url


@pytest.fixture
def pg_workers(pg_store: str) -> Iterator[Workers]:
    w = Workers(pg_store)  # type: ignore[arg-type]  # matched against JOBCTL_STORE, a URL here
    yield w
    w.stop_all()


def jctl(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([JOBCTL, *args], capture_output=True, text=True, timeout=60)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def status(*ids: str) -> list[dict]:
    return json.loads(jctl("status", "--json", *ids).stdout)


def test_jobs_run_end_to_end_on_a_postgresql_store(pg_workers: Workers, tmp_path: Path) -> None:
    ok = int(jctl("submit", "--", "sh", "-c", f"echo hello; {JOBCTL} progress 50 half").stdout)
    bad = int(jctl("submit", "--", "sh", "-c", "exit 3").stdout)
    after = int(jctl("submit", "--after", str(ok), "--", "true").stdout)
    pg_workers.start("--concurrency", "2")
    wait_until(lambda: [j["state"] for j in status()] == ["completed", "failed", "completed"], what="all ran")
    [record] = status(str(ok))
    assert record["job_dir"] == str(tmp_path / "out" / "jobs" / str(ok))
    assert jctl("logs", str(ok)).stdout == "hello\n"
    assert record["progress"] == {"percent": 50.0, "message": "half"}
    assert status(str(bad))[0]["error"] == "exit code 3"
    assert jctl("wait", str(bad), ok=False).returncode == 3
    assert status(str(after))[0]["attempt"] == 1
    events = [json.loads(x)["event"] for x in jctl("history", str(ok), "--json").stdout.splitlines()]
    assert events == ["submitted", "started", "progress", "completed"]


def test_four_workers_on_one_database_run_each_of_400_jobs_once(pg_workers: Workers, tmp_path: Path) -> None:
    runs = swarm(pg_workers, tmp_path / "effects", jobs=400, worker_count=4, timeout=240)
    assert runs == [f"{i}.1" for i in range(1, 401)]  # once each
    records = status()
    assert {j["state"] for j in records} == {"completed"}
    assert len({j["worker"]["pid"] for j in records}) >= 3  # shared out, not run by one worker


def test_a_missing_output_root_and_an_unreachable_server_are_clear_errors(pg_store: str, tmp_path: Path) -> None:
    os.environ["JOBCTL_CONFIG"] = str(tmp_path / "empty.toml")
    proc = jctl("status", ok=False)
    assert proc.returncode == 1 and proc.stderr.startswith("jobctl: error: a PostgreSQL store needs config output_root")
    subprocess.run([JOBCTL, "config", "set", "output_root", str(tmp_path / "out")], check=True)
    proc = jctl("--store", "postgresql://jobctl:s3cret@127.0.0.1:1/nowhere", "status", ok=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "cannot reach PostgreSQL at 127.0.0.1" in proc.stderr and "s3cret" not in proc.stderr


def test_a_worker_stopped_past_worker_timeout_loses_its_job_once_and_records_nothing(
    pg_workers: Workers, tmp_path: Path
) -> None:
    import signal

    jctl("config", "set", "worker_timeout", "2s")
    go, effects = tmp_path / "go", tmp_path / "effects"
    i = int(jctl("submit", "--", "sh", "-c", f"while [ ! -e {go} ]; do sleep 0.05; done; echo $JOBCTL_ATTEMPT >> {effects}").stdout)
    first = pg_workers.start()
    wait_until(lambda: status(str(i))[0]["state"] == "running", what="started by the first worker")
    first.send_signal(signal.SIGSTOP)  # frozen: its heartbeat goes stale
    try:
        second = pg_workers.start()
        wait_until(lambda: status(str(i))[0]["worker"]["pid"] == second.pid, timeout=20, what="taken over")
    finally:
        first.send_signal(signal.SIGCONT)  # back, after being declared dead
    go.touch()
    wait_until(lambda: status(str(i))[0]["state"] == "completed", what="completed")
    [record] = status(str(i))
    assert (record["attempt"], record["worker"]["pid"]) == (1, second.pid)
    assert effects.read_text().split() == ["1"]  # ran exactly once
    events = [json.loads(x) for x in jctl("history", str(i), "--json").stdout.splitlines()]
    assert [e["event"] for e in events].count("completed") == 1


def test_jobs_still_start_when_the_listening_connection_is_killed(pg_workers: Workers, pg_store: str) -> None:
    import psycopg

    worker = pg_workers.start()
    first = int(jctl("submit", "--", "true").stdout)
    wait_until(lambda: status(str(first))[0]["state"] == "completed", what="a first job")
    with psycopg.connect(pg_store, autocommit=True) as admin:
        killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()").fetchone()
    assert killed == (1,)  # the worker's listening connection
    second = int(jctl("submit", "--", "true").stdout)
    wait_until(lambda: status(str(second))[0]["state"] == "completed", what="a job after the kill")
    third = int(jctl("submit", "--", "true").stdout)  # and notifications work again
    wait_until(lambda: status(str(third))[0]["state"] == "completed", what="a job after the reconnect")
    assert worker.poll() is None


def test_migrate_from_a_json_store_keeps_ids_states_and_environments(pg_workers: Workers, pg_store: str,
                                                                     tmp_path: Path) -> None:
    src = str(tmp_path / "json")

    def on_json(*args: str) -> str:
        return jctl("--store", src, *args).stdout

    done = int(on_json("submit", "--", "true"))
    jctl("--store", src, "worker", "--exit-when-idle")
    mark = tmp_path / "mark"
    queued = int(on_json("submit", "--env", "MARK=moved", "--", "sh", "-c", f'echo "$MARK" > {mark}'))
    held = int(on_json("submit", "--hold", "--", "true"))
    gone = int(on_json("submit", "--", "true"))
    on_json("cancel", str(gone))
    before = [(j["id"], j["state"], j["attempt"], j["exit_code"], j["waiting_for"])
              for j in json.loads(on_json("status", "--json"))]

    assert jctl("store", "migrate", "--from", src, "--to", pg_store).stdout.startswith("copied 4 job(s)")
    after = [(j["id"], j["state"], j["attempt"], j["exit_code"], j["waiting_for"]) for j in status()]
    assert after == before and [row[0] for row in after] == [done, queued, held, gone]
    assert int(jctl("submit", "--", "true").stdout) == gone + 1  # ids go on, never reused
    assert [e["event"] for e in map(json.loads, jctl("history", str(done), "--json").stdout.splitlines())] == [
        "submitted", "started", "completed"]
    pg_workers.start("--exit-when-idle")
    wait_until(lambda: status(str(queued))[0]["state"] == "completed", what="the migrated job to run")
    assert mark.read_text() == "moved\n"  # with the environment captured at submit
    again = jctl("store", "migrate", "--from", src, "--to", pg_store, ok=False)
    assert again.returncode == 1 and "is not empty" in again.stderr
    missing = jctl("store", "migrate", "--from", str(tmp_path / "nope"), "--to", pg_store, ok=False)
    assert missing.returncode == 2 and not (tmp_path / "nope").exists()


def other_host(workers: Workers, name: str, *args: str, private: Path | None = None) -> subprocess.Popen[str]:
    """A worker on "another host": its own hostname (UTS namespace) and its own processes (PID
    namespace), so nothing on this host can see or signal its jobs. Only the database and the
    shared output directory connect the two, as between real hosts; with `private`, that
    directory is not shared either (a tmpfs mounted over it in the worker's mount namespace)."""
    mount = f"mount -t tmpfs jobctl-test {private} && " if private else ""
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--uts",
         "sh", "-c", f'hostname {name} && {mount}exec "$0" worker "$@"', JOBCTL, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    workers.procs.append(proc)
    return proc


def processes_of_job(store: str, job_id: int) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if env.get("JOBCTL_STORE") == store and env.get("JOBCTL_JOB_ID") == str(job_id):
            found.append(proc.pid)
    return found


def test_an_idle_worker_is_woken_by_the_notification_not_the_poll(pg_workers: Workers) -> None:
    jctl("config", "set", "worker_poll", "10m")  # the fallback poll cannot start anything here
    jctl("config", "set", "worker_timeout", "1h")  # nor can a heartbeat tick
    worker = pg_workers.start()
    wait_until(lambda: b"started:" in stderr_so_far(worker), what="the worker to be listening")
    for _ in range(3):
        i = int(jctl("submit", "--", "true").stdout)
        wait_until(lambda i=i: status(str(i))[0]["state"] == "completed", timeout=10, what=f"job {i} to run")


def test_cancel_of_a_job_running_on_another_host_is_carried_out_by_its_worker(
    pg_workers: Workers, pg_store: str
) -> None:
    jctl("config", "set", "worker_poll", "10m")  # only the notification can bring the request
    jctl("config", "set", "worker_timeout", "1h")
    worker = other_host(pg_workers, "host-b")
    i = int(jctl("submit", "--", "sleep", "300").stdout)
    wait_until(lambda: status(str(i))[0]["state"] == "running", what="the job to start on host-b")
    assert status(str(i))[0]["worker"]["host"] == "host-b"
    assert processes_of_job(pg_store, i)  # the job's processes, seen from here

    proc = jctl("cancel", str(i))
    assert proc.stdout == f"cancelled job {i} (stopped its processes)\n"
    [record] = status(str(i))
    assert (record["state"], record["error"]) == ("cancelled", "cancelled")
    wait_until(lambda: not processes_of_job(pg_store, i), timeout=5, what="the job's processes to end")
    events = [json.loads(x) for x in jctl("history", str(i), "--json").stdout.splitlines()]
    assert [e["event"] for e in events] == ["submitted", "started", "cancel requested", "cancelled"]
    assert worker.poll() is None  # the worker goes on


@pytest.mark.parametrize("shared", [True, False], ids=["shared-output", "private-output"])
def test_logs_and_package_of_a_job_that_ran_on_another_host(pg_workers: Workers, tmp_path: Path,
                                                            shared: bool) -> None:
    out = tmp_path / "out"
    out.mkdir()
    i = int(jctl("submit", "--", "sh", "-c", "echo made on $(hostname)").stdout)  # first: the worker exits when idle
    other_host(pg_workers, "host-b", "--exit-when-idle", private=None if shared else out)
    wait_until(lambda: status(str(i))[0]["state"] == "completed", what="the job to run on host-b")
    logs, package = jctl("logs", str(i), ok=False), jctl("package", str(i), ok=False)
    if shared:
        assert (logs.returncode, logs.stdout) == (0, "made on host-b\n")
        assert package.returncode == 0 and Path(package.stdout.strip()).is_file()
    else:
        where = f"job {i} ran on host-b: its output ({out / 'jobs' / str(i)}) is not reachable from this host"
        for proc in (logs, package):
            assert proc.returncode == 1 and proc.stdout == ""
            assert proc.stderr.startswith(f"jobctl: error: {where}") and proc.stderr.count("\n") == 1


def test_doctor_reports_silent_workers_and_damaged_rows_and_changes_nothing(pg_store: str, tmp_path: Path) -> None:
    import psycopg

    from jobctl.model import WorkerRef, now
    from jobctl.scheduler import Capacity
    from jobctl.store.postgres import PostgresStore

    a, b, c = (int(jctl("submit", "--", "true").stdout) for _ in range(3))
    store = PostgresStore(pg_store, output_root=tmp_path / "out")
    store.claim(WorkerRef("gone-host", 4242), Capacity(free_slots=1, total_slots=1), at=now())  # job a, no heartbeat
    store.close()
    (tmp_path / "out").mkdir()
    proc = jctl("doctor")
    assert f"ok     {pg_store}: PostgreSQL 15." in proc.stdout and "3 job(s) (2 queued, 1 running)" in proc.stdout
    assert f"note   job {a}: running on gone-host:4242, which is silent" in proc.stdout
    assert "ok     0 live worker(s)" in proc.stdout and f"ok     output_root {tmp_path / 'out'}" in proc.stdout
    assert "damage" not in proc.stdout

    with psycopg.connect(pg_store, autocommit=True) as db:
        db.execute("UPDATE jobctl_jobs SET record = jsonb_build_object('id', id) WHERE id = %s", (b,))
        db.execute("DELETE FROM jobctl_envs")
        before = db.execute("SELECT id, version, record FROM jobctl_jobs ORDER BY id").fetchall()
        proc = jctl("doctor", ok=False)
        assert db.execute("SELECT id, version, record FROM jobctl_jobs ORDER BY id").fetchall() == before
    assert proc.returncode == 1 and proc.stderr.endswith("jobctl: error: the store is damaged (see above)\n")
    assert f"damage job {b}: its record does not decode" in proc.stdout
    assert f"damage job {c}: its environment" in proc.stdout and "DELETE FROM jobctl_jobs WHERE id = N" in proc.stderr
    damaged = jctl("status", ok=False)  # every command: one clear line, no traceback
    assert damaged.returncode == 1 and damaged.stderr.count("\n") == 1
    assert f"the record of job {b} does not decode" in damaged.stderr and "run jobctl doctor" in damaged.stderr
