"""Reading the JSON store's shards in bulk without decoding their records: `status --json`
and `cleanup` of 100,000 jobs. Imported only by them (no cost on other commands' start-up).

A shard line is `JSON<TAB>crc32`, the JSON being `encode_line(job.to_record() | {"_v": n})`:
compact `json.dumps` text with `to_record`'s keys in `to_record`'s order. A `Layout` is a
regular expression for exactly that text of a finished job, each field's value matched by the
grammar of the JSON it can hold. A line it matches therefore *is* such a record, and the text
it captures for a field is `json.dumps` of that field's value: the very text `json.dumps` of
`model.public_dict` writes for it, so a finished job's public JSON is spliced from the
captures without parsing anything. One `re.split` per shard yields every line's fields as
columns of bytes, in C, for a fraction of what `json.loads` costs (it builds about 45
objects per record). Lines a layout does not match (a record of an older version, a
timestamp the fast ISO conversion would not get exactly right) are decoded as before, and
every line's checksum is verified either way: damage is reported, never read as data.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import re
import signal
import zlib
from array import array
from collections.abc import Callable, Collection, Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import Any

from jobctl import fsutil
from jobctl.errors import StoreDamaged
from jobctl.model import JobHead, State

_STR = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_INT = rb"-?\d+"
_NUM = rb"(?:-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|NaN|-?Infinity)"
_BOOL = rb"(?:true|false)"
# A timestamp `iso_json` converts exactly: before 2097, and no fraction whose microsecond
# rounding could carry into the milliseconds (digits 4-6 being 999 with more after them).
_TIME = rb"(?:[1-3]?\d{1,9}\.(?:\d{1,6}|\d{3}(?!999)\d{4,})|null)"


def _opt(p: bytes) -> bytes:
    return rb"(?:null|" + p + rb")"


def _list(p: bytes) -> bytes:
    return rb"\[(?:" + p + rb"(?:," + p + rb")*+)?\]"


_SCALAR = rb"(?:" + _STR + rb"|" + _NUM + rb"|null|true|false)"

# Job.to_record() of a finished job, plus "_v", key by key in its order (tests check the order).
RECORD: tuple[tuple[str, bytes], ...] = (
    ("id", rb"\d+"), ("command", _list(_STR)), ("cwd", _STR), ("created_at", _TIME), ("env_ref", _STR),
    ("name", _opt(_STR)), ("queue", _STR), ("priority", _INT), ("state", rb'"(?:completed|failed|cancelled)"'),
    ("started_at", _TIME), ("finished_at", _TIME), ("attempt", _INT), ("max_retries", _INT),
    ("timeout_s", _opt(_NUM)), ("depends_on", _list(_INT)), ("exit_code", _opt(_INT)), ("signal", _opt(_INT)),
    ("error", _opt(_STR)), ("reason", _opt(_STR)),
    ("progress", rb'\{"percent":' + _opt(_NUM) + rb',"message":' + _opt(_STR) + rb"\}"),
    ("worker", _opt(rb'\{"host":' + _STR + rb',"pid":' + _INT + rb"\}")),
    ("usage", _opt(rb'\{"wall_s":' + _NUM + rb',"cpu_user_s":' + _NUM + rb',"cpu_sys_s":' + _NUM
                   + rb',"max_rss_kb":' + _NUM + rb"\}")),
    ("labels", _list(_STR)), ("cpus", _INT), ("zip", _BOOL), ("zip_path", _opt(_STR)), ("cancel_requested", _BOOL),
    ("submitter", _opt(rb"\{(?:" + _STR + rb":" + _SCALAR + rb"(?:," + _STR + rb":" + _SCALAR + rb")*+)?\}")),
    ("depends_any", _list(_INT)), ("retry_delay_s", _NUM), ("retry_on", _list(_INT)), ("not_before", _TIME),
    ("held", _BOOL), ("unique_key", _opt(_STR)), ("mem_bytes", _opt(_NUM)), ("gpus", _INT), ("gpu_ids", _list(_INT)),
    ("waiting_for", _opt(_STR)), ("lost", _INT), ("_v", rb"\d+"),
)

# model.public_dict of a finished job, key by key in its order: the record field it copies,
# "iso FIELD" (a timestamp in ISO 8601), "null", or "job_dir" (tests check it against public_dict).
PUBLIC: tuple[tuple[str, str], ...] = (
    ("id", "id"), ("name", "name"), ("command", "command"), ("cwd", "cwd"), ("queue", "queue"),
    ("priority", "priority"), ("state", "state"), ("created_at", "iso created_at"),
    ("started_at", "iso started_at"), ("finished_at", "iso finished_at"), ("attempt", "attempt"),
    ("max_retries", "max_retries"), ("timeout_s", "timeout_s"), ("depends_on", "depends_on"),
    ("exit_code", "exit_code"), ("signal", "signal"), ("error", "error"), ("reason", "reason"),
    ("progress", "progress"), ("waiting_for", "waiting_for"), ("poll_after_s", "null"), ("job_dir", "job_dir"),
    ("zip_path", "zip_path"), ("worker", "worker"), ("worker_alive", "null"), ("usage", "usage"),
    ("labels", "labels"), ("cpus", "cpus"), ("mem_bytes", "mem_bytes"), ("gpus", "gpus"), ("gpu_ids", "gpu_ids"),
    ("depends_on_any", "depends_any"), ("retry_delay_s", "retry_delay_s"), ("retry_on", "retry_on"),
    ("not_before", "iso not_before"), ("held", "held"), ("unique_key", "unique_key"),
    ("lost_attempts", "lost"), ("cancel_requested", "cancel_requested"),
)

_HEAD = ("id", "state", "attempt", "finished_at", "env_ref", "_v")
_STATES = {f'"{s.value}"'.encode(): s for s in State}


class Layout:
    """The pattern of a shard line holding a finished job's record, capturing the `values` of
    some fields and, with `public`, the runs of fields that `public_dict` copies in the same
    order (one capture for `"attempt":1,...,"progress":{...}`: fewer captures, less work)."""

    def __init__(self, values: Sequence[str], public: bool) -> None:
        fields = dict(RECORD)
        order = [k for k, _ in RECORD]
        captured = set(values) | {"id", "_v"}
        runs: list[list[str]] = []
        open_run: list[str] | None = None  # the run the public text ends with, if it does
        # The public object: literal texts and captures, (literal before, capture, as ISO?).
        self._pieces: list[tuple[bytes, str | None, bool]] = []
        text = b"{"
        for n, (key, how) in enumerate(PUBLIC if public else ()):
            sep = b"," if n else b""
            if how == key and key in fields and key != "id":  # copied key and all
                if open_run is not None and order.index(key) == order.index(open_run[-1]) + 1:
                    open_run.append(key)
                    continue
                open_run = [key]
                runs.append(open_run)
                self._pieces.append((text + sep, "run " + key, False))
                text = b""
                continue
            open_run = None
            if how == "null":
                text += sep + b'"%s":null' % key.encode()
            elif how == "job_dir":
                self._pieces.append((text + sep + b'"job_dir":"', None, False))  # the prefix
                self._pieces.append((b"", "id", False))
                text = b'"'
            else:
                iso = how.startswith("iso ")
                source = how.removeprefix("iso ")
                captured.add(source)
                self._pieces.append((text + sep + b'"%s":' % key.encode(), source, iso))
                text = b""
        self._tail = text + b"}"
        starts = {run[0]: run for run in runs}
        out, i = [], 0
        while i < len(order):
            run = starts.get(order[i], [order[i]])
            body = b",".join(self._field(k, fields[k], k in captured) for k in run)
            out.append(b"(?P<r_%s>%s)" % (run[0].encode(), body) if order[i] in starts else body)
            i += len(run)
        self.pattern = re.compile(rb"(?m)^(\{" + b",".join(out) + rb"\})\t([0-9a-f]{8})\n")
        self.stride = self.pattern.groups + 1
        self._index = {("run " + name[2:] if name[0] == "r" else name[2:]): g
                       for name, g in self.pattern.groupindex.items()}

    @staticmethod
    def _field(key: str, pattern: bytes, capture: bool) -> bytes:
        k = key.encode()
        return b'"%s":' % k + (b"(?P<v_%s>%s)" % (k, pattern) if capture else pattern)

    def template(self, job_dir_prefix: str) -> tuple[bytes, list[tuple[str, bool]]]:
        """`template % values` is the public JSON of a job whose captures (name, as ISO?) are
        `values`; `job_dir_prefix` is `<root>/jobs/`."""
        prefix = json.dumps(job_dir_prefix)[1:-1].encode()
        text, slots = b"", []
        for literal, capture, iso in self._pieces:
            text += literal.replace(b"%", b"%%")
            if capture is None:
                text += prefix.replace(b"%", b"%%")
            else:
                text += b"%s"
                slots.append((capture, iso))
        return text + self._tail, slots

    def column(self, parts: list[bytes], name: str) -> list[bytes]:
        return parts[self._index[name] :: self.stride]


@functools.cache
def layout(kind: str) -> Layout:
    """`public` (status --json), `public filtered` (also state and queue), `heads` (cleanup)."""
    if kind == "heads":
        return Layout(_HEAD, public=False)
    return Layout(("state", "queue") if kind == "public filtered" else (), public=True)


_MMSS: list[bytes] = []
_HOURS: dict[int, bytes] = {}


def iso_json(text: bytes) -> bytes:
    """JSON of `model.iso(float(text))` for a timestamp's stored text that `_TIME` matches."""
    if text == b"null":
        return text
    seconds, _, fraction = text.partition(b".")
    hour, rest = divmod(int(seconds), 3600)
    prefix = _HOURS.get(hour)
    if prefix is None:
        prefix = _HOURS[hour] = datetime.fromtimestamp(hour * 3600, UTC).isoformat()[:14].encode()
    if not _MMSS:
        _MMSS.extend(b"%02d:%02d" % divmod(s, 60) for s in range(3600))
    # the milliseconds are the fraction's first three digits: _TIME leaves out the rest
    return b'"%s%s.%sZ"' % (prefix, _MMSS[rest], (fraction + b"00")[:3])


