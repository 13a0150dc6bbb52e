"""`jobctl doctor`: check the store, change nothing, explain how to recover."""

import typer

from jobctl.cli import render
from jobctl.cli.app import app, session
from jobctl.errors import StoreDamaged

RECOVERY = """\
jobctl never rewrites, drops or "repairs" a damaged file. To recover:
  1. stop the workers, and copy the store directory aside (cp -a STORE STORE.bak);
  2. restore the damaged file from a backup, or
     - for done/N.jsonl (finished jobs only): move the damaged lines out of it (each line
       is one job: sed -n 'Np' FILE shows line N), accepting the loss of those records;
     - for state.json: restore it from a backup; without one, move the store aside and
       start a new one (jobctl --store NEW ...), resubmitting the unfinished jobs;
  3. run jobctl doctor again."""
RECOVERY_POSTGRES = """\
jobctl never rewrites or deletes a row it cannot read. To recover:
  1. stop the workers, and back the database up (pg_dump);
  2. restore the damaged rows from a backup, or, accepting their loss, delete them
     (DELETE FROM jobctl_jobs WHERE id = N) and resubmit the unfinished ones;
  3. run jobctl doctor again."""


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check the whole store (every record's checksum or row, environments, workers; on
    PostgreSQL also silent workers, clock skew and output_root) and say how to recover from
    damage. Changes nothing; exits 1 if it found damage.

    Example: `jobctl doctor`.
    """
    store = session(ctx).store
    findings = store.check()
    for level, text in findings:
        render.out(f"{level:6} {text}")
    if any(level == "damage" for level, _ in findings):
        render.note(RECOVERY_POSTGRES if "://" in store.location else RECOVERY)
        raise StoreDamaged("the store is damaged (see above)")
