"""The command line: the only code that imports typer or rich."""

from __future__ import annotations

# Importing a module registers its commands; this order is the order of `jobctl --help`.
from jobctl.cli import submit, status, stats, control, schedule, worker, housekeeping, doctor  # noqa: F401
from jobctl.cli import progress, history, storecmd  # noqa: F401
from jobctl.cli import config as _config  # noqa: F401
from jobctl.cli.app import app


def main() -> None:
    import sys

    # Commands and names may hold bytes that are not UTF-8 (kept as lone surrogates): print
    # them as the very bytes they were, as `ls` or `echo` would, instead of crashing.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="surrogateescape")
    app(prog_name="jobctl")
