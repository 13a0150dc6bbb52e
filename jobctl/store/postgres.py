"""The PostgreSQL store: the storage contract (store/base.py) on one database, for workers
on several hosts. PostgreSQL is the engine: row locks, short transactions, and
LISTEN/NOTIFY as a hint (workers also poll).

Each job is a row: the columns claims filter and order on (state, queue, priority) plus the
whole record as JSONB and a version. Every change is one transaction; scheduling rules are
the shared pure functions (scheduler.pick, scheduler.settle_all), so both stores behave alike.
Claims lock the queued rows they look at with FOR UPDATE SKIP LOCKED; every transaction
that moves jobs (claim, update, submit) first takes one transaction-scoped advisory lock,
so that per-queue limits hold across workers and settling never deadlocks (see _moving).

Workers heartbeat with the database's clock; one silent past `worker_timeout` is dead, and the
live ones count its running attempts as lost. Job directories live under `output_root`, a
directory every host shares.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from jobctl import fsutil
from jobctl.errors import NotFound, StoreDamaged, StoreError, UsageError
from jobctl.model import FINISHED, UNFINISHED, Job, JobHead, State, WorkerRef, iso, now, transition
from jobctl.scheduler import RATE_HORIZON_S, Capacity, pick, queue_room, rate_room, settle_all
from jobctl.store.base import Doomed, Guarded, JobSpec

SCHEMA = 1
CHANNEL = "jobctl"
CLAIM_LOCK = 0x6A6F6263  # "jobc": serialises the transactions that move jobs (see _moving)
SCHEMA_LOCK = 0x6A6F6273
_UNFINISHED = sorted(s.value for s in UNFINISHED)
_ATTEMPT = "COALESCE((record->>'attempt')::integer, 0)"  # as Job.from_record reads it

DDL = """
CREATE TABLE IF NOT EXISTS jobctl_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE SEQUENCE IF NOT EXISTS jobctl_job_ids;
CREATE TABLE IF NOT EXISTS jobctl_jobs (
    id bigint PRIMARY KEY,
    state text NOT NULL,
    queue text NOT NULL,
    priority integer NOT NULL,
    unique_key text,
    version integer NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS jobctl_jobs_runnable ON jobctl_jobs (priority DESC, id) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobctl_jobs_state ON jobctl_jobs (state);
CREATE UNIQUE INDEX IF NOT EXISTS jobctl_jobs_unique ON jobctl_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'waiting', 'running');
CREATE TABLE IF NOT EXISTS jobctl_envs (ref text PRIMARY KEY, env jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS jobctl_history (n bigserial PRIMARY KEY, job bigint, event jsonb NOT NULL);
CREATE INDEX IF NOT EXISTS jobctl_jobs_key ON jobctl_jobs (unique_key, id) WHERE unique_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS jobctl_paused (queue text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS jobctl_starts (queue text NOT NULL, at double precision NOT NULL);
CREATE INDEX IF NOT EXISTS jobctl_starts_queue ON jobctl_starts (queue, at);
CREATE TABLE IF NOT EXISTS jobctl_workers (
    host text NOT NULL, pid integer NOT NULL, info jsonb NOT NULL, heartbeat timestamptz NOT NULL,
    PRIMARY KEY (host, pid)
);
"""


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore:
    def __init__(self, url: str, *, output_root: Path, worker_timeout: float = 30.0) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError("the PostgreSQL store needs psycopg: pip install 'jobctl[postgres]'") from None
        self.psycopg = psycopg
        self.url = url
        self.location = url
        self.root = output_root
        self.worker_timeout = worker_timeout
        self.warnings: list[str] = []
        try:
            self.conn = psycopg.connect(url)
        except psycopg.OperationalError as e:
            host = psycopg.conninfo.conninfo_to_dict(url).get("host", "localhost")
            raise StoreError(f"cannot reach PostgreSQL at {host} ({_redacted(url)}): {str(e).strip().splitlines()[0]}") from None
        self._migrate()

    def _migrate(self) -> None:
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))  # several first uses at once
            self.conn.execute(DDL)
            row = self.conn.execute("SELECT value FROM jobctl_meta WHERE key = 'schema'").fetchone()
            if row is None:
                self.conn.execute("INSERT INTO jobctl_meta VALUES ('schema', %s)", (str(SCHEMA),))
            elif int(row[0]) > SCHEMA:
                raise StoreError(f"store {_redacted(self.url)} has schema {row[0]}; this jobctl reads up to {SCHEMA}")

    def close(self) -> None:
        self.conn.close()

    # --- records ---------------------------------------------------------------------------

    def _rows(self, where: str, params: Sequence[Any], *, lock: str = "",
              order: str = "id") -> dict[int, tuple[dict[str, Any], int]]:
        rows = self.conn.execute(f"SELECT id, record, version FROM jobctl_jobs WHERE {where} ORDER BY {order} {lock}",
                                 params)
        return {r[0]: (r[1], r[2]) for r in rows.fetchall()}

    def _job(self, record: dict[str, Any]) -> Job:
        """A row's record as a Job; a record that does not decode is damage, reported as such
        (`jobctl doctor` lists every one), never a traceback."""
        try:
            return Job.from_record(record)
        except (KeyError, TypeError, ValueError) as e:
            raise StoreDamaged(f"store {_redacted(self.url)}: the record of job {record.get('id', '?')} "
                               f"does not decode ({type(e).__name__}: {e}); run jobctl doctor") from None

    def _put(self, job: Job, version: int, *, insert: bool = False) -> None:
        rec = json.dumps(job.to_record())
        if insert:
            self.conn.execute(
                "INSERT INTO jobctl_jobs (id, state, queue, priority, unique_key, version, record) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (job.id, job.state.value, job.queue, job.priority, job.unique_key, version, rec),
            )
        else:
            self.conn.execute(
                "UPDATE jobctl_jobs SET state = %s, queue = %s, priority = %s, unique_key = %s, version = %s, "
                "record = %s WHERE id = %s",
                (job.state.value, job.queue, job.priority, job.unique_key, version, rec, job.id),
            )

    def _events(self, events: Sequence[dict[str, Any]]) -> None:
        for event in events:
            self.conn.execute("INSERT INTO jobctl_history (job, event) VALUES (%s, %s)",
                              (event.get("job"), json.dumps(event)))

    def _settle(self, at: float) -> None:
        rows = self._rows("state = 'waiting'", [], lock="FOR UPDATE")
        if not rows:
            return
        waiting = {i: self._job(r) for i, (r, _) in rows.items()}

        def states(ids: Collection[int]) -> dict[int, State]:
            rows = self.conn.execute("SELECT id, state FROM jobctl_jobs WHERE id = ANY(%s)", (list(ids),)).fetchall()
            return {r[0]: State(r[1]) for r in rows}

        for job_id, new in settle_all(waiting, states, at).items():
            self._put(new, rows[job_id][1] + 1)
            if new.state is not State.WAITING:
                self._events([{"at": iso(at), "job": job_id, "event": new.state.value, "error": new.error}])

    # --- the contract ------------------------------------------------------------------------

    def submit(self, specs: Sequence[JobSpec], *, at: float, max_queued: Mapping[str, int] | None = None) -> list[Job]:
        jobs, new_ids = [], []
        adding: dict[str, int] = {}
        refs: dict[int, str] = {}
        with self.conn.transaction():
            self._moving()  # also what keeps max_queued's count and the insert together
            deps = sorted({d for s in specs for d in (*s.job.depends_on, *s.job.depends_any)})
            known = {r[0] for r in self.conn.execute("SELECT id FROM jobctl_jobs WHERE id = ANY(%s)", (deps,))}
            for spec in specs:
                missing = sorted(d for d in (*spec.job.depends_on, *spec.job.depends_any) if d not in known)
                if missing:
                    raise UsageError(f"unknown dependency {missing[0]} (no such job)")
                key = spec.job.unique_key
                if key is not None:
                    row = self.conn.execute(
                        "SELECT record FROM jobctl_jobs WHERE unique_key = %s AND state = ANY(%s) FOR UPDATE",
                        (key, _UNFINISHED)).fetchone()
                    if row is None and spec.reuse:
                        row = self.conn.execute(
                            "SELECT record FROM jobctl_jobs WHERE unique_key = %s AND state = 'completed' "
                            "ORDER BY id DESC LIMIT 1", (key,)).fetchone()
                    if row is not None:
                        jobs.append(self._job(row[0]))
                        continue
                adding[spec.job.queue] = adding.get(spec.job.queue, 0) + 1
                if id(spec.env) not in refs:  # most submissions share one environment: saved once
                    ref, data = fsutil.env_ref(spec.env)
                    self.conn.execute("INSERT INTO jobctl_envs VALUES (%s, %s) ON CONFLICT DO NOTHING",
                                      (ref, data.decode()))
                    refs[id(spec.env)] = ref
                ref = refs[id(spec.env)]
                [(job_id,)] = self.conn.execute("SELECT nextval('jobctl_job_ids')").fetchall()
                job = spec.new_job(job_id, ref, at)
                self._put(job, 1, insert=True)
                self._events([{"at": iso(at), "job": job.id, "event": "submitted", **(job.submitter or {})}])
                jobs.append(job)
                new_ids.append(job.id)
            if max_queued:
                pending: dict[str, int] = dict(self.conn.execute(
                    "SELECT queue, count(*) FROM jobctl_jobs WHERE state IN ('queued', 'waiting') "
                    "AND queue = ANY(%s) AND NOT id = ANY(%s) GROUP BY queue", (list(adding), new_ids)).fetchall())
                queue_room(pending, adding, max_queued)  # raises: the transaction rolls back
            self._settle(now())
        self.notify_workers()
        return jobs

    def get(self, job_id: int) -> Job:
        row = self.conn.execute("SELECT record FROM jobctl_jobs WHERE id = %s", (job_id,)).fetchone()
        self.conn.commit()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return self._job(row[0])

    def query(self, *, states: Collection[State] | None = None, queues: Collection[str] | None = None) -> list[Job]:
        where, params = ["TRUE"], []
        if states is not None:
            where.append("state = ANY(%s)")
            params.append([s.value for s in states])
        if queues is not None:
            where.append("queue = ANY(%s)")
            params.append(list(queues))
        rows = self.conn.execute(f"SELECT record FROM jobctl_jobs WHERE {' AND '.join(where)} ORDER BY id", params)
        records = rows.fetchall()
        self.conn.commit()
        return [self._job(r[0]) for r in records]

    def public_json(self, *, states: Collection[State] | None = None, queues: Collection[str] | None = None,
                    render: Callable[[Job], bytes]) -> list[bytes]:
        return [render(j) for j in self.query(states=states, queues=queues)]

    def heads(self) -> list[JobHead]:
        """One query for the columns cleanup needs; attempt and finished_at come out of the
        JSONB record in SQL, no record is decoded here."""
        rows = self.conn.execute(
            f"SELECT id, state, {_ATTEMPT}, (record->>'finished_at')::double precision FROM jobctl_jobs ORDER BY id"
        ).fetchall()
        self.conn.commit()
        return [JobHead(i, State(state), attempt, finished_at) for i, state, attempt, finished_at in rows]

    def env(self, job: Job) -> dict[str, str]:
        row = self.conn.execute("SELECT env FROM jobctl_envs WHERE ref = %s", (job.env_ref,)).fetchone()
        self.conn.commit()
        if row is None:
            raise StoreError(f"the environment of job {job.id} is missing from the store")
        env: dict[str, str] = row[0]
        return env

    def claim(self, worker: WorkerRef, capacity: Capacity, *, at: float,
              results: Sequence[Guarded] = ()) -> list[Job]:
        with self.conn.transaction():
            self._moving()
            if results:
                self._apply(results)
            self._settle(at)
            where, params = "state = 'queued'", []
            if capacity.queues is not None:
                where += " AND queue = ANY(%s)"
                params.append(sorted(capacity.queues))
            rows = self._rows(where, params, lock="FOR UPDATE SKIP LOCKED", order="priority DESC, id")
            running: dict[str, int] = dict(self.conn.execute(
                "SELECT queue, count(*) FROM jobctl_jobs WHERE state = 'running' GROUP BY queue").fetchall())
            paused = frozenset(r[0] for r in self.conn.execute("SELECT queue FROM jobctl_paused"))
            starts: dict[str, list[float]] = {}
            if capacity.rates:
                self.conn.execute("DELETE FROM jobctl_starts WHERE at <= %s", (at - RATE_HORIZON_S,))
                for queue, t in self.conn.execute("SELECT queue, at FROM jobctl_starts WHERE queue = ANY(%s)",
                                                  (sorted(capacity.rates),)):
                    starts.setdefault(queue, []).append(t)
            cap = capacity._replace(paused=paused, running_per_queue=running,
                                      rate_room=rate_room(capacity.rates, starts, at))
            claimed = []
            gpu_ids = list(cap.free_gpu_ids)
            for job in pick((self._job(r) for r, _ in rows.values()), cap, in_order=True):
                mine, gpu_ids = tuple(gpu_ids[: job.gpus]), gpu_ids[job.gpus :]
                new = transition(job, State.RUNNING, at=at, worker=worker, attempt=job.attempt + 1, gpu_ids=mine)
                self._put(new, rows[job.id][1] + 1)
                self._events([{"at": iso(at), "job": job.id, "event": "started", "attempt": new.attempt,
                               "worker": f"{worker.host}:{worker.pid}"}])
                if job.queue in capacity.rates:
                    self.conn.execute("INSERT INTO jobctl_starts VALUES (%s, %s)", (job.queue, at))
                claimed.append(new)
            return claimed

    def _moving(self) -> None:
        """Take the transaction-scoped lock every transaction that settles waiting jobs takes
        first (claim, update, submit). Settling locks every waiting row; two such
        transactions that each hold a row the other wants (a `release` of one waiting job
        during a claim) would deadlock, and PostgreSQL would abort one of them."""
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (CLAIM_LOCK,))

    def update(self, changes: Sequence[Guarded]) -> list[Job]:
        with self.conn.transaction():
            self._moving()
            done = self._apply(changes)
            self._settle(now())
            return done

    def _apply(self, changes: Sequence[Guarded]) -> list[Job]:
        """Write guarded changes: all of them, or none (Conflict, NotFound) before any."""
        current = self._rows("id = ANY(%s)", [[c.job.id for c in changes]], lock="FOR UPDATE")
        staged = []
        for change in changes:
            cur, version = current.get(change.job.id, (None, 0))
            change.check(cur)
            assert cur is not None
            staged.append((change.job, version + 1))
            event = change.audit_event(cur)
            if event is not None:
                self._events([event])
        for job, version in staged:
            self._put(job, version)
        return [job for job, _ in staged]

    def delete(self, jobs: Sequence[Doomed]) -> list[Doomed]:
        """One guarded DELETE: a row goes only if it is still in the finished state and attempt
        given (a retry meanwhile keeps it); returns those of `jobs` removed."""
        given = [j for j in jobs if j.state in FINISHED]
        if not given:
            return []
        with self.conn.transaction():
            rows = self.conn.execute(
                f"DELETE FROM jobctl_jobs USING unnest(%s::bigint[], %s::text[], %s::integer[]) AS g(id, state, attempt) "
                f"WHERE jobctl_jobs.id = g.id AND jobctl_jobs.state = g.state AND {_ATTEMPT} = g.attempt "
                f"RETURNING jobctl_jobs.id, jobctl_jobs.state, {_ATTEMPT}",
                ([j.id for j in given], [j.state.value for j in given], [j.attempt for j in given]),
            ).fetchall()
        gone = {(i, state, attempt) for i, state, attempt in rows}
        return [j for j in given if (j.id, j.state.value, j.attempt) in gone]

    def next_id(self) -> int:
        last, called = self.conn.execute("SELECT last_value, is_called FROM jobctl_job_ids").fetchone() or (1, False)
        self.conn.commit()
        return int(last) + 1 if called else int(last)

    def prune(self) -> int:
        with self.conn.transaction():
            cur = self.conn.execute(
                "DELETE FROM jobctl_envs WHERE ref NOT IN (SELECT record->>'env_ref' FROM jobctl_jobs)")
            return cur.rowcount

    def set_paused(self, queue: str, paused: bool) -> None:
        with self.conn.transaction():
            if paused:
                self.conn.execute("INSERT INTO jobctl_paused VALUES (%s) ON CONFLICT DO NOTHING", (queue,))
            else:
                self.conn.execute("DELETE FROM jobctl_paused WHERE queue = %s", (queue,))
        if not paused:
            self.notify_workers()

    def paused(self) -> frozenset[str]:
        rows = self.conn.execute("SELECT queue FROM jobctl_paused").fetchall()
        self.conn.commit()
        return frozenset(r[0] for r in rows)

    def append_history(self, events: Sequence[dict[str, Any]]) -> None:
        with self.conn.transaction():
            self._events(events)

    def history(self, *, job_id: int | None = None, since: float | None = None,
                offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        # Filtered in the database; the offset returned is the newest event looked at, matching
        # or not, so that `--follow` never reads the same events twice.
        with self.conn.transaction():
            top = self.conn.execute("SELECT max(n) FROM jobctl_history WHERE n > %s", (offset,)).fetchone()
            if top is None or top[0] is None:
                return [], offset
            rows = self.conn.execute(
                "SELECT event FROM jobctl_history WHERE n > %s AND n <= %s"
                " AND (%s::bigint IS NULL OR job = %s)"
                """ AND (%s::text IS NULL OR (event->>'at') COLLATE "C" >= %s) ORDER BY n""",
                (offset, top[0], job_id, job_id, *[None if since is None else iso(since)] * 2),
            ).fetchall()
        return [e for (e,) in rows], top[0]

    def prune_history(self, removed: Collection[int], summary: dict[str, Any]) -> None:
        with self.conn.transaction():
            self.conn.execute("DELETE FROM jobctl_history WHERE job = ANY(%s)", (list(removed),))
            self._events([summary])

    def notify_workers(self) -> None:
        self.conn.execute(f"NOTIFY {CHANNEL}")
        self.conn.commit()

    def register_worker(self, worker: WorkerRef, capacity: Capacity) -> Callable[[], None]:
        """A row per worker with a heartbeat in the database's clock (no host clock is
        compared with another's); `heartbeat` keeps it fresh."""
        info = {"host": worker.host, "pid": worker.pid, "slots": capacity.total_slots, "gpus": capacity.total_gpus,
                "queues": None if capacity.queues is None else sorted(capacity.queues)}
        with self.conn.transaction():
            self.conn.execute(
                "INSERT INTO jobctl_workers VALUES (%s, %s, %s, now()) "
                "ON CONFLICT (host, pid) DO UPDATE SET info = EXCLUDED.info, heartbeat = now()",
                (worker.host, worker.pid, json.dumps(info)))
        self._me = worker

        def unregister() -> None:
            with self.conn.transaction():
                self.conn.execute("DELETE FROM jobctl_workers WHERE host = %s AND pid = %s", (worker.host, worker.pid))

        return unregister

    def heartbeat(self) -> None:
        me = getattr(self, "_me", None)
        if me is not None:
            with self.conn.transaction():
                self.conn.execute("UPDATE jobctl_workers SET heartbeat = now() WHERE host = %s AND pid = %s",
                                  (me.host, me.pid))

    def workers(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT info FROM jobctl_workers WHERE heartbeat > now() - make_interval(secs => %s) ORDER BY host, pid",
            (self.worker_timeout,)).fetchall()
        self.conn.commit()
        return [r[0] for r in rows]

    def listen(self, name: str) -> _Listener:
        return _Listener(lambda: self.psycopg.connect(self.url, autocommit=True))

    def import_jobs(self, jobs: Sequence[Job], envs: dict[str, dict[str, str]], events: Sequence[dict[str, Any]],
                    next_id: int, paused: Collection[str]) -> None:
        """Fill an empty store with another store's jobs, ids kept: one transaction, all or nothing."""
        with self.conn.transaction():
            self.conn.execute("LOCK TABLE jobctl_jobs IN EXCLUSIVE MODE")
            row = self.conn.execute("SELECT count(*) FROM jobctl_jobs").fetchone()
            if row and row[0]:
                raise StoreError(f"store {_redacted(self.url)} is not empty ({row[0]} jobs); migrate only into a new one")
            for ref, env in envs.items():
                self.conn.execute("INSERT INTO jobctl_envs VALUES (%s, %s) ON CONFLICT DO NOTHING", (ref, json.dumps(env)))
            for job in jobs:
                self._put(job, 1, insert=True)
            self._events(events)
            for queue in paused:
                self.conn.execute("INSERT INTO jobctl_paused VALUES (%s) ON CONFLICT DO NOTHING", (queue,))
            if next_id > 1:
                self.conn.execute("SELECT setval('jobctl_job_ids', %s)", (next_id - 1,))

    def check(self) -> list[tuple[str, str]]:
        """What `jobctl doctor` reports: every row decodes and agrees with its columns, every
        job's environment is there; running jobs whose worker went silent, the workers seen,
        the clock difference with this host, and whether output_root is usable from here."""
        import os
        where = _redacted(self.url)
        version, db_now = self.conn.execute("SELECT current_setting('server_version'), now()").fetchone() or ("", None)
        rows = self.conn.execute("SELECT id, state, queue, priority, record FROM jobctl_jobs ORDER BY id").fetchall()
        envs = {r[0] for r in self.conn.execute("SELECT ref FROM jobctl_envs")}
        beats = {(h, p): age for h, p, age in self.conn.execute(
            "SELECT host, pid, extract(epoch FROM now() - heartbeat)::float FROM jobctl_workers")}
        self.conn.commit()
        findings: list[tuple[str, str]] = []  # self.warnings: printed when the store opened
        states: dict[str, int] = {}
        for job_id, state, queue, priority, record in rows:
            try:
                job = Job.from_record(record)
            except (KeyError, TypeError, ValueError) as e:
                findings.append(("damage", f"job {job_id}: its record does not decode ({type(e).__name__}: {e})"))
                continue
            if (job.id, job.state.value, job.queue, job.priority) != (job_id, state, queue, priority):
                findings.append(("damage", f"job {job_id}: its columns disagree with its record "
                                           f"(state {state} vs {job.state.value})"))
            if job.env_ref not in envs:
                findings.append(("damage", f"job {job_id}: its environment {job.env_ref} is missing"))
            if job.state is State.RUNNING and job.worker is not None:
                age = beats.get((job.worker.host, job.worker.pid))
                if age is None or age > self.worker_timeout:
                    findings.append(("note", f"job {job_id}: running on {job.worker.host}:{job.worker.pid}, which "
                                             "is silent; a live worker will count the attempt as lost "
                                             "(or adopt it, on that host)"))
            states[job.state.value] = states.get(job.state.value, 0) + 1
        counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no jobs"
        findings.insert(0, ("ok", f"{where}: PostgreSQL {version}, schema {SCHEMA}, {len(rows)} job(s) ({counts})"))
        live = sorted(f"{h}:{p}" for (h, p), age in beats.items() if age <= self.worker_timeout)
        findings.append(("ok", f"{len(live)} live worker(s){': ' + ', '.join(live) if live else ''}"))
        for (host, pid), age in sorted(beats.items()):
            if age > self.worker_timeout:
                findings.append(("note", f"worker {host}:{pid} has been silent for {age:.0f}s (worker_timeout "
                                         f"{self.worker_timeout:g}s): counted as dead"))
        if db_now is not None and abs(db_now.timestamp() - now()) > 2:
            findings.append(("note", f"this host's clock is {now() - db_now.timestamp():+.1f}s off the database's; "
                                     "heartbeats use the database's clock, job times this host's"))
        if not self.root.is_dir():
            findings.append(("note", f"output_root {self.root} does not exist on this host "
                                     f"({fsutil.hostname()}); it must be a directory every host shares"))
        elif not os.access(self.root, os.W_OK | os.X_OK):
            findings.append(("note", f"output_root {self.root} is not writable from this host"))
        else:
            findings.append(("ok", f"output_root {self.root}"))
        return findings


class _Listener:
    """LISTEN on its own connection: readable when any process runs NOTIFY jobctl. Only a
    hint: workers and waiters also poll, so a missed notification costs a little latency.
    A lost connection (server restart, pg_terminate_backend) is replaced on the next drain,
    under a new descriptor: callers re-register `fileno()` after `drain()`."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self.connect = connect
        self.conn = self._listen()

    def _listen(self) -> Any:
        conn = self.connect()
        conn.execute(f"LISTEN {CHANNEL}")
        return conn

    def fileno(self) -> int:
        return int(self.conn.fileno())

    def drain(self) -> None:
        import psycopg

        try:
            for _ in self.conn.notifies(timeout=0):
                pass
        except psycopg.Error:
            self.conn.close()
            try:
                self.conn = self._listen()
            except psycopg.Error as e:
                raise StoreError(f"lost the PostgreSQL notification connection: {e}") from None

    def close(self) -> None:
        self.conn.close()
