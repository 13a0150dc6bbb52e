"""`jobctl package` and `submit --zip`: the zip of a job's out/ with its manifest.json."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Any

from tests.helpers import cli, finish, job, run, submit


def sh(script: str, *, opts: tuple[str, ...] = ()) -> int:
    return submit("/bin/sh", "-c", script, opts=opts)


def read_zip(path: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        members = {name: zf.read(name) for name in zf.namelist()}
    return members, json.loads(members["manifest.json"])


def everything_in(path: Path) -> bytes:
    """The zip's raw bytes plus every member decompressed: a secret in either is a leak."""
    members, _ = read_zip(path)
    return path.read_bytes() + b"".join(members.values()) + "".join(members).encode()


def temp_files(*dirs: Path) -> list[str]:
    return [f"{d}/{n}" for d in dirs if d.is_dir() for n in os.listdir(d) if n.endswith(".tmp")]


def test_package_zips_out_with_manifest(workers, jobctl_env, tmp_path):
    i = sh(
        'printf "alpha\\n" > "$JOBCTL_OUTPUT_DIR/a.txt"; mkdir "$JOBCTL_OUTPUT_DIR/sub"; '
        'head -c 70000 /dev/urandom > "$JOBCTL_OUTPUT_DIR/sub/b.bin"; '
        'printf %s "${#SECRET}" > "$JOBCTL_OUTPUT_DIR/secret-length"',
        opts=("--env", "SECRET=hunter2", "--cwd", str(tmp_path)),
    )
    finish(workers, i)
    jd = jobctl_env / "jobs" / str(i)
    out = cli("package", str(i))
    assert out.stdout == f"{jd / 'output.zip'}\n"
    assert out.stderr == ""

    zip_path = jd / "output.zip"
    members, manifest = read_zip(zip_path)
    assert sorted(members) == ["manifest.json", "out/a.txt", "out/secret-length", "out/sub/b.bin"]
    assert members["out/a.txt"] == b"alpha\n"
    assert members["out/secret-length"] == b"7"  # the job did see the secret...
    assert b"hunter2" not in everything_in(zip_path)  # ...and the zip never holds it
    assert "env" not in manifest and "environment" not in manifest

    record = job(i)
    assert manifest["command"] == record["command"] == ["/bin/sh", "-c", record["command"][2]]
    assert manifest["cwd"] == str(tmp_path)
    assert manifest["exit_code"] == 0
    assert manifest["state"] == "completed"
    for key in ("created_at", "started_at", "finished_at"):
        assert manifest[key] == record[key] and manifest[key] is not None
    assert manifest["usage"] == record["usage"] and manifest["usage"]["wall_s"] >= 0
    assert manifest["skipped"] == []
    files = {f["path"]: f for f in manifest["files"]}
    assert sorted(files) == ["out/a.txt", "out/secret-length", "out/sub/b.bin"]
    for path, entry in files.items():
        on_disk = (jd / path).read_bytes()
        assert members[path] == on_disk
        assert entry == {"path": path, "size": len(on_disk), "sha256": hashlib.sha256(on_disk).hexdigest()}

    assert record["zip_path"] == str(zip_path)
    assert stat.S_IMODE(zip_path.stat().st_mode) == 0o600
    assert temp_files(jd) == []


def test_include_and_exclude_globs(workers, tmp_path):
    i = sh(
        'cd "$JOBCTL_OUTPUT_DIR" && mkdir sub && for f in a.txt b.log sub/c.txt sub/d.log; do echo "$f" > "$f"; done'
    )
    finish(workers, i)

    def packed(*opts: str) -> list[str]:
        dest = tmp_path / f"z{len(os.listdir(tmp_path))}.zip"
        assert cli("package", str(i), "-o", str(dest), *opts).stdout == f"{dest}\n"
        members, manifest = read_zip(dest)
        assert sorted(f["path"] for f in manifest["files"]) == sorted(m for m in members if m != "manifest.json")
        return sorted(m for m in members if m != "manifest.json")

    assert packed() == ["out/a.txt", "out/b.log", "out/sub/c.txt", "out/sub/d.log"]
    assert packed("--include", "*.txt") == ["out/a.txt", "out/sub/c.txt"]
    assert packed("--exclude", "*.log") == ["out/a.txt", "out/sub/c.txt"]
    assert packed("--include", "sub/*") == ["out/sub/c.txt", "out/sub/d.log"]
    assert packed("--include", "sub/*", "--exclude", "*.log") == ["out/sub/c.txt"]
    assert packed("--include", "a.txt", "--include", "b.log") == ["out/a.txt", "out/b.log"]
    assert packed("--include", "nothing-matches") == []


