"""`jobctl history`: the audit trail."""

import time
from typing import Annotated

import typer

from jobctl.cli import complete, render
from jobctl.cli.app import app, session

FOLLOW_POLL_S = 0.3
_SHOWN_FIRST = ("at", "job", "event")


@app.command()
def history(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Argument(metavar="[ID]", help="Only this job's events.", show_default=False,
                                                 autocompletion=complete.job_ids)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line (JSON Lines).")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events (with ID: until the job finishes).")] = False,
    since: Annotated[str | None, typer.Option(metavar="DUR", help="Only events of the last DUR, e.g. 1h.")] = None,
) -> None:
    """Show the audit trail: who submitted, which worker ran which attempt, progress
    milestones, how jobs ended, who cancelled, retried or released, what cleanup removed.

    Examples: `jobctl history 42`; `jobctl history --since 1h --json`; `jobctl history -f`.
    """
    import json

    from jobctl.model import now, parse_duration, parse_job_id

    store = session(ctx).store
    wanted = None if job_id is None else parse_job_id(job_id)
    job = None if wanted is None else store.get(wanted)  # an unknown id is an error, not silence
    start = None if since is None else now() - parse_duration(since)
    offset = 0
    while True:
        events, offset = store.history(job_id=wanted, since=start, offset=offset)
        for event in events:
            render.out(json.dumps(event) if as_json else _line(event))
        if not follow or (job is not None and job.finished):
            return
        time.sleep(FOLLOW_POLL_S)
        if wanted is not None:
            job = store.get(wanted)


def _line(event: dict[str, object]) -> str:
    who = "" if event.get("job") is None else f"job {event['job']}  "
    rest = "  ".join(f"{k}={v}" for k, v in event.items() if k not in _SHOWN_FIRST and v is not None)
    return f"{event['at']}  {who}{event['event']}" + (f"  {rest}" if rest else "")
