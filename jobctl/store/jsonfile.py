"""The JSON store: files under one directory, guarded by one lock file.

Layout of `<root>` (see docs/architecture.md for why):

    store.json          marker: {"format": "jobctl-store", "schema": 1}
    lock                flock'ed by every writer; never replaced, never deleted
    state.json          the hot state: next id, every unfinished job, a few recently finished
    done/<n>.jsonl      finished jobs with ids in [n*10000, (n+1)*10000), append-only lines
    env/<sha256>.json   captured environments, content-addressed (many jobs share one)
    history.jsonl       the audit trail, append-only lines
    jobs/<id>/          job directories (logs, out/, output.zip)
    wake/               FIFOs of idle workers

Every record line is `JSON<TAB>crc32-hex`, so damage anywhere is detected, not parsed as data.
`state.json` is one such line, replaced atomically (temp, fsync, rename, fsync dir). Finished
jobs move from `state.json` to their `done/` shard in batches of FLUSH_AT, so a change costs
the same whether the store holds ten jobs or a million. A job present in `state.json` is
always current there; among `done/` lines of one job, the highest `_v` wins.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobctl import fsutil
from jobctl.errors import NotFound, StoreDamaged, StoreError, StoreLocked, UsageError
from jobctl.jobdir import job_dir_ids, jobs_prefix
from jobctl.model import FINISHED, Job, JobHead, State, WorkerRef, iso, now, transition
from jobctl.scheduler import RATE_HORIZON_S, Capacity, pick, queue_room, rate_room, settle_all, unfit_reason
from jobctl.store import wake
from jobctl.store.base import Doomed, Guarded, JobSpec

if TYPE_CHECKING:
    from jobctl.store.jsonscan import Decoded, Scan

SCHEMA = 1
FORMAT = "jobctl-store"
FLUSH_AT = 64
SHARD_SIZE = 10_000
PARALLEL_AT = 16 << 20
"""Bytes of shards from which `public_json` takes a second process (about 20,000 jobs)."""
_CREATED_BY_INIT = {"lock", "store.json", "state.json", "done", "env", "jobs", "wake"}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def encode_line(obj: Any) -> bytes:
    # ASCII JSON: argv and environment may hold bytes that are not UTF-8, which Python keeps
    # as lone surrogates; escaped as \udcXX they round-trip back to the very same bytes.
    return _framed(_dumps(obj))


def _framed(body: bytes) -> bytes:
    """One stored line: the JSON body, a tab, its CRC-32 in hex."""
    return b"%s\t%08x\n" % (body, zlib.crc32(body))


def decode_line(line: bytes) -> Any:
    """Parse one `JSON<TAB>crc` line; raises ValueError when it is damaged."""
    tab = line.rfind(b"\t")
    if tab < 0 or len(line) - tab != 9:
        raise ValueError("no checksum")
    body = line[:tab]
    if b"%08x" % zlib.crc32(body) != line[tab + 1 :]:
        raise ValueError("checksum mismatch")
    return json.loads(body)


class _Hot:
    """state.json as one transaction sees and changes it (a plain class: a dataclass would
    compile its methods on every command's start)."""

    def __init__(
        self,
        next_id: int,
        records: dict[int, dict[str, Any]],
        paused: set[str] | None = None,
        *,
        starts: dict[str, list[float]] | None = None,
        reuse: dict[str, list[int]] | None = None,
    ) -> None:
        self.next_id = next_id
        self.records = records
        self.paused = paused if paused is not None else set()
        self.starts = starts if starts is not None else {}
        """Recent start times of rate-limited queues (scheduler.rate_room)."""
        self.reuse = reuse
        """unique_key -> ids of the stored completed jobs with it, for `submit --reuse`; None in
        a store written before this index existed (built from the shards on first need)."""
        self.events: list[dict[str, Any]] = []
        self.dirty = False
        self.unsettled = False
        """A put may have changed what a waiting job waits for (a job became waiting or
        finished): the transaction settles before it commits. A job that starts does not."""

    def copy(self) -> _Hot:
        """A copy a transaction may change freely. The records themselves are shared: a
        record is replaced (`put`), never changed in place."""
        return _Hot(self.next_id, dict(self.records), set(self.paused),
                    starts={q: list(ts) for q, ts in self.starts.items()},
                    reuse=None if self.reuse is None else dict(self.reuse))  # its lists are replaced, never changed

    def put(self, job: Job, version: int) -> None:
        rec = job.to_record()
        rec["_v"] = version
        self.records[job.id] = rec
        self.dirty = True
        if job.state is State.WAITING or job.state in FINISHED:
            self.unsettled = True
        if self.reuse is not None and job.unique_key is not None and job.state is State.COMPLETED:
            ids = self.reuse.get(job.unique_key, [])
            if job.id not in ids:
                self.reuse[job.unique_key] = [*ids, job.id]


class JsonStore:
    def __init__(self, root: Path, *, lock_timeout: float = 10.0) -> None:
        self.root = root
        self.location = str(root)
        self.lock_timeout = lock_timeout
        self._seen: tuple[bytes, _Hot] | None = None
        """state.json as this process last read or wrote it, decoded: the same bytes again
        (a worker mostly reads back its own last write) are not decoded again."""
        self._encoded: dict[int, tuple[dict[str, Any], bytes]] = {}
        """id(record) -> (record, its JSON): records are replaced, never changed in place, so
        an unchanged record is not encoded again when state.json is rewritten."""
        self._state = root / "state.json"
        self._done = root / "done"
        self._env = root / "env"
        self.warnings: list[str] = []
        self._open()
        kind = fsutil.filesystem_type(root)
        if kind in fsutil.NETWORK_FILESYSTEMS:
            self.warnings.append(
                f"store {root} is on a network filesystem ({kind}): its locks and fsync may not hold "
                "across machines, so jobs can be lost or run twice. Keep the JSON store on a local disk "
                "(several machines: use a PostgreSQL store)"
            )

    # --- opening and locking -----------------------------------------------------------

    def _open(self) -> None:
        root = self.root
        try:
            st = root.stat()
        except FileNotFoundError:
            fsutil.private_dir(root)
            st = root.stat()
        except OSError as e:
            raise StoreError(f"cannot open store {root}: {e.strerror}") from None
        if not root.is_dir():
            raise StoreError(f"{root} is not a jobctl store (not a directory)")
        if st.st_uid != os.geteuid():
            raise StoreError(f"store {root} belongs to another user (uid {st.st_uid}); refusing to use it")
        marker = root / "store.json"
        if marker.exists():
            self._check_marker(marker)
            return
        # Empty, or being initialised by another process right now (which creates `lock`
        # first and the marker last): anything else is somebody else's directory.
        present = {n for n in os.listdir(root) if not (n.startswith(".") and n.endswith(".tmp"))}
        if present and ("lock" not in present or not present <= _CREATED_BY_INIT):
            raise StoreError(f"{root} is not a jobctl store (no store.json) and is not empty")
        with self._lock():
            if marker.exists():
                return
            if st.st_mode & 0o777 != fsutil.DIR_MODE:
                os.chmod(root, fsutil.DIR_MODE)
            for d in ("done", "env", "jobs"):
                fsutil.private_dir(root / d)
            if not self._state.exists():
                fsutil.atomic_write(self._state, encode_line({"schema": SCHEMA, "next_id": 1, "jobs": []}))
            fsutil.atomic_write(marker, json.dumps({"format": FORMAT, "schema": SCHEMA}).encode() + b"\n")

    def _check_marker(self, marker: Path) -> None:
        try:
            meta = json.loads(marker.read_bytes())
            fmt, schema = meta["format"], meta["schema"]
        except (ValueError, KeyError, TypeError):
            raise StoreDamaged(f"{marker} is damaged; jobctl will not change it") from None
        if fmt != FORMAT:
            raise StoreError(f"{self.root} is not a jobctl store ({marker} says {fmt!r})")
        if schema > SCHEMA:
            raise StoreError(f"store {self.root} has schema {schema}; this jobctl reads up to {SCHEMA}")

    @contextmanager
    def _lock(self) -> Iterator[None]:
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, fsutil.FILE_MODE)
        try:
            deadline = time.monotonic() + self.lock_timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreLocked(
                            f"store {self.root} is locked by {_lock_holder(fd)} "
                            f"for more than {self.lock_timeout:g}s"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.01)  # short: a waiter must catch the lock between writes
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextmanager
    def _transaction(self) -> Iterator[_Hot]:
        with self._lock():
            hot = self._read_hot(for_change=True)
            yield hot
            if hot.unsettled:
                self._settle(hot, now())
            if hot.dirty:
                self._commit(hot)

    def _settle(self, hot: _Hot, at: float) -> None:
        """Move on the waiting jobs that have nothing left to wait for (or a failed dependency)."""
        waiting = {i: Job.from_record(r) for i, r in hot.records.items() if r["state"] == "waiting"}
        if not waiting:
            hot.unsettled = False
            return

        def states(ids: Collection[int]) -> dict[int, State]:
            return {i: State(r["state"]) for i, r in self._current_many(hot, ids).items()}

        for job_id, new in settle_all(waiting, states, at).items():
            hot.put(new, hot.records[job_id]["_v"] + 1)
            if new.state is not State.WAITING:
                hot.events.append({"at": iso(at), "job": job_id, "event": new.state.value, "error": new.error})
        hot.unsettled = False  # settle_all follows each chain to its end in one pass

    # --- reading -------------------------------------------------------------------------

    def _damaged(self, path: Path, why: str) -> StoreDamaged:
        return StoreDamaged(
            f"{path} is damaged ({why}); jobctl will not change it: restore it from a backup "
            "or move the store aside (see `jobctl --help`, FILES)"
        )

    def _read_hot(self, *, for_change: bool = False) -> _Hot:
        """state.json, decoded. Readers get the very object this process keeps (`_seen`) and
        must not change it; a transaction (`for_change`) gets its own copy."""
        try:
            data = self._state.read_bytes()
        except FileNotFoundError:
            raise self._damaged(self._state, "missing") from None
        if self._seen is not None and self._seen[0] == data:
            return self._seen[1].copy() if for_change else self._seen[1]
        try:
            state = decode_line(data.rstrip(b"\n"))
            if state["schema"] > SCHEMA:
                raise StoreError(f"store {self.root} has schema {state['schema']}; this jobctl reads up to {SCHEMA}")
            hot = _Hot(state["next_id"], {r["id"]: r for r in state["jobs"]}, set(state.get("paused", ())),
                       starts=state.get("starts", {}), reuse=state.get("reuse"))
        except (ValueError, KeyError, TypeError) as e:
            raise self._damaged(self._state, str(e)) from None
        self._seen = (data, hot)
        return hot.copy() if for_change else hot

    def _shard_path(self, n: int) -> Path:
        return self._done / f"{n}.jsonl"

    def _shards(self) -> list[int]:
        return sorted(int(p.name[:-6]) for p in os.scandir(self._done) if p.name.endswith(".jsonl"))

    def _read_shard(self, n: int, only: int | None = None) -> dict[int, dict[str, Any]]:
        """The newest record of each job in shard n (or of job `only`). A torn last line is skipped."""
        path = self._shard_path(n)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        lines = data.split(b"\n")
        last = len(lines) - 1
        prefix = None if only is None else b'{"id":%d,' % only
        out: dict[int, dict[str, Any]] = {}
        for i, line in enumerate(lines):
            if prefix is not None and not line.startswith(prefix):
                continue
            if not line:
                continue
            try:
                rec = decode_line(line)
            except ValueError as e:
                if i == last:
                    continue  # torn tail of an interrupted append; the data is still in state.json
                raise self._damaged(path, f"line {i + 1}: {e}") from None
            old = out.get(rec["id"])
            if old is None or rec["_v"] >= old["_v"]:
                out[rec["id"]] = rec
        return out

    def _verify_shard(self, path: Path) -> None:
        """Refuse to append to a shard with a damaged line (checksums only: cheap)."""
        try:
            lines = path.read_bytes().split(b"\n")
        except FileNotFoundError:
            return
        for i, line in enumerate(lines[:-1]):
            tab = line.rfind(b"\t")
            if tab < 0 or b"%08x" % zlib.crc32(line[:tab]) != line[tab + 1 :]:
                raise self._damaged(path, f"line {i + 1}: checksum mismatch")

    def _current_many(self, hot: _Hot, ids: Collection[int]) -> dict[int, dict[str, Any]]:
        """Current records of `ids`, reading each shard they need once (a batch of a thousand
        finished jobs costs one read per shard, not one per job)."""
        found = {i: hot.records[i] for i in ids if i in hot.records}
        wanted: dict[int, set[int]] = {}
        for i in ids:
            if i not in found:
                wanted.setdefault(i // SHARD_SIZE, set()).add(i)
        for n, members in wanted.items():
            if len(members) == 1:
                [only] = members
                shard = self._read_shard(n, only=only)
            else:
                shard = self._read_shard(n)
            found.update((i, shard[i]) for i in members if i in shard)
        return found

    def get(self, job_id: int) -> Job:
        rec = self._current_many(self._read_hot(), [job_id]).get(job_id)
        if rec is None:
            raise NotFound(f"no job {job_id}")
        return Job.from_record(rec)

    def query(
        self,
        *,
        states: Collection[State] | None = None,
        queues: Collection[str] | None = None,
    ) -> list[Job]:
        hot = self._read_hot()  # first: a flush after this read only moves jobs we already have
        records = dict(hot.records)
        if states is None or not FINISHED.isdisjoint(states):
            for n in self._shards():
                for job_id, rec in self._read_shard(n).items():
                    records.setdefault(job_id, rec)
        wanted_states = None if states is None else {s.value for s in states}
        return [
            Job.from_record(rec)
            for _, rec in sorted(records.items())
            if (wanted_states is None or rec["state"] in wanted_states)
            and (queues is None or rec["queue"] in queues)
        ]

    def public_json(self, *, states: Collection[State] | None = None, queues: Collection[str] | None = None,
                    render: Callable[[Job], bytes]) -> list[bytes]:
        """`status --json`: the public JSON of each job `query` would return, in id order.
        Finished jobs in the shards are spliced from their stored text (store/jsonscan.py);
        every other job is a Job, given to `render`. With more than PARALLEL_AT bytes of
        shards and a second CPU, a forked child does half of the shards meanwhile."""
        hot = self._read_hot()  # first, as in query()
        wanted = None if states is None else {s.value for s in states}
        queue_set = None if queues is None else set(queues)

        def matches(rec: dict[str, Any]) -> bool:
            return (wanted is None or rec["state"] in wanted) and (queue_set is None or rec["queue"] in queue_set)

        pairs = [(i, render(Job.from_record(r))) for i, r in hot.records.items() if matches(r)]
        shards = self._shards() if states is None or not FINISHED.isdisjoint(states) else []
        if not shards:
            return [text for _, text in pairs]
        from jobctl.store import jsonscan

        def shard_pairs(shards: Sequence[int]) -> list[tuple[int, bytes]]:
            layout = jsonscan.layout("public" if wanted is None and queue_set is None else "public filtered")
            template, slots = layout.template(jobs_prefix(self.root))
            pairs: list[tuple[int, bytes]] = []
            for n in shards:
                scan = jsonscan.Scan(self._shard_path(n), layout, decode_line, self._damaged)
                keep, decoded = scan.current(hot.records.keys())
                keep = jsonscan.filtered(scan, keep, wanted, queue_set)
                ids = scan.ids if keep is None else [scan.ids[k] for k in keep]
                pairs += zip(ids, scan.public(keep, template, slots), strict=True)
                pairs += [(r["id"], render(Job.from_record(r))) for r, _ in decoded if matches(r)]
            return pairs

        sizes = [self._shard_path(n).stat().st_size for n in shards]
        half = next((k for k in range(len(shards)) if 2 * sum(sizes[: k + 1]) >= sum(sizes)), 0) + 1
        with jsonscan.bulk():
            if sum(sizes) > PARALLEL_AT and half < len(shards) and len(os.sched_getaffinity(0)) > 1:
                child = jsonscan.InChild(lambda: shard_pairs(shards[half:]))
                try:
                    pairs += shard_pairs(shards[:half])
                    theirs = child.result()
                finally:
                    child.close()
                pairs += shard_pairs(shards[half:]) if theirs is None else theirs
            else:
                pairs += shard_pairs(shards)
            pairs.sort(key=_first)
        return [text for _, text in pairs]

    def heads(self) -> list[JobHead]:
        """Every stored job's id, state, attempt and finished_at, in id order (cleanup): read
        from the shards' text like `public_json`, without a Job for each."""
        hot = self._read_hot()
        heads = [_head(r) for r in hot.records.values()]
        for _, scan, keep, decoded in self._scan_shards(self._shards(), hot):
            heads += scan.heads(keep)
            heads += [_head(r) for r, _ in decoded]
        heads.sort()
        return heads

    def _scan_shards(self, shards: Sequence[int], hot: _Hot) -> Iterator[tuple[int, Scan, list[int] | None, list[Decoded]]]:
        """Each shard read in bulk (store/jsonscan.py `Scan`, layout "heads"), with the lines
        that hold a current record (`Scan.current`). Imports jsonscan only if there are shards."""
        if not shards:
            return
        from jobctl.store import jsonscan

        layout = jsonscan.layout("heads")
        with jsonscan.bulk():
            for n in shards:
                scan = jsonscan.Scan(self._shard_path(n), layout, decode_line, self._damaged)
                yield (n, scan, *scan.current(hot.records.keys()))

    def env(self, job: Job) -> dict[str, str]:
        path = self._env / f"{job.env_ref}.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise self._damaged(path, "missing") from None
        if fsutil.sha256_hex(data)[:32] != job.env_ref:
            raise self._damaged(path, "checksum mismatch")
        env: dict[str, str] = json.loads(data)
        return env

    # --- writing -------------------------------------------------------------------------

    def _commit(self, hot: _Hot) -> None:
        finished = [r for r in hot.records.values() if r["state"] in _FINISHED_VALUES]
        if len(finished) > FLUSH_AT:
            by_shard: dict[int, list[dict[str, Any]]] = {}
            for rec in finished:
                by_shard.setdefault(rec["id"] // SHARD_SIZE, []).append(rec)
            for n, recs in by_shard.items():
                path = self._shard_path(n)
                self._verify_shard(path)
                try:
                    _cut_torn_tail(path)
                except OSError as e:
                    raise StoreError(f"cannot write {path}: {e.strerror or e}") from e
                fsutil.append_durable(path, b"".join(encode_line(r) for r in recs))
            for rec in finished:
                del hot.records[rec["id"]]
        data = self._encode_hot(hot)
        fsutil.atomic_write(self._state, data)
        self._seen = (data, hot)  # the transaction is over: nobody changes `hot` any more
        if hot.events:
            self._append_events(hot.events)

    def _encode_hot(self, hot: _Hot) -> bytes:
        """state.json's one line: the same JSON as one json.dumps of the whole state, built
        from each record's cached encoding (see `_encoded`)."""
        encoded, parts = {}, []
        for rec in hot.records.values():
            cached = self._encoded.get(id(rec))
            text = cached[1] if cached is not None and cached[0] is rec else _dumps(rec)
            encoded[id(rec)] = (rec, text)
            parts.append(text)
        self._encoded = encoded
        head = {"schema": SCHEMA, "next_id": hot.next_id, "paused": sorted(hot.paused)}
        tail: dict[str, Any] = {}
        if hot.starts:
            tail["starts"] = hot.starts
        if hot.reuse is not None:
            tail["reuse"] = hot.reuse
        body = b"".join([_dumps(head)[:-1], b',"jobs":[', b",".join(parts), b"]",
                         b"," + _dumps(tail)[1:] if tail else b"}"])
        return _framed(body)

    def _append_events(self, events: Sequence[dict[str, Any]]) -> None:
        """The audit trail is written after the state it describes, without fsync: a power cut
        may lose its last lines, never a job. Nor does a failed write of it fail the command:
        the change it describes is already durable, and saying otherwise would be a lie."""
        path = self.root / "history.jsonl"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, fsutil.FILE_MODE)
            try:
                fsutil.write_all(fd, b"".join(encode_line(e) for e in events))
            finally:
                os.close(fd)
        except OSError:
            pass

    def _save_env(self, env: dict[str, str]) -> str:
        ref, data = fsutil.env_ref(env)
        path = self._env / f"{ref}.json"
        if not path.exists():
            fsutil.atomic_write(path, data)
        return ref

    def submit(self, specs: Sequence[JobSpec], *, at: float, max_queued: Mapping[str, int] | None = None) -> list[Job]:
        jobs = []
        with self._transaction() as hot:
            # Under the lock, so that `prune` (cleanup) never removes an environment that a
            # submit is about to refer to. Most submissions share one environment: saved once.
            refs: dict[int, str] = {}
            env_refs: list[str] = []
            for spec in specs:
                if id(spec.env) not in refs:
                    refs[id(spec.env)] = self._save_env(spec.env)
                env_refs.append(refs[id(spec.env)])
            deps = {d for s in specs for d in (*s.job.depends_on, *s.job.depends_any)}
            known = self._current_many(hot, deps)
            unique = {r["unique_key"]: r for r in hot.records.values()
                      if r.get("unique_key") and r["state"] not in _FINISHED_VALUES
                      } if any(spec.job.unique_key for spec in specs) else {}
            if hot.reuse is None and any(spec.reuse for spec in specs):
                hot.reuse, hot.dirty = self._reuse_index(), True  # built once, then kept up to date
            adding: dict[str, int] = {}
            jobs_start = hot.next_id
            for spec, ref in zip(specs, env_refs, strict=True):
                missing = sorted(d for d in (*spec.job.depends_on, *spec.job.depends_any) if d not in known)
                if missing:
                    raise UsageError(f"unknown dependency {missing[0]} (no such job)")
                unique_key = spec.job.unique_key
                if unique_key is not None and unique_key in unique:
                    jobs.append(Job.from_record(unique[unique_key]))
                    continue
                if unique_key is not None and spec.reuse and (hot.reuse or {}).get(unique_key):
                    newest = max((hot.reuse or {})[unique_key])
                    jobs.append(Job.from_record(self._current_many(hot, [newest])[newest]))
                    continue
                adding[spec.job.queue] = adding.get(spec.job.queue, 0) + 1
                job = spec.new_job(hot.next_id, ref, at)
                hot.next_id += 1
                hot.put(job, 1)
                if job.unique_key is not None:
                    unique[job.unique_key] = hot.records[job.id]
                hot.events.append({"at": iso(at), "job": job.id, "event": "submitted", **(job.submitter or {})})
                jobs.append(job)
            if max_queued:
                pending: dict[str, int] = {}
                for r in hot.records.values():
                    if r["state"] in ("queued", "waiting") and r["id"] < jobs_start:
                        pending[r["queue"]] = pending.get(r["queue"], 0) + 1
                queue_room(pending, adding, max_queued)  # raises before anything is written
        self.notify_workers()
        return jobs

    def _reuse_index(self) -> dict[str, list[int]]:
        """unique_key -> completed jobs, from every stored record (once per store)."""
        index: dict[str, list[int]] = {}
        for job in self.query(states=[State.COMPLETED]):
            if job.unique_key is not None:
                index.setdefault(job.unique_key, []).append(job.id)
        return index

    def claim(self, worker: WorkerRef, capacity: Capacity, *, at: float,
              results: Sequence[Guarded] = ()) -> list[Job]:
        with self._transaction() as hot:
            if results:
                self._apply(hot, results)
            self._settle(hot, at)  # a delay may have run out since the last write
            queues = capacity.queues
            queued = sorted((r for r in hot.records.values()
                             if r["state"] == "queued" and (queues is None or r["queue"] in queues)),
                            key=lambda r: (-r["priority"], r["id"]))
            candidates = (Job.from_record(r) for r in queued)  # built only as far as pick looks
            running: dict[str, int] = {}
            for r in hot.records.values():
                if r["state"] == "running":
                    running[r["queue"]] = running.get(r["queue"], 0) + 1
            if capacity.rates or hot.starts:
                hot.starts = {q: ts for q, ts in ((q, [t for t in ts if t > at - RATE_HORIZON_S])
                                                   for q, ts in hot.starts.items()) if ts}
            cap = capacity._replace(paused=frozenset(hot.paused), running_per_queue=running,
                                      rate_room=rate_room(capacity.rates, hot.starts, at))
            self._note_unfit(hot, queued)
            claimed = []
            gpu_ids = list(cap.free_gpu_ids)
            for job in pick(candidates, cap, in_order=True):
                mine, gpu_ids = tuple(gpu_ids[: job.gpus]), gpu_ids[job.gpus :]
                new = transition(job, State.RUNNING, at=at, worker=worker, attempt=job.attempt + 1, gpu_ids=mine)
                hot.put(new, hot.records[job.id]["_v"] + 1)
                hot.events.append({
                    "at": iso(at), "job": job.id, "event": "started", "attempt": new.attempt,
                    "worker": f"{worker.host}:{worker.pid}",
                })
                if job.queue in capacity.rates:
                    hot.starts.setdefault(job.queue, []).append(at)
                claimed.append(new)
            return claimed

    def _note_unfit(self, hot: _Hot, queued: Sequence[dict[str, Any]]) -> None:
        """Say in `waiting_for` when no live worker serving its queue could ever run a queued
        job. A job of one slot and no GPU fits every worker: only others are looked at (and
        the live workers are listed only for them)."""
        workers: list[dict[str, Any]] | None = None
        for rec in queued:
            if rec.get("cpus", 1) == 1 and not rec.get("gpus") and rec.get("waiting_for") is None:
                continue
            if workers is None:
                workers = self.workers()
            job = Job.from_record(rec)
            note = unfit_reason(job, workers)
            if note != job.waiting_for:
                hot.put(job._replace(waiting_for=note), hot.records[job.id]["_v"] + 1)

    def update(self, changes: Sequence[Guarded]) -> list[Job]:
        with self._transaction() as hot:
            return self._apply(hot, changes)

    def _apply(self, hot: _Hot, changes: Sequence[Guarded]) -> list[Job]:
        """Stage guarded changes: all of them, or none (Conflict, NotFound) before any."""
        staged = []
        current = self._current_many(hot, [c.job.id for c in changes])
        for change in changes:
            cur = current.get(change.job.id)
            change.check(cur)
            assert cur is not None
            staged.append((change.job, cur["_v"] + 1))
            event = change.audit_event(cur)
            if event is not None:
                hot.events.append(event)
        for job, version in staged:
            hot.put(job, version)
        return [job for job, _ in staged]

    def delete(self, jobs: Sequence[Doomed]) -> list[Doomed]:
        with self._transaction() as hot:
            doomed: set[int] = set()
            in_shards: dict[int, list[Doomed]] = {}
            for job in jobs:
                if job.state not in FINISHED:
                    continue
                cur = hot.records.get(job.id)
                if cur is None:
                    in_shards.setdefault(job.id // SHARD_SIZE, []).append(job)
                elif cur["state"] == job.state.value and cur["attempt"] == job.attempt:
                    doomed.add(job.id)
            stale = {i // SHARD_SIZE for i in doomed}  # shards that may hold old copies of them
            for n, scan, keep, decoded in self._scan_shards(sorted(set(in_shards) | stale), hot):
                current = {h.id: h for h in scan.heads(keep)}
                current.update((r["id"], _head(r)) for r, _ in decoded)
                found = False
                for job in in_shards.get(n, ()):
                    h = current.get(job.id)
                    if h is not None and h.state is job.state and h.attempt == job.attempt:
                        doomed.add(job.id)
                        found = True
                if found or n in stale:
                    # lines of jobs now in state.json are stale copies: compacted away too
                    ids = scan.ids if keep is None else [scan.ids[k] for k in keep]
                    lines = [(i, line) for i, line in zip(ids, scan.lines(keep), strict=True) if i not in doomed]
                    lines += [(r["id"], line) for r, line in decoded if r["id"] not in doomed]
                    lines.sort()
                    self._rewrite_shard(n, [line for _, line in lines])
            for job_id in doomed:
                if hot.records.pop(job_id, None) is not None:
                    hot.dirty = True
            if hot.reuse and doomed:
                kept = {k: [i for i in ids if i not in doomed] for k, ids in hot.reuse.items()}
                kept = {k: ids for k, ids in kept.items() if ids}
                if kept != hot.reuse:
                    hot.reuse, hot.dirty = kept, True
            return [job for job in jobs if job.id in doomed]

    def _rewrite_shard(self, n: int, lines: Sequence[bytes]) -> None:
        path = self._shard_path(n)
        if lines:
            fsutil.atomic_write(path, b"".join(lines))
        elif path.exists():
            path.unlink()
            fsutil.fsync_dir(self._done)

    def register_worker(self, worker: WorkerRef, capacity: Capacity) -> Callable[[], None]:
        """A file per worker in `workers/`, flock'ed for the worker's lifetime: when the process
        dies the kernel drops the lock, so a stale file is recognised without any clock."""
        directory = self.root / "workers"
        fsutil.private_dir(directory)
        path = directory / f"{worker.host}-{worker.pid}.json"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, fsutil.FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        info = {
            "host": worker.host, "pid": worker.pid, "slots": capacity.total_slots,
            "gpus": capacity.total_gpus, "queues": None if capacity.queues is None else sorted(capacity.queues),
        }
        fsutil.write_all(fd, json.dumps(info).encode())

        def unregister() -> None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            os.close(fd)

        return unregister

    def heartbeat(self) -> None:
        """Nothing to do: liveness here is the worker's flock, which the kernel keeps."""

    def workers(self) -> list[dict[str, Any]]:
        live = []
        try:
            entries = list(os.scandir(self.root / "workers"))
        except FileNotFoundError:
            return []
        for entry in entries:
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                continue  # nobody holds it: that worker is gone
            except BlockingIOError:
                pass  # held: alive
            finally:
                data = os.read(fd, 4096)
                os.close(fd)
            try:
                live.append(json.loads(data))
            except ValueError:
                continue  # still being written
        return live

    def set_paused(self, queue: str, paused: bool) -> None:
        with self._transaction() as hot:
            if (queue in hot.paused) != paused:
                (hot.paused.add if paused else hot.paused.discard)(queue)
                hot.dirty = True
        if not paused:
            self.notify_workers()

    def paused(self) -> frozenset[str]:
        return frozenset(self._read_hot().paused)

    def check(self) -> list[tuple[str, str]]:
        findings: list[tuple[str, str]] = []  # self.warnings: printed when the store opened
        try:
            hot = self._read_hot()
        except StoreDamaged as e:
            return [*findings, ("damage", str(e))]
        findings.append(("ok", f"{self._state}: {len(hot.records)} job(s), next id {hot.next_id}"))
        stored = dict(hot.records)
        for n in self._shards():
            path = self._shard_path(n)
            lines = path.read_bytes().split(b"\n")
            bad = []
            for i, line in enumerate(lines):
                if not line:
                    continue
                try:
                    rec = decode_line(line)
                except ValueError:
                    if i == len(lines) - 1:
                        findings.append(("note", f"{path}: an interrupted append left a torn last line; "
                                                 "the next write repairs it (its jobs are still in state.json)"))
                    else:
                        bad.append(i + 1)
                    continue
                stored.setdefault(rec["id"], rec)
            if bad:
                shown = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
                findings.append(("damage", f"{path}: {len(bad)} damaged line(s): {shown}"))
            else:
                findings.append(("ok", f"{path}: {len(lines) - 1} line(s)"))
        for entry in os.scandir(self._env):
            data = Path(entry.path).read_bytes()
            if entry.name.endswith(".json") and fsutil.sha256_hex(data)[:32] != entry.name[:-5]:
                findings.append(("damage", f"{entry.path}: content does not match its name (checksum)"))
        missing_env = sorted({r["env_ref"] for r in stored.values() if r["state"] not in _FINISHED_VALUES}
                             - {e.name[:-5] for e in os.scandir(self._env)})
        for ref in missing_env:
            findings.append(("damage", f"{self._env / (ref + '.json')}: missing; unfinished jobs need it to start"))
        live = {(w["host"], w["pid"]) for w in self.workers()}
        orphans = [r["id"] for r in stored.values() if r["state"] == "running" and r.get("worker")
                   and (r["worker"]["host"], r["worker"]["pid"]) not in live]
        if orphans:
            findings.append(("note", f"running job(s) {', '.join(map(str, sorted(orphans)))} have lost their "
                                     "worker: the next `jobctl worker` on that host adopts them"))
        leftovers = [i for i in job_dir_ids(self.root) if i < hot.next_id and i not in stored]
        if leftovers:
            findings.append(("note", f"{len(leftovers)} job director(y/ies) without a record: "
                                     "`jobctl cleanup` removes them"))
        return findings

    def next_id(self) -> int:
        return self._read_hot().next_id

    def prune(self) -> int:
        """Remove captured environments no stored job refers to; returns how many."""
        with self._lock():
            hot = self._read_hot()
            used = {r.get("env_ref", "") for r in hot.records.values()}
            for _, scan, keep, decoded in self._scan_shards(self._shards(), hot):
                used.update(json.loads(text) for text in set(scan.select(scan.column("env_ref"), keep)))
                used.update(r.get("env_ref", "") for r, _ in decoded)
            removed = 0
            for entry in os.scandir(self._env):
                if entry.name.endswith(".json") and entry.name[:-5] not in used:
                    os.unlink(entry.path)
                    removed += 1
            return removed

    def append_history(self, events: Sequence[dict[str, Any]]) -> None:
        with self._lock():
            self._append_events(events)

    def history(self, *, job_id: int | None = None, since: float | None = None,
                offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        path = self.root / "history.jsonl"
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], 0
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        events = []
        since_iso = None if since is None else iso(since)
        for line in data[:end].split(b"\n"):
            try:
                event = decode_line(line)
            except ValueError:
                continue  # the audit trail is best effort: a torn line is not an event
            if (job_id is None or event.get("job") == job_id) and (since_iso is None or event["at"] >= since_iso):
                events.append(event)
        return events, offset + end

    def prune_history(self, removed: Collection[int], summary: dict[str, Any]) -> None:
        """Drop the events of removed jobs (the trail stays bounded) and record `summary`."""
        from jobctl.store import jsonscan

        path = self.root / "history.jsonl"
        with self._lock():
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                data = b""
            with jsonscan.bulk():
                keep = jsonscan.events_without(data, removed, decode_line)
            keep.append(encode_line(summary))
            fsutil.atomic_write(path, b"".join(keep), durable=False)

    def notify_workers(self) -> None:
        wake.notify(self.root / "wake")

    def listen(self, name: str) -> wake.FifoWaker:
        return wake.FifoWaker(self.root / "wake", name)


_FINISHED_VALUES = frozenset(s.value for s in FINISHED)


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def _head(rec: dict[str, Any]) -> JobHead:
    """The JobHead of a decoded record (defaults as in Job.from_record)."""
    return JobHead(rec["id"], State(rec["state"]), rec.get("attempt", 0), rec.get("finished_at"))


def _cut_torn_tail(path: Path) -> None:
    """Drop an incomplete last line left by a crash during an append (its data is in state.json)."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())
    except FileNotFoundError:
        pass


def _lock_holder(fd: int) -> str:
    """Who holds the flock on `fd`'s file, from /proc/locks (Linux); 'another process' elsewhere."""
    st = os.fstat(fd)
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                if "FLOCK" in parts and "->" not in parts and len(parts) > 5 and parts[5] == want:
                    pid = parts[4]
                    try:
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                    except OSError:
                        cmd = "?"
                    return f"pid {pid} ({cmd[:80]}) on {fsutil.hostname()}"
    except OSError:
        pass
    return "another process"
