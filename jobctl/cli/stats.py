"""`jobctl stats`: counts, queue depth, success rate, durations, throughput, live workers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from jobctl.cli import render
from jobctl.cli.app import app, parsed, session
from jobctl.model import State, format_duration, now, parse_duration

if TYPE_CHECKING:
    from rich.console import Console


@app.command()
def stats(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option("--since", metavar="DUR", callback=parsed(parse_duration), help="Only jobs created in this last stretch of time (e.g. 1h, 7d).")] = None,
    queue: Annotated[list[str] | None, typer.Option("--queue", metavar="QUEUE", help="Only jobs in this queue (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colours (also when NO_COLOR is set).")] = False,
) -> None:
    """Show counts per state and queue, queue depth by priority, success rate, durations,
    throughput, the oldest queued job and the live workers.

    Examples: `jobctl stats`; `jobctl stats --since 1d --queue gpu --json`.
    """
    from jobctl import stats as figures

    store = session(ctx).store
    live = store.workers()
    jobs = store.query(queues=queue or None)
    report = figures.compute(jobs, live, now=now(), since_s=None if since is None else float(since), queues=queue or None)
    if as_json:
        render.json_out(report)
    else:
        show(report, color=render.use_color(no_color))


STATES = [s.value for s in State]


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else format_duration(value)


def show(report: dict[str, Any], *, color: bool) -> None:
    """The report as a table of counts per queue and a few labelled lines; user text (queue names,
    hosts) is always rich.text.Text, never markup."""
    from rich.console import Console
    from rich.text import Text

    console = Console(no_color=not color, highlight=False, soft_wrap=False)
    scope = []
    if report["queues"] is not None:
        scope.append("queue " + ", ".join(report["queues"]))
    if report["since_s"] is not None:
        scope.append(f"created in the last {format_duration(report['since_s'])}")
    head = Text(f"{report['total']} jobs", style="bold")
    if scope:
        head.append(f" ({'; '.join(scope)})")
    console.print(head, soft_wrap=True)
    if report["total"] or report["queues"] is not None:
        _queue_table(console, report)
    for label, value in _lines(report):
        line = Text(f"{label:<12}", style="bold")
        line.append_text(value)
        console.print(line, soft_wrap=True)
    _worker_lines(console, report["workers"])


def _queue_table(console: Console, report: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("QUEUE", no_wrap=True, overflow="ellipsis", max_width=16)
    for state in STATES:
        table.add_column(state.upper(), justify="right")
    table.add_column("TOTAL", justify="right")
    rows = dict(report["by_queue"])
    if len(rows) != 1:
        rows[""] = report["states"]
    for name, counts in rows.items():
        cells = [Text(name) if name else Text("all", style="italic")]
        cells += [Text(str(counts[s]), style=render.STATE_STYLE[State(s)] if counts[s] else "dim") for s in STATES]
        cells.append(Text(str(sum(counts.values()))))
        table.add_row(*cells)
    console.print(table)


def _lines(report: dict[str, Any]) -> list[tuple[str, Any]]:
    from rich.text import Text

    states = report["states"]
    depth = report["depth_by_priority"]
    depth_text = ", ".join(
        f"priority {d['priority']}: {d['queued']} queued" + (f" + {d['waiting']} waiting" if d["waiting"] else "")
        for d in depth
    ) or "nothing queued"
    rate = report["success_rate"]
    rate_text = "-" if rate is None else f"{rate:.1%}"
    rate_text += f" ({states['completed']} completed, {states['failed']} failed)"
    d = report["durations"]
    if d["count"]:
        dur_text = (f"{d['count']} ran: mean {_seconds(d['mean_s'])}, p50 {_seconds(d['p50_s'])}, "
                    f"p95 {_seconds(d['p95_s'])}, max {_seconds(d['max_s'])}")
    else:
        dur_text = "no finished job ran"
    t = report["throughput"]
    if t["per_hour"] is None:
        tp_text = f"{t['finished']} finished"
    else:
        tp_text = f"{t['per_hour']:.1f} jobs/h ({t['finished']} finished in {format_duration(t['window_s'])})"
    o = report["oldest_queued"]
    oldest_text = "-" if o is None else f"job {o['id']}, queued {format_duration(o['age_s'])} ago ({o['created_at']})"
    return [
        ("depth", Text(depth_text)),
        ("success", Text(rate_text)),
        ("durations", Text(dur_text)),
        ("throughput", Text(tp_text)),
        ("oldest", Text(oldest_text)),
    ]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _worker_lines(console: Console, workers: list[dict[str, Any]]) -> None:
    from rich.text import Text

    if not workers:
        console.print(Text(f"{'workers':<12}", style="bold").append("none live"))
        return
    console.print(Text(f"{'workers':<12}", style="bold").append(f"{len(workers)} live"))
    for w in workers:
        line = Text("  ")
        line.append(f"{w['host']}:{w['pid']}", style="bold")
        gpus = f", {_plural(w['gpus'], 'GPU')}" if w["gpus"] else ""
        serves = "all queues" if w["queues"] is None else "queues " + ", ".join(w["queues"])
        line.append(f"  {_plural(w['slots'], 'slot')}{gpus}, {serves}; ")
        running = w["running"]
        line.append(f"running {', '.join(map(str, running))}" if running else "idle",
                    style="yellow" if running else "dim")
        console.print(line, soft_wrap=True)