@contextmanager
def bulk() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: reading 100,000 records allocates millions of
    objects, none in a cycle, and each collection would walk all of them again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


Decoded = tuple[dict[str, Any], bytes]
"""A line the layout did not match: its record, and the line itself (newline included)."""


class Scan:
    """One shard read in one go: the lines `layout` matches as columns of captured texts, every
    other line decoded with `decode`. Raises `damaged(path, why)` for a damaged line; a torn
    last line (an interrupted append: its records are still in state.json) is skipped."""

    def __init__(self, path: Path, layout: Layout, decode: Callable[[bytes], Any],
                 damaged: Callable[[Path, str], Exception]) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = b""
        self.layout = layout
        self.parts = parts = layout.pattern.split(data)
        stride = layout.stride
        gaps = parts[::stride]
        crcs = list(map(zlib.crc32, parts[1::stride]))
        if crcs != list(map(int, parts[stride - 1 :: stride], repeat(16))):
            k = next(k for k, (a, b) in enumerate(zip(crcs, parts[stride - 1 :: stride], strict=True)) if a != int(b, 16))
            line = k + 1 + sum(g.count(b"\n") for g in gaps[: k + 1])
            raise damaged(path, f"line {line}: checksum mismatch")
        self.ids = list(map(int, layout.column(parts, "id")))
        self.decoded: list[Decoded] = []
        if any(gaps):
            before = 0  # lines before the current gap
            for k, gap in enumerate(gaps):
                lines = gap.split(b"\n")
                for j, text in enumerate(lines):
                    if not text:
                        continue
                    try:
                        rec = decode(text)
                    except ValueError as e:
                        if k == len(gaps) - 1 and j == len(lines) - 1:
                            continue  # the torn last line
                        raise damaged(path, f"line {before + j + 1}: {e}") from None
                    self.decoded.append((rec, text + b"\n"))
                before += gap.count(b"\n") + 1

    def column(self, name: str) -> list[bytes]:
        return self.layout.column(self.parts, name)

    def current(self, skip: AbstractSet[int]) -> tuple[list[int] | None, list[Decoded]]:
        """The lines holding their job's current record: the highest `_v` of each id, and
        none of a job in `skip` (current in state.json). Matched lines as indices into the
        columns (None: all of them), decoded ones as they are."""
        ids = self.ids
        if not self.decoded and len(set(ids)) == len(ids) and skip.isdisjoint(ids):
            return None, []
        newest: dict[int, tuple[int, int, Decoded | None]] = {}  # id -> (_v, index or -1, decoded)
        for k, (i, v) in enumerate(zip(ids, map(int, self.column("_v")), strict=True)):
            if i not in newest or v >= newest[i][0]:
                newest[i] = (v, k, None)
        for d in self.decoded:
            i, v = d[0]["id"], d[0]["_v"]
            if i not in newest or v >= newest[i][0]:
                newest[i] = (v, -1, d)
        keep = sorted(k for i, (_, k, _d) in newest.items() if k >= 0 and i not in skip)
        return keep, [d for i, (_, _k, d) in newest.items() if d is not None and i not in skip]

    def select(self, column: list[bytes], keep: list[int] | None) -> list[bytes]:
        return column if keep is None else [column[k] for k in keep]

    def lines(self, keep: list[int] | None) -> list[bytes]:
        """The matched lines `keep` selects, as they are in the file."""
        bodies, crcs = self.parts[1 :: self.layout.stride], self.parts[self.layout.stride - 1 :: self.layout.stride]
        return list(map(b"%s\t%s\n".__mod__, zip(self.select(bodies, keep), self.select(crcs, keep), strict=True)))

    def heads(self, keep: list[int] | None) -> list[JobHead]:
        """JobHeads of the matched lines `keep` selects."""
        ids = self.ids if keep is None else [self.ids[k] for k in keep]
        states = map(_STATES.__getitem__, self.select(self.column("state"), keep))
        attempts = map(int, self.select(self.column("attempt"), keep))
        finished = [None if t == b"null" else float(t) for t in self.select(self.column("finished_at"), keep)]
        return list(map(JobHead._make, zip(ids, states, attempts, finished, strict=True)))

    def public(self, keep: list[int] | None, template: bytes, slots: list[tuple[str, bool]]) -> list[bytes]:
        """Public JSON texts of the matched lines `keep` selects (`Layout.template`)."""
        columns = [self.select(self.column(name), keep) for name, _ in slots]
        columns = [list(map(iso_json, c)) if iso else c for c, (_, iso) in zip(columns, slots, strict=True)]
        return list(map(template.__mod__, zip(*columns, strict=True)))


