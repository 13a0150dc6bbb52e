"""`jobctl submit`: queue jobs."""

import sys
from typing import Annotated

import typer

from jobctl.cli import render
from jobctl.cli.app import app, parsed, session
from jobctl.errors import UsageError
from jobctl.model import parse_duration, parse_priority
from jobctl.store.base import JobSpec


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    ctx: typer.Context,
    command: Annotated[list[str] | None, typer.Argument(metavar="CMD [ARGS]...", help="The command and its arguments, after --.", show_default=False)] = None,
    name: Annotated[str | None, typer.Option(metavar="NAME", help="A name to show instead of the command.")] = None,
    queue: Annotated[str, typer.Option(metavar="QUEUE", help="The queue to put the job in.")] = "default",
    priority: Annotated[
        str, typer.Option(metavar="N|NAME", callback=parsed(parse_priority),
                          help="Higher runs first: an integer or low=-10, normal=0, high=10, critical=20.")
    ] = "0",
    cwd: Annotated[str | None, typer.Option(metavar="DIR", help="Working directory of the job (default: the current one).")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", metavar="NAME=VALUE", help="Set a variable for the job (repeatable).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", metavar="TEXT", help="A label to find the job by (repeatable).")] = None,
    timeout: Annotated[str | None, typer.Option(metavar="DUR", callback=parsed(parse_duration),
                                                help="Stop the job after this long (90s, 5m, 2h, 1h30m).")] = None,
    zip_: Annotated[bool | None, typer.Option("--zip/--no-zip", help="Package out/ as output.zip when the job ends.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Block until the job ends, then exit with its exit code.")] = False,
    from_: Annotated[str | None, typer.Option("--from", metavar="FILE|-", help="Queue one job per line of FILE (- for stdin), each a shell command line.")] = None,
) -> None:
    """Queue a job and print its id.

    Examples: `jobctl submit -- python train.py --epochs 10`;
    `jobctl submit --priority high --name nightly -- ./backup.sh`;
    `jobctl submit --from commands.txt`.
    """
    from jobctl import service

    s = session(ctx)
    config = s.config
    if from_ is not None and command:
        raise UsageError("give either a command or --from, not both")
    if from_ is not None:
        if from_ == "-":
            commands = service.commands_from(sys.stdin)
        else:
            try:
                with open(from_, encoding="utf-8") as f:
                    commands = service.commands_from(f)
            except OSError as e:
                raise UsageError(f"--from {from_}: {e.strerror}") from None
        if not commands:
            raise UsageError(f"--from {from_}: no commands in it")
    else:
        commands = [service.validate_command(command or [])]
    base = JobSpec(
        command=(), cwd=service.resolve_cwd(cwd), env=service.capture_env(env or []),
        name=name, queue=queue, priority=int(priority), labels=tuple(label or ()),
        timeout_s=float(timeout) if timeout is not None else config.get("defaults.timeout"),
        max_retries=config.get("defaults.retries"),
        zip=zip_ if zip_ is not None else config.get("defaults.zip"),
        submitter=service.submitter(),
    )
    from dataclasses import replace

    jobs = service.submit(s.store, [replace(base, command=c) for c in commands])
    render.ids(jobs)
    if wait:
        code, _ = service.wait(s.store, [j.id for j in jobs])
        raise typer.Exit(code)
