"""`jobctl status --watch`: a live view of the jobs, redrawn when they change."""

import os
import selectors
from collections.abc import Collection
from typing import Any

from jobctl.cli.render import STATE_STYLE, command_text, elapsed, outcome_text
from jobctl.model import Job, State, format_size, now, poll_after
from jobctl.store.base import Store
from jobctl.store.wake import drain_and_rewatch

FIRST_S = 0.25
MOST_S = 2.0
# The interesting ones first: what runs, then what is about to, then what just ended.
ORDER = {State.RUNNING: 0, State.WAITING: 1, State.QUEUED: 1}


def watch_jobs(store: Store, *, states: Collection[State] | None, queues: Collection[str] | None, color: bool) -> None:
    """Redraw on every store notification (submit, finish, cancel, retry, release, resume);
    between them poll for progress, backing off from FIRST_S while nothing changes, as
    `poll_after_s` says for the youngest unfinished job, but to MOST_S at most: the view
    shows progress and elapsed times, which change without a notification."""
    from rich.console import Console
    from rich.live import Live

    from jobctl.service import with_live_progress

    console = Console(no_color=not color, highlight=False)
    waker = store.listen(f"watch-{os.getpid()}")
    sel = selectors.DefaultSelector()
    sel.register(waker.fileno(), selectors.EVENT_READ)
    pause, last = FIRST_S, None
    try:
        with Live(console=console, auto_refresh=False, screen=False, transient=False) as live_view:
            while True:
                jobs = with_live_progress(store, store.query(states=states, queues=queues))
                workers = store.workers()
                snapshot = [(j.id, j.state, j.progress, j.error, j.waiting_for) for j in jobs]
                if snapshot != last:
                    pause = FIRST_S
                last = snapshot
                live_view.update(view(jobs, workers, console.size.width, console.size.height), refresh=True)
                if sel.select(pause):
                    drain_and_rewatch(sel, waker)
                    pause = FIRST_S
                else:
                    pause = min(MOST_S, pause * 2, youngest_poll(jobs))
    except KeyboardInterrupt:
        pass
    finally:
        sel.close()
        waker.close()


def youngest_poll(jobs: Collection[Job]) -> float:
    at = now()
    return min((poll_after(j, at) or MOST_S for j in jobs if not j.finished), default=MOST_S)


def view(jobs: list[Job], workers: list[dict[str, Any]], width: int, height: int) -> Any:
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    at = now()
    live = {(w["host"], w["pid"]) for w in workers}
    shown = sorted(jobs, key=lambda j: (ORDER.get(j.state, 2), -(j.finished_at or 0) if j.finished else j.id))
    room = max(1, height - 4)  # header, footer, a blank line
    hidden = max(0, len(shown) - room)
    shown = shown[:room]
    with_mem = width >= 100
    id_w = max([2] + [len(str(j.id)) for j in shown])
    queue_w = min(8, max([5] + [len(j.queue) for j in shown]))
    pri_w = max([3] + [len(str(j.priority)) for j in shown])
    fixed = id_w + 9 + pri_w + queue_w + 15 + 6 + (9 if with_mem else 0)
    rest = max(20, width - fixed - 2 * (8 if with_mem else 7))
    name_w = max(10, rest * 11 // 20)
    table = Table(box=None, pad_edge=False, header_style="bold", expand=False)
    table.add_column("ID", justify="right", no_wrap=True, width=id_w)
    table.add_column("STATE", no_wrap=True, width=9)
    table.add_column("NAME", no_wrap=True, overflow="ellipsis", width=name_w)
    table.add_column("QUEUE", no_wrap=True, overflow="ellipsis", width=queue_w)
    table.add_column("PRI", justify="right", no_wrap=True, width=pri_w)
    table.add_column("PROGRESS", no_wrap=True, width=15)
    table.add_column("TIME", justify="right", no_wrap=True, width=6)
    if with_mem:
        table.add_column("MEM", justify="right", no_wrap=True, width=9)
    table.add_column("RESULT", no_wrap=True, overflow="ellipsis", width=max(8, rest - name_w))
    for job in shown:
        bar: Any = ""
        if job.progress.percent is not None:
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=100, completed=job.progress.percent, width=9),
                        Text(f"{job.progress.percent:3.0f}%"))
        mem = "" if job.usage is None else format_size(job.usage.max_rss_kb * 1024)
        result = outcome_text(job, live)
        if job.state is State.RUNNING and job.progress.message and not result.startswith("worker"):
            result = job.progress.message
        cells = [str(job.id), Text(job.state.value, style=STATE_STYLE[job.state]), Text(command_text(job)),
                 Text(job.queue), str(job.priority), bar, elapsed(job, at)]
        table.add_row(*cells, *([mem] if with_mem else []), Text(result))
    counts = {s: sum(1 for j in jobs if j.state is s) for s in State}
    footer = Text("  ".join(f"{s.value} {n}" for s, n in counts.items() if n) or "no jobs", style="bold")
    footer.append(f"   workers {len(workers)}" + (f"   (+{hidden} more)" if hidden else ""), style="dim")
    return Group(table, footer)