Pairs = list[tuple[int, bytes]]


class InChild:
    """`work()` in a forked child, while this process does its own share: the second core of
    the machine for `status --json` of many jobs. The child's (id, JSON text) pairs come back
    through a pipe; damage it found is raised here as StoreDamaged with its message."""

    def __init__(self, work: Callable[[], Pairs]) -> None:
        self.pid = 0
        read, write = os.pipe()
        try:
            self.pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            return
        if self.pid == 0:
            try:
                os.close(read)
                try:
                    pairs = work()
                    ids = array("q", [i for i, _ in pairs]).tobytes()
                    texts = b"\n".join(text for _, text in pairs)
                    fsutil.write_all(write, b"ok %d %d\n" % (len(pairs), len(texts)))
                    fsutil.write_all(write, ids)
                    fsutil.write_all(write, texts)
                except StoreDamaged as e:
                    fsutil.write_all(write, b"damaged\n" + str(e).encode(errors="surrogateescape"))
            finally:
                os._exit(0)
        os.close(write)
        self.fd = read

    def close(self) -> None:
        """Stop the child if its result was not taken (this process failed meanwhile)."""
        if self.pid:
            os.kill(self.pid, signal.SIGKILL)  # ours and not yet reaped: the pid cannot be reused
            os.close(self.fd)
            os.waitpid(self.pid, 0)
            self.pid = 0

    def result(self) -> Pairs | None:
        """The child's pairs; None if it could not do the work (then do it here)."""
        if not self.pid:
            return None
        pid, self.pid = self.pid, 0
        with open(self.fd, "rb") as f:
            head = f.readline()
            if head.startswith(b"damaged"):
                os.waitpid(pid, 0)
                raise StoreDamaged(f.read().decode(errors="surrogateescape"))
            fields = head.split()
            pairs = None
            if len(fields) == 3 and fields[0] == b"ok":
                n, size = int(fields[1]), int(fields[2])
                ids = array("q")
                ids.frombytes(f.read(8 * n))
                texts = f.read(size)  # one buffer of that size, filled in place
                if len(texts) == size and len(ids) == n:
                    pairs = list(zip(ids, texts.split(b"\n") if n else [], strict=True))
        os.waitpid(pid, 0)
        return pairs