def test_logs_adds_stdout_and_stderr(workers, tmp_path):
    i = sh('echo to-stdout; echo to-stderr >&2; echo data > "$JOBCTL_OUTPUT_DIR/d"')
    finish(workers, i)
    without = tmp_path / "without.zip"
    cli("package", str(i), "-o", str(without))
    assert sorted(read_zip(without)[0]) == ["manifest.json", "out/d"]

    with_logs = tmp_path / "with.zip"
    cli("package", str(i), "--logs", "-o", str(with_logs))
    members, manifest = read_zip(with_logs)
    assert sorted(members) == ["logs/stderr.log", "logs/stdout.log", "manifest.json", "out/d"]
    assert members["logs/stdout.log"] == b"to-stdout\n"
    assert members["logs/stderr.log"] == b"to-stderr\n"
    files = {f["path"]: f for f in manifest["files"]}
    assert files["logs/stdout.log"] == {
        "path": "logs/stdout.log", "size": 10, "sha256": hashlib.sha256(b"to-stdout\n").hexdigest()
    }


def test_output_path(workers, jobctl_env, tmp_path):
    i = sh('echo x > "$JOBCTL_OUTPUT_DIR/x"')
    finish(workers, i)
    dest = tmp_path / "results" / "r.zip"
    dest.parent.mkdir()
    assert cli("package", str(i), "-o", str(dest)).stdout == f"{dest}\n"
    assert sorted(read_zip(dest)[0]) == ["manifest.json", "out/x"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    # -o leaves the job's own output.zip (and its zip_path) alone
    assert not (jobctl_env / "jobs" / str(i) / "output.zip").exists()
    assert job(i)["zip_path"] is None
    # a relative -o is relative to the caller's directory, and printed absolute
    assert cli("package", str(i), "--output", "rel.zip", cwd=dest.parent).stdout == f"{dest.parent / 'rel.zip'}\n"
    assert (dest.parent / "rel.zip").is_file()
    assert temp_files(dest.parent) == []


def test_output_path_that_cannot_be_written(workers, tmp_path):
    i = sh('echo x > "$JOBCTL_OUTPUT_DIR/x"')
    finish(workers, i)
    for dest in (tmp_path, tmp_path / "missing" / "r.zip"):
        r = cli("package", str(i), "-o", str(dest), ok=False)
        assert r.returncode == 1, r.stderr
        assert r.stdout == ""
        [line] = r.stderr.splitlines()
        assert line.startswith("jobctl: error: ") and str(dest) in line, line
        assert "Traceback" not in r.stderr
    assert temp_files(tmp_path, tmp_path.parent) == []


def test_symlinks_out_of_out_dir_are_not_followed(workers, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("TOPSECRET-file\n")
    outside_dir = tmp_path / "outside-dir"
    outside_dir.mkdir()
    (outside_dir / "inner.txt").write_text("TOPSECRET-dir\n")
    i = sh(
        f'cd "$JOBCTL_OUTPUT_DIR" && echo ok > real.txt && ln -s {outside} link.txt && '
        f'ln -s {outside_dir} linkdir && ln -s /etc/hostname hostname && ln -s real.txt inside-link'
    )
    finish(workers, i)
    dest = tmp_path / "p.zip"
    cli("package", str(i), "-o", str(dest))
    members, manifest = read_zip(dest)
    assert sorted(members) == ["manifest.json", "out/real.txt"]
    blob = everything_in(dest)
    assert b"TOPSECRET" not in blob
    hostname = Path("/etc/hostname").read_bytes().strip()
    if hostname:
        assert hostname not in b"".join(v for k, v in members.items() if k != "manifest.json")
    assert sorted(manifest["skipped"], key=lambda s: s["path"]) == [
        {"path": "out/hostname", "reason": "symlink"},
        {"path": "out/inside-link", "reason": "symlink"},
        {"path": "out/link.txt", "reason": "symlink"},
        {"path": "out/linkdir", "reason": "symlink"},
    ]
    assert outside.read_text() == "TOPSECRET-file\n"  # untouched


def test_symlinked_log_is_not_followed(workers, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("TOPSECRET-log\n")
    # A job owns its directory: it can swap its own log for a link to anything it likes.
    i = sh(f'echo real-output; cd "$JOBCTL_OUTPUT_DIR/.." && rm stdout.log && ln -s {outside} stdout.log')
    finish(workers, i)
    dest = tmp_path / "p.zip"
    cli("package", str(i), "--logs", "-o", str(dest))
    members, manifest = read_zip(dest)
    assert sorted(members) == ["logs/stderr.log", "manifest.json"]
    assert b"TOPSECRET" not in everything_in(dest)
    assert manifest["skipped"] == [{"path": "logs/stdout.log", "reason": "symlink"}]


def test_fifo_is_skipped_without_hanging(workers, tmp_path):
    i = sh('cd "$JOBCTL_OUTPUT_DIR" && mkfifo pipe && echo ok > after.txt')
    finish(workers, i)
    dest = tmp_path / "p.zip"
    cli("package", str(i), "-o", str(dest), timeout=15)
    members, manifest = read_zip(dest)
    assert sorted(members) == ["manifest.json", "out/after.txt"]
    assert manifest["skipped"] == [{"path": "out/pipe", "reason": "fifo"}]


def test_submit_zip_packages_when_the_job_ends(workers, jobctl_env):
    i = sh('echo zipped > "$JOBCTL_OUTPUT_DIR/z.txt"', opts=("--zip",))
    finish(workers, i)
    record = job(i)
    zip_path = jobctl_env / "jobs" / str(i) / "output.zip"
    assert record["state"] == "completed"
    assert record["zip_path"] == str(zip_path)
    members, manifest = read_zip(zip_path)
    assert sorted(members) == ["manifest.json", "out/z.txt"]
    assert members["out/z.txt"] == b"zipped\n"
    assert manifest["exit_code"] == 0
    assert manifest["files"] == [
        {"path": "out/z.txt", "size": 7, "sha256": hashlib.sha256(b"zipped\n").hexdigest()}
    ]
    assert temp_files(zip_path.parent) == []


def test_submit_zip_manifest_records_the_final_state(workers, jobctl_env):
    ok = sh('echo a > "$JOBCTL_OUTPUT_DIR/a"', opts=("--zip",))
    bad = sh("exit 3", opts=("--zip",))
    finish(workers, ok, bad)
    states = {}
    for i in (ok, bad):
        _, manifest = read_zip(jobctl_env / "jobs" / str(i) / "output.zip")
        states[i] = (manifest["state"], manifest["exit_code"], manifest["error"])
    assert states == {ok: ("completed", 0, None), bad: ("failed", 3, "exit code 3")}


def test_file_name_that_is_not_utf8(workers, jobctl_env):
    i = submit(
        "python3", "-c",
        "import os; d = os.environb[b'JOBCTL_OUTPUT_DIR']; "
        "open(d + b'/bad-\\xff.txt', 'w').write('x'); open(d + b'/good.txt', 'w').write('y')",
        opts=("--zip",),
    )
    finish(workers, i)
    record = job(i)
    assert (record["state"], record["error"]) == ("completed", None)  # packaging never fails the job
    members, manifest = read_zip(jobctl_env / "jobs" / str(i) / "output.zip")
    assert sorted(members) == ["manifest.json", "out/good.txt"]
    assert manifest["skipped"] == [{"path": "out/bad-\\xff.txt", "reason": "name is not valid UTF-8"}]
    r = cli("package", str(i))
    assert r.returncode == 0 and "Traceback" not in r.stderr


def test_package_of_a_job_that_never_started(jobctl_env):
    i = submit("true")
    r = cli("package", str(i), ok=False)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == f"jobctl: error: job {i} has no job directory yet (it has not started)\n"
    assert not (jobctl_env / "jobs" / str(i)).exists()
    assert job(i)["zip_path"] is None


def test_package_is_atomic(workers, jobctl_env, monkeypatch):
    i = sh('echo one > "$JOBCTL_OUTPUT_DIR/f"')
    finish(workers, i)
    jd = jobctl_env / "jobs" / str(i)
    cli("package", str(i))
    before = (jd / "output.zip").read_bytes()
    (jd / "out" / "f").write_text("two, a longer content this time\n")

    def disk_full(_job: Any) -> dict[str, Any]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # Fail after every file is in the temp zip, before it is renamed into place.
    with monkeypatch.context() as m:
        m.setattr("jobctl.jobdir.manifest", disk_full)
        r = run("package", str(i), ok=False)
    assert r.exit_code == 1
    assert r.stderr == f"jobctl: error: {os.strerror(errno.ENOSPC)}\n"
    assert (jd / "output.zip").read_bytes() == before  # the old zip is whole
    assert temp_files(jd) == []
    cli("package", str(i))
    assert read_zip(jd / "output.zip")[0]["out/f"] == b"two, a longer content this time\n"
    assert temp_files(jd) == []
