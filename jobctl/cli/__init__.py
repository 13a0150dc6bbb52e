"""The command line: the only code that imports typer or rich.

Commands load lazily: `jobctl submit` imports and builds only `submit` (see
`app.JobctlGroup`), so a command's start-up does not pay for the other sixteen. COMMANDS is
the order of `jobctl --help` and where each command lives; a test checks it against the
modules.
"""

from __future__ import annotations

from jobctl.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    import sys

    # Commands and names may hold bytes that are not UTF-8 (kept as lone surrogates): print
    # them as the very bytes they were, as `ls` or `echo` would, instead of crashing.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="surrogateescape")
    app(prog_name="jobctl")
