"""Everything jobctl prints. Data to stdout, diagnostics to stderr; JSON never goes through rich,
and user text (names, commands, labels) is never read as rich markup."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from jobctl.jobdir import job_dir
from jobctl.model import Job, State, command_line, format_duration, format_size, iso, now, public_dict, worker_alive

STATE_STYLE = {
    State.QUEUED: "cyan",
    State.WAITING: "blue",
    State.RUNNING: "bold yellow",
    State.COMPLETED: "green",
    State.FAILED: "bold red",
    State.CANCELLED: "magenta",
}


def out(text: str) -> None:
    sys.stdout.write(text + "\n")


def use_color(no_color: bool) -> bool:
    """Colours only on a terminal, and never with --no-color or NO_COLOR set."""
    import os

    return not no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()


def note(text: str) -> None:
    sys.stderr.write(text + "\n")


def ids(jobs: Sequence[Job]) -> None:
    sys.stdout.write("".join(f"{j.id}\n" for j in jobs))


def json_out(obj: Any) -> None:
    # One dumps() call, no indent: the C encoder (indent or dump() use the Python one, 3x slower).
    sys.stdout.write(json.dumps(obj))
    sys.stdout.write("\n")


Live = Collection[tuple[str, int]]


def json_texts(texts: Sequence[bytes]) -> None:
    """A JSON array of these JSON texts (`service.jobs_json`), written as bytes in slices (no
    second copy of 100 MB in memory)."""
    sys.stdout.flush()
    out = sys.stdout.buffer
    out.write(b"[")
    for start in range(0, len(texts), 4096):
        out.write(b"," if start else b"")
        out.write(b",".join(texts[start : start + 4096]))
    out.write(b"]\n")
    out.flush()


def ago(ts: float | None, at: float) -> str:
    if ts is None:
        return "-"
    return f"{format_duration(max(0, int(at - ts)))} ago"


def elapsed(job: Job, at: float) -> str:
    if job.started_at is None:
        return "-"
    end = job.finished_at if job.finished_at is not None else at
    return format_duration(max(0.0, round(end - job.started_at, 1)))


def command_text(job: Job) -> str:
    return job.name or command_line(job.command)


def outcome_text(job: Job, live: Live) -> str:
    if job.state is State.COMPLETED:
        return "exit 0"
    if worker_alive(job, live) is False:
        return "worker gone"  # `status ID` says what happens next
    if job.state is State.RUNNING and (job.progress.percent is not None or job.progress.message):
        p = job.progress
        return " ".join(x for x in (None if p.percent is None else f"{p.percent:.0f}%", p.message) if x)
    if job.error:
        return job.error
    if job.state is State.RUNNING and job.cancel_requested:
        return "cancelling"
    return job.waiting_for or ""


def jobs_table(jobs: Sequence[Job], live: Live, *, color: bool, hidden: int) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    at = now()
    console = Console(no_color=not color, highlight=False, soft_wrap=False)
    rows = [
        (str(j.id), j.state.value, j.queue, str(j.priority), command_text(j), ago(j.created_at, at),
         elapsed(j, at), outcome_text(j, live))
        for j in jobs
    ]
    headers = ("ID", "STATE", "QUEUE", "PRI", "COMMAND", "SUBMITTED", "TIME", "RESULT")
    natural = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    natural[2] = min(natural[2], 12)
    # Every column but COMMAND and RESULT keeps its natural width; those two share the rest.
    rest = console.width - sum(natural[:4]) - sum(natural[5:7]) - 2 * (len(headers) - 1)
    result_w = min(natural[7], max(6, rest - natural[4], rest * 2 // 5))
    widths = natural[:4] + [max(10, min(natural[4], rest - result_w))] + natural[5:7] + [result_w]
    table = Table(box=None, pad_edge=False, header_style="bold")
    for header, width in zip(headers, widths, strict=True):
        table.add_column(header, justify="right" if header in ("ID", "PRI", "TIME") else "left", no_wrap=True, overflow="ellipsis", width=width)
    for job, row in zip(jobs, rows, strict=True):
        table.add_row(
            row[0], Text(row[1], style=STATE_STYLE[job.state]), *(Text(c) for c in row[2:])
        )
    if jobs:
        console.print(table)
    else:
        console.print("no jobs")
    if hidden:
        console.print(Text(f"({hidden} older finished jobs not shown; --all or --limit N for more)", style="dim"))


def job_detail(job: Job, root: Path, live: Live) -> None:
    """The full record of one job as `key: value` lines (never the environment)."""
    d = public_dict(job, str(job_dir(root, job.id)), now(), live)
    lines = []
    for key, value in d.items():
        if key == "command":
            value = command_text(job) if job.name is None else " ".join(job.command)
        elif key == "usage" and job.usage is not None:
            u = job.usage
            value = (f"wall {format_duration(u.wall_s)}, user {u.cpu_user_s:.2f}s, sys {u.cpu_sys_s:.2f}s, "
                     f"max RSS {format_size(u.max_rss_kb * 1024)}")
        elif key == "progress":
            p = job.progress
            value = None if p.percent is None and p.message is None else f"{p.percent or 0:.0f}% {p.message or ''}".strip()
        elif key == "worker" and job.worker is not None:
            gone = " (gone; the next worker on that host adopts the job)" if worker_alive(job, live) is False else ""
            value = f"{job.worker.host} pid {job.worker.pid}{gone}"
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value) or None
        lines.append(f"{key + ':':18} {'-' if value is None else value}")
    jd = job_dir(root, job.id)
    lines.append(f"{'stdout:':18} {jd / 'stdout.log'}")
    lines.append(f"{'stderr:':18} {jd / 'stderr.log'}")
    if job.state is State.FAILED:
        tail = _stderr_tail(root, job.id)
        if tail:
            lines.append(f"last {len(tail)} line(s) of stderr:")
            lines.extend(f"  {line}" for line in tail)
    out("\n".join(lines))


STDERR_TAIL = 5


def _stderr_tail(root: Path, job_id: int) -> list[str]:
    """The last lines a failed job wrote to stderr: usually the reason, right there."""
    from jobctl.errors import JobctlError
    from jobctl.jobdir import log_path
    from jobctl.service import last_lines

    try:
        with open(log_path(root, job_id, "stderr"), "rb") as f:
            data = last_lines(f, STDERR_TAIL)
    except (OSError, JobctlError):
        return []
    return data.decode(errors="replace").splitlines()


def cleanup_report(report: Any, *, as_json: bool, quiet: bool) -> None:
    verb = "would remove" if report.dry_run else "removed"
    if as_json:
        json_out({
            "dry_run": report.dry_run,
            "leftover_dirs": report.leftovers,
            "removed": [{"id": j.id, "state": j.state.value, "finished_at": iso(j.finished_at),
                         "bytes": report.sizes.get(j.id, 0)} for j in report.removed],
            "count": len(report.removed),
            "bytes_freed": report.bytes_freed,
        })
        return
    if quiet:
        return
    for i in report.leftovers:
        out(f"{verb} leftover directory of job {i} (no record, {format_size(report.sizes.get(i, 0))})")
    for j in report.removed:
        out(f"{verb} job {j.id} ({j.state.value}, finished {iso(j.finished_at)}, {format_size(report.sizes.get(j.id, 0))})")
    out(f"{verb} {len(report.removed)} job(s), {format_size(report.bytes_freed)}")
