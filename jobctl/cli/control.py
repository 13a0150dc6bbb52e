"""`jobctl cancel`, `wait` and `logs`: acting on and following jobs."""

import sys
from typing import Annotated

import typer

from jobctl.cli import complete, render
from jobctl.cli.app import app, session
from jobctl.errors import JobctlError, UsageError

IdsArg = Annotated[list[str] | None, typer.Argument(metavar="ID...", help="Job ids.", show_default=False,
                                                   autocompletion=complete.job_ids)]


@app.command()
def cancel(
    ctx: typer.Context,
    ids: IdsArg = None,
    all_: Annotated[bool, typer.Option("--all", help="Cancel every unfinished job (of --queue).")] = False,
    queue: Annotated[str | None, typer.Option(metavar="QUEUE", help="With --all: only this queue.", autocompletion=complete.queues)] = None,
) -> None:
    """Cancel jobs: queued and waiting ones at once, running ones by stopping their processes.

    A running job's process group gets SIGTERM, then SIGKILL after `kill_grace` (10s).
    Examples: `jobctl cancel 42 43`; `jobctl cancel --all --queue gpu`.
    """
    from jobctl import service

    if bool(ids) == all_:
        raise UsageError("give job ids or --all")
    if queue is not None and not all_:
        raise UsageError("--queue goes with --all")
    s = session(ctx)
    result = service.cancel(
        s.store, service.parse_ids(ids or []), all_jobs=all_, queue=queue, grace_s=s.config.get("kill_grace")
    )
    for job_id in result.cancelled:
        render.out(f"cancelled job {job_id}")
    for job_id in result.stopped:
        render.out(f"cancelled job {job_id} (stopped its processes)")
    for job_id in result.still_stopping:
        render.out(f"cancelling job {job_id} (its processes are still stopping)")
    if result.finished:
        done = ", ".join(f"{j.id} ({j.state.value})" for j in result.finished)
        raise JobctlError(f"job(s) already finished: {done}")


@app.command()
def wait(
    ctx: typer.Context,
    ids: IdsArg = None,
    timeout: Annotated[str | None, typer.Option(metavar="DUR", help="Give up after this long (exit 1).")] = None,
) -> None:
    """Block until the jobs finish; exit with the first non-zero job exit code (0 if all completed).

    Example: `jobctl wait 42 && echo done`.
    """
    from jobctl import service
    from jobctl.model import parse_duration

    if not ids:
        raise UsageError("give at least one job id")
    job_ids = service.parse_ids(ids)
    limit = None if timeout is None else parse_duration(timeout)
    code, _ = service.wait(session(ctx).store, job_ids, timeout_s=limit)
    raise typer.Exit(code)


@app.command()
def logs(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.", autocompletion=complete.job_ids)],
    stderr: Annotated[bool, typer.Option("--stderr", help="Show stderr instead of stdout.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing output until the job finishes.")] = False,
    tail: Annotated[int | None, typer.Option("--tail", "-n", metavar="N", min=0, help="Only the last N lines.")] = None,
) -> None:
    """Show a job's output (stdout, or stderr with --stderr).

    Examples: `jobctl logs 42`; `jobctl logs 42 --stderr --tail 20`; `jobctl logs -f 42`.
    """
    from jobctl import service

    [i] = service.parse_ids([job_id])
    stream = "stderr" if stderr else "stdout"
    store = session(ctx).store
    write = sys.stdout.buffer.write
    if follow:
        def emit(chunk: bytes) -> None:
            write(chunk)
            sys.stdout.buffer.flush()

        service.follow_log(store, i, stream, emit, tail=tail)
    else:
        write(service.read_log(store, i, stream, tail=tail))
