"""The command line: the only code that imports typer or rich.

Commands load lazily: `jobctl submit` imports and builds only `submit` (see
`app.JobctlGroup`), so a command's start-up does not pay for the other seventeen. COMMANDS is
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
    try:
        app(prog_name="jobctl")
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    _exit(code)


def _exit(code: int) -> None:
    """Leave without the interpreter's teardown, which frees every module one by one (about
    5 ms, a tenth of a short command's life). jobctl keeps nothing that needs it: files are
    written and closed by then, its store was closed with the command's context
    (`Session.close`), and only stdout and stderr may still hold output."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`jobctl status | head -1`)
            pass
    os._exit(code)
