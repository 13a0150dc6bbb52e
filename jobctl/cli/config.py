"""`jobctl config`: read and write the TOML config file."""


from typing import Annotated

import typer

from jobctl.cli import render
from jobctl.cli.app import app
from jobctl.config import Config, config_path

config_app = typer.Typer(help="Read and write the config file.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def show() -> None:
    """Print the config file's settings (nothing if there is none)."""
    import tomli_w

    text = tomli_w.dumps(Config.load().raw).rstrip()
    if text:
        render.out(text)


@config_app.command("get")
def get(key: Annotated[str, typer.Argument(metavar="KEY", help="A dotted key, e.g. cleanup.older_than.")]) -> None:
    """Print one setting's value (its default when the file does not set it)."""
    render.out(Config.load().display(key))


@config_app.command("set", context_settings={"ignore_unknown_options": True})
def set_(
    key: Annotated[str, typer.Argument(metavar="KEY", help="A dotted key, e.g. cleanup.older_than.")],
    value: Annotated[str, typer.Argument(metavar="VALUE", help="The value, e.g. 3d.")],
) -> None:
    """Set one setting in the config file. Example: `jobctl config set cleanup.older_than 3d`."""
    import tomli_w

    from jobctl import fsutil

    config = Config.load()
    raw = config.with_value(key, value)
    fsutil.private_dir(config.path.parent)
    fsutil.atomic_write(config.path, tomli_w.dumps(raw).encode())


@config_app.command("path")
def path() -> None:
    """Print where the config file is (it may not exist yet)."""
    render.out(str(config_path()))
