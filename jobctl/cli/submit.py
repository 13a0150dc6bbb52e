"""`jobctl submit`: queue jobs."""

import sys
from typing import Annotated

import typer

from jobctl.cli import complete, render
from jobctl.cli.app import app, parsed, session
from jobctl.errors import UsageError
from jobctl.model import Job, parse_codes, parse_duration, parse_priority, parse_size
from jobctl.store.base import JobSpec


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    ctx: typer.Context,
    command: Annotated[list[str] | None, typer.Argument(metavar="CMD [ARGS]...", help="The command and its arguments, after --.", show_default=False)] = None,
    name: Annotated[str | None, typer.Option(metavar="NAME", help="A name to show instead of the command.")] = None,
    queue: Annotated[str, typer.Option(metavar="QUEUE", help="The queue to put the job in.", autocompletion=complete.queues)] = "default",
    priority: Annotated[
        str, typer.Option(metavar="N|NAME", callback=parsed(parse_priority),
                          help="Higher runs first: an integer or low=-10, normal=0, high=10, critical=20.")
    ] = "0",
    cwd: Annotated[str | None, typer.Option(metavar="DIR", help="Working directory of the job (default: the current one).")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", metavar="NAME=VALUE", help="Set a variable for the job (repeatable).")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", metavar="TEXT", help="A label to find the job by (repeatable).")] = None,
    timeout: Annotated[str | None, typer.Option(metavar="DUR", callback=parsed(parse_duration),
                                                help="Stop the job after this long (90s, 5m, 2h, 1h30m).")] = None,
    after: Annotated[list[str] | None, typer.Option("--after", metavar="ID", help="Start only when this job completed; fail if it fails (repeatable).")] = None,
    after_any: Annotated[list[str] | None, typer.Option("--after-any", metavar="ID", help="Start when this job finished, however (repeatable).")] = None,
    retries: Annotated[int | None, typer.Option(metavar="N", min=0, help="Run again up to N times after a failure (default: config defaults.retries, 0).")] = None,
    retry_delay: Annotated[str | None, typer.Option(metavar="DUR", callback=parsed(parse_duration), help="Wait before the first retry, doubling each time, with jitter (default 10s; capped by config retry_max_delay).")] = None,
    retry_on: Annotated[str | None, typer.Option(metavar="CODES", callback=parsed(parse_codes), help="Retry only after these exit codes, e.g. 75,137.")] = None,
    delay: Annotated[str | None, typer.Option(metavar="DUR", callback=parsed(parse_duration), help="Start no sooner than this from now.")] = None,
    at: Annotated[str | None, typer.Option("--at", metavar="TIME", help="Start no sooner than TIME: 14:30 (local, next such time) or ISO 8601.")] = None,
    hold: Annotated[bool, typer.Option("--hold", help="Wait until `jobctl release ID`.")] = False,
    unique: Annotated[str | None, typer.Option(metavar="KEY", help="If an unfinished job has KEY, print its id and add nothing (cron-safe).")] = None,
    reuse: Annotated[bool, typer.Option("--reuse", help="With --unique: a completed job with KEY, still stored, counts too (its id is printed, nothing runs).")] = False,
    block: Annotated[bool, typer.Option("--block", help="If the queue is full (max_queued), wait for room instead of failing.")] = False,
    cpus: Annotated[int, typer.Option(metavar="N", min=1, help="Worker slots the job takes.")] = 1,
    mem: Annotated[str | None, typer.Option(metavar="SIZE", callback=parsed(parse_size), help="Memory limit of the job's process tree, e.g. 2G: exceeding it fails the job.")] = None,
    gpus: Annotated[int, typer.Option(metavar="N", min=0, help="GPUs the job needs (from `worker --gpus`), given to it in CUDA_VISIBLE_DEVICES.")] = 0,
    zip_: Annotated[bool | None, typer.Option("--zip/--no-zip", help="Package out/ as output.zip when the job ends.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Block until the job ends, then exit with its exit code.")] = False,
    from_: Annotated[str | None, typer.Option("--from", metavar="FILE|-", help="Queue one job per line of FILE (- for stdin), each a shell command line.")] = None,
) -> None:
    """Queue a job and print its id.

    Examples: `jobctl submit -- python train.py --epochs 10`;
    `jobctl submit --priority high --name nightly -- ./backup.sh`;
    `jobctl submit --after 41 --retries 3 --retry-on 75 -- ./upload.sh`;
    `jobctl submit --at 02:00 --unique nightly-backup -- ./backup.sh`;
    `jobctl submit --unique "render:$(sha1sum scene.blend)" --reuse --wait -- ./render.sh`;
    `jobctl submit --gpus 1 --mem 8G --timeout 2h -- python train.py`;
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
    if delay is not None and at is not None:
        raise UsageError("give --delay or --at, not both")
    if reuse and unique is None:
        raise UsageError("--reuse goes with --unique KEY")
    from jobctl.model import now, parse_job_id, parse_time

    not_before = now() + float(delay) if delay is not None else parse_time(at, now()) if at is not None else None
    captured = service.capture_env(env or [])
    base = Job(
        id=0, created_at=0.0, command=(), cwd=service.resolve_cwd(cwd),
        name=name, queue=queue, priority=int(priority), labels=tuple(label or ()),
        timeout_s=float(timeout) if timeout is not None else config.get("defaults.timeout"),
        max_retries=retries if retries is not None else config.get("defaults.retries"),
        retry_delay_s=float(retry_delay) if retry_delay is not None else config.get("defaults.retry_delay"),
        retry_on=tuple(retry_on) if retry_on is not None else (),  # type: ignore[arg-type]  # parsed by its callback
        depends_on=tuple(parse_job_id(i) for i in after or ()),
        depends_any=tuple(parse_job_id(i) for i in after_any or ()),
        not_before=not_before, held=hold, unique_key=unique, cpus=cpus,
        mem_bytes=int(mem) if mem is not None else None, gpus=gpus,
        zip=zip_ if zip_ is not None else config.get("defaults.zip"),
        submitter=service.submitter(),
    )
    specs = [JobSpec(base._replace(command=c), captured, reuse=reuse) for c in commands]
    jobs = service.submit(s.store, specs, max_queued=config.max_queued([queue]), block=block,
                          on_full=lambda e: render.note(f"jobctl: {e}; waiting for room (--block)"))
    render.ids(jobs)
    if wait:
        code, _ = service.wait(s.store, [j.id for j in jobs])
        raise typer.Exit(code)
