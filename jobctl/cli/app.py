"""The Typer application, its global options, and the one place errors become exit codes.

No `from __future__ import annotations` here: typer reads the annotations of `main` and of
the option callbacks on every start, and evaluating them from strings costs time.
"""

import os
import sys
from collections.abc import Callable, MutableMapping
from functools import cached_property
from typing import Annotated, Any, TypeVar

import typer
from typer._click import exceptions as click_exc
from typer.core import TyperGroup

from jobctl import __version__
from jobctl.config import Config
from jobctl.errors import ExitCode, JobctlError
from jobctl.store.base import Store

T = TypeVar("T")


class Session:
    """What every command needs: the config and the store, opened on first use."""

    def __init__(self, store_flag: str | None, debug: bool) -> None:
        self.store_flag = store_flag
        self.debug = debug

    def close(self) -> None:
        """Close the store if it was opened (a database connection says goodbye). Run by
        click when the command's context ends, before `jobctl.cli.main` leaves."""
        store = self.__dict__.get("store")
        close = getattr(store, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 -- the command is done; closing is a courtesy
                pass

    @cached_property
    def config(self) -> Config:
        return Config.load()

    @cached_property
    def location(self) -> str:
        from jobctl.store import resolve_location

        return resolve_location(self.store_flag, self.config)

    @cached_property
    def store(self) -> Store:
        from jobctl.store import open_store

        store = open_store(self.location, self.config)
        for warning in store.warnings:
            print(f"jobctl: warning: {warning}", file=sys.stderr)
        return store


def session(ctx: typer.Context) -> Session:
    obj = ctx.find_root().obj
    assert isinstance(obj, Session)
    return obj


COMMANDS: dict[str, str] = {
    "submit": "submit", "status": "status", "stats": "stats",
    "cancel": "control", "wait": "control", "logs": "control",
    "retry": "schedule", "release": "schedule", "pause": "schedule", "resume": "schedule",
    "worker": "worker", "cleanup": "housekeeping", "package": "housekeeping", "doctor": "doctor",
    "progress": "progress", "history": "history", "store": "storecmd", "config": "config",
}
"""Every command, in the order of `jobctl --help`, and the module of jobctl.cli defining it."""


class JobctlGroup(TyperGroup):
    """The root command. Its subcommands are built on first use: `get_command` imports the
    module that defines one (which registers it on `app`) and turns only that into a click
    command, instead of typer building all of them (signatures, annotations, callbacks) on
    every start."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            import importlib

            importlib.import_module(f"jobctl.cli.{COMMANDS[cmd_name]}")
            self.commands.update(_built(cmd_name))
        return self.commands.get(cmd_name)

    def _main_shell_completion(self, ctx_args: MutableMapping[str, Any], prog_name: str,
                               complete_var: str | None = None) -> None:
        """Serve `_JOBCTL_COMPLETE=complete_bash|zsh|fish` for the scripts in completions/.

        `add_completion=False` keeps --install-completion out of --help, but it also skips
        registering typer's shell classes, without which every completion request fails.
        """
        from typer._completion_classes import completion_init

        completion_init()
        super()._main_shell_completion(ctx_args, prog_name, complete_var)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except JobctlError as e:
            _fail(ctx, str(e), e.exit_code)
        except click_exc.NoArgsIsHelpError:
            raise
        except click_exc.UsageError as e:
            _fail(ctx, f"{e.format_message()} (see '{_command_path(e.ctx)} --help')", ExitCode.USAGE)
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            _fail(ctx, f"{e.strerror or e}{where}", ExitCode.FAILED)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


def _command_path(ctx: Any) -> str:
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["jobctl", *reversed(names)])


def _fail(ctx: Any, message: str, code: int) -> None:
    obj = ctx.obj
    if (isinstance(obj, Session) and obj.debug) or os.environ.get("JOBCTL_DEBUG"):
        raise  # noqa: PLE0704 -- re-raise the exception being handled, with its traceback
    print(f"jobctl: error: {message}", file=sys.stderr)
    raise typer.Exit(int(code))


def parsed(parse: Callable[[str], T]) -> Callable[[str | None], T | None]:
    """A Typer option callback that turns jobctl's parse errors into typer.BadParameter."""

    def callback(value: str | None) -> T | None:
        if value is None:
            return None
        try:
            return parse(value)
        except JobctlError as e:
            raise typer.BadParameter(str(e)) from None

    return callback


def _built(name: str) -> dict[str, Any]:
    """The click command (or group) `name`, from what its module registered on `app`."""
    import typer.main

    for info in app.registered_commands:
        if (info.name or typer.main.get_command_name(info.callback.__name__)) == name:  # type: ignore[union-attr]
            return {name: typer.main.get_command_from_info(
                info, pretty_exceptions_short=app.pretty_exceptions_short, rich_markup_mode=app.rich_markup_mode)}
    for group in app.registered_groups:
        if group.name == name:
            return {name: typer.main.get_group_from_info(
                group, pretty_exceptions_short=app.pretty_exceptions_short, rich_markup_mode=app.rich_markup_mode,
                suggest_commands=app.suggest_commands)}
    return {}


app = typer.Typer(
    cls=JobctlGroup,
    name="jobctl",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"jobctl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    store: Annotated[
        str | None,
        typer.Option("--store", metavar="PATH|URL", help="The store to use (else $JOBCTL_STORE, config `store`, the default)."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Queue shell commands durably and run them with a pool of workers.

    Submit with `jobctl submit -- CMD`, run them with `jobctl worker`, watch with
    `jobctl status`. Exit codes: 0 success, 1 the operation failed, 2 usage error;
    `wait` and `submit --wait` exit with the job's own code (124 timed out, 127 command
    not found, 125 cancelled or lost, 128+N killed by signal N).
    """
    ctx.obj = Session(store, debug)
    ctx.call_on_close(ctx.obj.close)
