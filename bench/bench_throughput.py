"""Throughput: `submit --from` of many lines, and a worker running many no-op jobs vs xargs.

SPEC "Performance": `submit --from` of 10,000 lines at least 2,000 jobs/s; 1,000 no-op jobs
with `--concurrency 2` at least 0.8x `xargs -P2 -n1 true` on the same 1,000 lines.

submit: `jobctl submit --from FILE` of 10,000 lines, each `true`, into an empty store, timed
as a whole process (spawn to exit); jobs/s = lines / wall time. Repeated (5 times, 3 with
--quick), each time into a fresh store; the median is reported. Each run's output must hold
one id per line, and the store must then hold that many queued jobs (read in-process).

worker: 1,000 jobs `true` are queued with one untimed `submit --from` into a fresh store, then
`jobctl worker --exit-when-idle --concurrency 2` is timed from spawn to exit. It must exit 0
and leave all 1,000 jobs `completed` (checked in-process with JsonStore(...).query()). Each
job runs `/bin/sh -c true` (how `--from` lines run), one process per job. The reference is
the SPEC's own: `xargs -a FILE -P2 -n1 true` on the same file, i.e. 1,000 separate
`true true` processes (GNU xargs, one line per invocation), two at a time. Rounds alternate
which of the two runs first (3 rounds by default); jobs/s come from the median wall times,
and the target is the ratio jobctl/xargs. A worker still running after --worker-timeout
seconds (default 600) is killed by its pid's process group and reported as FAIL; no further
worker rounds run then.

Run by hand with the venv's python (never as a timed test):

    .venv/bin/python bench/bench_throughput.py [--quick] [--lines N] [--jobs N] [--rounds N]

--quick: 2,000 lines and 200 jobs, 3 submit runs. Stores and config live in a fresh temporary
directory (JOBCTL_STORE/JOBCTL_CONFIG point there), removed at the end. Exit status 0 if every
target is met, 1 if not.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import JOBCTL, Sandbox, arguments, load, median, preamble, report, secs, verdict  # noqa: E402

from jobctl.store.jsonfile import JsonStore  # noqa: E402

SUBMIT_RATE = 2000.0
WORKER_RATIO = 0.8
XARGS = "xargs"


def commands_file(box: Sandbox, n: int) -> Path:
    path = box.dir / f"commands-{n}.txt"
    path.write_text("true\n" * n)
    return path


def states(store: Path) -> Counter[str]:
    return Counter(str(job.state) for job in JsonStore(store).query())


def submit_from(box: Sandbox, store: Path, lines: Path, n: int) -> float:
    """Wall time of one `jobctl submit --from lines` into `store`; checks ids and the store."""
    out = box.dir / "submit.out"
    with out.open("wb") as f:
        t = box.run([str(JOBCTL), "submit", "--from", str(lines)], box.env(store), stdout=f)
    ids = out.read_text().split()
    if len(ids) != n:
        raise RuntimeError(f"submit --from printed {len(ids)} ids, expected {n}")
    got = states(store)
    if got != Counter({"queued": n}):
        raise RuntimeError(f"after submit --from the store holds {dict(got)}, expected {n} queued")
    return t


def run_worker(box: Sandbox, store: Path, timeout: float) -> float:
    return box.run([str(JOBCTL), "worker", "--exit-when-idle", "--concurrency", "2"], box.env(store),
                   timeout=timeout)


def main() -> int:
    ap = arguments(__doc__.splitlines()[0], "2,000 lines and 200 jobs, 3 submit runs")
    ap.add_argument("--lines", type=int, help="lines for submit --from (default 10,000; 2,000 with --quick)")
    ap.add_argument("--jobs", type=int, help="no-op jobs for the worker (default 1,000; 200 with --quick)")
    ap.add_argument("--submit-runs", type=int, help="submit --from runs (default 5; 3 with --quick)")
    ap.add_argument("--rounds", type=int, default=3, help="worker/xargs rounds, alternating (default 3)")
    ap.add_argument("--worker-timeout", type=float, default=600.0,
                    help="seconds after which a worker run is killed and reported as FAIL (default 600)")
    args = ap.parse_args()
    n_lines = args.lines or (2_000 if args.quick else 10_000)
    n_jobs = args.jobs or (200 if args.quick else 1_000)
    submit_runs = args.submit_runs or (3 if args.quick else 5)
    xargs = shutil.which(XARGS)
    if xargs is None:
        sys.exit("xargs not found on PATH")

    submit_times: list[float] = []
    worker_times: list[float] = []
    xargs_times: list[float] = []
    worker_error = ""
    with Sandbox("jobctl-bench-throughput-", inherit_python_env=args.inherit_python_env) as box:
        preamble(box, f"xargs:   {xargs}")
        print(f"sandbox: {box.dir} (temporary; a fresh store per run; JOBCTL_CONFIG={box.config}, absent)")

        # Warm-up, not timed: fills the bytecode cache (submit and worker modules), page cache.
        warm = box.dir / "store-warmup"
        submit_from(box, warm, commands_file(box, 20), 20)
        run_worker(box, warm, args.worker_timeout)
        box.run([xargs, "-a", str(commands_file(box, 20)), "-P2", "-n1", "true"], box.env(warm))
        shutil.rmtree(warm)
        print("warm-up: submit --from 20 lines, a worker over them, xargs over them (not timed)")

        lines = commands_file(box, n_lines)
        print(f"submit:  {submit_runs} runs of `jobctl submit --from FILE` ({n_lines:,} lines `true`), "
              "each into a fresh store; wall time from spawn to exit")
        for i in range(submit_runs):
            store = box.dir / f"store-submit-{i}"
            submit_times.append(submit_from(box, store, lines, n_lines))
            shutil.rmtree(store)
            print(f"  run {i + 1}: {secs(submit_times[-1])}, {n_lines / submit_times[-1]:,.0f} jobs/s")

        jobs = commands_file(box, n_jobs)
        print(f"worker:  {args.rounds} rounds, alternating order, of `jobctl worker --exit-when-idle "
              f"--concurrency 2` over {n_jobs:,} queued jobs `true` (queued untimed, fresh store each) "
              f"and `xargs -a FILE -P2 -n1 true` over the same {n_jobs:,} lines; "
              f"worker time limit {args.worker_timeout:g} s")
        for r in range(args.rounds):
            order = ["jobctl", "xargs"] if r % 2 == 0 else ["xargs", "jobctl"]
            for who in order:
                if who == "xargs":
                    xargs_times.append(box.run([xargs, "-a", str(jobs), "-P2", "-n1", "true"], box.env(box.dir)))
                    print(f"  round {r + 1} xargs:  {secs(xargs_times[-1])}, {n_jobs / xargs_times[-1]:,.0f} jobs/s")
                    continue
                store = box.dir / f"store-worker-{r}"
                submit_from(box, store, jobs, n_jobs)
                try:
                    t = run_worker(box, store, args.worker_timeout)
                except (TimeoutError, RuntimeError) as e:
                    worker_error = str(e)
                    print(f"  round {r + 1} jobctl: FAILED: {e}")
                    break
                got = states(store)
                if got != Counter({"completed": n_jobs}):
                    worker_error = f"round {r + 1}: the worker left {dict(got)}, expected {n_jobs:,} completed"
                    print(f"  {worker_error}")
                    break
                worker_times.append(t)
                shutil.rmtree(store)
                print(f"  round {r + 1} jobctl: {secs(t)}, {n_jobs / t:,.1f} jobs/s (all {n_jobs:,} completed)")
            if worker_error:
                break
        print(f"after:   {load()}")

    submit_rate = n_lines / median(submit_times)
    submit_ok = submit_rate >= SUBMIT_RATE
    rows = [[f"submit --from {n_lines:,} lines (median of {len(submit_times)})", secs(median(submit_times)),
             f"{submit_rate:,.0f} jobs/s", f">= {SUBMIT_RATE:,.0f} jobs/s", verdict(submit_ok)],
            ["  fastest / slowest run", f"{secs(min(submit_times))} / {secs(max(submit_times))}", "", "", ""]]
    xargs_rate = n_jobs / median(xargs_times)
    if worker_error or not worker_times:
        worker_ok = False
        rows.append([f"worker, {n_jobs:,} no-op jobs, -c 2", "-", "-", "", ""])
        rows.append([f"xargs -P2 -n1 true, {n_jobs:,} lines (median of {len(xargs_times)})",
                     secs(median(xargs_times)), f"{xargs_rate:,.0f} jobs/s", "reference", ""])
        rows.append(["jobctl worker / xargs (jobs/s)", "", "-", f">= {WORKER_RATIO}x", "FAIL"])
    else:
        worker_rate = n_jobs / median(worker_times)
        ratio = worker_rate / xargs_rate
        worker_ok = ratio >= WORKER_RATIO
        rows.append([f"worker, {n_jobs:,} no-op jobs, -c 2 (median of {len(worker_times)})",
                     secs(median(worker_times)), f"{worker_rate:,.1f} jobs/s", "", ""])
        rows.append([f"xargs -P2 -n1 true, {n_jobs:,} lines (median of {len(xargs_times)})",
                     secs(median(xargs_times)), f"{xargs_rate:,.0f} jobs/s", "reference", ""])
        rows.append(["jobctl worker / xargs (jobs/s)", "", f"{ratio:.3f}x", f">= {WORKER_RATIO}x",
                     verdict(worker_ok)])
    if worker_error:
        print(f"\nworker: {worker_error}")
    return report(["figure", "wall time", "rate", "target", "result"], rows, submit_ok and worker_ok)


if __name__ == "__main__":
    sys.exit(main())
