"""`jobctl store`: operations on a whole store."""

from typing import Annotated

import typer

from jobctl.cli import render
from jobctl.cli.app import app, session

store_app = typer.Typer(help="Operations on a whole store.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("migrate")
def migrate(
    ctx: typer.Context,
    source: Annotated[str, typer.Option("--from", metavar="PATH", help="The JSON store to copy from.")],
    target: Annotated[str, typer.Option("--to", metavar="URL", help="The empty PostgreSQL store to copy into.")],
) -> None:
    """Copy a JSON store's jobs into a new PostgreSQL store, keeping their ids, states,
    environments and history. Stop the workers first.

    Example: `jobctl store migrate --from ~/.local/share/jobctl --to postgresql://jobctl@db/jobctl`.
    """
    from pathlib import Path

    from jobctl import service
    from jobctl.errors import UsageError
    from jobctl.store import open_store

    if not (Path(source).expanduser() / "store.json").is_file():
        raise UsageError(f"--from {source}: no jobctl store there")
    config = session(ctx).config
    count = service.migrate(open_store(source, config), open_store(target, config))
    render.out(f"copied {count} job(s) from {source} to {target.split('@')[-1]}")
