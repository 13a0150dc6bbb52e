"""`jobctl progress`: a running job reports how far it is."""

import os
from typing import Annotated

import typer

from jobctl.cli.app import app, session
from jobctl.errors import UsageError


@app.command()
def progress(
    ctx: typer.Context,
    percent: Annotated[float, typer.Argument(metavar="PERCENT", help="How far the job is, 0 to 100.")],
    message: Annotated[str | None, typer.Argument(metavar="[MESSAGE]", help="What it is doing now.", show_default=False)] = None,
) -> None:
    """Report progress from inside a running job (any language: it is a command).

    Reads JOBCTL_JOB_ID, JOBCTL_ATTEMPT and JOBCTL_STORE, which the job has. Cheap enough to call
    every second; `status` and `status --watch` show the latest. Example, in a job's script:
    `jobctl progress 40 "epoch 4/10"`.
    """
    from jobctl import service
    from jobctl.model import parse_job_id

    job_id, attempt = os.environ.get("JOBCTL_JOB_ID"), os.environ.get("JOBCTL_ATTEMPT")
    if not job_id or not attempt or not attempt.isdigit():
        raise UsageError("jobctl progress runs inside a job: JOBCTL_JOB_ID and JOBCTL_ATTEMPT are not set")
    service.report_progress(session(ctx).store, parse_job_id(job_id), int(attempt), percent, message)
