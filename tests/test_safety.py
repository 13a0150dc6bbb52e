"""Damage is reported and never rewritten; foreign stores are refused; pids are never trusted alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from jobctl import supervisor
from jobctl.fsutil import NETWORK_FILESYSTEMS, filesystem_type
from tests.helpers import JOBCTL, cli, finish, jobs, pid_alive, submit


def finished_store(workers, count: int = 70) -> None:
    lines = "true\n" * count  # more than FLUSH_AT: some land in done/0.jsonl
    subprocess.run([JOBCTL, "submit", "--from", "-"], input=lines, text=True, check=True, capture_output=True)
    finish(workers)


def test_doctor_passes_a_healthy_store(workers, jobctl_env: Path) -> None:
    finished_store(workers)
    proc = cli("doctor")
    assert proc.stderr == ""
    assert proc.stdout.splitlines()[0].startswith(f"ok     {jobctl_env}/state.json: ")
    assert f"ok     {jobctl_env}/done/0.jsonl: 65 line(s)" in proc.stdout.splitlines()


def test_damage_in_a_shard_is_reported_by_every_reader_and_the_file_left_as_it_is(workers, jobctl_env: Path) -> None:
    finished_store(workers)
    shard = jobctl_env / "done" / "0.jsonl"
    data = bytearray(shard.read_bytes())
    start = data.index(b'"cwd"', len(data) // 2)  # inside a record's text: still valid JSON
    data[start + 8 : start + 16] = b"XXXXXXXX"
    shard.write_bytes(bytes(data))
    line_no = data[:start].count(b"\n") + 1

    status = cli("status", "--json", ok=False)
    assert status.returncode == 1
    [line] = status.stderr.splitlines()
    assert line.startswith(f"jobctl: error: {shard} is damaged (line {line_no}: checksum mismatch)")
    doctor = cli("doctor", ok=False)
    assert doctor.returncode == 1
    assert f"damage {shard}: 1 damaged line(s): {line_no}" in doctor.stdout.splitlines()
    assert "jobctl never rewrites, drops or \"repairs\" a damaged file" in doctor.stderr
    assert shard.read_bytes() == bytes(data)


def test_a_store_owned_by_another_user_is_refused(jobctl_env: Path) -> None:
    i = submit("true")
    before = (jobctl_env / "state.json").read_bytes()
    os.chown(jobctl_env, 65534, 65534)
    try:
        proc = cli("submit", "--", "true", ok=False)
    finally:
        os.chown(jobctl_env, os.getuid(), os.getgid())
    assert proc.returncode == 1
    assert proc.stderr == f"jobctl: error: store {jobctl_env} belongs to another user (uid 65534); refusing to use it\n"
    assert (jobctl_env / "state.json").read_bytes() == before and [j["id"] for j in jobs()] == [i]


def test_network_filesystems_are_recognised() -> None:
    mounts = "/dev/vda / ext4 rw 0 0\nsrv:/export /mnt/shared nfs4 rw 0 0\n//nas/x /mnt/nas\\040box cifs rw 0 0\n"
    assert filesystem_type(Path("/mnt/shared/jobctl"), mounts) == "nfs4"
    assert filesystem_type(Path("/mnt/nas box/store"), mounts) == "cifs"
    assert filesystem_type(Path("/mnt/sharedother"), mounts) == "ext4"
    assert {"nfs4", "cifs"} <= NETWORK_FILESYSTEMS and "ext4" not in NETWORK_FILESYSTEMS


def test_a_local_store_gives_no_warning(jobctl_env: Path) -> None:
    assert cli("submit", "--", "true").stderr == ""


def test_a_pid_whose_start_time_differs_is_never_signalled(tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "30"])
    try:
        jd = tmp_path / "job"
        jd.mkdir()
        real = supervisor.start_ticks(victim.pid)
        assert real is not None and real > 0
        info = {"attempt": 1, "boot_id": supervisor.boot_id(), "job": None,
                "supervisor": {"pid": victim.pid, "start_ticks": real - 1}}  # another process's start time
        (jd / "run.json").write_text(json.dumps(info))
        assert supervisor.signal_running(jd, 1, signal.SIGTERM) is False
        info["boot_id"] = "another-boot"
        info["supervisor"]["start_ticks"] = real
        (jd / "run.json").write_text(json.dumps(info))
        assert supervisor.signal_running(jd, 1, signal.SIGTERM) is False  # right pid, wrong boot
        assert pid_alive(victim.pid)
        info["boot_id"] = supervisor.boot_id()
        (jd / "run.json").write_text(json.dumps(info))
        assert supervisor.signal_running(jd, 1, signal.SIGTERM) is True  # the real one: signalled
        assert victim.wait(timeout=10) == -signal.SIGTERM
    finally:
        victim.kill()
        victim.wait()


def test_a_job_directory_replaced_by_a_symlink_is_not_followed(workers, jobctl_env: Path, tmp_path: Path) -> None:
    i = submit("sh", "-c", "echo mine")
    finish(workers, i)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "stdout.log").write_text("not yours\n")
    (outside / "out").mkdir()
    (outside / "out" / "secret").write_text("secret\n")
    jd = jobctl_env / "jobs" / str(i)
    import shutil

    shutil.rmtree(jd)
    jd.symlink_to(outside)
    for args in (("logs", str(i)), ("package", str(i))):
        proc = cli(*args, ok=False)
        assert proc.returncode == 1 and proc.stdout == "", args
        assert proc.stderr.startswith("jobctl: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "not yours" not in cli("logs", str(i), ok=False).stdout
    cli("cleanup", "--older-than", "0", "--quiet")
    assert not jd.exists() and not jd.is_symlink()
    assert (outside / "out" / "secret").read_text() == "secret\n"  # the target is untouched
