"""Wake-up latency: submit -> start with an idle worker, on the JSON store and on PostgreSQL.

SPEC "Performance": submit -> start with an idle worker, median under 20 ms (no sleeping poll
loop): the JSON store's worker is woken through its FIFO. Issue 6: with LISTEN/NOTIFY on a
PostgreSQL store, median under 200 ms. The fallback poll (`worker_poll`, 2 s) would give a
median near 1 s, so these figures show the wake-up path at work.

Each sample: `jobctl submit -- date +%s.%N` as a whole process while one idle worker (one
slot) waits; the latency is the job's own clock reading (its first output line) minus the
job's `created_at` (stamped by the submit process just before it writes the store). Both
are this host's wall clock. The next sample is submitted only after the job finished and the
worker is idle again. The time from the submit process's exit to the job's start is printed
too (negative when the job starts before `submit` has exited).

Run by hand with the venv's python (never as a timed test):

    .venv/bin/python bench/bench_latency.py [--quick] [--samples N] [--no-postgres]

The PostgreSQL case starts its own throwaway server (tests/pgserver.py: initdb and pg_ctl
from /usr/lib/postgresql/15/bin into a temp dir, 127.0.0.1, a free port) and stops it.
Stores and config live in a fresh temporary directory, removed at the end; the worker is
killed by its pid's process group. Exit status 0 if every target is met, 1 if not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _benchlib import JOBCTL, Sandbox, arguments, load, median, ms, p90, preamble, report, verdict  # noqa: E402

TARGETS = {"json": 0.020, "postgresql": 0.200}
WARMUP = 3


def sample(box: Sandbox, env: dict[str, str]) -> tuple[float, float]:
    """One submit -> start: (start - created_at, start - submit's exit), in seconds."""
    out = subprocess.run([str(JOBCTL), "submit", "--", "date", "+%s.%N"], env=env, cwd=box.workdir,
                         capture_output=True, text=True, check=True)
    exited = time.time()
    job_id = out.stdout.strip()
    deadline = time.monotonic() + 30
    while True:  # the figure comes from the job's own clock: this poll's pace does not enter it
        [record] = json.loads(subprocess.run([str(JOBCTL), "status", "--json", job_id], env=env, cwd=box.workdir,
                                             capture_output=True, text=True, check=True).stdout)
        if record["state"] in ("completed", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not finish within 30 s: {record['state']}")
        time.sleep(0.02)
    if record["state"] != "completed":
        raise RuntimeError(f"job {job_id} {record['state']}: {record['error']}")
    started = float((Path(record["job_dir"]) / "stdout.log").read_text().split()[0])
    from datetime import datetime

    submitted = datetime.fromisoformat(record["created_at"]).timestamp()
    return started - submitted, started - exited


def measure(box: Sandbox, name: str, store: str, samples: int, config: str = "") -> list[tuple[float, float]]:
    box.config.write_text(config)
    env = box.env(Path(store)) if "://" not in store else {**box.env(box.dir), "JOBCTL_STORE": store}
    worker = box.start([str(JOBCTL), "worker", "--concurrency", "1"], env)
    try:
        deadline = time.monotonic() + 30
        while b"started:" not in (line := worker.stderr.readline()):  # type: ignore[union-attr]
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the worker did not start: {line!r}")
        for _ in range(WARMUP):
            sample(box, env)
        return [sample(box, env) for _ in range(samples)]
    finally:
        box.kill(worker)


def main() -> int:
    ap = arguments(__doc__.splitlines()[0], "10 samples per store instead of 40")
    ap.add_argument("--samples", type=int, help="samples per store (default 40, 10 with --quick)")
    ap.add_argument("--no-postgres", action="store_true", help="the JSON store only")
    args = ap.parse_args()
    samples = args.samples or (10 if args.quick else 40)

    results: dict[str, list[tuple[float, float]]] = {}
    with Sandbox("jobctl-bench-latency-", inherit_python_env=args.inherit_python_env) as box:
        preamble(box)
        print(f"runs:    {WARMUP} warm-up + {samples} samples per store; one idle worker with one slot")
        results["json"] = measure(box, "json", str(box.dir / "store"), samples)
        if not args.no_postgres:
            from tests.pgserver import postgres_server

            with postgres_server() as url:
                print(f"postgresql: throwaway server at {url}")
                config = f'output_root = "{box.dir / "pg-output"}"\n'
                results["postgresql"] = measure(box, "postgresql", url, samples, config)
        print(f"after:   {load()}")

    rows, ok = [], True
    for name, xs in results.items():
        start = [x[0] for x in xs]
        after_exit = [x[1] for x in xs]
        met = median(start) < TARGETS[name]
        ok &= met
        rows.append([name, ms(median(start)), ms(p90(start)), ms(max(start)), ms(median(after_exit)),
                     f"< {ms(TARGETS[name])}", verdict(met)])
    return report(["store", "median", "p90", "max", "median after submit exits", "target (median)", "result"], rows, ok)


if __name__ == "__main__":
    sys.exit(main())
