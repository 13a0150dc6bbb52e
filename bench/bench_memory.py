"""Worker memory: RSS of an idle worker, and RSS growth over 10,000 no-op jobs.

SPEC "Performance": worker memory idle under 40 MB RSS; no growth over 10,000 jobs.

RSS is the worker's resident set (psutil `memory_info().rss` of the worker's pid) plus the
unique set (USS: pages no other process shares) of its launcher, the fork of the worker that
forks the supervisors (jobctl/launcher.py): together what a worker takes. Not the jobs or their
supervisors. In MB of 1,000,000 bytes. The worker pid is the `jobctl` console script's own
python process; its launcher is its one child with the same command line.

idle: `jobctl worker` on an empty store (a fresh one per run). Once it has logged "started:"
on stderr, wait 1 s, read its RSS, kill it. 3 runs; the target applies to the largest reading
(every idle worker must stay under 40 MB). For information, the same reading of a python that
only imports typer (`python -c "import typer; ..."`) and of one that imports jobctl.cli, each
idling after printing "started:", shows how much of the worker's RSS is the interpreter and
the CLI's imports.

growth: 10,000 jobs `true` (2,000 with --quick) are queued with one `submit --from` (not
timed), then one `jobctl worker --concurrency 2` runs them. The script counts finished jobs
from the worker's own log on stderr ("job N completed/failed/cancelled ...": exact, and it does
not touch the store while the worker runs) and reads the worker's RSS each time another tenth
of the jobs has finished, so it also shows the curve (and every 50 ms for the peak). Once all jobs finished it reads the RSS
at once ("after N jobs"), checks in-process (JsonStore(...).query()) that all of them are
`completed`, reads the RSS again 1 s later (idle, for information) and kills the worker by its
pid's process group. Rule ("no growth" = no leak proportional to jobs): the RSS after N jobs
minus the RSS after 1,000 jobs must be under 5 MB and under 10 % of the RSS after 1,000 jobs
(with a 35 MB worker: about 3.5 MB, i.e. about 390 bytes per job over 9,000 jobs). With
--quick the span is only 1,000 jobs, a much weaker check. Note that the queue drains during
the run: at 1,000 jobs the store's hot state still holds 9,000 queued jobs, which a worker
may keep in memory transiently, and at the end it holds none, so a leak can hide under that
high-water mark; the per-tenth readings show the shape. A worker still running after
--worker-timeout seconds (default 3600) is killed and the growth reported as FAIL.

Run by hand with the venv's python (never as a timed test):

    .venv/bin/python bench/bench_memory.py [--quick] [--jobs N] [--worker-timeout S]

Stores and config live in a fresh temporary directory (JOBCTL_STORE/JOBCTL_CONFIG point
there), removed at the end; every child is killed by its pid's process group, never by name.
Exit status 0 if every target is met, 1 if not.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import JOBCTL, PYTHON, Sandbox, arguments, load, median, preamble, report, secs, verdict  # noqa: E402

from jobctl.store.jsonfile import JsonStore  # noqa: E402

MB = 1_000_000
IDLE_MAX = 40 * MB
GROWTH_MAX = 5 * MB
GROWTH_FRACTION = 0.10
BASE_JOBS = 1_000
IDLE_RUNS = 3
SETTLE_S = 1.0
FINISHED = re.compile(rb"\bjob \d+ (completed|failed|cancelled)\b")


def mb(nbytes: float) -> str:
    return f"{nbytes / MB:.1f} MB"


def rss(pid: int) -> int:
    """The process's RSS, plus the USS of its launcher if it has one (see the docstring)."""
    proc = psutil.Process(pid)
    total = int(proc.memory_info().rss)
    try:
        argv = proc.cmdline()
        for child in proc.children():
            if child.cmdline() == argv:
                total += int(child.memory_full_info().uss)
    except psutil.NoSuchProcess:
        pass
    return total


