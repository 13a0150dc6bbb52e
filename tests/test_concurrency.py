"""Many processes at once on one store: no id lost or duplicated, no job run twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import JOBCTL, jobs, submit, wait_until


def test_eight_concurrent_submitters_lose_and_duplicate_no_id(tmp_path: Path) -> None:
    per_process = 12
    loop = f'for n in $(seq {per_process}); do "{JOBCTL}" submit -- true || exit 1; done'
    procs = [subprocess.Popen(["sh", "-c", loop], stdout=subprocess.PIPE, text=True) for _ in range(8)]
    printed = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        printed += [int(line) for line in out.split()]
    assert len(printed) == 8 * per_process
    assert sorted(printed) == list(range(1, 8 * per_process + 1))
    assert sorted(j["id"] for j in jobs()) == sorted(printed)


def test_two_workers_never_run_a_job_twice(workers, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    lines = "".join(f"echo $JOBCTL_JOB_ID >> {ran}\n" for _ in range(60))
    subprocess.run([JOBCTL, "submit", "--from", "-"], input=lines, text=True, check=True, capture_output=True)
    workers.start("--concurrency", "2")
    workers.start("--concurrency", "2")
    wait_until(lambda: all(j["state"] == "completed" for j in jobs()), timeout=60)
    ids = [int(x) for x in ran.read_text().split()]
    assert sorted(ids) == list(range(1, 61))
    assert {j["worker"]["pid"] for j in jobs()} == {p.pid for p in workers.procs}


def test_the_core_never_imports_typer_or_rich() -> None:
    code = (
        "import sys; import jobctl.service, jobctl.worker, jobctl.supervisor, jobctl.jobdir, "
        "jobctl.store.jsonfile, jobctl.config, jobctl.scheduler; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich', 'click')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_status_json_does_not_import_rich(tmp_path: Path) -> None:
    i = submit("true")
    code = (
        "import sys; from jobctl.cli import main; sys.argv = ['jobctl', 'status', '--json', '1'];"
        "import os; real_exit = os._exit;"  # jobctl leaves through os._exit: look on the way out
        "os._exit = lambda code: (print('RICH' if 'rich' in sys.modules else 'NORICH', file=sys.stderr),"
        " sys.stderr.flush(), real_exit(code));"
        "main()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and i == 1
    assert proc.stderr.strip().endswith("NORICH")
