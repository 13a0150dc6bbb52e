"""`jobctl retry`, `release`, `pause` and `resume`: steering what runs next."""

from typing import Annotated

import typer

from jobctl.cli import complete, render
from jobctl.cli.app import app, session

IdsArg = Annotated[list[str], typer.Argument(metavar="ID...", help="Job ids.", show_default=False,
                                             autocompletion=complete.job_ids)]
QueueArg = Annotated[str | None, typer.Argument(metavar="[QUEUE]", help="A queue (default: every queue).", show_default=False,
                                                autocompletion=complete.queues)]


@app.command()
def retry(ctx: typer.Context, ids: IdsArg) -> None:
    """Queue failed or cancelled jobs again: a new attempt with the same id.

    Earlier attempts' logs are kept as stdout.N.log and stderr.N.log. Example: `jobctl retry 42`.
    """
    from jobctl import service

    for job in service.retry(session(ctx).store, service.parse_ids(ids)):
        render.out(f"job {job.id} {job.state.value}" + (f" ({job.waiting_for})" if job.waiting_for else ""))


@app.command()
def release(ctx: typer.Context, ids: IdsArg) -> None:
    """Let jobs submitted with --hold go. Example: `jobctl release 42`."""
    from jobctl import service

    for job in service.release(session(ctx).store, service.parse_ids(ids)):
        render.out(f"released job {job.id}" + (f" (still waiting: {job.waiting_for})" if job.waiting_for else ""))


@app.command()
def pause(ctx: typer.Context, queue: QueueArg = None) -> None:
    """Stop starting jobs of a queue, or of every queue; running jobs go on.

    Every worker of the store obeys. Example: `jobctl pause gpu`.
    """
    from jobctl.scheduler import ALL_QUEUES

    session(ctx).store.set_paused(queue or ALL_QUEUES, True)
    render.out(f"paused {'queue ' + queue if queue else 'all queues'}")


@app.command()
def resume(ctx: typer.Context, queue: QueueArg = None) -> None:
    """Start jobs of a paused queue again (without QUEUE: lift `jobctl pause` of every queue)."""
    from jobctl.scheduler import ALL_QUEUES

    session(ctx).store.set_paused(queue or ALL_QUEUES, False)
    render.out(f"resumed {'queue ' + queue if queue else 'all queues'}")