class Log:
    """Drains a child's stderr in a thread (so the pipe never fills): 'started:', finished jobs."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.started = threading.Event()
        self.finished = 0
        self.tail: collections.deque[bytes] = collections.deque(maxlen=10)
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.tail.append(line.rstrip())
            if b"started:" in line:
                self.started.set()
            elif FINISHED.search(line):
                self.finished += 1

    def wait_started(self, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.started.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = b" | ".join(self.tail).decode(errors="replace")
                raise RuntimeError(f"{what} did not start (exit {proc.poll()}): {tail}")


def idle_rss(box: Sandbox, argv: list[str], store: Path, what: str) -> int:
    proc = box.start(argv, box.env(store))
    try:
        Log(proc).wait_started(proc, what)
        time.sleep(SETTLE_S)
        return rss(proc.pid)
    finally:
        box.kill(proc)


def main() -> int:
    ap = arguments(__doc__.splitlines()[0], "2,000 jobs instead of 10,000 for the growth check")
    ap.add_argument("--jobs", type=int, help="no-op jobs for the growth check (default 10,000; 2,000 with --quick)")
    ap.add_argument("--worker-timeout", type=float, default=3600.0,
                    help="seconds after which the growth worker is killed and reported as FAIL (default 3600)")
    args = ap.parse_args()
    n_jobs = args.jobs or (2_000 if args.quick else 10_000)
    if n_jobs <= BASE_JOBS:
        sys.exit(f"--jobs must be more than {BASE_JOBS:,}")
    step = max(1, n_jobs // 10)
    marks = sorted({*range(step, n_jobs + 1, step), BASE_JOBS, n_jobs})

    idle: list[int] = []
    info: dict[str, int] = {}
    curve: list[tuple[int, int, float]] = []  # (jobs finished, rss, seconds since the worker started)
    growth_error = ""
    after_idle = 0
    peak = 0
    with Sandbox("jobctl-bench-memory-", inherit_python_env=args.inherit_python_env) as box:
        preamble(box)
        print(f"sandbox: {box.dir} (temporary; a fresh store per run; JOBCTL_CONFIG={box.config}, absent)")

        # Warm-up, not measured: fills the bytecode cache (an unwarmed worker compiles its modules).
        box.run([str(JOBCTL), "submit", "--", "true"], box.env(box.dir / "store-warmup"))
        box.run([str(JOBCTL), "worker", "--exit-when-idle"], box.env(box.dir / "store-warmup"), timeout=60)
        print("warm-up: one job through `jobctl worker --exit-when-idle` (not measured)")

        print(f"idle:    {IDLE_RUNS} runs of `jobctl worker` on an empty store; RSS {SETTLE_S:g} s after 'started:'")
        for i in range(IDLE_RUNS):
            idle.append(idle_rss(box, [str(JOBCTL), "worker"], box.dir / f"store-idle-{i}", "jobctl worker"))
            print(f"  run {i + 1}: {mb(idle[-1])}")
        idler = "import sys, time, {}; print('started:', file=sys.stderr, flush=True); time.sleep(3600)"
        for name, module in (('python -c "import typer"', "typer"), ('python -c "import jobctl.cli"', "jobctl.cli")):
            info[name] = idle_rss(box, [str(PYTHON), "-c", idler.format(module)], box.dir / "store-info", name)

        store = box.dir / "store-growth"
        lines = box.dir / "commands.txt"
        lines.write_text("true\n" * n_jobs)
        out = box.dir / "submit.out"
        with out.open("wb") as f:
            box.run([str(JOBCTL), "submit", "--from", str(lines)], box.env(store), stdout=f)
        if len(out.read_text().split()) != n_jobs:
            raise RuntimeError(f"submit --from did not print {n_jobs} ids")
        print(f"growth:  {n_jobs:,} jobs `true` queued (untimed); one `jobctl worker --concurrency 2` runs them; "
              f"RSS read after {', '.join(f'{m:,}' for m in marks)} finished jobs; time limit "
              f"{args.worker_timeout:g} s")
        worker = box.start([str(JOBCTL), "worker", "--concurrency", "2"], box.env(store))
        try:
            log = Log(worker)
            log.wait_started(worker, "jobctl worker")
            t0 = time.monotonic()
            pending = list(marks)
            while pending:
                done = log.finished
                try:
                    peak = max(peak, rss(worker.pid))
                except psutil.NoSuchProcess:
                    pass
                if done >= pending[0]:
                    r = rss(worker.pid)
                    while pending and done >= pending[0]:
                        pending.pop(0)
                    curve.append((done, r, time.monotonic() - t0))
                    print(f"  {done:>6,} jobs finished: RSS {mb(r)}, {secs(curve[-1][2])} since start")
                    continue
                if worker.poll() is not None:
                    tail = b" | ".join(log.tail).decode(errors="replace")
                    growth_error = f"the worker exited {worker.returncode} after {done:,} jobs: {tail}"
                    break
                if time.monotonic() - t0 > args.worker_timeout:
                    growth_error = f"the worker had finished {done:,} of {n_jobs:,} jobs after {args.worker_timeout:g} s"
                    break
                time.sleep(0.05)
            if not growth_error:
                got = Counter(str(job.state) for job in JsonStore(store).query())
                if got != Counter({"completed": n_jobs}):
                    growth_error = f"the store holds {dict(got)}, expected {n_jobs:,} completed"
                time.sleep(SETTLE_S)
                after_idle = rss(worker.pid)
        finally:
            box.kill(worker)  # its process group, by pid
        if growth_error:
            print(f"  FAILED: {growth_error}; worker (pid {worker.pid}) killed")
        print(f"after:   {load()}")

    idle_ok = max(idle) < IDLE_MAX
    rows = [[f"worker idle (max of {len(idle)} runs)", mb(max(idle)), f"< {mb(IDLE_MAX)}", verdict(idle_ok)],
            ["  median / min", f"{mb(median(idle))} / {mb(min(idle))}", "", ""]]
    rows += [[f"  {name} idle (info)", mb(v), "", ""] for name, v in info.items()]
    base = next((r for d, r, _ in curve if d >= BASE_JOBS), None)
    end = curve[-1][1] if curve and curve[-1][0] >= n_jobs else None
    if growth_error or base is None or end is None:
        growth_ok = False
        rows.append([f"worker after {BASE_JOBS:,} / {n_jobs:,} jobs",
                     f"{mb(base) if base else '-'} / {mb(end) if end else '-'}", "", ""])
        rows.append(["growth", "-", "< 5.0 MB and < 10 %", "FAIL"])
        if peak:
            rows.append(["  peak while it ran", mb(peak), "", ""])
    else:
        growth = end - base
        limit = min(GROWTH_MAX, GROWTH_FRACTION * base)
        growth_ok = growth < limit
        rows.append([f"worker after {BASE_JOBS:,} jobs", mb(base), "", ""])
        rows.append([f"worker after {n_jobs:,} jobs", mb(end), "", ""])
        rows.append([f"growth {BASE_JOBS:,} -> {n_jobs:,} jobs",
                     f"{(end - base) / MB:+.1f} MB ({growth / base:+.1%}, {growth / (n_jobs - BASE_JOBS):+.0f} B/job)",
                     f"< {mb(limit)} (5 MB and 10 %)", verdict(growth_ok)])
        rows.append([f"  peak during the run / idle 1 s after ({secs(curve[-1][2])} run)",
                     f"{mb(max(peak, *(r for _, r, _ in curve)))} / {mb(after_idle)}", "", ""])
    return report(["figure", "RSS", "target", "result"], rows, idle_ok and growth_ok)


if __name__ == "__main__":
    sys.exit(main())
