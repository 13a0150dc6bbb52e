"""`jobctl cleanup` and `jobctl package`: the lifecycle of job directories."""


from pathlib import Path
from typing import Annotated

import typer

from jobctl.cli import complete, render
from jobctl.cli.app import app, session
from jobctl.errors import UsageError


@app.command()
def cleanup(
    ctx: typer.Context,
    older_than: Annotated[str | None, typer.Option(metavar="DUR", help="Remove jobs finished longer ago than this (default: config cleanup.older_than, 7d).")] = None,
    state: Annotated[list[str] | None, typer.Option("--state", metavar="STATE", help="Only jobs in this finished state (repeatable): completed, failed, cancelled.")] = None,
    keep_failed: Annotated[bool | None, typer.Option("--keep-failed/--no-keep-failed", help="Keep failed jobs.")] = None,
    max_total: Annotated[str | None, typer.Option(metavar="SIZE", help="Then also remove the oldest finished jobs until job directories fit in SIZE (e.g. 20G).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be removed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing (errors still go to stderr).")] = False,
) -> None:
    """Remove old finished jobs: record, job directory, everything. Made for cron.

    Never touches queued, waiting or running jobs. Example crontab line:
    `17 3 * * * jobctl cleanup --quiet`.
    """
    from jobctl import service
    from jobctl.model import FINISHED, State, parse_duration, parse_size

    s = session(ctx)
    try:
        states = [State(x) for x in state or []]
    except ValueError:
        states = []
    if state and (len(states) != len(state) or not set(states) <= FINISHED):
        raise UsageError("--state takes completed, failed or cancelled")
    age = parse_duration(older_than) if older_than is not None else s.config.get("cleanup.older_than")
    limit = parse_size(max_total) if max_total is not None else s.config.get("cleanup.max_total")
    keep = keep_failed if keep_failed is not None else s.config.get("cleanup.keep_failed")
    report = service.cleanup(
        s.store, older_than_s=age, states=states, keep_failed=keep, max_total=limit, dry_run=dry_run
    )
    render.cleanup_report(report, as_json=as_json, quiet=quiet)


@app.command()
def package(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.", autocompletion=complete.job_ids)],
    include: Annotated[list[str] | None, typer.Option("--include", metavar="GLOB", help="Only files matching (repeatable), relative to out/.")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", metavar="GLOB", help="Leave out files matching (repeatable).")] = None,
    logs: Annotated[bool, typer.Option("--logs", help="Add stdout.log and stderr.log under logs/.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", metavar="PATH", help="Where to write the zip (default: the job's output.zip).")] = None,
) -> None:
    """Zip a job's out/ directory with a manifest.json; print the zip's path.

    Example: `jobctl package 42 --exclude '*.tmp' --logs -o results.zip`.
    """
    from jobctl import service

    [i] = service.parse_ids([job_id])
    path = service.package(
        session(ctx).store, i, include=include or [], exclude=exclude or [], logs=logs,
        dest=None if output is None else output.absolute(),
    )
    render.out(str(path))
