"""The command line: the only code that imports typer or rich."""

from __future__ import annotations

from jobctl.cli import config as _config  # noqa: F401
from jobctl.cli import control, housekeeping, status, submit, worker  # noqa: F401  (register commands)
from jobctl.cli.app import app


def main() -> None:
    app(prog_name="jobctl")