def filtered(scan: Scan, keep: list[int] | None, states: AbstractSet[str] | None,
             queues: AbstractSet[str] | None) -> list[int] | None:
    """`keep` narrowed to the lines whose state and queue are among those given (None: any)."""
    if states is None and queues is None:
        return keep
    state_texts = None if states is None else {json.dumps(s).encode() for s in states}
    queue_texts = None if queues is None else {json.dumps(q).encode() for q in queues}
    indices = range(len(scan.ids)) if keep is None else keep
    state_col, queue_col = scan.column("state"), scan.column("queue")
    return [k for k in indices if (state_texts is None or state_col[k] in state_texts)
            and (queue_texts is None or queue_col[k] in queue_texts)]


_EVENT = rb'(?m)^(\{"at":"[^"\\\n]*","job":(\d+|null)[,}][^\n]*)\t([0-9a-f]{8})\n'


def events_without(data: bytes, removed: Collection[int], decode: Callable[[bytes], Any]) -> list[bytes]:
    """The lines of the audit trail `data` whose event is not about a job in `removed`, in
    order; a line that does not decode (torn, damaged) is dropped: the trail is best effort."""
    parts = re.compile(_EVENT).split(data)
    gone, gone_text = set(removed), {b"%d" % i for i in removed}
    bodies, jobs, crcs = parts[1::4], parts[2::4], parts[3::4]
    valid = map(int.__eq__, map(zlib.crc32, bodies), map(int, crcs, repeat(16)))
    lines = [b"%s\t%s\n" % (body, crc) if ok and job not in gone_text else None
             for body, job, crc, ok in zip(bodies, jobs, crcs, valid, strict=True)]
    gaps = parts[::4]
    if not any(gaps):
        return [line for line in lines if line is not None]
    keep = []
    for k, gap in enumerate(gaps):  # the lines before match k, then match k
        for text in gap.split(b"\n"):
            try:
                event = decode(text)
            except ValueError:
                continue
            if event.get("job") not in gone:
                keep.append(text + b"\n")
        if k < len(lines) and lines[k] is not None:
            keep.append(lines[k])
    return keep
