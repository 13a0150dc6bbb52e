"""`jobctl worker`: run the pool in the foreground."""

import sys
from typing import Annotated

import typer

from jobctl.cli import complete
from jobctl.cli.app import app, session


@app.command()
def worker(
    ctx: typer.Context,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", metavar="N", min=1, help="Slots: jobs run at once (default: config defaults.concurrency, 2).")] = None,
    queue: Annotated[list[str] | None, typer.Option("--queue", metavar="QUEUE", autocompletion=complete.queues, help="Serve only this queue (repeatable; default: all).")] = None,
    exit_when_idle: Annotated[bool, typer.Option("--exit-when-idle", help="Exit once nothing is running or runnable.")] = False,
    gpus: Annotated[str | None, typer.Option("--gpus", metavar="IDS", help="GPU ids this worker hands out, e.g. 0,1 (one job per GPU).")] = None,
) -> None:
    """Run jobs in the foreground until Ctrl-C.

    The first Ctrl-C (or SIGTERM) stops starting jobs and waits for running ones; a second
    stops them and returns them to the queue without counting an attempt.
    Example: `jobctl worker --concurrency 4`.
    """
    from jobctl.model import iso, now
    from jobctl.worker import Worker

    s = session(ctx)
    gpu_ids = _gpu_ids(gpus)

    def log(line: str) -> None:
        print(f"{iso(now())} {line}", file=sys.stderr, flush=True)

    w = Worker(
        s.store,
        concurrency=concurrency or s.config.get("defaults.concurrency"),
        queues=queue,
        exit_when_idle=exit_when_idle,
        grace_s=s.config.get("kill_grace"),
        log=log,
        gpus=gpu_ids,
        queue_limits=s.config.queue_limits(),
        retry_max_delay_s=s.config.get("retry_max_delay"),
        max_lost=s.config.get("max_lost"),
        poll_s=s.config.get("worker_poll"),
        heartbeat_s=min(s.config.get("worker_poll"), s.config.get("worker_timeout") / 3),
        on_finish=s.config.get("hooks.on_finish"),
        on_failure=s.config.get("hooks.on_failure"),
        hook_timeout_s=s.config.get("hooks.timeout"),
        cleanup_interval_s=s.config.get("cleanup_interval"),
        rates=s.config.rates(),
    )
    raise typer.Exit(w.run())


def _gpu_ids(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        ids = tuple(int(g) for g in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a list of GPU ids such as 0,1", param_hint="--gpus") from None
    if len(set(ids)) != len(ids) or min(ids) < 0:
        raise typer.BadParameter(f"{text!r}: GPU ids are distinct numbers from 0", param_hint="--gpus")
    return ids
