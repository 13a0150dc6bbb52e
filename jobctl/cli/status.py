"""`jobctl status`: the table of jobs, or the full record of some."""

import sys
from typing import Annotated

import typer

from jobctl.cli import complete, render
from jobctl.cli.app import app, session
from jobctl.errors import UsageError
from jobctl.model import FINISHED, State

RECENT_FINISHED = 20


@app.command()
def status(
    ctx: typer.Context,
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...", help="Show the full record of these jobs.", show_default=False,
                                                    autocompletion=complete.job_ids)] = None,
    state: Annotated[list[str] | None, typer.Option("--state", metavar="STATE", help="Only jobs in this state (repeatable): queued, waiting, running, completed, failed, cancelled.")] = None,
    queue: Annotated[list[str] | None, typer.Option("--queue", metavar="QUEUE", help="Only jobs in this queue (repeatable).",
                                                    autocompletion=complete.queues)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print all matching jobs as a JSON array.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Show every finished job, not only the latest 20.")] = False,
    limit: Annotated[int | None, typer.Option(metavar="N", min=0, help="Show this many finished jobs.")] = None,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colours (also when NO_COLOR is set).")] = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="A live view, updated as jobs change, until Ctrl-C (one snapshot without a terminal).")] = False,
) -> None:
    """Show jobs: every unfinished one and the 20 latest finished (newest last).

    Examples: `jobctl status`; `jobctl status 42`; `jobctl status --state failed --json`;
    `jobctl status --watch --queue gpu`.
    """
    from jobctl import service

    s = session(ctx)
    try:
        states = [State(x) for x in state or []]
    except ValueError:
        raise UsageError(f"invalid --state (one of {', '.join(State)})") from None
    store = s.store
    if watch and sys.stdout.isatty() and not as_json and not ids:  # the view reads the workers itself
        from jobctl.cli.watch import watch_jobs

        watch_jobs(store, states=states or None, queues=queue or None, color=render.use_color(no_color))
        return
    live = {(w["host"], w["pid"]) for w in store.workers()}
    if ids:
        jobs = [store.get(i) for i in service.parse_ids(ids)]
        if as_json:
            render.json_texts(service.jobs_json(store, jobs, live=live))
        else:
            for n, job in enumerate(service.with_live_progress(store, jobs)):
                if n:
                    render.out("")
                render.job_detail(job, store.root, live)
        return
    color = render.use_color(no_color)
    if as_json:
        render.json_texts(service.jobs_json(store, states=states, queues=queue, live=live))
        return
    jobs = service.with_live_progress(store, store.query(states=states or None, queues=queue or None))
    hidden = 0
    if not all_:
        keep = RECENT_FINISHED if limit is None else limit
        finished = [j for j in jobs if j.state in FINISHED]
        dropped = {j.id for j in sorted(finished, key=lambda j: (j.finished_at or 0, j.id))[: max(0, len(finished) - keep)]}
        hidden = len(dropped)
        jobs = [j for j in jobs if j.id not in dropped]
    render.jobs_table(jobs, live, color=color, hidden=hidden)
