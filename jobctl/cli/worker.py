"""`jobctl worker`: run the pool in the foreground."""

import sys
from typing import Annotated

import typer

from jobctl.cli.app import app, session


@app.command()
def worker(
    ctx: typer.Context,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", metavar="N", min=1, help="Slots: jobs run at once (default: config defaults.concurrency, 2).")] = None,
    queue: Annotated[list[str] | None, typer.Option("--queue", metavar="QUEUE", help="Serve only this queue (repeatable; default: all).")] = None,
    exit_when_idle: Annotated[bool, typer.Option("--exit-when-idle", help="Exit once nothing is running or runnable.")] = False,
) -> None:
    """Run jobs in the foreground until Ctrl-C.

    The first Ctrl-C (or SIGTERM) stops starting jobs and waits for running ones; a second
    stops them and returns them to the queue without counting an attempt.
    Example: `jobctl worker --concurrency 4`.
    """
    from jobctl.model import iso, now
    from jobctl.worker import Worker

    s = session(ctx)

    def log(line: str) -> None:
        print(f"{iso(now())} {line}", file=sys.stderr, flush=True)

    w = Worker(
        s.store,
        concurrency=concurrency or s.config.get("defaults.concurrency"),
        queues=queue,
        exit_when_idle=exit_when_idle,
        grace_s=s.config.get("kill_grace"),
        log=log,
    )
    raise typer.Exit(w.run())
