"""Store cost vs history size: the same operations at 0 stored jobs and at N stored jobs.

SPEC "Performance": store cost does not grow with history: submit at 100,000 stored jobs at
most 1.25x submit at 0; a worker's claim likewise; `status --json` of 100,000 jobs under 1 s;
`cleanup` of 100,000 jobs under 10 s.

Run by hand with the venv's python (never as a timed test):

    .venv/bin/python bench/bench_history.py [--quick] [-n N]

N defaults to 100,000 (20,000 with --quick). Two fresh stores live in a temporary directory
(JOBCTL_STORE/JOBCTL_CONFIG point there, never at the user's store) and are removed at the end.
The N-job store is built in the store's real on-disk format, fast: the jobs are submitted
through `JsonStore.submit` in batches of 10,000 (one transaction each: real ids, env and
history lines), their finished records (`Job.to_record()` + `_v`, state completed) are
appended to the `done/<n>.jsonl` shards with the store's own `encode_line`, and they are then
dropped from `state.json` through the store's own `_transaction()`. This is what the store's
own flush does, minus one transaction per job.

Phases, in this order (0 and N interleaved within each phase, so drift hits both alike):
status --json, claim (in-process), submit (whole process), cleanup. Starts no worker; any
child still running when the script ends (a cleanup past its time limit) is killed by pid.
Exit status 0 if every target is met, 1 if not.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _benchlib import JOBCTL, Sandbox, arguments, load, median, ms, p90, preamble, report, secs, verdict  # noqa: E402

from jobctl.model import FINISHED, Job, State, Usage, WorkerRef, transition  # noqa: E402
from jobctl.scheduler import Capacity  # noqa: E402
from jobctl.store.base import Guarded, JobSpec  # noqa: E402
from jobctl.store.jsonfile import SHARD_SIZE, JsonStore, encode_line  # noqa: E402

SUBMIT_RATIO = 1.25
CLAIM_RATIO = 1.25
STATUS_MAX_S = 1.0
CLEANUP_MAX_S = 10.0
BATCH = 10_000


def spec(cwd: str, env: dict[str, str]) -> JobSpec:
    submitter = {"user": "bench", "host": socket.gethostname(), "pid": os.getpid()}
    return JobSpec(Job(id=0, command=("true",), cwd=cwd, created_at=0.0, submitter=submitter), env)


def build(store: JsonStore, n: int, cwd: str, env: dict[str, str]) -> None:
    """Put n completed jobs into `store`, in its real format (see the module docstring)."""
    worker = WorkerRef(socket.gethostname(), 999_999)
    t_base = time.time() - 2 * n - 3600  # every job finished well in the past
    done = store.root / "done"
    made = 0
    while made < n:
        size = min(BATCH, n - made)
        s = spec(cwd, env)
        created = t_base + 2 * made
        jobs = store.submit([s] * size, at=created)
        shards: dict[int, list[bytes]] = {}
        for k, job in enumerate(jobs):
            start = created + 2 * k
            running = transition(job, State.RUNNING, at=start, worker=worker, attempt=1)
            finished = transition(
                running,
                State.COMPLETED,
                at=start + 1.0,
                exit_code=0,
                reason="exit",
                usage=Usage(wall_s=1.0, cpu_user_s=0.001, cpu_sys_s=0.001, max_rss_kb=3000),
            )
            rec = finished.to_record()
            rec["_v"] = 3  # submitted (1), claimed (2), finished (3): what the store would hold
            shards.setdefault(job.id // SHARD_SIZE, []).append(encode_line(rec))
        for shard, lines in shards.items():
            path = done / f"{shard}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, b"".join(lines))
                os.fsync(fd)
            finally:
                os.close(fd)
        with store._transaction() as hot:  # the flush's second half: state.json forgets them
            for job in jobs:
                del hot.records[job.id]
            hot.dirty = True
        made += size


def make_job_dirs(root: Path, ids: list[int]) -> None:
    """What a worker leaves behind for a finished job: stdout.log, stderr.log, out/."""
    log = b"hello from a benchmark job\n" * 4
    for i in ids:
        jd = root / "jobs" / str(i)
        os.mkdir(jd, 0o700)
        os.mkdir(jd / "out", 0o700)
        with open(jd / "stdout.log", "wb") as f:
            f.write(log)
        open(jd / "stderr.log", "wb").close()


def main() -> int:
    ap = arguments(__doc__.splitlines()[0], "N=20,000 and fewer repetitions")
    ap.add_argument("-n", type=int, help="stored jobs (default 100,000; 20,000 with --quick)")
    ap.add_argument(
        "--cleanup-timeout",
        type=float,
        default=900.0,
        help="kill a cleanup still running after this many seconds (default 900)",
    )
    args = ap.parse_args()
    n = args.n or (20_000 if args.quick else 100_000)
    status_runs, claim_runs, submit_runs = (3, 20, 10) if args.quick else (7, 50, 20)

    with Sandbox("jobctl-bench-history-", inherit_python_env=args.inherit_python_env) as box:
        cwd = str(box.workdir)
        roots = {0: box.dir / "store-0", n: box.dir / f"store-{n}"}
        envs = {k: box.env(root) for k, root in roots.items()}
        stores = {k: JsonStore(root) for k, root in roots.items()}
        job_env = dict(envs[0])  # what `jobctl submit` would capture, more or less

        preamble(box)
        print(f"stores:  {roots[0]} (0 jobs), {roots[n]} (N={n:,} jobs); temporary, removed at the end")
        print()

        t = time.perf_counter()
        build(stores[n], n, cwd, job_env)
        t_build = time.perf_counter() - t
        t = time.perf_counter()
        jobs = stores[n].query()
        t_query = time.perf_counter() - t
        assert len(jobs) == n, f"built store holds {len(jobs)} jobs, not {n}"
        assert all(j.state is State.COMPLETED for j in jobs) and [j.id for j in jobs] == list(range(1, n + 1))
        assert stores[0].query() == []
        del jobs
        shard_bytes = sum(p.stat().st_size for p in (roots[n] / "done").iterdir())
        state_bytes = (roots[n] / "state.json").stat().st_size
        print(
            f"built N={n:,} completed jobs in {t_build:.1f} s: {len(list((roots[n] / 'done').iterdir()))} shards, "
            f"{shard_bytes / 2**20:.1f} MiB in done/, state.json {state_bytes} bytes"
        )
        print(
            f"verified: store.query() returns {n:,} completed jobs, ids 1..{n:,} "
            f"(in-process, {t_query:.2f} s); the 0-job store returns none"
        )
        print()

        # --- status --json (whole process), interleaved; output to a file like `> jobs.json`.
        status_t: dict[int, list[float]] = {0: [], n: []}
        for r in range(status_runs + 1):
            for k in (0, n) if r % 2 == 0 else (n, 0):
                out = box.dir / f"status-{k}.json"
                with open(out, "wb") as f:
                    dt = box.run([str(JOBCTL), "status", "--json"], envs[k], stdout=f, timeout=300)
                if r == 0:  # warm-up run, checked, not counted
                    got = json.loads(out.read_bytes())
                    assert len(got) == k, f"status --json at {k} printed {len(got)} jobs"
                else:
                    status_t[k].append(dt)
        status_bytes = (box.dir / f"status-{n}.json").stat().st_size
        print(
            f"status --json: 1 checked warm-up + {status_runs} runs each; output to a file "
            f"({status_bytes / 2**20:.1f} MiB at N); the warm-up output held exactly 0 and {n:,} jobs"
        )

        # --- claim (in-process): submit one job, time only the claim, then finish it.
        me = WorkerRef(socket.gethostname(), os.getpid())
        claim_t: dict[int, list[float]] = {0: [], n: []}
        for r in range(claim_runs + 2):
            for k in (0, n) if r % 2 == 0 else (n, 0):
                store = stores[k]
                [job] = store.submit([spec(cwd, job_env)], at=time.time())
                t = time.perf_counter()
                claimed = store.claim(me, Capacity(free_slots=1, total_slots=1), at=time.time())
                dt = time.perf_counter() - t
                assert [c.id for c in claimed] == [job.id], (claimed, job.id)
                [c] = claimed
                done = transition(c, State.COMPLETED, at=time.time(), exit_code=0, reason="exit")
                store.update([Guarded(done, State.RUNNING, c.attempt)])
                if r >= 2:  # two warm-up cycles each
                    claim_t[k].append(dt)
        print(
            f"claim: 2 warm-up + {claim_runs} submit+claim+finish cycles each, in-process, timing only "
            "store.claim(...) (each store then holds that many more completed jobs)"
        )

        # --- submit (whole process), interleaved.
        submit_t: dict[int, list[float]] = {0: [], n: []}
        argv = [str(JOBCTL), "submit", "--", "true"]
        for r in range(submit_runs + 2):
            for k in (0, n) if r % 2 == 0 else (n, 0):
                dt = box.run(argv, envs[k])
                if r >= 2:
                    submit_t[k].append(dt)
        print(
            f"submit: 2 warm-up + {submit_runs} runs each of `jobctl submit -- true` (whole process); "
            "these jobs stay queued"
        )

        # --- cleanup (whole process): every finished job, with real job directories.
        box.run([str(JOBCTL), "cleanup", "--older-than", "0", "--dry-run", "--quiet"], envs[0])  # warm-up
        counts: dict[int, int] = {}
        cleanup_t: dict[int, float | None] = {}
        for k in (0, n):
            finished_ids = [j.id for j in stores[k].query(states=FINISHED)]
            counts[k] = len(finished_ids)
            t = time.perf_counter()
            make_job_dirs(roots[k], finished_ids)
            t_dirs = time.perf_counter() - t
            argv = [str(JOBCTL), "cleanup", "--older-than", "0", "--quiet"]
            print(
                f"cleanup at {'0' if k == 0 else 'N'}: running (time limit {args.cleanup_timeout:g} s)...", flush=True
            )
            try:
                cleanup_t[k] = box.run(argv, envs[k], timeout=args.cleanup_timeout)
            except TimeoutError as e:
                print(f"cleanup at N: {e}")
                cleanup_t[k] = None
                continue
            left = stores[k].query()
            assert all(not j.finished for j in left), "cleanup left finished jobs"
            dirs_left = len(os.listdir(roots[k] / "jobs"))
            print(
                f"cleanup at {'0' if k == 0 else 'N'}: {counts[k]:,} finished jobs; created their job "
                f"directories (stdout.log, stderr.log, out/) in {t_dirs:.1f} s first; afterwards "
                f"{len(left)} unfinished jobs remain and {dirs_left} job directories"
            )
        print(
            "(the synthetic jobs have no job directories of their own: real ones are created above, just "
            "before each cleanup, so that cleanup removes directories as it would in use)"
        )
        print(f"after:   {load()}")

    s0, sn = median(submit_t[0]), median(submit_t[n])
    c0, cn = median(claim_t[0]), median(claim_t[n])
    st0, stn = median(status_t[0]), median(status_t[n])
    cl0, cln = cleanup_t[0], cleanup_t[n]
    ok_submit = sn / s0 <= SUBMIT_RATIO
    ok_claim = cn / c0 <= CLAIM_RATIO
    ok_status = stn < STATUS_MAX_S
    ok_cleanup = cln is not None and cln < CLEANUP_MAX_S
    cl_n = f"> {args.cleanup_timeout:.0f} s (killed)" if cln is None else secs(cln)
    label_n = f"at N={n:,}"
    rows = [
        ["submit, whole process (median)", ms(s0), ms(sn), f"{sn / s0:.2f}x  (<= {SUBMIT_RATIO}x)", verdict(ok_submit)],
        ["  p90", ms(p90(submit_t[0])), ms(p90(submit_t[n])), "", ""],
        ["claim, in-process (median)", ms(c0), ms(cn), f"{cn / c0:.2f}x  (<= {CLAIM_RATIO}x)", verdict(ok_claim)],
        ["  p90", ms(p90(claim_t[0])), ms(p90(claim_t[n])), "", ""],
        [
            "status --json, whole process (median)",
            ms(st0),
            secs(stn),
            f"{secs(stn)}  (< {STATUS_MAX_S:g} s)",
            verdict(ok_status),
        ],
        [
            f"cleanup --older-than 0 ({counts[0]:,} / {counts[n]:,} jobs)",
            "-" if cl0 is None else ms(cl0),
            cl_n,
            f"{cl_n}  (< {CLEANUP_MAX_S:g} s)",
            verdict(ok_cleanup),
        ],
    ]
    return report(["figure", "at 0", label_n, "ratio / target", "result"], rows,
                  ok_submit and ok_claim and ok_status and ok_cleanup)


if __name__ == "__main__":
    sys.exit(main())
