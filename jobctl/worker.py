"""The pool: claim jobs, start a supervisor for each, record how they ended.

One thread and one `selectors` loop. The loop sleeps until something happens: a submit
wakes it through its FIFO, a supervisor's exit through a pidfd, SIGINT/SIGTERM through the
signal wake-up fd. A slow fallback poll (config `worker_poll`, POLL_S by default) covers a
missed wake-up and cancel requests recorded while nobody could signal; heartbeats go out at
that interval too, or more often when `worker_timeout` needs it.

Hooks and the periodic cleanup (jobctl.hooks) are children watched in the same loop, each
through a pidfd; the loop also wakes for a hook's deadline and the next cleanup. On its way
out (idle with `--exit-when-idle`, or stopping) the worker waits for its hooks, each bounded
by `hooks.timeout`, and for a running cleanup at most CLEANUP_EXIT_WAIT_S; after that the
cleanup is left to finish on its own. A second signal kills the hooks and exits at once.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobctl import fsutil, hooks, supervisor
from jobctl.errors import Conflict, JobctlError
from jobctl.jobdir import job_dir
from jobctl.launcher import Launcher, LauncherGone
from jobctl.model import FINISHED, Job, State, WorkerRef, command_line, format_duration, iso, now, transition
from jobctl.scheduler import Capacity
from jobctl.store import wake
from jobctl.store.base import Guarded, Store

POLL_S = 2.0
CLEANUP_EXIT_WAIT_S = 10.0
"""How long a worker that is done waits for a running cleanup before leaving it to finish
alone (it is a separate process; an interrupted cleanup would only leave work for the next)."""


@dataclass
class Running:
    job: Job
    supervisor_pid: int
    pidfd: int
    stop_sent: bool = False
    disowned: bool = False
    """The store gave this attempt to another worker: stop it, record nothing."""


def read_result(jd: Path, attempt: int) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = json.loads((jd / supervisor.RESULT_FILE).read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return result if result.get("attempt") == attempt else None


class Worker:
    def __init__(
        self,
        store: Store,
        *,
        concurrency: int,
        queues: Collection[str] | None,
        exit_when_idle: bool,
        grace_s: float,
        log: Callable[[str], None],
        gpus: Sequence[int] = (),
        queue_limits: Mapping[str, int] | None = None,
        retry_max_delay_s: float = 3600.0,
        max_lost: int = 3,
        poll_s: float = POLL_S,
        heartbeat_s: float = POLL_S,
        on_finish: str | None = None,
        on_failure: str | None = None,
        hook_timeout_s: float = 30.0,
        cleanup_interval_s: float | None = None,
        rates: Mapping[str, tuple[int, float]] | None = None,
    ) -> None:
        self.store = store
        self.rates = dict(rates or {})
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.concurrency = concurrency
        self.gpus = tuple(gpus)
        self.queue_limits = dict(queue_limits or {})
        self.retry_max_delay_s = retry_max_delay_s
        self.max_lost = max_lost
        self.last_orphan_check = float("-inf")
        self.queues = None if not queues else frozenset(queues)
        self.exit_when_idle = exit_when_idle
        self.grace_s = grace_s
        self.log = log
        self.ref = WorkerRef(fsutil.hostname(), os.getpid())
        self.running: dict[int, Running] = {}
        self.results: list[tuple[Job, Job, str | None]] = []
        """Jobs that ended, with their outcome, to record with the next claim (one write)."""
        self.stopping = 0  # 1: finish running jobs, start none; 2: hand running jobs back
        self.hook_lines = {"on_finish": on_finish, "on_failure": on_failure}
        self.hook_timeout_s = hook_timeout_s
        self.cleanup_interval_s = cleanup_interval_s or None
        self.next_cleanup = float("-inf")
        self.children: dict[int, hooks.Child] = {}
        """Hooks and the cleanup, by pidfd."""
        self.leaving_since: float | None = None
        """When the worker found itself done (idle or stopping) while children still ran."""

    def free_slots(self) -> int:
        return self.concurrency - sum(r.job.cpus for r in self.running.values())

    def capacity(self) -> Capacity:
        busy = {g for r in self.running.values() for g in r.job.gpu_ids}
        return Capacity(
            free_slots=self.free_slots(),
            total_slots=self.concurrency,
            free_gpu_ids=tuple(g for g in self.gpus if g not in busy),
            total_gpus=len(self.gpus),
            queues=self.queues,
            queue_limits=self.queue_limits,
            rates=self.rates,
        )

    def _timed_waits(self) -> list[float]:
        """When the delayed or backed-off jobs of this worker's queues may start (held ones
        wait for a person, not a time), and when to look again at queued jobs of a queue at
        its start rate (a start leaves the window every window/N seconds at the most). A delay
        that has run out while the job still waits for a dependency is no reason to wake: the
        dependency's end will be."""
        at = now()
        rated = self.rates if self.queues is None else {q: r for q, r in self.rates.items() if q in self.queues}
        states = [State.WAITING, State.QUEUED] if rated else [State.WAITING]
        waits, held_by_rate = [], set()
        for j in self.store.query(states=states, queues=self.queues):  # one look at the store
            if j.state is State.QUEUED:
                if j.queue in rated:  # held back by time too, at its queue's start rate
                    held_by_rate.add(j.queue)
            elif j.not_before is not None and j.not_before > at and not j.held:
                waits.append(j.not_before)
        return waits + [at + rated[q][1] / rated[q][0] for q in held_by_rate]

    def _next_due(self, waits: list[float]) -> float:
        """Seconds until the earliest delayed or backed-off job may start (`waits`, from
        `_timed_waits`), the next fallback poll or the next heartbeat, whichever comes first."""
        beat = self.last_orphan_check + self.heartbeat_s - time.monotonic()
        return max(0.0, min([self.poll_s, beat, *(d - now() for d in waits)]))

    def run(self) -> int:
        self.launcher = Launcher()  # first: it should share as little of this process as it can
        sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_fd = signal.set_wakeup_fd(sig_w)
        old = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
        waker = self.store.listen(f"{self.ref.host}-{self.ref.pid}")
        unregister = self.store.register_worker(self.ref, self.capacity())
        self.sel = selectors.DefaultSelector()
        self.sel.register(waker.fileno(), selectors.EVENT_READ, "wake")
        self.sel.register(sig_r, selectors.EVENT_READ, "signal")
        queues = ", ".join(sorted(self.queues)) if self.queues else "all queues"
        gpus = f", GPUs {','.join(map(str, self.gpus))}" if self.gpus else ""
        self.log(f"worker {self.ref.host}:{self.ref.pid} started: {self.concurrency} slots{gpus}, {queues}")
        self._adopt_orphans()
        try:
            while True:
                self._start_cleanup()
                started = self._fill()
                # One look at the store per round, and none while every slot is busy: a delayed
                # job that comes due then could not start anyway, and the next job's end wakes us.
                full = self.free_slots() <= 0 or self.stopping > 0
                waits = [] if started or full else self._timed_waits()
                idle = not started and not waits
                if not self.running and (self.stopping or (self.exit_when_idle and idle)):
                    if self._may_leave():
                        break
                else:
                    self.leaving_since = None  # a hook may have queued more work
                if started:
                    continue  # claim again at once: more may fit
                events = self.sel.select(self._select_timeout(waits))
                # Cancels arrive with a wake-up (or, missed, by the fallback poll: no event);
                # a job's end alone is no reason to look at every running job again.
                look = not events or self.stopping > 0
                for key, _ in events:
                    if key.data == "wake":
                        look = True
                        wake.drain_and_rewatch(self.sel, waker)
                    elif key.data == "signal":
                        self._on_signals(os.read(sig_r, 64))
                    elif isinstance(key.data, hooks.Child):
                        self._child_ended(key.data)
                    else:
                        self._reap(key.data)
                self._kill_overdue_hooks()
                beat = time.monotonic() - self.last_orphan_check >= self.heartbeat_s
                if look or beat:
                    self._check_cancels()
                if beat:
                    self.store.heartbeat()
                    self._adopt_orphans()
        finally:
            for child in self.children.values():
                os.close(child.pidfd)
                if child.what == hooks.CLEANUP:
                    self.log(f"cleanup (pid {child.proc.pid}) still running; left to finish on its own")
            unregister()
            self.sel.close()
            waker.close()
            signal.set_wakeup_fd(old_fd)
            for s, h in old.items():
                signal.signal(s, h)
            os.close(sig_r)
            os.close(sig_w)
            self.launcher.close()
        self.log("worker stopped")
        return 0

    def _fill(self) -> int:
        """Record the results of jobs that ended and claim what fits, in one transaction."""
        cap = self.capacity()
        results, self.results = self.results, []
        if cap.free_slots <= 0 or self.stopping:
            for job, new, error in results:
                self._record(job, new, error)
            return 0
        try:
            jobs = self.store.claim(self.ref, cap, at=now(),
                                    results=[Guarded(new, job.state, job.attempt) for job, new, _ in results])
        except Conflict:  # one of the results: record them one by one, which says which
            for job, new, error in results:
                self._record(job, new, error)
            jobs = self.store.claim(self.ref, cap, at=now())
        else:
            if results:
                self.store.notify_workers()  # wakes `jobctl wait` too
            for job, new, error in results:
                self._recorded(job, new, error)
        for job in jobs:
            self._start(job)
        return len(jobs)

    def _start(self, job: Job) -> None:
        jd = job_dir(self.store.root, job.id)
        jd.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            env = self.store.env(job)
        except JobctlError as e:
            self._record(job, transition(job, State.FAILED, at=now(), reason="start_failed", error=str(e)))
            return
        launch = supervisor.Launch(
            job=job, env=env, job_dir=jd, grace_s=self.grace_s, store=self.store.location, hide_gpus=bool(self.gpus)
        )
        try:
            pid, pidfd = self.launcher.start(launch)
        except LauncherGone as e:
            # Whether it forked the supervisor before it died is unknown: look, as for a job
            # of a dead worker (run.json says whether it started), and the next heartbeat
            # looks again if it cannot tell yet. Never a second supervisor for the attempt.
            self.log(f"job {job.id}: {e}; starting a new launcher")
            self.launcher.close()
            self.launcher = Launcher()
            self._watch_adopted(job)
            return
        self.running[job.id] = Running(job, pid, pidfd)
        self.sel.register(pidfd, selectors.EVENT_READ, job.id)
        self.log(f"job {job.id} started (attempt {job.attempt}): {command_line(job.command)}")

    def _reap(self, job_id: int) -> None:
        run = self.running.pop(job_id)
        self.sel.unregister(run.pidfd)
        os.close(run.pidfd)  # supervisors are the launcher's children: it reaps them
        job = run.job
        if run.disowned:
            self.log(f"job {job.id}: stopped copy, result discarded")
            return
        result = read_result(job_dir(self.store.root, job.id), job.attempt)
        if result is not None and result.get("zip_error"):
            self.log(f"job {job.id}: {result['zip_error']}")
        new = supervisor.outcome(job, result, now(), retry_max_delay_s=self.retry_max_delay_s)
        self.results.append((job, new, None if result is None else result["error"]))

    def _adopt_orphans(self) -> None:
        """Take over the running jobs of this host whose worker is dead (its flock is gone).

        A job whose supervisor is still alive is watched until it ends and its result is
        recorded as usual; one whose supervisor is gone has its result.json read, and if it
        left none, the attempt is lost (supervisor.lost). Adoption is a guarded write, so of
        several workers starting at once exactly one takes each job.
        """
        self.last_orphan_check = time.monotonic()
        live = {(w["host"], w["pid"]) for w in self.store.workers()}
        ours = set(self.running) | {job.id for job, _, _ in self.results}  # ended, result not yet written
        for job in self.store.query(states=[State.RUNNING]):
            owner = job.worker
            if owner is None or job.id in ours:
                continue
            if owner.host != self.ref.host:
                # Another host's worker, gone (stale heartbeat): its processes are out of
                # reach, so the attempt is lost; if that worker comes back it stops its copy.
                if (owner.host, owner.pid) not in live:
                    try:
                        self.store.update([Guarded(supervisor.lost(job, now(), self.max_lost), State.RUNNING,
                                                   job.attempt, expect_worker=owner,
                                                   event={"event": "lost", "worker": f"{owner.host}:{owner.pid}"})])
                        self.log(f"job {job.id}: worker {owner.host}:{owner.pid} is gone; attempt {job.attempt} lost")
                    except Conflict:
                        pass
                continue
            if owner == self.ref:  # adopted earlier, its supervisor had not recorded itself yet
                self._watch_adopted(job)
                continue
            if (owner.host, owner.pid) in live:
                continue
            mine = job._replace(worker=self.ref)
            try:
                self.store.update([Guarded(mine, State.RUNNING, job.attempt, expect_worker=owner,
                                           event={"event": "adopted", "from": f"{owner.host}:{owner.pid}"})])
            except Conflict:
                continue  # another worker took it, or it moved on
            self.log(f"job {job.id}: adopted from dead worker {owner.host}:{owner.pid}")
            self._watch_adopted(mine)

    def _watch_adopted(self, job: Job) -> None:
        jd = job_dir(self.store.root, job.id)
        if supervisor.supervisor_alive(jd):  # first: it writes result.json before it lets go
            info = supervisor.read_run(jd, job.attempt)
            pid: int | None = None if info is None else info["supervisor"]["pid"]
            try:
                pidfd = -1 if pid is None else os.pidfd_open(pid)
            except ProcessLookupError:
                pidfd = -1
            if pid is not None and pidfd >= 0:
                self.running[job.id] = Running(job, pid, pidfd)
                self.sel.register(pidfd, selectors.EVENT_READ, job.id)
                return
            if supervisor.supervisor_alive(jd):
                return  # between its fork and run.json: the next check looks again
        result = read_result(jd, job.attempt)
        if result is not None:
            self._record(job, supervisor.outcome(job, result, now(), retry_max_delay_s=self.retry_max_delay_s),
                         result["error"])
        elif supervisor.read_run(jd, job.attempt, any_boot=True) is None:
            self._record(job, supervisor.never_started(job, now()))
        else:
            self._record(job, supervisor.lost(job, now(), self.max_lost))

    def _record(self, job: Job, new: Job, attempt_error: str | None = None) -> None:
        try:
            self.store.update([Guarded(new, job.state, job.attempt)])
        except Conflict as e:
            self.log(f"job {job.id}: result not recorded: {e}")
            return
        self.store.notify_workers()  # wakes `jobctl wait` too
        self._recorded(job, new, attempt_error)

    def _recorded(self, job: Job, new: Job, attempt_error: str | None) -> None:
        """Say how a recorded job ended, and run its hooks."""
        if new.state is State.QUEUED:
            self.log(f"job {job.id} returned to the queue")
            return
        if new.state is State.WAITING:
            why = f" ({attempt_error})" if attempt_error else ""
            wait = format_duration(round(max(0.0, (new.not_before or 0) - now()), 1))
            self.log(f"job {job.id} attempt {job.attempt} failed{why}; retry in {wait}")
            return
        took = "" if new.usage is None else f" in {format_duration(new.usage.wall_s)}"
        detail = f": {new.error}" if new.error else ""
        self.log(f"job {job.id} {new.state}{took}{detail}")
        if new.state in FINISHED:
            self._start_hooks(new)

    def _on_signals(self, received: bytes) -> None:
        for _ in received:
            self.stopping += 1
            if self.stopping == 1 and self.running:
                self.log(f"stopping: waiting for {len(self.running)} running job(s); "
                         "signal again to stop them and return them to the queue")
            elif self.stopping == 2:
                self.log(f"stopping {len(self.running)} running job(s) and returning them to the queue")
                for run in self.running.values():
                    self._signal(run, signal.SIGUSR2)

    def _check_cancels(self) -> None:
        """Stop what was cancelled, and what is no longer ours: a worker declared dead (its
        heartbeat went stale) whose jobs were given to another worker stops its copies and
        never records their results."""
        if not self.running:
            return
        current = {j.id: j for j in self.store.query(states=[State.RUNNING])}
        for job_id, run in list(self.running.items()):
            job = current.get(job_id)
            if run.disowned:
                continue
            if job is not None and job.attempt == run.job.attempt and job.worker != self.ref:
                # Adopted by a worker of this host, which watches this very supervisor: let it.
                self.log(f"job {job_id}: adopted by {job.worker} while this worker was away; leaving it to them")
                run.disowned = True
            elif job is None or job.worker != self.ref or job.attempt != run.job.attempt:
                self.log(f"job {job_id}: taken over elsewhere while this worker was away; stopping its copy")
                self._signal(run, signal.SIGUSR2)
                run.disowned = True
            elif job.cancel_requested and not run.stop_sent:
                self._signal(run, signal.SIGTERM)

    def _signal(self, run: Running, sig: int) -> None:
        try:
            signal.pidfd_send_signal(run.pidfd, sig)
            run.stop_sent = True
        except ProcessLookupError:
            pass

    # --- hooks and the periodic cleanup -------------------------------------------------------

    def _select_timeout(self, waits: list[float]) -> float:
        """The loop's usual wake-up, or earlier: a hook's deadline, the next cleanup, or the
        end of the wait for a cleanup on the way out."""
        mono = time.monotonic()
        due = [self._next_due(waits) if not self.stopping else self.heartbeat_s]
        due += [c.deadline - mono for c in self.children.values() if c.deadline is not None and not c.killed]
        if self._cleanup_wanted():
            due.append(self.next_cleanup - mono)
        give_up = None if self.leaving_since is None else self.leaving_since + CLEANUP_EXIT_WAIT_S
        if give_up is not None and give_up > mono and any(c.what == hooks.CLEANUP for c in self.children.values()):
            due.append(give_up - mono)
        return max(0.0, min(due))

    def _may_leave(self) -> bool:
        """Whether a worker that is done may exit now: no hook runs, and no cleanup runs or
        it has had its CLEANUP_EXIT_WAIT_S (a second signal waits for nothing)."""
        mono = time.monotonic()
        if self.leaving_since is None:
            self.leaving_since = mono
            if self.children and self.stopping < 2:
                again = "; signal again to kill the hooks" if self.stopping else ""
                self.log(f"{'stopping' if self.stopping else 'idle'}: waiting for {len(self.children)} "
                         f"hook or cleanup process(es) before exiting{again}")
        if any(c.what != hooks.CLEANUP for c in self.children.values()):
            return False
        return not self.children or self.stopping >= 2 or mono - self.leaving_since >= CLEANUP_EXIT_WAIT_S

    def _watch_child(self, child: hooks.Child) -> None:
        self.children[child.pidfd] = child
        self.sel.register(child.pidfd, selectors.EVENT_READ, child)

    def _start_hooks(self, job: Job) -> None:
        """on_finish for every finished job, and on_failure too for a failed one."""
        names = ["on_finish", "on_failure"] if job.state is State.FAILED else ["on_finish"]
        jd = job_dir(self.store.root, job.id)
        for name in names:
            line = self.hook_lines[name]
            if not line:
                continue
            try:
                child = hooks.start_hook(name, line, job, jd, self.store.location, self.hook_timeout_s)
            except OSError as e:
                self._hook_failed(job.id, name, f"cannot start: {e.strerror or e}")
                continue
            self._watch_child(child)

    def _kill_overdue_hooks(self) -> None:
        mono = time.monotonic()
        for child in self.children.values():
            if child.killed or child.deadline is None:
                continue
            if self.stopping >= 2:
                hooks.kill(child, "killed: the worker was stopped")
            elif mono >= child.deadline:
                hooks.kill(child, f"timed out after {format_duration(self.hook_timeout_s)}")

    def _child_ended(self, child: hooks.Child) -> None:
        del self.children[child.pidfd]
        self.sel.unregister(child.pidfd)
        os.close(child.pidfd)
        child.proc.wait()  # it has exited: this only reaps it
        if child.what == hooks.CLEANUP:
            self.log(hooks.cleanup_summary(child))
            return
        error = hooks.hook_error(child)
        if error is not None:
            assert child.job_id is not None
            self._hook_failed(child.job_id, child.what, error)

    def _hook_failed(self, job_id: int, name: str, error: str) -> None:
        """Logged and kept in the job's history; the job's state stays as it is."""
        self.log(f"job {job_id}: hook {name} failed: {error}")
        try:
            self.store.append_history([{"at": iso(now()), "job": job_id, "event": "hook failed", "hook": name,
                                        "error": error}])
        except JobctlError as e:
            self.log(f"job {job_id}: hook failure not added to the history: {e}")

    def _cleanup_wanted(self) -> bool:
        return (self.cleanup_interval_s is not None and not self.stopping and self.leaving_since is None
                and not any(c.what == hooks.CLEANUP for c in self.children.values()))

    def _start_cleanup(self) -> None:
        """At start, then every `cleanup_interval` (counted from the last start); never two
        at once, none once the worker is on its way out."""
        if not self._cleanup_wanted() or time.monotonic() < self.next_cleanup:
            return
        assert self.cleanup_interval_s is not None
        self.next_cleanup = time.monotonic() + self.cleanup_interval_s
        try:
            child = hooks.start_cleanup(self.store.location)
        except OSError as e:
            self.log(f"cleanup failed: cannot start: {e.strerror or e}")
            return
        self._watch_child(child)
