"""The command line: the only code that imports typer or rich."""

from __future__ import annotations

# Importing a module registers its commands; this order is the order of `jobctl --help`.
from jobctl.cli import submit, status, control, worker, housekeeping  # noqa: F401
from jobctl.cli import config as _config  # noqa: F401
from jobctl.cli.app import app


def main() -> None:
    app(prog_name="jobctl")
